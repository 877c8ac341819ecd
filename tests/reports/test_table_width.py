"""Terminal tables that fit: width given to the columns that need it, identities cut in the middle,
colour that takes no columns (issue 15, item 7). The pty tests are in tests/cli/test_tty.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from click.testing import CliRunner

from ztaudit.cli.options import terminal_width, use_color
from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.formats import ANSI_COLORS, cut_middle, render, table_text
from ztaudit.reports.svg import SEVERITY_COLORS, STATUS_COLORS

SA = "system:serviceaccount:ci-tools:ci-deployer"
T = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
SGR = re.compile(r"\x1b\[[0-9;]*m")


def section() -> Section:
    rows = [{"severity": s, "detector": "credential.legacy_token", "actor": a, "at": T, "n": 12345,
             "summary": "x" * 120} for s, a in (("critical", SA), ("low", "carol.very.long.name@example.com"))]
    return Section("f", "F", ["severity", "detector", "actor", "at", "n", "summary"], rows)


def widths(text: str) -> dict[str, int]:
    header, rule = SGR.sub("", text).splitlines()[:2]
    return {name: len(rule[header.index(name):].split("  ")[0]) for name in header.split()}


def test_identities_are_cut_in_the_middle() -> None:
    assert cut_middle(SA, 36) == "system:serviceaccount:…:ci-deployer"
    assert cut_middle(SA, len(SA)) == SA
    assert cut_middle("carol.very.long.name@example.com", 20) == "carol.v…@example.com"
    assert all(0 < len(cut_middle(SA, w)) <= w for w in range(1, 30))


def test_width_goes_to_the_columns_that_need_it() -> None:
    assert all(len(line) <= 80 for line in table_text(section(), 80).splitlines())
    narrow, wide = table_text(section(), 110), table_text(section(), 200)
    assert all(len(line) <= 110 for line in narrow.splitlines())
    w110, w200 = widths(narrow), widths(wide)
    assert w110["at"] == 19 and w110["n"] == 5 and w110["severity"] == 8  # never cut: times, numbers, statuses
    assert w110["detector"] == len("credential.legacy_token")
    assert w110["summary"] < w110["actor"]  # free text gives way before identities
    assert w200["actor"] == len(SA) > w110["actor"] and SA in wide
    assert "system:serviceaccount:…" in narrow or "…:ci-deployer" in narrow


def test_colour_uses_the_chart_palette_and_takes_no_columns() -> None:
    plain, coloured = table_text(section(), 80), table_text(section(), 80, color=True)
    assert SGR.sub("", coloured) == plain and "\x1b" not in plain
    assert f"{ANSI_COLORS['critical']}critical\x1b[0m" in coloured
    assert set(ANSI_COLORS) == set(SEVERITY_COLORS) | set(STATUS_COLORS)
    assert len({ANSI_COLORS[s] for s in ("critical", "low", "info")}) == 3
    assert ANSI_COLORS["not_enforced"] != ANSI_COLORS["enforced"]
    result = ReportResult("f", "F", [section()])
    for fmt in ("json", "csv", "markdown", "html"):
        assert "\x1b[38;5;" not in render(result, fmt, color=True)


def test_width_and_colour_decisions(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("COLUMNS", "200")
        assert terminal_width(None) == 200 and terminal_width(90) == 90 and terminal_width(None, to_file=True) == 100
        mp.setenv("COLUMNS", "10")
        assert terminal_width(None) == 40

        class Tty:
            def isatty(self) -> bool:
                return True

        mp.delenv("NO_COLOR", raising=False)
        assert use_color("table", stream=Tty())  # type: ignore[arg-type]
        assert not use_color("json", stream=Tty()) and not use_color("table", to_file=True, stream=Tty())  # type: ignore[arg-type]
        assert not use_color("table", stream=CliRunner().isolation().__enter__()[0])  # type: ignore[arg-type]
        mp.setenv("NO_COLOR", "1")
        assert not use_color("table", stream=Tty())  # type: ignore[arg-type]
        mp.setenv("NO_COLOR", "")  # no-color.org: only a non-empty value counts
        assert use_color("table", stream=Tty())  # type: ignore[arg-type]
    finally:
        mp.undo()

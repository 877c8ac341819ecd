"""``report summary`` leads with the answers: a header (lake, span, config, version) and one line per
question of the mission, with its number and status, in every format (issue 15, item 9)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.lakes import T0, audit, build_derived_tables, decision, finding, write_rows

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.summary import QUESTIONS, ztaudit_version


def lake_with(tmp: Path, findings: list[dict[str, object]], *, derived: bool = True) -> Path:
    lake = tmp / "lake"
    k8s = [r for i in range(4) for r in audit("alice@example.com", T0 + timedelta(hours=i), via_proxy=True)]
    write_rows(lake, {"k8s_audit": k8s, "proxy_decision": [decision("alice@example.com", T0)],
                      **({"findings": findings} if findings else {})})
    return build_derived_tables(lake) if derived else lake


def summary(lake: Path, *args: str) -> str:
    res = CliRunner().invoke(cli, ["report", "summary", "--lake", str(lake), *args])
    assert res.exit_code == 0, res.output
    return res.output


def questions(lake: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(summary(lake, "--format", "json", "--section", "questions"))
    return {str(r["question"]): r for r in rows}


def test_every_format_opens_with_the_header_and_one_line_per_question(tmp_path: Path) -> None:
    lake = lake_with(tmp_path, [
        finding("impersonation.proxy_bypass", "high", "bob@example.com", T0, T0, "direct"),
        finding("impersonation.unobserved", "medium", "bob@example.com", T0, T0, "unmatched"),
        finding("credential.stale", "medium", "system:serviceaccount:ci:deployer", T0, T0, "old token"),
    ])
    table = summary(lake).splitlines()
    assert table[0] == "Lake summary"
    verdict = "\n".join(table[1:14])
    flat = " ".join(verdict.split())  # the header wraps at the terminal's width
    assert f"Lake {lake.resolve()}" in flat  # the CLI names the lake it read
    assert "Events 2026-11-20 09:00:00 to 2026-11-20 12:00:00 UTC (1 day)" in flat
    assert f"ztaudit {ztaudit_version()}" in flat and "config: none (built-in defaults)" in flat
    positions = [verdict.index(q.text) for q in QUESTIONS]
    assert positions == sorted(positions)  # in the mission's order, before any table
    assert verdict.index(QUESTIONS[-1].text) < "\n".join(table).index("== Lake contents")
    assert "Impersonation observed? VIOLATION: 2 finding(s)" in verdict
    assert "Stale credentials? VIOLATION: 1 finding(s)" in verdict
    assert "Unusual reach? OK: 0 finding(s)" in verdict
    assert "Revocations enforced? NONE: 0 not enforced" in verdict
    md = summary(lake, "--format", "markdown")
    assert md.index("Impersonation observed? VIOLATION") < md.index("## Lake contents")
    everything = json.loads(summary(lake, "--format", "json", "--section", "all"))
    assert [v.split("?")[0] + "?" for v in everything["verdict"][1:]] == [q.text for q in QUESTIONS]
    about = everything["sections"]["about"][0]
    assert about["version"] == ztaudit_version() and about["first_at"] == "2026-11-20T09:00:00.000000Z"
    html = (tmp_path / "s.html")
    summary(lake, "--format", "html", "--out", str(html), "-q")
    page = html.read_text()
    assert page.index("Impersonation observed?") < page.index("Lake contents by table and cluster")
    assert '<span class="b st-violation">VIOLATION</span>' in page
    # the primary section (json/csv default) keeps its documented shape
    assert {r["table"] for r in json.loads(summary(lake, "--format", "json"))} >= {"k8s_audit", "findings"}


def test_statuses_follow_the_lake(tmp_path: Path) -> None:
    """No detect run -> not_run; reach findings -> review (unusual, not necessarily wrong); a config
    file is named."""
    bare = lake_with(tmp_path / "a", [], derived=False)
    got = questions(bare)
    assert got["Impersonation observed?"]["status"] == "not_run"
    assert got["Stale credentials?"]["status"] == "not_run"
    reach = lake_with(tmp_path / "b", [finding("reach.anomalous", "high", "alice@example.com", T0, T0, "grew")])
    got = questions(reach)
    assert (got["Unusual reach?"]["status"], got["Unusual reach?"]["count"]) == ("review", 1)
    assert got["Impersonation observed?"]["status"] == "ok"
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text("[revocation]\ngrace_seconds = 600\n")
    assert f"config: {cfg}" in summary(reach, "--config", str(cfg), "--width", "400")


def test_the_header_names_the_lake_it_was_given(tmp_path: Path) -> None:
    lake = lake_with(tmp_path, [])
    con = open_lake(lake)
    try:
        result = run_report("summary", ReportContext(con=con, config=Config(), filters=Filters(), lake=str(lake)))
    finally:
        con.close()
    assert result.verdict[0].startswith(f"Lake {lake} · Events 2026-11-20 09:00:00")
    assert result.section("about").rows[0]["lake"] == str(lake)


@pytest.mark.parametrize("since", ["2027-01-01"])
def test_an_empty_window_says_so(tmp_path: Path, since: str) -> None:
    lake = lake_with(tmp_path, [])
    out = summary(lake, "--since", since)
    assert "No events in range" in out
    assert "Impersonation observed? NO DATA" in out

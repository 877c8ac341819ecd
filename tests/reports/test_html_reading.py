"""The HTML report reads at a glance (issue 15, item 9): one colour per status and severity in every
chart and table, whole-number ticks on count axes, legends that show every label, findings linked to
their identity's page, and one incident seen by several detectors grouped."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ztaudit.reports.base import Chart, ReportResult, Section, Series
from ztaudit.reports.charts import latency_chart
from ztaudit.reports.html import finding_anchor, identity_page, incidents, render_html
from ztaudit.reports.svg import SEVERITY_COLORS, STATUS_COLORS, render_svg, ticks

T = datetime(2026, 11, 25, 16, 20, 5, tzinfo=UTC)
COLUMNS = ["finding_id", "detector", "severity", "actor", "first_seen", "last_seen", "summary"]


def f(fid: str, detector: str, actor: str, first: datetime, last: datetime,
      severity: str = "high") -> dict[str, object]:
    return {"finding_id": fid, "detector": detector, "severity": severity, "actor": actor, "first_seen": first,
            "last_seen": last, "summary": f"{detector} for {actor}"}


def fills(svg: str) -> dict[str, str]:
    """{series label: fill} from the legend swatches (their tooltip is the full label)."""
    pairs = re.findall(r'width="12" height="12" fill="(#[0-9a-f]{6})"><title>([^<]*)</title></rect>', svg)
    return {label: fill for fill, label in pairs}


def test_a_status_has_one_colour_in_every_chart() -> None:
    lat = render_svg(latency_chart([("enforced", 30.0), ("not_enforced", 4000.0), ("quiet", 9.0)], 900))
    # the same statuses in another chart, in another order, with a palette label first
    other = render_svg(Chart("x", "x", "bar", [Series("k8s_audit", [("2026-11-20", 1)]),
                                                Series("not_enforced", [("2026-11-20", 2)]),
                                                Series("enforced", [("2026-11-20", 3)])]))
    for svg in (lat, other):
        got = fills(svg)
        assert got["not_enforced"] == STATUS_COLORS["not_enforced"] and got["enforced"] == STATUS_COLORS["enforced"]
    sev = render_svg(Chart("s", "s", "bar", [Series(s, [("2026-11-20", 1)]) for s in reversed(SEVERITY_COLORS)]))
    assert fills(sev) == SEVERITY_COLORS
    page = render_html(ReportResult("r", "R", [Section("s", "S", ["status", "severity"],
                                                        [{"status": "not_enforced", "severity": "high"}])]))
    assert f"span.st-not_enforced{{background:{STATUS_COLORS['not_enforced']}" in page
    assert f"tr td.st-not_enforced{{box-shadow:inset 6px 0 0 {STATUS_COLORS['not_enforced']}" in page
    assert f"tr td.sev-high{{box-shadow:inset 6px 0 0 {SEVERITY_COLORS['high']}" in page
    assert '<td class="st-not_enforced">not_enforced</td>' in page


def test_count_axes_have_whole_number_ticks() -> None:
    for top in (1, 2, 3, 6, 7, 13, 99, 1234):
        values = ticks(top, whole=True)
        assert values[0] == 0 and values[-1] >= top and len(values) <= 6
        assert all(v == int(v) for v in values), (top, values)
    svg = render_svg(Chart("c", "c", "bar", [Series("high", [("2026-11-20", 3)]), Series("low", [("2026-11-21", 2)])]))
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert labels == ["0", "1", "2", "3"]
    assert ticks(0.37, whole=False)[-1] == 0.5  # a rate keeps fractions


def test_the_legend_shows_every_label_in_full() -> None:
    actors = [f"system:serviceaccount:team-{i}:deployer-with-a-long-name" for i in range(9)]
    svg = render_svg(Chart("r", "reach", "line", [Series(a, [("2026-11-20", i), ("2026-11-21", 1)])
                                                  for i, a in enumerate(actors)]))
    shown = re.findall(r'class="cl">(system:[^<]+)</text>', svg)
    assert shown == actors  # none cut, none dropped
    longest = "system:serviceaccount:" + "x" * 80 + ":end"
    cut = render_svg(Chart("r", "reach", "line", [Series(longest, [("2026-11-20", 1)])]))
    assert f"<title>{longest}</title>" in cut and "system:serviceaccount:xx" in cut and "…" in cut
    assert re.search(r'class="cl">system:serviceaccount:x+…x+:end</text>', cut)  # both ends kept
    height = int(re.search(r'height="(\d+)"', svg)[1])  # type: ignore[index]
    last_y = max(int(y) for y in re.findall(r'<rect x="[\d.]+" y="(\d+)" width="12"', svg))
    assert last_y + 12 <= height  # the legend rows are inside the picture


def test_findings_link_to_the_identity_page_and_related_findings_are_grouped() -> None:
    evil = "mallory\"><script>x</script>@example.com"
    rows = [
        f("a1", "impersonation.proxy_bypass", "bob@example.com", T, T),
        f("a2", "impersonation.unobserved", "bob@example.com", T - timedelta(seconds=1), T - timedelta(seconds=1)),
        f("b1", "impersonation.unbrokered", "alice@example.com", T, T),
        f("b2", "impersonation.unobserved", "alice@example.com", T + timedelta(hours=10), T + timedelta(hours=10)),
        f("c1", "credential.legacy_token", evil, T, T, "medium"),
        f("c2", "credential.legacy_token", evil, T, T, "medium"),  # one detector twice: not an incident
    ]
    groups = incidents(rows)
    assert [[r["finding_id"] for r in g] for g in groups] == [["a2", "a1"]]
    page = render_html(ReportResult("findings", "Findings", [Section("findings", "Findings", COLUMNS, rows)]))
    assert "Related findings: 1 incident seen by several detectors</h2>" in page
    assert f'href="#{finding_anchor("a1")}"' in page and f'id="{finding_anchor("a1")}"' in page
    assert f'<a href="{identity_page("bob@example.com")}"' in page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and all(re.fullmatch(r"#f-[A-Za-z0-9_-]+|ztaudit-identity-[A-Za-z0-9._@-]*-[0-9a-f]{8}\.html", h)
                         for h in hrefs), hrefs
    assert "<script>x" not in page and identity_page(evil) != identity_page("mallory_script_x_script_@example.com")
    # a section that is not findings gets no links
    plain = render_html(ReportResult("r", "R", [Section("s", "S", ["actor"], [{"actor": "bob@example.com"}])]))
    assert "href=" not in plain

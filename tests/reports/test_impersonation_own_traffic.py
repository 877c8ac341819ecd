"""``report impersonation``'s ``proxy_own_traffic`` section: the approved impersonator's requests
without impersonation that pair with no person's proxy decision (its own housekeeping), and only
those: the raw request that pairs with carol's decision is an ``impersonation.unobserved`` finding.

The lake is the detector case ``unobserved/pos_mixed_day`` (tests/cases), reported through the CLI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.cases import CASES, load_case, write_case

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.correlate import SUMMARY_ONLY, Correlation, impersonation_summary
from ztaudit.detectors.impersonation import proxy_own_traffic
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters

PROXY = "system:serviceaccount:pomerium:pomerium-authorize"


def _sections(*args: str) -> dict[str, list[dict[str, Any]]]:
    res = CliRunner().invoke(cli, ["report", "impersonation", *args, "--format", "json", "--section", "all"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["sections"]  # type: ignore[no-any-return]


def test_own_traffic_lists_housekeeping_and_not_the_paired_request(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_case(load_case(CASES / "impersonation" / "unobserved" / "pos_mixed_day.jsonl"), lake)
    rows = _sections("--lake", str(lake))["proxy_own_traffic"]
    assert len(rows) == 1, rows
    r = rows[0]
    assert (r["cluster"], r["identity"]) == ("prod", PROXY)
    # hk-1 (config map), hk-2 (ingresses), hk-3 (pods, a minute after carol's decision): not raw-1
    assert r["requests"] == 3 and r["forbidden"] == 0
    assert r["actions"] == ["get configmaps", "list ingresses", "list pods"]
    assert r["namespaces"] == ["pay", "pomerium"]
    assert r["first_seen"].startswith("2026-11-20T09:00:01") and r["last_seen"].startswith("2026-11-20T10:01:05")


def test_own_traffic_follows_the_filters(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_case(load_case(CASES / "impersonation" / "unobserved" / "pos_mixed_day.jsonl"), lake)
    assert [r["identity"] for r in _sections("--lake", str(lake), "--actor", PROXY)["proxy_own_traffic"]] == [PROXY]
    assert _sections("--lake", str(lake), "--actor", "carol@example.com")["proxy_own_traffic"] == []
    narrowed = _sections("--lake", str(lake), "--until", "2026-11-20T10:00:00Z")["proxy_own_traffic"]
    assert [r["requests"] for r in narrowed] == [1], narrowed


def test_no_raw_request_skips_the_correlation_plan(tmp_path: Path) -> None:
    """A window without any non-impersonated request of the proxy returns no rows without building the
    correlation tables (the shortcut in ``proxy_own_traffic``); the same lake over a window with one
    builds them and finds it."""
    lake = tmp_path / "lake"
    write_case(load_case(CASES / "impersonation" / "unobserved" / "pos_mixed_day.jsonl"), lake)
    con = open_lake(lake)
    try:
        assert proxy_own_traffic(con, Config(), until=datetime(2026, 11, 20, 9, 0, tzinfo=UTC)).rows == []
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert Correlation().summary not in tables, tables
        assert [r["requests"] for r in proxy_own_traffic(con, Config()).rows] == [3]
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert Correlation().summary in tables, tables
    finally:
        con.close()


@pytest.mark.parametrize("since,until", [(None, None), (datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
                                                       datetime(2026, 11, 20, 10, 0, 30, tzinfo=UTC))])
def test_with_own_traffic_the_matching_section_reads_the_detect_tables(
        tmp_path: Path, since: datetime | None, until: datetime | None) -> None:
    """When the window has own traffic, pairing it built the correlation's detect tables: the matching
    section reads their summary instead of running the summary plan (a second pass over the lake),
    and gets the rows the summary plan gives, over all time and over a window that cuts the day."""
    lake = tmp_path / "lake"
    write_case(load_case(CASES / "impersonation" / "unobserved" / "pos_mixed_day.jsonl"), lake)
    con = open_lake(lake)
    try:
        ctx = ReportContext(con=con, config=Config(), filters=Filters(since=since, until=until), limit=50,
                            lake=str(lake))
        result = run_report("impersonation", ctx)
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert Correlation().summary in tables and SUMMARY_ONLY not in tables, tables
        matching = next(s for s in result.sections if s.name == "matching").rows
    finally:
        con.close()
    assert matching  # carol's decisions and requests
    fresh = open_lake(lake)
    try:
        assert matching == impersonation_summary(fresh, Config(), since, until).to_pylist()
    finally:
        fresh.close()

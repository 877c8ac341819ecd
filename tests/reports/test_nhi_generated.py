"""Right-sizing on a generated month: every suggestion replays every allowed request of its service
account (100 % allowed) and grants no verb/resource pair it did not use. Prints the figures (-s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support.lakes import ingest_generated

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.rbac import covers
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.rightsize import baseline, suggest, used_by_identity

pytestmark = pytest.mark.slow


def test_month_suggestions_replay(tmp_path: Path) -> None:
    from ztaudit.cli.main import cli

    out, lake = tmp_path / "gen", tmp_path / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "30", "--events", "300000",
                                   "--clusters", "prod,staging", "--seed", "5"])
    assert res.exit_code == 0, res.output
    ingest_generated(out, lake)
    con = open_lake(lake)
    try:
        window = baseline(con, None, None)
        uses = used_by_identity(con, window)
        assert len(uses) >= 20
        pairs = requests = 0
        for (_cluster, _actor), mine in uses.items():
            rules = suggest(mine)
            used = {(u.verb, u.api_group, u.resource, u.subresource, u.namespace, u.path) for u in mine}
            for u in mine:  # replay: each allowed request must be allowed by the suggestion
                assert any(covers(r, u) for r in rules), (u, rules)
                requests += u.requests
            for r in rules:  # grants nothing unused: every (verb, resource) of each rule, in scope, was used
                for v in r.verbs:
                    if r.non_resource_urls:
                        assert all((v, "", None, None, None, p) in used for p in r.non_resource_urls), r
                        continue
                    for res_ in r.resources:
                        name, _, sub = res_.partition("/")
                        pairs += 1
                        assert (v, r.api_groups[0], name, sub or None, r.scope_namespace, None) in used, (v, res_, r)
        result = run_report("nhi", ReportContext(con=con, config=Config(), filters=Filters(), limit=10_000))
        sizing = result.section("rightsize").rows
        assert sizing and all(r["status"] in ("verified", "review") for r in sizing)
        assert all(r["replayed_requests"] == r["allowed_by_suggestion"] for r in sizing)
        print(f"\nright-sizing on a generated month: {len(uses)} service accounts, {requests} allowed requests "
              f"replayed, 100 % allowed, {pairs} granted verb/resource pairs, 0 unused; verdict: {result.verdict}")
    finally:
        con.close()

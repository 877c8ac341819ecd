"""Right-sizing and impersonation rights on ``ztaudit generate`` data with its RBAC snapshot: 3 days
(cold start) and a month, two clusters each.

The generator writes ``rbac_snapshot/<cluster>.json`` and its truth (``.ztaudit/manifest.json``'s ``rbac``: per
service account, the unused extras it was granted) and labels every unapproved impersonation right
(``labels.jsonl``). The whole output folder is ingested as a user would (``ztaudit ingest --config
DIR/.ztaudit/ztaudit.toml DIR``: the cluster of each snapshot comes from its file name), then:

* **replay**: for every service account with allowed requests, every allowed request of the
  baseline is replayed against the suggested rules with the RBAC matcher: 100 % allowed; and the
  suggestion grants no verb/resource pair the account did not use;
* **over-privilege**: ``report nhi``'s over-privileged accounts, their unused grants and the
  visibility figures equal the truth;
* **impersonation rights**: ``impersonation.unapproved_right`` finds exactly the labelled subjects.

Precision and recall are printed (``pytest -s``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ztaudit.core.config import Config, load_config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.rbac import covers
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext, ReportResult
from ztaudit.reports.filters import Filters
from ztaudit.reports.rightsize import baseline, suggest, used_by_identity

pytestmark = pytest.mark.slow

DETECTOR = "impersonation.unapproved_right"


def _generate(root: Path, days: int, events: int) -> tuple[Path, Path, Config]:
    from ztaudit.cli.main import cli

    out, lake = root / "gen", root / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", str(days), "--events", str(events),
                                   "--clusters", "prod,staging", "--seed", "5", "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})
    stats = ingest_paths([out], lake, config=cfg)
    assert not stats.quarantined, stats.quarantined
    assert stats.rows.get("rbac_snapshot", 0) > 0
    result = run_detectors(lake, cfg, detector_ids=[DETECTOR], build_tables=False)
    assert not result.errors, result.errors
    return out, lake, cfg


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _nhi(lake: Path, cfg: Config) -> ReportResult:
    con = open_lake(lake)
    try:
        return run_report("nhi", ReportContext(con=con, config=cfg, filters=Filters(), limit=100_000))
    finally:
        con.close()


def check_replay(lake: Path) -> tuple[int, int, int]:
    """Replay every allowed request against each suggestion; (accounts, requests replayed, granted pairs)."""
    con = open_lake(lake)
    try:
        uses = used_by_identity(con, baseline(con, None, None))
    finally:
        con.close()
    pairs = requests = 0
    for (_cluster, _actor), mine in uses.items():
        rules = suggest(mine)
        used = {(u.verb, u.api_group, (u.resource or "") + (f"/{u.subresource}" if u.subresource else ""),
                 u.namespace, u.path) for u in mine}
        for u in mine:  # 100 % allowed
            assert any(covers(r, u) for r in rules), (u, rules)
            requests += u.requests
        for r in rules:  # nothing granted that was not used, in the rule's scope
            for v in r.verbs:
                if r.non_resource_urls:
                    assert all((v, "", "", None, p) in used for p in r.non_resource_urls), r
                    continue
                for res in r.resources:
                    pairs += 1
                    assert (v, r.api_groups[0], res, r.scope_namespace, None) in used, (v, res, r)
    return len(uses), requests, pairs


def check_over_privilege(out: Path, result: ReportResult) -> tuple[int, int]:
    """``report nhi``'s over-privilege equals the generator's truth; (over-privileged, with grants)."""
    manifest = json.loads((out / ".ztaudit" / "manifest.json").read_text())
    truth = {(t["cluster"], t["identity"]): t for t in manifest["rbac"]}
    rows = {(r["cluster"], r["identity"]): r for r in result.section("identities").rows
            if r["kind"] == "service_account"}
    in_snap = {k for k, t in truth.items() if t["in_snapshot"]}
    assert {k for k, r in rows.items() if r["in_snapshot"] == "yes"} == in_snap
    assert {k for k, r in rows.items() if r["over_privileged"]} == {k for k, t in truth.items()
                                                                   if t["over_privileged"]}
    for k, t in truth.items():
        if t["over_privileged"] and t["extras"] != ["ClusterRole edit"]:
            assert sorted(rows[k]["unused_grants"]) == sorted(t["extras"]), k
        elif not t["over_privileged"]:
            assert rows[k]["unused_grants"] == [], k
    vis = result.section("visibility").rows[0]
    assert vis["with_grants"] == len(in_snap)
    assert vis["over_privileged"] == sum(1 for t in truth.values() if t["over_privileged"])
    assert vis["unused"] == sum(1 for t in truth.values() if not t["seen"])
    assert vis["unknown"] == sum(1 for t in truth.values() if t["seen"] and not t["in_snapshot"])
    sizing = result.section("rightsize").rows
    assert sizing and all(r["replayed_requests"] == r["allowed_by_suggestion"] for r in sizing)
    # printed unless every allowed request is evidence of an open finding (then nothing is left to build from)
    assert all(r["status"] != "withheld" or r["replayed_requests"] == 0 for r in sizing)
    return vis["over_privileged"], vis["with_grants"]


def check_rights(out: Path, lake: Path) -> tuple[float, float, int]:
    """Unapproved impersonation rights found = labelled; (precision, recall, labelled)."""
    labels = {(x["cluster"], x["actor"]) for x in _jsonl(out / ".ztaudit" / "labels.jsonl")
              if x["detector"] == DETECTOR and x["kind"] == "incident"}
    con = open_lake(lake)
    try:
        found = {(c, a) for c, a in con.execute("SELECT cluster, actor FROM findings WHERE detector = ?",
                                                 [DETECTOR]).fetchall()}
    finally:
        con.close()
    tp = labels & found
    precision = len(tp) / len(found) if found else 1.0
    recall = len(tp) / len(labels) if labels else 1.0
    assert found == labels, (sorted(found - labels), sorted(labels - found))
    return precision, recall, len(labels)


@pytest.mark.parametrize(("days", "events"), [(3, 20_000), (30, 60_000)], ids=["3_days", "month"])
def test_rightsizing_and_rights_on_generated_data(tmp_path: Path, days: int, events: int) -> None:
    out, lake, cfg = _generate(tmp_path, days, events)
    accounts, requests, pairs = check_replay(lake)
    assert accounts >= 15 and requests > 0
    result = _nhi(lake, cfg)
    over, with_grants = check_over_privilege(out, result)
    assert 0 < over < with_grants
    precision, recall, n = check_rights(out, lake)
    assert n >= 3
    print(f"\n{days} days, 2 clusters: {accounts} service accounts, {requests} allowed requests replayed, 100 % "
          f"allowed, {pairs} granted verb/resource pairs, 0 unused; over-privileged {over} of {with_grants} "
          f"(= truth); {DETECTOR}: {n} labelled, precision {precision:.2f}, recall {recall:.2f}; "
          f"verdict: {' / '.join(result.verdict)}")

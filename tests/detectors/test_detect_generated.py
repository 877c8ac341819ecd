"""A generated week across three clusters: every labelled incident of the impersonation and
revocation detectors is found for the right actor; background and near-misses yield nothing.

Generation (``ztaudit generate``, ≥500,000 audit events), ingest (the real one, per cluster as the
manifest says) and detect run once per session (about a minute on 2 cores). Precision and recall
are printed (``pytest -s`` shows them) and asserted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from support.lakes import ingest_generated

from ztaudit.core.config import Config
from ztaudit.detectors.run import RunResult, run_detectors

pytestmark = pytest.mark.slow

MINE = ("impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
        "impersonation.unapproved_impersonator", "revocation.not_enforced")
SLACK = timedelta(hours=1)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], RunResult, Config]:
    from ztaudit.cli.main import cli

    root = tmp_path_factory.mktemp("week")
    out, lake = root / "gen", root / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "7", "--events", "520000",
                                   "--clusters", "prod,staging,dev", "--seed", "3"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / ".ztaudit" / "manifest.json").read_text())
    cfg = ingest_generated(out, lake)
    assert manifest["counts"]["by_kind"]["k8s_audit"] >= 500_000
    assert len(manifest["options"]["clusters"]) >= 3
    labels = [json.loads(x) for x in (out / ".ztaudit" / "labels.jsonl").read_text().splitlines() if x.strip()]
    result = run_detectors(lake, cfg, detector_ids=list(MINE), build_tables=False)
    assert not result.errors, result.errors
    return labels, result, cfg


def _matches(f: dict[str, Any], lab: dict[str, Any]) -> bool:
    if f["detector"] != lab["detector"] or (f["actor"] or "").lower() != lab["actor"].lower():
        return False
    if f["cluster"] is not None and f["cluster"] != lab["cluster"]:
        return False
    return bool(f["first_seen"] <= _ts(lab["last_seen"]) + SLACK and f["last_seen"] >= _ts(lab["first_seen"]) - SLACK)


def test_precision_and_recall(week: tuple[list[dict[str, Any]], RunResult, Config]) -> None:
    labels, result, _ = week
    incidents = [lab for lab in labels if lab["detector"] in MINE and lab["kind"] == "incident"]
    near = [lab for lab in labels if lab["detector"] in MINE and lab["kind"] == "near_miss"]
    findings = [r for r in result.rows if r["detector"] in MINE]
    print()
    for det in MINE:
        inc = [lab for lab in incidents if lab["detector"] == det]
        fnd = [f for f in findings if f["detector"] == det]
        tp = [f for f in fnd if any(_matches(f, lab) for lab in inc)]
        found = [lab for lab in inc if any(_matches(f, lab) for f in fnd)]
        precision = len(tp) / len(fnd) if fnd else 1.0
        recall = len(found) / len(inc) if inc else 1.0
        print(f"{det:<40} incidents {len(inc):2}  findings {len(fnd):2}  precision {precision:.2f}  "
              f"recall {recall:.2f}")
    for det in MINE:
        assert len([lab for lab in incidents if lab["detector"] == det]) >= 3, det
    missed = [lab for lab in incidents if not any(_matches(f, lab) for f in findings)]
    assert not missed, f"missed incidents: {missed}"
    false = [f for f in findings if not any(_matches(f, lab) for lab in incidents)]
    assert not false, "findings without an incident: " + "; ".join(
        f"{f['detector']} {f['actor']} {f['summary'][:120]}" for f in false)
    # near-misses: nothing of the labelled detector for that actor outside its incidents
    for lab in near:
        hits = [f for f in findings if _matches(f, lab) and not any(_matches(f, i) for i in incidents)]
        assert not hits, (lab, hits)

"""Generated month: every labelled reach/credential incident is found, near-misses stay quiet.

``ztaudit generate`` writes ≥ 1,000,000 audit events over 30 days and 3 clusters with labelled
incidents (``labels.jsonl``: detector, actor, first_seen, last_seen, cluster, kind) for each of
this module's detectors, and near-misses (new team namespace, kubelet token rotation, scale-out,
weekly rhythm) that must not fire. Each cluster's files are ingested with ``--cluster`` and the
generator's own ``ztaudit.toml`` (per-cluster networks). Then every detector of this issue runs
once in batch over the month.

Matching: a finding is *true* when it names the labelled actor (and cluster) of an incident label
of the same detector (the generator also labels the second detector an incident legitimately
trips) and overlaps its span (±1 day: reach findings span their window). Anything else is a false
finding (near-miss hits included). Asserts recall 1.0 per detector and at most one false finding
per 1,000,000 events; prints precision/recall per detector.

A second check generates three days only (cold start: no identity has ``reach.min_history_windows``
earlier windows) and asserts the same with no false finding at all.

Run as a script for a report: ``python tests/detectors/test_reach_generated.py [OUT_DIR] [--events N] [--days D]``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

DETECTORS = ("reach.anomalous", "credential.stale", "credential.legacy_token", "credential.shared",
             "credential.off_cluster")
SLACK = timedelta(days=1)


@dataclass
class Label:
    detector: str
    actor: str
    cluster: str
    first_seen: datetime
    last_seen: datetime
    kind: str
    note: str


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def load_labels(path: Path) -> list[Label]:
    out = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        out.append(Label(d["detector"], d["actor"], d["cluster"], _ts(d["first_seen"]), _ts(d["last_seen"]),
                         d["kind"], d.get("note", "")))
    return out


def generate_and_ingest(out: Path, lake: Path, events: int, days: int = 30, seed: int = 11) -> dict[str, Any]:
    """Generate (unless already there) and ingest the data set; returns the manifest."""
    from ztaudit.core.config import load_config
    from ztaudit.pipeline.ingest import ingest_paths
    from ztaudit.synth.engine import GenerateOptions, generate

    if not (out / ".ztaudit" / "manifest.json").exists():
        generate(GenerateOptions(out=out, days=days, seed=seed, events=events))
    manifest: dict[str, Any] = json.loads((out / ".ztaudit" / "manifest.json").read_text())
    if not (lake / "k8s_audit").exists():
        cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})
        files = sorted((out / "k8s_audit").glob("*.jsonl"))
        clusters = sorted({f.name.rsplit("-", 3)[0] for f in files})
        for c in clusters:
            ingest_paths([f for f in files if f.name.rsplit("-", 3)[0] == c], lake, cluster=c, config=cfg,
                         source="k8s_audit")
    return manifest


def evaluate(out: Path, lake: Path) -> dict[str, Any]:
    """Run the detectors over the lake and score them against labels.jsonl."""
    from ztaudit.core.config import load_config
    from ztaudit.core.lake import open_lake
    from ztaudit.detectors import registry
    from ztaudit.detectors.base import DetectContext

    cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})
    con = open_lake(lake, must_exist=False)
    con.execute("SET enable_progress_bar = false")
    n_events = con.execute("SELECT count(*) FROM k8s_audit").fetchall()[0][0]
    n_requests = con.execute("SELECT count(*) FROM k8s_requests").fetchall()[0][0]
    labels = load_labels(out / ".ztaudit" / "labels.jsonl")
    result: dict[str, Any] = {"events": n_events, "requests": n_requests, "detectors": {}}
    for det in DETECTORS:
        t0 = time.perf_counter()
        findings = registry.get(det).run(DetectContext(con, cfg, None, None, str(lake)))
        took = time.perf_counter() - t0
        incidents = [lb for lb in labels if lb.detector == det and lb.kind == "incident"]
        found: set[int] = set()
        false: list[tuple[str, str]] = []
        for f in findings:
            hit = [i for i, lb in enumerate(incidents) if lb.actor == f.actor
                   and (f.cluster is None or lb.cluster == f.cluster)
                   and f.first_seen is not None and f.last_seen is not None
                   and f.first_seen <= lb.last_seen + SLACK and f.last_seen >= lb.first_seen - SLACK]
            if hit:
                found.update(hit)
            else:
                near = [lb.note for lb in labels if lb.detector == det and lb.kind == "near_miss"
                        and lb.actor == f.actor]
                false.append((f.summary[:300], f"near-miss: {near[0]}" if near else "background"))
        missed = [f"{lb.actor} @ {lb.cluster} {lb.first_seen:%Y-%m-%d %H:%M}: {lb.note}"
                  for i, lb in enumerate(incidents) if i not in found]
        tp = len(findings) - len(false)
        result["detectors"][det] = {
            "incidents": len(incidents), "found": len(found), "findings": len(findings), "true_findings": tp,
            "false_findings": len(false), "precision": tp / len(findings) if findings else 1.0,
            "recall": len(found) / len(incidents) if incidents else 1.0, "seconds": round(took, 1),
            "missed": missed, "false": false[:20],
        }
    return result


def print_report(res: dict[str, Any]) -> None:
    print(f"\n{res['events']:,} audit events ({res['requests']:,} requests after stage de-duplication)")
    print(f"{'detector':26} {'incidents':>9} {'found':>6} {'findings':>8} {'false':>6} {'precision':>9} "
          f"{'recall':>6} {'s':>6}")
    for det, r in res["detectors"].items():
        print(f"{det:26} {r['incidents']:>9} {r['found']:>6} {r['findings']:>8} {r['false_findings']:>6} "
              f"{r['precision']:>9.3f} {r['recall']:>6.3f} {r['seconds']:>6}")
        for m in r["missed"]:
            print(f"   MISSED {m}")
        for s, why in r["false"]:
            print(f"   FALSE ({why}) {s}")


@pytest.mark.slow
def test_generated_month(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("generated")
    out, lake = base / "data", base / "lake"
    manifest = generate_and_ingest(out, lake, events=1_100_000)
    res = evaluate(out, lake)
    print_report(res)
    assert res["events"] >= 1_000_000, manifest
    labels = load_labels(out / ".ztaudit" / "labels.jsonl")
    assert len({lb.cluster for lb in labels}) >= 3
    total_false = 0
    for det, r in res["detectors"].items():
        assert r["incidents"] >= 3, det
        assert r["recall"] == 1.0, (det, r["missed"])
        total_false += r["false_findings"]
    # ≤ 1 false finding per 1,000,000 events, over all five detectors together
    assert total_false <= max(1, res["events"] // 1_000_000), [r["false"] for r in res["detectors"].values()]


@pytest.mark.slow
def test_generated_cold_start_3_days(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``ztaudit generate --days 3``: the lake holds three days only, so every identity has at most two
    earlier windows (below ``reach.min_history_windows``) and the reach incidents fall on day 1 or 2. Every
    labelled reach and credential incident is found and nothing else (precision and recall printed)."""
    base = tmp_path_factory.mktemp("cold")
    out, lake = base / "data", base / "lake"
    generate_and_ingest(out, lake, events=300_000, days=3)
    res = evaluate(out, lake)
    print("\ncold start, 3 days:")
    print_report(res)
    for det, r in res["detectors"].items():
        assert r["incidents"] >= 1, det
        assert r["recall"] == 1.0, (det, r["missed"])
        assert r["false_findings"] == 0, (det, r["false"])


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else Path("/tmp/zt-gen")
    ev = int(sys.argv[sys.argv.index("--events") + 1]) if "--events" in sys.argv else 1_100_000
    n_days = int(sys.argv[sys.argv.index("--days") + 1]) if "--days" in sys.argv else 30
    t0 = time.perf_counter()
    generate_and_ingest(out_dir / "data", out_dir / "lake", events=ev, days=n_days)
    print(f"generated+ingested in {time.perf_counter() - t0:.0f} s")
    print_report(evaluate(out_dir / "data", out_dir / "lake"))

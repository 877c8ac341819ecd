"""reach table and reach.anomalous, driven by named cases (tests/cases/reach/anomalous; format and loader:
tests/support/cases.py).

``pos_*`` cases must produce exactly the expected findings and their explanation must name the
features that drove them (``features``) and read as expected (``text``); ``neg_*`` (near-misses:
new team namespace, scale-out, quiet weekends, a controller with huge legitimate reach) none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.cases import CASES, case_files, check_findings, expand, load_case, run_case, write_case, write_rows

from ztaudit.core.config import load_config, replace
from ztaudit.core.derived_tables import REACH
from ztaudit.core.lake import open_lake
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.reach import build_reach_table
from ztaudit.detectors.reach_scoring import compute_reach

CASE_FILES = case_files("reach")
START = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_reach_case(path: Path, lake: Path) -> None:
    case = load_case(path)
    findings = run_case(case, lake)
    check_findings(findings, case.findings)
    assert [f.actor for f in findings] == [e["actor"] for e in case.findings], [f.summary for f in findings]
    for f in findings:
        assert f.score is not None and f.score >= f.context["model_threshold"]
        for item in f.context["features"]:  # the explanation carries value, usual range and peers' range
            assert {"observed", "usual_min", "usual_max", "peers_max"} <= set(item)
        assert f.evidence and f.evidence[0].startswith("k8s_audit:")


def test_reach_table_schema_and_features(lake: Path) -> None:
    rows = expand({"actor": "system:serviceaccount:shop:app", "verb": "get", "resource": "secrets",
                   "namespace": "shop", "days": [0, 1], "repeat": 2}, START)
    rows += expand({"actor": "system:serviceaccount:shop:app", "verb": "create", "resource": "pods",
                    "subresource": "exec", "namespace": "blog", "days": [1], "response_code": 403,
                    "decision": "forbid"}, START)
    rows += expand({"actor": "system:serviceaccount:shop:app", "verb": "list", "resource": "secrets",
                    "namespace": None, "days": [1], "source_ip": "10.9.9.9"}, START)
    # people are one identity across clusters; service accounts and nodes are per cluster
    rows += expand({"actor": "ann@example.com", "days": [1], "cluster": "c2"}, START)
    rows += expand({"actor": "ann@example.com", "days": [1], "repeat": 2}, START)  # c1 is her main cluster
    rows += expand({"actor": "system:serviceaccount:shop:app", "days": [1], "cluster": "c2"}, START)
    write_rows(rows, lake)
    cfg = load_config(None, env={})
    table = build_reach_table(DetectContext(open_lake(lake, must_exist=False), cfg, None, None, str(lake)))
    assert table.schema == REACH
    day1s = [r for r in table.to_pylist() if r["window_start"] == START + timedelta(days=1)]
    assert sorted((r["actor"], r["cluster"]) for r in day1s) == [
        ("ann@example.com", "c1"), ("system:serviceaccount:shop:app", "c1"), ("system:serviceaccount:shop:app", "c2")]
    assert next(r for r in day1s if r["actor"] == "ann@example.com")["clusters"] == 2
    day1 = next(r for r in day1s if r["actor"] != "ann@example.com" and r["cluster"] == "c1")
    assert day1["requests"] == 4 and day1["namespaces"] == 2 and day1["clusters"] == 1
    assert day1["secret_reads"] == 3 and day1["secret_namespaces"] == 2 and day1["secret_cluster_lists"] == 1
    assert day1["foreign_secret_namespaces"] == 1  # the cluster-wide list is outside 'shop'
    assert day1["exec_count"] == 1 and day1["forbidden_requests"] == 1
    assert day1["forbidden_share"] == pytest.approx(0.25) and day1["write_share"] == pytest.approx(0.25)
    assert day1["new_namespaces"] == 1 and day1["new_namespace_list"] == ["blog"]
    assert day1["history_windows"] == 1 and day1["source_ips"] == 2 and day1["peer_group"] == "kind:service_account"
    assert day1["window_end"] - day1["window_start"] == timedelta(days=1)


def test_hour_window_and_lookback(lake: Path) -> None:
    """Hourly windows; a narrow [since, until) still sees the baseline through its lookback."""
    rows = expand({"actor": "eve@example.com", "resource": "pods", "namespaces": ["a"], "days": [0, 1, 2],
                   "hours": [9, 10]}, START)
    rows += expand({"actor": "eve@example.com", "resource": "pods", "namespaces": ["b", "c"], "days": [3],
                    "hours": [9]}, START)
    write_rows(rows, lake)
    cfg = replace(load_config(None, env={}), "reach", window="hour")
    since = START + timedelta(days=3, hours=9)
    df = compute_reach(open_lake(lake, must_exist=False), cfg, since, since + timedelta(hours=1))
    assert len(df) == 1
    r = df.iloc[0]
    assert r["history_windows"] == 6 and r["new_namespaces"] == 2 and r["hist_max_namespaces"] == 1


def test_streaming_window_matches_batch(lake: Path) -> None:
    """The detector judged on one day (streaming hook) finds the same as a wider batch run."""
    write_case(load_case(CASES / "reach" / "anomalous" / "pos_sa_lists_secrets_many_namespaces.jsonl"), lake)
    con = open_lake(lake, must_exist=False)
    cfg = load_config(None, env={})
    day = START + timedelta(days=18)
    one = registry.get("reach.anomalous").run(DetectContext(con, cfg, day, day + timedelta(hours=6), str(lake)))
    wide = registry.get("reach.anomalous").run(
        DetectContext(con, cfg, START + timedelta(days=15), START + timedelta(days=20), str(lake)))
    assert [f.finding_id for f in one] == [f.finding_id for f in wide] and len(one) == 1


def test_every_case_dir_has_positive_and_negative() -> None:
    names = [p.stem for p in CASE_FILES]
    assert sum(n.startswith("pos_") for n in names) >= 3 and sum(n.startswith("neg_") for n in names) >= 2

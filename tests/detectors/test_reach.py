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
        # the model's rank is needed unless a fixed rule carries the finding
        assert f.score is not None
        assert f.score >= f.context["model_threshold"] or f.context["rules"], f.summary
        assert f.context["confidence"] in ("high", "medium") and f.context["signals"], f.context
        assert f"confidence {f.context['confidence']}" in f.summary
        for item in f.context["features"]:  # the explanation carries value, usual range and peers' range
            assert {"observed", "usual_min", "usual_max", "peers_max", "population_max", "signals"} <= set(item)
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
    # cold start: one, two and three earlier days, with and without peers
    assert {"pos_cold_1day_rule_no_peers", "pos_cold_ci_secrets_2days_population",
            "pos_cold_3days_exec_with_peers", "neg_cold_controller_manager_namespace_deletion"} <= set(names)


def test_control_plane_accounts_are_known_by_their_token_issuer(lake: Path) -> None:
    """A kube-system service account is control plane only when a control-plane identity minted its tokens
    (kube-controller-manager --use-service-account-credentials); a workload SA of the same name is not."""
    case = load_case(CASES / "reach" / "anomalous" / "neg_cold_controller_manager_namespace_deletion.jsonl")
    write_case(case, lake)
    # a look-alike: same controller name in another namespace, and a kube-system SA whose token a person minted
    rows = expand({"actor": "system:serviceaccount:tools:namespace-controller", "days": [0]}, START)
    rows += expand({"actor": "system:serviceaccount:kube-system:helper", "days": [0]}, START)
    rows += expand({"actor": "realstack-admin", "actor_kind": "human", "verb": "create", "resource": "serviceaccounts",
                    "subresource": "token", "namespace": "kube-system", "name": "helper", "days": [0]}, START)
    write_rows(rows, lake, key="lookalikes")
    df = compute_reach(open_lake(lake, must_exist=False), load_config(None, env={}), None, None)
    groups = dict(zip(df["actor"], df["peer_group"], strict=True))
    assert groups["system:serviceaccount:kube-system:namespace-controller"] == "control-plane:c1"
    assert groups["system:serviceaccount:kube-system:generic-garbage-collector"] == "control-plane:c1"
    assert not groups["system:serviceaccount:tools:namespace-controller"].startswith("control-plane:")
    assert not groups["system:serviceaccount:kube-system:helper"].startswith("control-plane:")

"""credential.* detectors and the credentials inventory, driven by named cases (tests/cases/credentials).

Each case directory is a detector (stale, legacy_token, shared, off_cluster); each case file (format and
loader: tests/support/cases.py) lists events and the findings expected (actor, optional credential_id
and context subset); ``pos_*`` cases must produce exactly those findings, ``neg_*`` none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.cases import CASES, case_files, check_findings, load_case, row, run_case, write_case, write_rows

from ztaudit.core.config import load_config
from ztaudit.core.derived_tables import CREDENTIALS
from ztaudit.core.lake import open_lake
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.credentials import in_cluster, inventory

CASE_FILES = case_files("credentials")


@pytest.mark.parametrize("path", CASE_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in CASE_FILES])
def test_credential_case(path: Path, lake: Path) -> None:
    case = load_case(path)
    assert case.detector == f"credential.{path.parent.name}"
    check_findings(run_case(case, lake), case.findings)


def test_every_detector_has_positive_and_negative_cases() -> None:
    for d in ("stale", "legacy_token", "shared", "off_cluster"):
        names = [p.stem for p in (CASES / "credentials" / d).glob("*.jsonl")]
        assert any(n.startswith("pos_") for n in names) and any(n.startswith("neg_") for n in names), d


def test_rerun_is_stable(lake: Path) -> None:
    """Running a detector twice over the same data yields the same finding ids (detect replaces)."""
    write_case(load_case(CASES / "credentials" / "legacy_token" / "pos_legacy_two_days.jsonl"), lake)
    con = open_lake(lake, must_exist=False)
    cfg = load_config(None, env={})
    a = {f.finding_id for f in registry.get("credential.legacy_token").run(DetectContext(con, cfg))}
    b = {f.finding_id for f in registry.get("credential.legacy_token").run(DetectContext(con, cfg))}
    assert a == b and len(a) == 2


def test_inventory_keys_issue_time_and_fallbacks(lake: Path) -> None:
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    rows = [
        row(t, "system:node:n1", verb="create", resource="serviceaccounts", subresource="token", namespace="shop",
            name="api", issued_credential_id="JTI=j1", credential_id="X509SHA256=n1"),
        row(t.replace(minute=5), "system:serviceaccount:shop:api", credential_id="JTI=j1", pod_name="api-1"),
        row(t.replace(minute=6), "system:serviceaccount:shop:api", credential_id="JTI=j1", pod_name="api-1",
            source_ip="10.0.0.9", user_agent="other/2"),
        row(t, "dave@example.com"),  # OIDC user without a credential id
        row(t, "system:serviceaccount:old:sa"),  # pre-JTI bound token
        row(t, "system:anonymous", actor_kind="anonymous"),
        # impersonation: the credential is the impersonator's (schema §6), not the target's
        row(t, "erin@example.com", user_name="system:serviceaccount:pomerium:pomerium-authorize",
            impersonator="system:serviceaccount:pomerium:pomerium-authorize", credential_id="JTI=pom"),
    ]
    write_rows(rows, lake)
    inv = inventory(open_lake(lake, must_exist=False), None, None)
    assert inv.schema == CREDENTIALS
    by_key = {r["credential_key"]: r for r in inv.to_pylist()}
    assert set(by_key) == {"X509SHA256=n1", "JTI=j1", "USER=dave@example.com",
                           "TOKEN?=system:serviceaccount:old:sa", "JTI=pom"}
    j1 = by_key["JTI=j1"]
    assert j1["issued_at"] == t and j1["issued_by"] == "system:node:n1"
    assert j1["requests"] == 2 and j1["source_ips"] == ["10.0.0.5", "10.0.0.9"] and j1["pods"] == ["api-1"]
    assert by_key["USER=dave@example.com"]["key_kind"] == "fallback"
    assert by_key["JTI=pom"]["holder"] == "system:serviceaccount:pomerium:pomerium-authorize"
    assert by_key["JTI=pom"]["holder_kind"] == "service_account"


def test_in_cluster_networks() -> None:
    cfg = load_config(None, env={}, overrides={"credentials": {"cluster_networks": {"*": ["10.0.0.0/8"],
                                                                                   "c2": ["fd00::/8"]}}})
    assert in_cluster(cfg, "c1", "10.2.3.4") is True
    assert in_cluster(cfg, "c1", "192.168.1.1") is False
    assert in_cluster(cfg, "c2", "10.2.3.4") is False
    assert in_cluster(cfg, "c2", "fd00::1") is True
    assert in_cluster(cfg, "c1", "not-an-ip") is None and in_cluster(cfg, "c1", None) is None


@pytest.mark.parametrize("detector", ["credential.shared", "credential.off_cluster"])
def test_evidence_is_the_first_uses_by_time_then_id(lake: Path, detector: str) -> None:
    """Capped evidence is chosen by (time, reference), never by DuckDB's thread scheduling."""
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    rows = []
    for minute in (0, 5, 10):  # three 5-minute buckets of credential.shared
        for place in ("10.1.2.3", "203.0.113.7", "198.51.100.9", "192.0.2.4"):
            for i in range(12):  # pairs of uses at the same time, ids not in insertion order
                rows.append(row(t + timedelta(minutes=minute, seconds=i // 2), "system:serviceaccount:shop:api",
                                credential_id="JTI=x", pod_name="api-1", source_ip=place,
                                audit_id=f"{place}-{minute:02}-{11 - i:02}"))
    write_rows(rows, lake)
    when = {f"k8s_audit:c1/{r['audit_id']}": r["request_received_at"] for r in rows}
    con = open_lake(lake, must_exist=False)
    runs = []
    for threads in (1, 4, 1):
        con.execute(f"SET threads = {threads}")
        (finding,) = registry.get(detector).run(DetectContext(con, load_config(None, env={})))
        runs.append(finding.evidence)
    evidence = runs[0]
    assert runs == [evidence] * 3
    assert len(evidence) == 20 and len(set(evidence)) == 20
    assert list(evidence) == sorted(evidence, key=lambda ref: (when[ref], ref))


def test_evidence_keeps_the_audit_id_without_a_cluster_name(lake: Path) -> None:
    """Plain audit files ingested without --cluster (NULL cluster, the default): every credential.*
    finding still references its requests, as ``k8s_audit:None/<audit id>`` (detectors/base.py
    audit_ref), and no summary names the cluster ``None``."""
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    sa = "system:serviceaccount:shop:api"
    rows = [
        # credential.stale: max age (JTI used 3 days after first use), dormancy (fallback key), annotation
        row(t, sa, credential_id="JTI=old", pod_name="api-1", audit_id="stale-0"),
        row(t + timedelta(days=3), sa, credential_id="JTI=old", pod_name="api-1", audit_id="stale-1"),
        row(t - timedelta(days=40), "system:serviceaccount:ops:old", audit_id="dormant-0"),
        row(t + timedelta(days=3), "system:serviceaccount:ops:old", audit_id="dormant-1"),
        row(t, "system:serviceaccount:mon:agent", credential_id="JTI=warn", audit_id="annot-0",
            annotations={"authentication.k8s.io/stale-token": "subject: x, seconds after warning threshold: 9"}),
        # credential.legacy_token, credential.shared and credential.off_cluster
        row(t, "system:serviceaccount:ci:old", credential_id="SECRET=ci/old-token", audit_id="legacy-0"),
        row(t, sa, credential_id="JTI=two", pod_name="api-2", source_ip="10.1.2.3", audit_id="shared-0"),
        row(t + timedelta(seconds=30), sa, credential_id="JTI=two", pod_name="api-2", source_ip="203.0.113.7",
            audit_id="shared-1"),
    ]
    for r in rows:
        r["cluster"] = None
    write_rows(rows, lake)
    refs = {f"k8s_audit:None/{r['audit_id']}" for r in rows}
    con = open_lake(lake, must_exist=False)
    for detector in ("credential.stale", "credential.legacy_token", "credential.shared", "credential.off_cluster"):
        findings = registry.get(detector).run(DetectContext(con, load_config(None, env={})))
        assert findings, detector
        for f in findings:
            assert f.evidence and set(f.evidence) <= refs, (detector, f.evidence)
            assert f.cluster is None and " None " not in f.summary, f.summary
    (off,) = registry.get("credential.off_cluster").run(DetectContext(con, load_config(None, env={})))
    assert "to (unnamed cluster; ingest with --cluster) from outside" in off.summary
    reasons = {f.context["reason"]: f.evidence
               for f in registry.get("credential.stale").run(DetectContext(con, load_config(None, env={})))}
    assert reasons["dormant"] == ("k8s_audit:None/dormant-0", "k8s_audit:None/dormant-1")

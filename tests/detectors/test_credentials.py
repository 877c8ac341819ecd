"""credential.* detectors and the credentials inventory, driven by named cases (tests/cases/credentials).

Each case directory is a detector (stale, legacy_token, shared, off_cluster); each JSON file lists
events and the findings expected (``expect``: actor, optional credential_id and context subset);
``pos_*`` cases must produce exactly those findings, ``neg_*`` none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cases.reach.rows import case_config, case_window, load_case, row, write_case, write_rows

from ztaudit.core.config import load_config
from ztaudit.core.lake import open_lake
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.credentials import CREDENTIALS, credentials_report, in_cluster, inventory

CASES = Path(__file__).parent.parent / "cases" / "credentials"
CASE_FILES = sorted(CASES.glob("*/*.json"))


def _matches(finding: Any, exp: dict[str, Any]) -> bool:
    if finding.actor != exp["actor"]:
        return False
    if "credential_id" in exp and finding.credential_id != exp["credential_id"]:
        return False
    return all(str(finding.context.get(k)) == str(v) for k, v in exp.get("context", {}).items())


@pytest.mark.parametrize("path", CASE_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in CASE_FILES])
def test_credential_case(path: Path, lake: Path) -> None:
    case = load_case(path)
    write_case(case, lake)
    since, until = case_window(case)
    detector = registry.get(f"credential.{path.parent.name}")
    con = open_lake(lake, must_exist=False)
    findings = detector.run(DetectContext(con, case_config(case), since, until, str(lake)))
    expected = case["expect"]
    assert len(findings) == len(expected), [f.summary for f in findings]
    for exp in expected:
        assert any(_matches(f, exp) for f in findings), (exp, [(f.actor, f.credential_id, f.context)
                                                              for f in findings])
    assert len({f.finding_id for f in findings}) == len(findings), "finding ids must be unique"
    for f in findings:
        assert f.summary and f.first_seen is not None


def test_every_detector_has_positive_and_negative_cases() -> None:
    for d in ("stale", "legacy_token", "shared", "off_cluster"):
        names = [p.stem for p in (CASES / d).glob("*.json")]
        assert any(n.startswith("pos_") for n in names) and any(n.startswith("neg_") for n in names), d


def test_rerun_is_stable(lake: Path) -> None:
    """Running a detector twice over the same data yields the same finding ids (detect replaces)."""
    write_case(load_case(CASES / "legacy_token" / "pos_legacy_two_days.json"), lake)
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
    rep = credentials_report(open_lake(lake, must_exist=False), load_config(None, env={}), None, None)
    assert rep.num_rows == 5 and "age_hours" in rep.column_names


def test_in_cluster_networks() -> None:
    cfg = load_config(None, env={}, overrides={"credentials": {"cluster_networks": {"*": ["10.0.0.0/8"],
                                                                                   "c2": ["fd00::/8"]}}})
    assert in_cluster(cfg, "c1", "10.2.3.4") is True
    assert in_cluster(cfg, "c1", "192.168.1.1") is False
    assert in_cluster(cfg, "c2", "10.2.3.4") is False
    assert in_cluster(cfg, "c2", "fd00::1") is True
    assert in_cluster(cfg, "c1", "not-an-ip") is None and in_cluster(cfg, "c1", None) is None

"""revocation.not_enforced and revocation_status: named cases with known answers.

Cases under tests/cases/revocation/not_enforced/ give the expected findings and, per revocation, the
expected status, latency and timestamps. The last tests feed raw Pomerium lines (second precision,
local UTC offset) and a revocation list through the real ingest and check the latency to the
tenth of a second.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.cases import case_files, check_findings, detect, load_case, run_case, write_case

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.revocation_status import STATUS_COLUMNS, revocation_status

CASES = case_files("revocation")


def status_rows(lake: Path, cfg: Config) -> list[dict[str, Any]]:
    con = open_lake(lake, must_exist=False)
    try:
        table = revocation_status(con, cfg)
    finally:
        con.close()
    assert table.column_names == STATUS_COLUMNS
    return list(table.to_pylist())


def check_status(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(rows) == len(expected), rows
    for exp in expected:
        row = next((r for r in rows if r["subject"] == exp["subject"]
                    and r["event_type"] == exp.get("event_type", r["event_type"])), None)
        assert row is not None, f"no revocation of {exp['subject']}: {rows}"
        for key, want in exp.items():
            got = row[key]
            if isinstance(got, datetime):
                assert got == datetime.fromisoformat(want.replace("Z", "+00:00")), (key, got)
            elif isinstance(got, float):
                assert got == pytest.approx(want, abs=1e-3), (key, got)
            else:
                assert got == want, (key, got)


def test_cases_have_both_kinds() -> None:
    kinds = {p.name.split("_")[0] for p in CASES}
    assert kinds == {"pos", "neg"} and len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_case(case: Path, lake: Path) -> None:
    c = load_case(case)
    check_findings(run_case(c, lake), c.findings)
    check_status(status_rows(lake, c.config), c.status)


def test_grace_period_is_configurable(lake: Path) -> None:
    case = load_case(next(p for p in CASES if p.stem == "neg_within_grace_then_denied"))
    write_case(case, lake)
    from ztaudit.core.config import replace

    strict = replace(case.config, "revocation", grace_seconds=60)
    found = detect(lake, "revocation.not_enforced", strict)
    assert [f.actor for f in found] == ["carol@example.com"]
    assert "more than 60s later" in found[0].summary


# ---- raw lines through the real ingest: local offsets, second precision, skewed API clock ----------

def _pomerium(time: str, rid: str, email: str, allow: bool) -> str:
    why = {"allow-why-true": ["email-ok"]} if allow else {"allow-why-false": ["email-unauthorized"]}
    return json.dumps({"level": "info", "service": "authorize", "request-id": rid, "check-request-id": rid,
                       "method": "GET", "path": "/api/v1/namespaces/web/pods", "host": "k8s.example.com",
                       "ip": "198.51.100.7", "session-id": "sess-g", "user": "00u8gina", "email": email,
                       "allow": allow, **why, "deny": False, "deny-why-false": [], "time": time,
                       "message": "authorize check"})


def _audit(audit_id: str, received: str, user: str = "gina@example.com") -> str:
    sa = "system:serviceaccount:pomerium:pomerium-authorize"
    return json.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
                       "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/web/pods", "verb": "list",
                       "user": {"username": sa, "groups": ["system:serviceaccounts"]},
                       "impersonatedUser": {"username": user, "groups": ["devs"]},
                       "sourceIPs": ["10.0.0.5"], "objectRef": {"resource": "pods", "namespace": "web"},
                       "responseStatus": {"code": 200}, "requestReceivedTimestamp": received,
                       "stageTimestamp": received})


def _ingest(tmp: Path, lake: Path, proxy: list[str], audit: list[str]) -> None:
    from ztaudit.pipeline import ingest
    (tmp / "rev.jsonl").write_text(json.dumps({
        "kind": "revocation", "revoked_at": "2026-11-20T10:00:00.250Z", "subject": "gina@example.com",
        "subject_id": "00u8gina", "scope": "identity", "actor": "hr-offboarding"}) + "\n")
    (tmp / "proxy.jsonl").write_text("\n".join(proxy) + "\n")
    (tmp / "audit.jsonl").write_text("\n".join(audit) + "\n")
    ingest.ingest_paths([tmp / "rev.jsonl"], lake, source="idp_event")
    ingest.ingest_paths([tmp / "proxy.jsonl"], lake, source="proxy_decision", cluster="prod")
    ingest.ingest_paths([tmp / "audit.jsonl"], lake, source="k8s_audit", cluster="prod")


def test_latency_local_offset_second_precision(tmp_path: Path, lake: Path) -> None:
    # proxy writes +02:00 local time in whole seconds; the API server clock runs 1.5 s ahead
    _ingest(tmp_path, lake,
            [_pomerium("2026-11-20T11:59:50+02:00", "g1", "gina@example.com", True),
             _pomerium("2026-11-20T12:00:31+02:00", "g2", "gina@example.com", False),
             _pomerium("2026-11-20T12:20:00+02:00", "g4", "gina@example.com", False)],
            [_audit("ga-1", "2026-11-20T09:59:51.600000Z"),
             _audit("ga-later", "2026-11-20T10:20:00Z", "zoe@example.com")])
    (row,) = status_rows(lake, Config())
    assert row["status"] == "enforced", row["reason"]
    assert row["denial_latency_seconds"] == pytest.approx(30.75)
    assert row["attribution"] == "exact"
    assert row["first_denied_at"] == datetime.fromisoformat("2026-11-20T10:00:31+00:00")
    assert row["last_allowed_before"] == datetime.fromisoformat("2026-11-20T09:59:51.600+00:00")
    assert "first attributable denial 31 s after it" in row["reason"]
    assert detect(lake, "revocation.not_enforced", Config()) == []


def test_pending_until_the_grace_period_has_passed(tmp_path: Path, lake: Path) -> None:
    # the last line of the lake is 31 s after the revocation: nothing can be said of the grace period yet
    _ingest(tmp_path, lake,
            [_pomerium("2026-11-20T11:59:50+02:00", "g1", "gina@example.com", True),
             _pomerium("2026-11-20T12:00:31+02:00", "g2", "gina@example.com", False)], [])
    (row,) = status_rows(lake, Config())
    assert row["status"] == "pending"
    assert "grace period ends at 2026-11-20 10:15:00Z" in row["reason"]
    # the instant named is the end of the logs read (docs/revocation.md: the earlier plane's latest
    # event, capped at --until), not called "the latest event in the lake"
    assert "after the end of the logs read (2026-11-20 10:00:31Z)" in row["reason"]
    assert row["denial_latency_seconds"] == pytest.approx(30.75)


def test_not_enforced_local_offset(tmp_path: Path, lake: Path) -> None:
    _ingest(tmp_path, lake,
            [_pomerium("2026-11-20T12:16:00+02:00", "g3", "GINA@example.com", True)],
            [_audit("ga-3", "2026-11-20T10:16:01.500000Z")])
    (row,) = status_rows(lake, Config())
    assert row["status"] == "not_enforced"
    assert (row["allowed_after_grace_proxy"], row["allowed_after_grace_api"]) == (1, 1)
    assert row["exposure_seconds"] == pytest.approx(961.25)
    (finding,) = detect(lake, "revocation.not_enforced", Config())
    assert finding.actor == "gina@example.com"
    assert "k8s_audit:prod/ga-3" in finding.evidence

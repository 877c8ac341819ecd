"""Issue 11 items 6, 9, 10: normalizers under out-of-contract and foreign input.

Every input is built here. Each test runs both paths of ``process()`` (columnar fast path at
threshold 0, per-record path at a threshold above any batch) and asserts they agree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import BatchResult, LineOrigins, RawBatch

CTX = NormalizeContext(cluster="c", ingested_at=datetime(2026, 1, 2, tzinfo=UTC))
BOTH = pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])

EVENT: dict[str, Any] = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "a-1",
    "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
    "user": {"username": "alice@example.com", "groups": ["dev"]}, "sourceIPs": ["10.0.0.1"],
    "responseStatus": {"code": 200}, "requestReceivedTimestamp": "2026-01-01T10:00:00.000001Z",
    "stageTimestamp": "2026-01-01T10:00:00.000002Z",
}


def ev(**kw: Any) -> bytes:
    return json.dumps({**EVENT, **kw}).encode()


def run(records: list[bytes | str], fast_min: int, source: str | None = None) -> BatchResult:
    raw = [r.encode() if isinstance(r, str) else r for r in records]
    res = process(RawBatch(raw, LineOrigins("h"), source=source), CTX, fast_path_min_records=fast_min)
    assert res.balanced(), (res.records, res.expanded, res.written, res.quarantined, res.ignored)
    return res


def rows(res: BatchResult, table: str) -> list[dict[str, Any]]:
    return res.tables[table].to_pylist() if table in res.tables else []


def rejects(res: BatchResult) -> list[tuple[str, Reason, str]]:
    return [(r.origin, r.reason, r.detail) for r in res.rejected]


# --- item 9: wrong types, out-of-range times, duplicate keys -----------------------------------


@BOTH
def test_wrong_typed_fields_are_quarantined_naming_the_field(fast_min: int) -> None:
    res = run([ev(user="alice"), ev(responseStatus={"code": 200.7}), ev(user={"username": {"a": 1}}),
               ev(impersonatedUser="bob"), ev(sourceIPs="10.0.0.1"), ev()], fast_min)
    assert [r["origin"] for r in rows(res, "k8s_audit")] == ["file:h:6"]
    assert [(o, r) for o, r, _ in rejects(res)] == [(f"file:h:{i}", Reason.WRONG_TYPE) for i in range(1, 6)]
    details = [d for _, _, d in rejects(res)]
    for field, detail in zip(["user", "responseStatus.code", "user.username", "impersonatedUser", "sourceIPs"],
                             details, strict=True):
        assert f"field {field} " in detail


@BOTH
def test_event_times_out_of_range_are_bad_timestamps(fast_min: int) -> None:
    res = run([ev(requestReceivedTimestamp="0000-01-01T00:00:00Z", stageTimestamp="0000-01-01T00:00:00Z"),
               ev(requestReceivedTimestamp="1999-12-31T23:59:59Z"),
               ev(stageTimestamp="2026-01-04T00:00:00Z"),  # two days after ingestion
               ev(requestReceivedTimestamp="10000-01-01T00:00:00Z")], fast_min)
    assert "k8s_audit" not in res.tables
    assert [r for _, r, _ in rejects(res)] == [Reason.BAD_TIMESTAMP] * 4


def test_out_of_range_times_in_per_record_sources() -> None:
    lines = [json.dumps({"kind": "revocation", "revoked_at": "1970-01-01T00:00:00Z", "subject": "a"}),
             json.dumps({"service": "authorize", "message": "authorize check", "time": "2099-01-01T00:00:00Z",
                         "allow": True})]
    res = run(lines, 10**9)
    assert [r for _, r, _ in rejects(res)] == [Reason.BAD_TIMESTAMP] * 2


@BOTH
def test_duplicate_keys_read_the_same_on_both_paths(fast_min: int) -> None:
    dup = ('{"kind":"Event","auditID":"d-1","stage":"ResponseComplete","verb":"get","requestURI":"/api",'
           '"user":{"username":"alice"},"user":{"username":"mallory"},'
           '"stageTimestamp":"2026-01-01T00:00:00Z","requestReceivedTimestamp":"2026-01-01T00:00:00Z"}')
    res = run([dup, ev()], fast_min)
    # One parser (DuckDB's) reads the Event on both paths; the per-record path used to read the
    # last value (orjson) and the fast path the first, so the actor depended on the batch size.
    assert [r["actor"] for r in rows(res, "k8s_audit")] == ["alice", "alice@example.com"]


def test_duplicate_keys_fast_and_per_record_rows_identical() -> None:
    dup = ev()[:-1] + b', "user": {"username": "mallory"}}'
    a, b = run([dup, ev()], 0), run([dup, ev()], 10**9)
    drop = {"ingested_at"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(a, "k8s_audit")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows(b, "k8s_audit")]
    assert rejects(a) == rejects(b)


# --- item 6: Google Workspace events as an object ------------------------------------------------


def _google(events: Any) -> str:
    return json.dumps({"kind": "admin#reports#activity", "id": {"time": "2025-12-30T10:00:00.000Z",
                                                                "applicationName": "admin"},
                       "actor": {"email": "admin@example.com"}, "events": events})


def test_google_admin_events_object_is_a_revocation() -> None:
    suspend = {"type": "USER_SETTINGS", "name": "SUSPEND_USER",
               "parameters": [{"name": "USER_EMAIL", "value": "jdoe@example.net"}]}
    res = run([_google(suspend), _google([suspend])], 10**9)
    got = [(r["event_type"], r["is_revocation"], r["subject_login"]) for r in rows(res, "idp_event")]
    assert got == [("SUSPEND_USER", True, "jdoe@example.net")] * 2


def test_google_activity_without_event_name_is_quarantined() -> None:
    res = run([_google(None), _google({"type": "X"})], 10**9)
    assert [r for _, r, _ in rejects(res)] == [Reason.MISSING_FIELD] * 2


# --- item 10: ignored records, Teleport, oauth2-proxy, GKE ---------------------------------------


def test_foreign_records_are_ignored_with_source_and_reason() -> None:
    gcp_other = {"logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity", "insertId": "x",
                 "protoPayload": {"serviceName": "compute.googleapis.com", "methodName": "v1.compute.get"},
                 "timestamp": "2026-01-01T00:00:00Z"}
    teleport_other = {"event": "session.start", "code": "T2000I", "time": "2026-01-01T00:00:00Z", "uid": "u"}
    teleport_ssh = {"event": "exec", "code": "T3002I", "proto": "ssh", "time": "2026-01-01T00:00:00Z",
                    "uid": "u2", "command": "ls"}
    keycloak_server = "2026-01-01 10:00:00,123 INFO  [io.quarkus] (main) Keycloak 26.0.0 started in 5.1s"
    keycloak_ecs = {"@timestamp": "2026-01-01T10:00:00Z", "log.logger": "org.keycloak.services",
                    "message": "KC-SERVICES0050: Initializing master realm"}
    oauth2_std = "[2026/01/01 10:00:00] [oauthproxy.go:123] OAuthProxy configured for Keycloak"
    aks_other = {"records": [{"category": "kube-apiserver", "resourceId": "/x/managedClusters/aks1",
                              "properties": {"log": "I0101 started"}}]}
    res = run([json.dumps(gcp_other), json.dumps(teleport_other), json.dumps(teleport_ssh), keycloak_server,
               json.dumps(keycloak_ecs), oauth2_std, json.dumps([gcp_other]), json.dumps(aks_other)], 10**9)
    assert res.rejected == [] and res.written == 0
    assert dict(res.ignored) == {
        ("k8s_audit", "not_kubernetes"): 2,
        ("proxy_decision", "unused_event_type"): 1,
        ("proxy_decision", "not_kubernetes"): 1,
        ("proxy_decision", "not_an_event"): 1,
        ("idp_event", "not_an_event"): 2,
        ("k8s_audit", "not_an_event"): 1,
    }


@BOTH
def test_empty_envelopes_are_accounted(fast_min: int) -> None:
    res = run(["[]", '{"kind":"EventList","items":[]}', ev()], fast_min)
    assert res.written == 1 and res.ignored_total == 2


def test_teleport_kube_exec_is_a_proxy_decision() -> None:
    exec_ev = {"event": "exec", "code": "T3002I", "proto": "kube", "time": "2026-01-01T10:00:00.000Z",
               "uid": "e-1", "sid": "s-1", "user": "alice@example.com", "kubernetes_cluster": "prod",
               "kubernetes_pod_namespace": "payments", "kubernetes_pod_name": "api-0",
               "addr.remote": "198.51.100.7:51544", "command": "sh -c 'mysql -pSECRET'"}
    res = run([json.dumps(exec_ev)], 10**9)
    (row,) = rows(res, "proxy_decision")
    assert row["path"] == "/api/v1/namespaces/payments/pods/api-0/exec"
    assert row["client_ip"] == "198.51.100.7" and row["is_allowed"] is True and row["cluster"] == "prod"
    assert "SECRET" not in json.dumps(row, default=str)


def test_teleport_lock_without_target_is_quarantined() -> None:
    lock = {"event": "lock.created", "code": "TLK00I", "time": "2026-01-01T10:00:00Z", "name": "l-1",
            "uid": "u", "updated_by": "secops@example.com"}
    res = run([json.dumps(lock), json.dumps({**lock, "target": {}}),
               json.dumps({**lock, "target": {"user": "erin"}})], 10**9)
    assert [r for _, r, _ in rejects(res)] == [Reason.MISSING_FIELD] * 2
    assert [(r["subject_login"], r["is_revocation"]) for r in rows(res, "idp_event")] == [("erin", True)]


def test_oauth2_proxy_lines_before_v7_and_client_port() -> None:
    v7 = ('10.0.0.5:43210 - 0d1e-rid - alice@example.com [2026/01/01 10:00:00] kube.example.com GET '
          'upstream "/api/v1/pods" HTTP/1.1 "kubectl" 200 12 0.003')
    v6 = ('[2001:db8::5]:4321 - bob@example.com [2026/01/01 10:00:01] kube.example.com GET upstream '
          '"/api/v1/pods" HTTP/1.1 "kubectl" 200 12 0.003')
    res = run([v7, v6], 10**9)
    got = [(r["request_id"], r["user_id"], r["client_ip"]) for r in rows(res, "proxy_decision")]
    assert got == [("0d1e-rid", "alice@example.com", "10.0.0.5"), (None, "bob@example.com", "2001:db8::5")]


def test_gke_request_uri_keeps_the_path_after_the_subresource() -> None:
    entry = {"insertId": "g-1", "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
             "timestamp": "2026-01-01T10:00:00Z", "operation": {"last": True},
             "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke1"}},
             "protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s.core.v1.nodes.proxy.get",
                              "resourceName": "core/v1/nodes/node-1/proxy/metrics/cadvisor",
                              "authenticationInfo": {"principalEmail": "alice@example.com"}}}
    res = run([json.dumps(entry)], 10**9)
    (row,) = rows(res, "k8s_audit")
    assert row["request_uri"] == "/api/v1/nodes/node-1/proxy/metrics/cadvisor"
    assert row["subresource"] == "proxy" and row["name"] == "node-1"

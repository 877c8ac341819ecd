"""Record classification (decode.values) and Kubernetes envelopes (decode.k8s_envelopes), one shape each."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.decode.k8s_envelopes import (
    GKE_STATUS_ANNOTATION,
    REJECT_KEY,
    parse_gke_resource_name,
    unwrap_k8s,
)
from ztaudit.pipeline.decode.values import decode_record
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch

CTX = NormalizeContext(cluster="default-cluster")


def ev(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "a1", "stage": "ResponseComplete",
                         "verb": "get", "user": {"username": "bob"}, "requestURI": "/api/v1/pods",
                         "requestReceivedTimestamp": "2026-01-01T00:00:00.000001Z",
                         "stageTimestamp": "2026-01-01T00:00:00.000002Z"}
    e.update(over)
    return e


# --- decode_record -------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"", Reason.EMPTY),
    (b"  \t ", Reason.EMPTY),
    (b"\xff\xfe{}", Reason.NOT_UTF8),
    (b'{"a": 1', Reason.TRUNCATED),
    (b'{"a": "abc', Reason.TRUNCATED),
    (b'[{"a": 1}, ', Reason.TRUNCATED),
    (b'{"a": }', Reason.INVALID_JSON),
    (b'{"a":1}}', Reason.INVALID_JSON),
    (b'{"message":"{\\"auditID\\":\\"x\\"} [Truncated...]"', Reason.TRUNCATED),
])
def test_decode_failures(raw: bytes, reason: Reason) -> None:
    d = decode_record(raw, 1024)
    assert (d.reason or d.json_error) == reason


def test_oversized_is_checked_first_and_never_parsed() -> None:
    d = decode_record(b'{"a": "' + b"x" * 2000 + b'"}', 1024)
    assert d.reason == Reason.OVERSIZED and d.value is None and "2009 bytes" in d.detail
    assert decode_record(b"\xff" * 2000, 1024).reason == Reason.OVERSIZED


def test_decode_json_and_text() -> None:
    assert decode_record(b' {"a": [1, 2]}\r', 1024).value == {"a": [1, 2]}
    d = decode_record(b"2026-01-01 12:00:00 INFO something", 1024)
    assert not d.is_json and d.text == "2026-01-01 12:00:00 INFO something"
    assert decode_record(b"null", 1024).is_json


# --- envelopes -----------------------------------------------------------------------------------

def test_plain_event_and_v1beta1() -> None:
    assert [u.form for u in unwrap_k8s(ev()) or []] == ["raw"]
    old = ev()
    del old["kind"], old["apiVersion"]
    assert unwrap_k8s(old) is not None
    assert unwrap_k8s({"kind": 0}) is None
    assert unwrap_k8s({"auditID": "x"}) is None  # an auditID alone is not enough
    assert unwrap_k8s([ev()]) is None  # arrays are split by process(), not here


def test_eventlist_items_and_bad_item() -> None:
    out = unwrap_k8s({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
                      "items": [ev(auditID="1"), ev(auditID="2"), "junk"]})
    assert out is not None and [u.form for u in out] == ["eventlist"] * 3
    assert out[2].record[REJECT_KEY] == "unknown_shape"
    assert unwrap_k8s({"kind": "EventList", "items": []}) == []


@pytest.mark.parametrize(("name", "ref"), [
    ("core/v1/namespaces/kube-system/configmaps/cluster-kubestore",
     {"apiGroup": "", "apiVersion": "v1", "namespace": "kube-system", "resource": "configmaps",
      "name": "cluster-kubestore"}),
    ("core/v1/namespaces/ns/pods/p1/status",
     {"apiGroup": "", "apiVersion": "v1", "namespace": "ns", "resource": "pods", "name": "p1",
      "subresource": "status"}),
    ("apps/v1/namespaces/ns/deployments",
     {"apiGroup": "apps", "apiVersion": "v1", "namespace": "ns", "resource": "deployments"}),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings/admin",
     {"apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1", "resource": "clusterrolebindings", "name": "admin"}),
    ("core/v1/namespaces/foo", {"apiGroup": "", "apiVersion": "v1", "resource": "namespaces", "name": "foo"}),
    ("readyz", None),
    ("HNAP1", None),
])
def test_gke_resource_name(name: str, ref: dict[str, str] | None) -> None:
    assert parse_gke_resource_name(name) == ref


def gke(code: Any = 0, **proto: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog", "serviceName": "k8s.io",
        "authenticationInfo": {"principalEmail": "alice@example.com"},
        "methodName": "io.k8s.core.v1.pods.exec.create",
        "resourceName": "core/v1/namespaces/prod/pods/web-1/exec",
        "requestMetadata": {"callerIp": "203.0.113.9", "callerSuppliedUserAgent": "kubectl/v1.30.0"},
        "status": {"code": code} if code is not None else {},
    }
    p.update(proto)
    return {"insertId": "ins-1", "protoPayload": p, "labels": {"authorization.k8s.io/decision": "allow"},
            "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-prod", "location": "eu"}},
            "timestamp": "2026-01-01T00:00:00.123456Z", "operation": {"id": "ins-1", "first": True, "last": True}}


@pytest.mark.parametrize(("grpc", "http"), [(0, 200), (None, 200), (7, 403), (5, 404), (16, 401), (3, 500), (13, 500)])
def test_gke_status_mapping(grpc: Any, http: int) -> None:
    out = unwrap_k8s(gke(grpc))
    assert out is not None
    e = out[0].record
    assert e["responseStatus"]["code"] == http
    assert e["annotations"][GKE_STATUS_ANNOTATION] == str(grpc if grpc is not None else 0)


def test_gke_rebuilt_event_through_process() -> None:
    res = process(RawBatch([orjson.dumps(gke(0))], LineOrigins("g")), CTX)
    assert not res.rejected
    r = res.tables["k8s_audit"].to_pylist()[0]
    assert (r["audit_id"], r["cluster"], r["user_name"], r["verb"]) == (
        "ins-1", "gke-prod", "alice@example.com", "create")
    assert (r["resource"], r["subresource"], r["namespace"], r["name"]) == ("pods", "exec", "prod", "web-1")
    assert r["source_ip"] == "203.0.113.9" and r["user_agent"] == "kubectl/v1.30.0"
    assert r["request_uri"] == "/api/v1/namespaces/prod/pods/web-1/exec" and r["decision"] == "allow"
    assert r["credential_kind"] == "none"  # GKE carries no user.extra, hence no credential-id


def test_gke_principal_subject_fallback_and_non_k8s_service() -> None:
    out = unwrap_k8s(gke(0, authenticationInfo={"principalSubject": "serviceAccount:x@p.iam"}))
    assert out is not None and out[0].record["user"]["username"] == "serviceAccount:x@p.iam"
    other = gke(0)
    other["protoPayload"]["serviceName"] = "compute.googleapis.com"
    assert unwrap_k8s(other) is None


def aks(log: Any, category: str = "kube-audit") -> dict[str, Any]:
    return {"category": category, "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
            "properties": {"log": log, "pod": "kube-apiserver-abc", "stream": "stdout"},
            "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
                          "MANAGEDCLUSTERS/AKS-1",
            "time": "2026-01-01T00:00:00Z"}


def test_aks_log_as_string_object_and_batch() -> None:
    for log in (orjson.dumps(ev()).decode(), ev()):
        out = unwrap_k8s(aks(log))
        assert out is not None and out[0].cluster == "AKS-1" and out[0].record["auditID"] == "a1"
    batch = {"records": [aks(ev(auditID="1")), aks(ev(auditID="2"), "kube-audit-admin"),
                         {"category": "guard", "properties": {"log": "klog text"}}]}
    out = unwrap_k8s(batch)
    assert out is not None and len(out) == 3
    assert [u.record.get("auditID") for u in out[:2]] == ["1", "2"] and REJECT_KEY in out[2].record
    assert unwrap_k8s({"records": [{"x": 1}]}) is None


def test_aks_bad_log_string_is_a_reject() -> None:
    out = unwrap_k8s(aks('{"kind":"Event","auditID":"a'))
    assert out is not None and out[0].record[REJECT_KEY] == "truncated"
    res = process(RawBatch([orjson.dumps(aks("I0101 klog line"))], LineOrigins("a")), CTX)
    assert [r.reason for r in res.rejected] == [Reason.INVALID_JSON]


def test_eks_message_and_subscription_envelope() -> None:
    single = {"timestamp": 1700000000000, "message": orjson.dumps(ev()).decode()}
    out = unwrap_k8s(single)
    assert out is not None and out[0].form == "eks" and out[0].cluster is None
    sub = {"messageType": "DATA_MESSAGE", "owner": "123", "logGroup": "/aws/eks/prod-eks/cluster",
           "logStream": "kube-apiserver-audit-abc", "logEvents": [
               {"id": "1", "timestamp": 1, "message": orjson.dumps(ev(auditID="x1")).decode()},
               {"id": "2", "timestamp": 2, "message": orjson.dumps(ev(auditID="x2")).decode()[:50] + "[Truncated...]"}]}
    res = process(RawBatch([orjson.dumps(sub)], LineOrigins("cw.json")), CTX)
    rows = res.tables["k8s_audit"].to_pylist()
    assert [(r["audit_id"], r["cluster"]) for r in rows] == [("x1", "prod-eks")]
    assert [(r.reason, r.origin) for r in res.rejected] == [(Reason.TRUNCATED, "file:cw.json:1")]
    assert unwrap_k8s({"message": "authorize check", "level": "info"}) is None


def test_non_k8s_values() -> None:
    values: list[Any] = [None, 1, "x", [], {}, {"kind": "Pod"}, {"protoPayload": "x"},
                         {"logEvents": [], "logGroup": "g"}]
    for v in values:
        assert unwrap_k8s(v) is None

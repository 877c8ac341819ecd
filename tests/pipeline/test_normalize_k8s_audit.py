"""k8s_audit normalization semantics: one test per rule of docs/kubernetes-audit.md the mapping relies on."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.core.schema import K8S_AUDIT
from ztaudit.pipeline import process as process_module
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import KafkaOrigins, LineOrigins, RawBatch

NOW = datetime(2026, 11, 27, tzinfo=UTC)
CTX = NormalizeContext(cluster="ctx-cluster", ingested_at=NOW)


def event(**over: Any) -> dict[str, Any]:
    """A realistic bound-token service-account Event (k3s 1.33 shape); ``over`` replaces keys."""
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "6780ab29-bdb9-4f60-9ac4-906f8901c0ac", "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/pods?limit=500", "verb": "list",
        "user": {"username": "system:serviceaccount:linkerd:linkerd-destination",
                 "uid": "48a11242-4481-40fb-a400-71bab76ceb26",
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:linkerd", "system:authenticated"],
                 "extra": {"authentication.kubernetes.io/credential-id": ["JTI=17ab4926-813f-4ffe-9173-f288d07c1b31"],
                           "authentication.kubernetes.io/node-name": ["k3d-server-0"],
                           "authentication.kubernetes.io/pod-name": ["linkerd-destination-7d6c6c7775-49tpt"]}},
        "sourceIPs": ["10.23.0.6"], "userAgent": "controller/v0.0.0",
        "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2025-05-19T09:37:51.360338Z",
        "stageTimestamp": "2025-05-19T09:37:51.362000Z",
        "annotations": {"authorization.k8s.io/decision": "allow",
                        "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"x\""},
    }
    ev.update(over)
    return ev


def run(*values: Any, ctx: NormalizeContext = CTX, **batch: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    records = [v if isinstance(v, bytes) else orjson.dumps(v) for v in values]
    res = process(RawBatch(records, LineOrigins("t.jsonl"), **batch), ctx)
    rows = res.tables["k8s_audit"].to_pylist() if "k8s_audit" in res.tables else []
    return rows, res.rejected


def one(ev: dict[str, Any], **kw: Any) -> dict[str, Any]:
    rows, rej = run(ev, **kw)
    assert not rej, rej
    assert len(rows) == 1
    return rows[0]


def test_table_conforms_to_schema() -> None:
    res = process(RawBatch([orjson.dumps(event())], LineOrigins("t")), CTX)
    assert res.tables["k8s_audit"].schema == K8S_AUDIT


def test_bound_token_fields() -> None:
    r = one(event())
    assert r["credential_id"] == "JTI=17ab4926-813f-4ffe-9173-f288d07c1b31"
    assert r["credential_kind"] == "jti"
    assert (r["sa_namespace"], r["sa_name"]) == ("linkerd", "linkerd-destination")
    assert r["pod_name"] == "linkerd-destination-7d6c6c7775-49tpt"
    assert r["node_name"] == "k3d-server-0"
    assert r["actor"] == "system:serviceaccount:linkerd:linkerd-destination"
    assert r["actor_kind"] == "service_account"
    assert r["is_legacy_token"] is False
    assert r["impersonator"] is None and r["impersonated_user"] is None
    assert r["request_received_at"] == datetime(2025, 5, 19, 9, 37, 51, 360338, tzinfo=UTC)
    assert r["stage_at"] == datetime(2025, 5, 19, 9, 37, 51, 362000, tzinfo=UTC)
    assert r["ingested_at"] == NOW
    assert r["decision"] == "allow" and r["authz_reason"].startswith("RBAC: allowed")
    assert r["response_code"] == 200
    assert r["origin"] == "file:t.jsonl:1"
    assert r["cluster"] == "ctx-cluster"
    assert dict(r["annotations"])["authorization.k8s.io/decision"] == "allow"


def test_x509_credential_id() -> None:
    # x509.go: credential id is X509SHA256=<hex of sha256 of the leaf certificate DER>.
    user = {"username": "minikube-user", "groups": ["system:masters"],
            "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=" + "ab" * 32]}}
    r = one(event(user=user))
    assert r["credential_kind"] == "x509" and r["credential_id"] == "X509SHA256=" + "ab" * 32
    assert r["actor_kind"] == "human"


def test_credential_id_never_from_impersonated_extra() -> None:
    # A caller can send Impersonate-Extra-authentication.kubernetes.io%2fcredential-id (§3).
    ev = event(user={"username": "system:admin", "groups": ["system:masters"]},
               impersonatedUser={"username": "bob", "groups": ["dev"],
                                 "extra": {"authentication.kubernetes.io/credential-id": ["JTI=forged"]}})
    r = one(ev)
    assert r["credential_id"] is None and r["credential_kind"] == "none"
    assert r["impersonator"] == "system:admin"
    assert r["impersonated_user"] == "bob"
    assert r["impersonated_groups"] == ["dev"]
    assert r["actor"] == "bob" and r["actor_kind"] == "human"
    assert r["user_name"] == "system:admin"


def test_impersonated_service_account_is_the_effective_actor() -> None:
    ev = event(user={"username": "system:serviceaccount:pomerium:pomerium-authorize",
                     "extra": {"authentication.kubernetes.io/credential-id": ["JTI=proxy-token"]}},
               impersonatedUser={"username": "system:serviceaccount:ns1:sa1"})
    r = one(ev)
    assert (r["sa_namespace"], r["sa_name"]) == ("ns1", "sa1")
    assert r["credential_id"] == "JTI=proxy-token"  # the proxy's own token (§6)
    assert r["actor_kind"] == "service_account"


@pytest.mark.parametrize("annotation", ["authentication.k8s.io/legacy-token-autogenerated-secret",
                                        "authentication.k8s.io/legacy-token-manual-secret"])
def test_legacy_secret_token(annotation: str) -> None:
    # pkg/serviceaccount/legacy.go (1.29+): the Secret name is the only per-credential id.
    ev = event(user={"username": "system:serviceaccount:ci:deployer", "uid": "u1"},
               annotations={"authentication.k8s.io/legacy-token": "system:serviceaccount:ci:deployer",
                            annotation: "deployer-token-abcde"})
    r = one(ev)
    assert r["is_legacy_token"] is True
    assert r["credential_id"] == "SECRET=ci/deployer-token-abcde"
    assert r["credential_kind"] == "legacy_secret"


def test_legacy_token_without_secret_name() -> None:
    ev = event(user={"username": "system:serviceaccount:ci:deployer"},
               annotations={"authentication.k8s.io/legacy-token": "system:serviceaccount:ci:deployer"})
    r = one(ev)
    assert r["is_legacy_token"] is True and r["credential_id"] is None and r["credential_kind"] == "none"


def test_legacy_token_invalidated_names_secret() -> None:
    ev = event(user={"username": "system:serviceaccount:ci:deployer"},
               annotations={"authentication.k8s.io/legacy-token-invalidated": "deployer-token-abcde/ci"},
               responseStatus={"code": 401})
    r = one(ev)
    assert r["is_legacy_token"] is True and r["credential_id"] == "SECRET=ci/deployer-token-abcde"


def test_issued_credential_id() -> None:
    ev = event(verb="create", objectRef={"resource": "serviceaccounts", "subresource": "token",
                                         "namespace": "kube-system", "name": "kube-proxy"},
               user={"username": "system:node:ip-192-168-3-178"},
               annotations={"authentication.kubernetes.io/issued-credential-id": "JTI=2e6389af"})
    r = one(ev)
    assert r["issued_credential_id"] == "JTI=2e6389af"
    assert r["subresource"] == "token" and r["resource"] == "serviceaccounts"
    assert r["node_name"] == "ip-192-168-3-178" and r["actor_kind"] == "node"


def test_issued_credential_id_129_key_only_on_token_requests() -> None:
    # 1.29 alpha used authentication.kubernetes.io/credential-id as the annotation (PR #123098).
    tr = event(objectRef={"resource": "serviceaccounts", "subresource": "token"},
               annotations={"authentication.kubernetes.io/credential-id": "JTI=old"})
    assert one(tr)["issued_credential_id"] == "JTI=old"
    other = event(annotations={"authentication.kubernetes.io/credential-id": "JTI=old"})
    assert one(other)["issued_credential_id"] is None


@pytest.mark.parametrize(("username", "kind"), [
    ("system:serviceaccount:a:b", "service_account"),
    ("system:node:n1", "node"),
    ("system:anonymous", "anonymous"),
    ("system:kube-controller-manager", "system"),
    ("system:apiserver", "system"),
    ("system:serviceaccounts:default:default", "system"),  # malformed name (elastic sample): not an SA
    ("eks:addon-manager", "system"),
    ("aksService", "system"),
    ("kubernetes-admin", "system"),
    ("alice@example.com", "human"),
    ("bob", "human"),
])
def test_actor_kind(username: str, kind: str) -> None:
    assert one(event(user={"username": username}))["actor_kind"] == kind


def test_system_patterns_from_context() -> None:
    ctx = NormalizeContext(cluster=None, ingested_at=NOW, system_user_patterns=("^robot-",))
    assert one(event(user={"username": "robot-7"}), ctx=ctx)["actor_kind"] == "system"
    assert one(event(user={"username": "aksService"}), ctx=ctx)["actor_kind"] == "human"


def test_failed_authentication_record_is_kept_as_anonymous() -> None:
    # WithFailedAuthenticationAudit: ResponseStarted, 401, no user (§5.4). Kept; actor left null.
    ev = event(stage="ResponseStarted", user={}, responseStatus={"code": 401, "status": "Failure"},
               annotations=None)
    del ev["annotations"]
    r = one(ev)
    assert r["actor"] is None and r["actor_kind"] == "anonymous" and r["response_code"] == 401
    assert r["credential_kind"] == "none"
    ev2 = event()
    del ev2["user"]
    assert one(ev2)["actor_kind"] == "anonymous"


def test_source_ip_is_last_entry() -> None:
    r = one(event(sourceIPs=["1.2.3.4", "10.0.0.9", "192.168.1.1"]))
    assert r["source_ip"] == "192.168.1.1" and r["source_ips"] == ["1.2.3.4", "10.0.0.9", "192.168.1.1"]
    assert one(event(sourceIPs=[]))["source_ip"] is None


def test_query_tokens_masked() -> None:
    uri = "/api/v1/namespaces/x/pods?watch=true&token=abc.def&access_token=zz&limit=5&password=p"
    r = one(event(requestURI=uri))
    assert r["request_uri"] == "/api/v1/namespaces/x/pods?watch=true&token=***&access_token=***&limit=5&password=***"


def test_v1beta1_timestamp_fallback() -> None:
    ev = event(apiVersion="audit.k8s.io/v1beta1", timestamp="2017-09-11T19:55:05Z",
               metadata={"creationTimestamp": "2017-09-11T19:55:05Z"})
    del ev["requestReceivedTimestamp"], ev["stageTimestamp"], ev["kind"]
    r = one(ev)
    assert r["request_received_at"] == r["stage_at"] == datetime(2017, 9, 11, 19, 55, 5, tzinfo=UTC)


@pytest.mark.parametrize("ts", ["2025-08-26 17:40:49.320496000", "yesterday", "2025-13-40T00:00:00Z", "17"])
def test_bad_timestamp_is_quarantined(ts: str) -> None:
    rows, rej = run(event(requestReceivedTimestamp=ts), event(auditID="good"))
    assert [r["audit_id"] for r in rows] == ["good"]
    assert [(r.reason, r.origin) for r in rej] == [(Reason.BAD_TIMESTAMP, "file:t.jsonl:1")]


def test_timestamps_with_offsets_and_nanoseconds() -> None:
    r = one(event(requestReceivedTimestamp="2024-01-01T01:00:00+02:00",
                  stageTimestamp="2021-04-23T14:47:31.948229350Z"))
    assert r["request_received_at"] == datetime(2023, 12, 31, 23, 0, tzinfo=UTC)
    assert r["stage_at"] == datetime(2021, 4, 23, 14, 47, 31, 948229, tzinfo=UTC)


def test_missing_audit_id_and_missing_time() -> None:
    no_id = event()
    del no_id["auditID"]
    no_time = event()
    del no_time["requestReceivedTimestamp"], no_time["stageTimestamp"]
    rows, rej = run(no_id, no_time)
    assert rows == []
    assert sorted(r.reason for r in rej) == [Reason.MISSING_FIELD, Reason.MISSING_FIELD]


def test_wrong_types_are_quarantined_naming_the_field() -> None:
    # Issue 11 item 9: a wrong-typed field is out of contract; reading it as NULL made "bob" an
    # anonymous actor. Each goes to quarantine as wrong_type, the detail naming the field.
    rows, rej = run(event(responseStatus={"code": "abc"}), event(sourceIPs="not-a-list"), event(user="bob"))
    assert rows == []
    assert [(r.reason, r.detail) for r in rej] == [
        (Reason.WRONG_TYPE, "Event field responseStatus.code is not an integer"),
        (Reason.WRONG_TYPE, "Event field sourceIPs is not an array"),
        (Reason.WRONG_TYPE, "Event field user is not an object"),
    ]


def test_not_an_event() -> None:
    rows, rej = run({"kind": 0}, {"hello": "world"}, [1, 2], "str", 5, None)
    assert rows == []
    # The array yields one reject per element, both with the array's origin (line 3).
    assert [(r.reason, r.origin) for r in rej] == [(Reason.UNKNOWN_SHAPE, f"file:t.jsonl:{n}")
                                                   for n in (1, 2, 3, 3, 4, 5, 6)]


def test_fast_path_and_slow_path_give_identical_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_module, "FAST_PATH_MIN_RECORDS", 1)  # small batches take the fast path too
    events = [event(auditID=f"id-{i}", user={"username": u, "extra": {
        "authentication.kubernetes.io/credential-id": [f"JTI={i}"]}}) for i, u in enumerate(
        ["system:serviceaccount:a:b", "alice@example.com", "system:node:n1", "system:kube-scheduler"])]
    events.append(event(auditID="imp", impersonatedUser={"username": "carol", "groups": ["g"]}))
    plain = process(RawBatch([orjson.dumps(e) for e in events], LineOrigins("f", 1)), CTX)
    # Same events as one webhook EventList on the same line as the first plain event ...
    batch = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events}
    wrapped = process(RawBatch([orjson.dumps(batch)], LineOrigins("f", 1)), CTX)
    a = plain.tables["k8s_audit"].drop_columns(["origin"])
    b = wrapped.tables["k8s_audit"].drop_columns(["origin"])
    assert a.num_rows == 5
    assert a.equals(b), (a.to_pylist(), b.to_pylist())
    # ... and as a JSON array, and as EKS CloudWatch messages.
    arr = process(RawBatch([orjson.dumps(events)], LineOrigins("f")), CTX).tables["k8s_audit"]
    assert arr.drop_columns(["origin"]).equals(a)
    assert set(arr.column("origin").to_pylist()) == {"file:f:1"}
    eks = process(RawBatch([orjson.dumps({"message": orjson.dumps(e).decode()}) for e in events],
                           LineOrigins("f")), CTX).tables["k8s_audit"]
    assert eks.drop_columns(["origin"]).equals(a)


def test_cluster_precedence_envelope_over_context() -> None:
    aks = {"category": "kube-audit", "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
           "properties": {"log": orjson.dumps(event()).decode(), "pod": "kube-apiserver-1"},
           "resourceId": "/SUBSCRIPTIONS/1/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
                         "MANAGEDCLUSTERS/PROD-AKS"}
    rows, rej = run(aks, event(), cluster="batch-cluster")
    assert not rej
    assert sorted((r["origin"], r["cluster"]) for r in rows) == [("file:t.jsonl:1", "PROD-AKS"),
                                                                  ("file:t.jsonl:2", "batch-cluster")]
    rows, _ = run(event())
    assert rows[0]["cluster"] == "ctx-cluster"


def test_kafka_origins() -> None:
    recs = [orjson.dumps(event()), b'{"kind":"Event","auditID":"x', b"{bad"]
    res = process(RawBatch(recs, KafkaOrigins("audit", 3, [41, 42, 50])), CTX)
    assert res.tables["k8s_audit"].column("origin").to_pylist() == ["kafka:audit/3/41"]
    assert [(r.origin, r.reason) for r in res.rejected] == [("kafka:audit/3/42", Reason.TRUNCATED),
                                                            ("kafka:audit/3/50", Reason.INVALID_JSON)]


def test_empty_batch_and_empty_records() -> None:
    assert process(RawBatch([], LineOrigins("x")), CTX).rows == 0
    res = process(RawBatch([b"", b"   ", orjson.dumps(event())], LineOrigins("x")), CTX)
    assert res.rows == 1 and [r.reason for r in res.rejected] == [Reason.EMPTY, Reason.EMPTY]


def test_bodies_are_never_materialised() -> None:
    ev = event(level="RequestResponse", requestObject={"kind": "Secret", "data": {"k": "c2VjcmV0"}},
               responseObject={"status": {"token": "eyJhbGciOi.eyJzdWIi.sig"}})
    table = process(RawBatch([orjson.dumps(ev)], LineOrigins("x")), CTX).tables["k8s_audit"]
    dump = str(table.to_pylist())
    assert "c2VjcmV0" not in dump and "eyJ" not in dump


def test_event_deepcopy_unchanged() -> None:
    ev = event()
    before = copy.deepcopy(ev)
    one(ev)
    assert ev == before


def test_large_batch_columnar_types() -> None:
    recs = [orjson.dumps(event(auditID=str(i))) for i in range(2000)]
    t = process(RawBatch(recs, LineOrigins("x")), CTX).tables["k8s_audit"]
    assert t.num_rows == 2000
    assert t.schema.field("request_received_at").type == pa.timestamp("us", tz="UTC")
    assert t.column("origin")[1999].as_py() == "file:x:2000"


def test_duckdb_failures_fall_back_row_by_row_and_by_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    from ztaudit.pipeline.normalize import k8s_audit

    real = k8s_audit._run
    recs = [orjson.dumps(event(auditID=f"r{i}")) for i in range(70)]

    def flaky(con: Any, patterns: Any, **kw: Any) -> pa.Table:
        n = con.sql("select count(*) from __ztaudit_src").fetchall()[0][0]
        if n > 8:
            raise duckdb.OutOfMemoryException("pretend the budget is tiny")
        if n == 1 and con.sql("select any_value(idx) from __ztaudit_src").fetchall()[0][0] == 5:
            raise duckdb.InvalidInputException("Malformed JSON ... Input: secret-value")
        if n > 1 and con.sql("select bool_or(idx = 5) from __ztaudit_src").fetchall()[0][0]:
            raise duckdb.InvalidInputException("batch containing row 5 fails")
        return real(con, patterns, **kw)

    monkeypatch.setattr(k8s_audit, "_run", flaky)
    res = process(RawBatch(recs, LineOrigins("x")), CTX)
    assert res.tables["k8s_audit"].num_rows == 69
    assert [(r.origin, r.reason) for r in res.rejected] == [("file:x:6", Reason.WRONG_TYPE)]
    assert "secret-value" not in res.rejected[0].detail


@pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])
@pytest.mark.parametrize(("over", "reason"), [
    ({"requestReceivedTimestamp": "2025-13-40T99:00:00Z"}, Reason.BAD_TIMESTAMP),
    ({"auditID": None}, Reason.MISSING_FIELD),
])
def test_rejects_are_named_the_same_on_both_paths(fast_min: int, over: dict[str, Any], reason: Reason) -> None:
    """A plain Event the mapping refuses is quarantined as a k8s_audit record with the same reason on
    the columnar fast path (which production batches take) and the per-record path."""
    good = [orjson.dumps(event(auditID=f"id-{i}")) for i in range(70)]
    bad = orjson.dumps(event(**over))
    res = process(RawBatch([*good[:35], bad, *good[35:]], LineOrigins("t.jsonl")), CTX,
                  fast_path_min_records=fast_min)
    assert res.tables["k8s_audit"].num_rows == 70
    assert [(r.origin, r.reason, r.source_guess) for r in res.rejected] == [("file:t.jsonl:36", reason, "k8s_audit")]

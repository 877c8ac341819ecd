"""Secret material never reaches the lake: unit tests of pipeline.redact, then an end-to-end proof."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.redact import mask_query, scrub_bytes, scrub_raw

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpiIn0.c2lnbmF0dXJl"


def test_mask_query() -> None:
    assert mask_query("/api/v1/pods?watch=true&token=abc&limit=1") == "/api/v1/pods?watch=true&token=***&limit=1"
    assert mask_query("/x?access_token=a&id_token=b&refresh_token=c&password=d&secret=e") == (
        "/x?access_token=***&id_token=***&refresh_token=***&password=***&secret=***")
    assert mask_query("/x?Token=abc") == "/x?Token=***"
    # any name containing a credential word is masked: over-masking costs little, a stored token a lot
    assert mask_query("/x?tokenizer=1&mytoken=2") == "/x?tokenizer=***&mytoken=***"
    assert mask_query("/x?X-Amz-Security-Token=t&X-Goog-Signature=s&code=c") == (
        "/x?X-Amz-Security-Token=***&X-Goog-Signature=***&code=***")
    assert mask_query("/api/v1/pods?watch=true&limit=500&fieldSelector=a%3Db") == (
        "/api/v1/pods?watch=true&limit=500&fieldSelector=a%3Db")
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl"
    assert mask_query(f"/x?q={jwt}") == "/x?q=***" and mask_query(f"/x/{jwt}") == "/x/***"
    assert mask_query("token=abc&limit=1", bare_query=True) == "token=***&limit=1"
    assert mask_query(None) is None and mask_query("/healthz") == "/healthz"


def test_scrub_raw_drops_bodies_and_secret_keys_recursively() -> None:
    v = {"kind": "Event", "requestObject": {"data": {"k": "v"}}, "responseObject": {"status": {"token": "t"}},
         "nested": [{"stringData": {"p": "x"}, "password": "pw", "keep": 1}],
         "props": {"log": orjson.dumps({"auditID": "a", "requestObject": {"data": "s"}}).decode()},
         "jwt": f"Bearer {JWT}"}
    out = orjson.loads(scrub_raw(orjson.dumps(v)))
    assert out["nested"] == [{"keep": 1}]
    assert "requestObject" not in out and "responseObject" not in out
    assert orjson.loads(out["props"]["log"]) == {"auditID": "a"}
    assert "eyJ" not in out["jwt"]


def test_scrub_bytes_cuts_at_first_secret_key_and_masks_jwts() -> None:
    raw = b'{"auditID":"a","user":{"username":"x ' + JWT.encode() + b'"},"responseObject":{"status":{"token":"T'
    out = scrub_bytes(raw)
    assert b"responseObject" not in out and b'"T' not in out and b"eyJ" not in out
    assert out.startswith(b'{"auditID":"a"')
    # Inside a JSON string (EKS message, AKS properties.log) the key is escaped.
    inner = b'{"message":"{\\"auditID\\":\\"a\\",\\"requestObject\\":{\\"data\\":{\\"k\\":\\"SECRET'
    assert b"SECRET" not in scrub_bytes(inner)


def test_scrub_raw_parses_when_it_can() -> None:
    assert scrub_raw(b'{"a":1,"data":{"x":"y"}}') == b'{"a":1}'
    assert scrub_raw(b'{"a":1,"data":{"x":"y"}}', parse=False).startswith(b'{"a":1,')
    assert b'"y"' not in scrub_raw(b'{"a":1,"data":{"x":"y"}}', parse=False)
    assert scrub_raw(b"\xff\xfe" + JWT.encode()) == b"\xff\xfe***"


# --- end to end: a unique marker in Secret data, a TokenRequest token, and a truncated event -------

MARKER = "ztaudit-canary-7f3c9a1e5b"
MARKER_B64 = base64.b64encode(MARKER.encode()).decode()
TOKEN = "eyJhbGciOiJSUzI1NiJ9." + base64.urlsafe_b64encode(MARKER.encode()).decode().rstrip("=") + ".c2ln"


def _ev(i: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse", "auditID": f"secret-{i}",
        "stage": "ResponseComplete", "verb": "create", "user": {"username": "alice@example.com"},
        "requestURI": "/api/v1/namespaces/prod/secrets", "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "secrets", "namespace": "prod", "name": "db", "apiVersion": "v1"},
        "responseStatus": {"code": 201},
        "requestReceivedTimestamp": "2026-11-20T10:00:00.000001Z", "stageTimestamp": "2026-11-20T10:00:00.000002Z",
    }
    ev.update(over)
    return ev


def _secret_body() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "prod"},
            "data": {"password": MARKER_B64}, "stringData": {"plain": MARKER}}


def _planted_events() -> list[bytes]:
    secret = _ev(1, requestObject=_secret_body(), responseObject=_secret_body())
    token_request = _ev(2, requestURI="/api/v1/namespaces/prod/serviceaccounts/app/token",
                        objectRef={"resource": "serviceaccounts", "subresource": "token", "namespace": "prod",
                                   "name": "app", "apiVersion": "v1"},
                        requestObject={"kind": "TokenRequest", "spec": {"audiences": ["api"]}},
                        responseObject={"kind": "TokenRequest", "status": {"token": TOKEN,
                                                                           "expirationTimestamp": "2026-11-20T11:00Z"}},
                        annotations={"authentication.kubernetes.io/issued-credential-id": "JTI=1234"})
    query = _ev(3, verb="get", requestURI=f"/api/v1/namespaces/prod/pods?token={MARKER}&access_token={TOKEN}")
    lines = [orjson.dumps(e) for e in (secret, token_request, query)]
    # The same Secret event cut mid-body (e.g. a shipper's line limit): it goes to quarantine.
    cut = orjson.dumps(_ev(4, requestObject=_secret_body()))
    lines.append(cut[: cut.index(MARKER_B64.encode()) + len(MARKER_B64) + 3])
    # Wrapped forms: EKS subscription with a CloudWatch-truncated message, AKS string, EventList.
    eks = {"logGroup": "/aws/eks/prod/cluster", "logEvents": [
        {"id": "1", "message": orjson.dumps(_ev(5, requestObject=_secret_body())).decode()[:400] + "[Truncated...]"},
        {"id": "2", "message": orjson.dumps(_ev(6, responseObject=_secret_body())).decode()}]}
    aks = {"category": "kube-audit", "properties": {"log": orjson.dumps(_ev(7, requestObject=_secret_body())).decode()},
           "resourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks1"}
    eventlist = {"kind": "EventList", "items": [_ev(8, responseObject=_secret_body()), {"not": "an event",
                                                                                         "data": MARKER}]}
    lines += [orjson.dumps(eks), orjson.dumps(aks), orjson.dumps(eventlist)]
    # An event whose timestamp is bad (quarantined after a full parse) and one that is oversized.
    lines.append(orjson.dumps(_ev(9, requestReceivedTimestamp="not-a-time", requestObject=_secret_body())))
    lines.append(orjson.dumps(_ev(10, requestObject=_secret_body(), padding="x" * 5000)))
    # Not UTF-8 with the marker inside a token field.
    lines.append(b'\xff{"token":"' + TOKEN.encode() + b'","data":"' + MARKER.encode() + b'"}')
    return lines


def test_marker_never_reaches_any_lake_byte(tmp_path: Path) -> None:
    src = tmp_path / "secrets.jsonl"
    src.write_bytes(b"\n".join(_planted_events()) + b"\n")
    lake = tmp_path / "lake"
    stats = ingest_paths([src], lake, max_record_bytes=4096)
    assert stats.rows["k8s_audit"] == 6  # events 1, 2, 3, 6, 7, 8
    assert dict(stats.quarantined) == {"truncated": 2, "unknown_shape": 1, "bad_timestamp": 1, "oversized": 1,
                                       "not_utf8": 1}
    needles = [MARKER, MARKER_B64, TOKEN, base64.urlsafe_b64encode(MARKER.encode()).decode().rstrip("=")]
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    for p in files:
        data = p.read_bytes()
        # Raw file bytes (also covers any uncompressed page and the footer statistics) ...
        for n in needles:
            assert n.encode() not in data, (p, n)
        # ... and every value of every column, decompressed.
        if p.suffix == ".parquet":
            text = repr(pq.read_table(p).to_pylist())
            for n in needles:
                assert n not in text, (p, n)
    # Quarantine still keeps what it can: the scrubbed raw bytes name the record.
    quarantine = [r for p in files if "quarantine" in str(p) for r in pq.read_table(p).to_pylist()]
    cut = next(r for r in quarantine if r["reason"] == "truncated" and r["origin"].endswith(":4"))
    assert b'"auditID":"secret-4"' in cut["raw"] and cut["raw_size"] > len(cut["raw"]) - 60
    # The TokenRequest row is still useful: it names the issued credential, not the token.
    rows = [r for p in files if "k8s_audit" in str(p) for r in pq.read_table(p).to_pylist()]
    tr = next(r for r in rows if r["audit_id"] == "secret-2")
    assert tr["issued_credential_id"] == "JTI=1234" and tr["subresource"] == "token"
    q = next(r for r in rows if r["audit_id"] == "secret-3")
    assert q["request_uri"] == "/api/v1/namespaces/prod/pods?token=***&access_token=***"

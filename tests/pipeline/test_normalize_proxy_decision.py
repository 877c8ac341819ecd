"""proxy_decision normalizer: each format, positive and negative (docs/proxy-and-idp.md §1.2-§2.2).

Records here are written for the tests (not copied from the corpus); the corpus is checked in
test_corpus_proxy_idp.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.core.schema import PROXY_DECISION
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped
from ztaudit.pipeline.normalize.proxy_decision import SOURCE, ProxyDecisionNormalizer
from ztaudit.pipeline.redact import MASK, redact_rejects, redact_table

N = ProxyDecisionNormalizer()
CTX = NormalizeContext(cluster="demo", ingested_at=datetime(2026, 11, 27, tzinfo=UTC))

AUTHZ: dict[str, Any] = {
    "level": "info", "service": "authorize", "request-id": "r-1", "check-request-id": "c-1", "method": "GET",
    "path": "/api/v1/namespaces/web/pods", "host": "k8s.demo.example.com", "ip": "198.51.100.23",
    "session-id": "s-1", "user": "00u5ajx9k2LmNq8Zp4x7", "email": "alice@example.com",
    "envoy-route-checksum": 1449812331876401739, "envoy-route-id": "er-1",
    "route-checksum": 13957204883251873961, "route-id": "kubernetes-demo",
    "allow": True, "allow-why-true": ["email-ok"], "deny": False, "deny-why-false": [],
    "time": "2026-11-25T10:12:03+01:00", "message": "authorize check",
}
ACCESS: dict[str, Any] = {
    "level": "info", "service": "envoy", "upstream-cluster": "route-1", "method": "GET",
    "authority": "k8s.demo.example.com", "path": "/api/v1/namespaces/web/pods", "user-agent": "kubectl/v1.31.2",
    "referer": "", "forwarded-for": "198.51.100.23", "request-id": "c-1", "duration": 41.5, "size": 2048,
    "response-code": 200, "response-code-details": "via_upstream", "time": "2026-11-25T10:12:03+01:00",
    "message": "http-request",
}
TELEPORT: dict[str, Any] = {
    "addr.local": "10.42.5.10:3027", "addr.remote": "[2001:db8::17]:60212", "code": "T3009I", "event": "kube.request",
    "kubernetes_cluster": "edge", "login": "erin", "namespace": "default", "proto": "kube",
    "request_path": "/api/v1/namespaces/payments/pods?limit=500", "response_code": 200,
    "time": "2026-11-23T13:02:44.181Z", "uid": "u-1", "user": "erin@example.com", "verb": "get",
}
OAUTH2 = ('198.51.100.77 - rid-9 - bob@example.com [2026/11/25 16:20:05] kube-oidc.demo.example.com GET '
          'kube-apiserver "/api/v1/namespaces/payments/secrets?limit=500" HTTP/1.1 '
          '"kubectl/v1.31.2 (darwin/arm64) kubernetes/5864a46" 200 2314 0.041')


def run(values: list[Any], ctx: NormalizeContext = CTX) -> tuple[list[dict[str, Any]], list[Any]]:
    recs: list[Unwrapped] = []
    for v in values:
        got = N.parse_text(v) if isinstance(v, str) else N.unwrap(v)
        assert got is not None, v
        recs.extend(got)
    table, rejected = N.to_table(recs, [f"t:{i}" for i in range(len(recs))], ctx)
    assert table.schema == PROXY_DECISION
    # what process() does to every table of a batch before it is written (the masking is there)
    return redact_table(SOURCE, table).to_pylist(), rejected


def one(value: Any, ctx: NormalizeContext = CTX) -> dict[str, Any]:
    rows, rejected = run([value], ctx)
    assert rejected == []
    assert len(rows) == 1
    return rows[0]


# --- Pomerium authorize check (§1.2) ----------------------------------------------------------


def test_authorize_hyphen_keys() -> None:
    row = one(AUTHZ)
    assert row["decided_at"] == datetime(2026, 11, 25, 9, 12, 3, tzinfo=UTC)  # +01:00 -> UTC
    assert row["proxy"] == "pomerium" and row["record_type"] == "authorize"
    assert (row["request_id"], row["check_request_id"], row["session_id"]) == ("r-1", "c-1", "s-1")
    assert row["user_id"] == "00u5ajx9k2LmNq8Zp4x7" and row["email"] == "alice@example.com"
    assert row["route_id"] == "kubernetes-demo"  # the string id; the uint64 checksum is not stored
    assert row["is_allowed"] is True
    assert row["allow_reasons"] == ["email-ok"] and row["deny_reasons"] == []
    assert row["cluster"] == "demo" and row["client_ip"] == "198.51.100.23"
    assert row["origin"] == "t:0" and row["ingested_at"] == CTX.ingested_at


def test_authorize_underscore_keys() -> None:
    old = {k.replace("-", "_"): v for k, v in AUTHZ.items()}
    row = one(old)
    assert (row["request_id"], row["check_request_id"], row["session_id"]) == ("r-1", "c-1", "s-1")
    assert row["allow_reasons"] == ["email-ok"] and row["is_allowed"] is True


def test_route_checksum_beyond_2_53_stays_exact_in_decoding() -> None:
    # orjson keeps uint64 as int (never float); the normalizer does not touch the checksum.
    value = orjson.loads(orjson.dumps(AUTHZ))
    assert value["route-checksum"] == 13957204883251873961
    assert one(value)["route_id"] == "kubernetes-demo"


@pytest.mark.parametrize(("allow", "deny", "allowed"), [(True, False, True), (True, True, False),
                                                        (False, False, False), (False, True, False)])
def test_is_allowed_is_allow_and_not_deny(allow: bool, deny: bool, allowed: bool) -> None:
    rec = dict(AUTHZ, allow=allow, deny=deny)
    for k in ("allow-why-true", "allow-why-false", "deny-why-true", "deny-why-false"):
        rec.pop(k, None)
    rec["allow-why-true" if allow else "allow-why-false"] = ["email-ok" if allow else "user-unauthenticated"]
    rec["deny-why-true" if deny else "deny-why-false"] = ["source-ip-unauthorized"] if deny else []
    row = one(rec)
    assert row["is_allowed"] is allowed
    assert row["allow_reasons"] == (["email-ok"] if allow else ["user-unauthenticated"])
    assert row["deny_reasons"] == (["source-ip-unauthorized"] if deny else [])


def test_denied_after_revocation_has_no_identity() -> None:
    rec = dict(AUTHZ, user="", email="", allow=False, **{"allow-why-false": ["user-unauthenticated"]})
    rec.pop("session-id")
    rec.pop("allow-why-true")
    row = one(rec)
    assert row["is_allowed"] is False and row["user_id"] is None and row["email"] is None
    assert row["session_id"] is None


def test_authorize_without_time_is_quarantined_missing_field() -> None:
    rec = dict(AUTHZ)
    rec.pop("time")
    rows, rejected = run([rec])
    assert rows == []
    assert [r.reason for r in rejected] == [Reason.MISSING_FIELD]
    assert rejected[0].origin == "t:0" and rejected[0].source_guess == "proxy_decision"
    assert b"authorize check" in rejected[0].raw


def test_authorize_bad_time_and_missing_allow() -> None:
    no_allow = dict(AUTHZ)
    no_allow.pop("allow")
    rows, rejected = run([dict(AUTHZ, time="yesterday"), no_allow, AUTHZ])
    assert len(rows) == 1
    assert [r.reason for r in rejected] == [Reason.BAD_TIMESTAMP, Reason.MISSING_FIELD]
    assert [r.origin for r in rejected] == ["t:0", "t:1"]


def test_naive_time_uses_proxy_utc_offset() -> None:
    rec = dict(AUTHZ, time="2026-11-25T10:12:03")
    assert one(rec)["decided_at"] == datetime(2026, 11, 25, 10, 12, 3, tzinfo=UTC)
    ctx = NormalizeContext(cluster="demo", proxy_utc_offset="+02:00")
    assert one(rec, ctx)["decided_at"] == datetime(2026, 11, 25, 8, 12, 3, tzinfo=UTC)


def test_old_path_with_query_is_split_and_masked() -> None:
    row = one(dict(AUTHZ, path="/api/v1/pods?watch=1&access_token=abc.def"))
    assert row["path"] == "/api/v1/pods"
    assert row["query"] == f"watch=1&access_token={MASK}"


def test_query_field_masked_and_headers_not_stored() -> None:
    rec = dict(AUTHZ, query="limit=500&token=s3cr3t", headers={"Cookie": "_pomerium=eyJhbGciOiJIUzI1NiJ9.e30.x",
                                                                "User-Agent": "kubectl/v1.31.2"})
    row = one(rec)
    assert row["query"] == f"limit=500&token={MASK}"
    assert row["user_agent"] == "kubectl/v1.31.2"
    assert "_pomerium" not in repr(row)


def test_cluster_from_proxy_hosts() -> None:
    ctx = NormalizeContext(cluster="fallback", proxy_hosts={"k8s.demo.example.com": "demo-east"})
    assert one(AUTHZ, ctx)["cluster"] == "demo-east"
    assert one(dict(AUTHZ, host="k8s.demo.example.com:443"), ctx)["cluster"] == "demo-east"
    assert one(dict(AUTHZ, host="grafana.example.com"), ctx)["cluster"] == "fallback"
    assert one(AUTHZ, NormalizeContext())["cluster"] is None


def test_cluster_from_proxy_hosts_any_spelling() -> None:
    """Hosts compare as detection compares them (core/proxy_hosts.py): any case, the port ignored on
    both sides, IPv6 in brackets. Before, ingest matched a logged host only as written or without its
    port, case-sensitively, so ``k8s.DEMO.example.com`` or a config key with a port missed."""
    ctx = NormalizeContext(cluster="fallback", proxy_hosts={"K8S.demo.example.com:443": "demo-east",
                                                           "[::1]:6443": "v6"})
    assert one(dict(AUTHZ, host="k8s.DEMO.example.com"), ctx)["cluster"] == "demo-east"
    assert one(dict(AUTHZ, host="k8s.demo.example.com:8443"), ctx)["cluster"] == "demo-east"
    assert one(dict(AUTHZ, host="[::1]"), ctx)["cluster"] == "v6"
    assert one(dict(AUTHZ, host="[::1]:443"), ctx)["cluster"] == "v6"
    assert one(dict(AUTHZ, host="[::2]:6443"), ctx)["cluster"] == "fallback"


# --- Envoy access line (§1.3) -----------------------------------------------------------------


def test_access_line() -> None:
    row = one(ACCESS)
    assert row["record_type"] == "access"
    assert row["request_id"] == row["check_request_id"] == "c-1"  # joins authorize check-request-id
    assert row["host"] == "k8s.demo.example.com" and row["response_code"] == 200 and row["is_allowed"] is True
    assert row["client_ip"] == "198.51.100.23" and row["user_agent"] == "kubectl/v1.31.2"
    assert row["email"] is None and row["allow_reasons"] is None


def test_access_line_status_decides_allowed() -> None:
    assert one(dict(ACCESS, **{"response-code": 403}))["is_allowed"] is False
    assert one(dict(ACCESS, **{"response-code": 101}))["is_allowed"] is True
    bare = {"authority": "a.example.com", "path": "/x", "message": "http-request", "service": "envoy",
            "time": "2023-08-04T12:12:35-04:00"}
    row = one(bare)
    assert row["is_allowed"] is None and row["response_code"] is None


def test_access_ip_field_wins_over_forwarded_for() -> None:
    assert one(dict(ACCESS, ip="10.0.0.9"))["client_ip"] == "10.0.0.9"
    assert one(dict(ACCESS, **{"forwarded-for": "203.0.113.1, 198.51.100.23"}))["client_ip"] == "198.51.100.23"


# --- Teleport kube.request (§2.1) -------------------------------------------------------------


def test_teleport_kube_request() -> None:
    row = one(TELEPORT)
    assert row["proxy"] == "teleport" and row["record_type"] == "kube.request"
    assert row["decided_at"] == datetime(2026, 11, 23, 13, 2, 44, 181000, tzinfo=UTC)
    assert row["method"] == "GET" and row["path"] == "/api/v1/namespaces/payments/pods" and row["query"] == "limit=500"
    assert row["cluster"] == "edge" and row["client_ip"] == "2001:db8::17"
    assert row["user_id"] == "erin@example.com" and row["email"] == "erin@example.com"
    assert row["request_id"] == "u-1" and row["is_allowed"] is True


def test_teleport_non_email_user_and_nested_addr() -> None:
    rec = dict(TELEPORT, user="alex", response_code=403)
    rec.pop("addr.remote")
    rec["addr"] = {"remote": "192.0.2.4:51544"}
    row = one(rec)
    assert row["email"] is None and row["user_id"] == "alex"
    assert row["client_ip"] == "192.0.2.4" and row["is_allowed"] is False


# --- oauth2-proxy request lines (§2.2) --------------------------------------------------------


def test_oauth2_proxy_request_line() -> None:
    row = one(OAUTH2)
    assert row["proxy"] == "oauth2-proxy" and row["record_type"] == "request"
    assert row["decided_at"] == datetime(2026, 11, 25, 16, 20, 5, tzinfo=UTC)
    assert row["email"] == "bob@example.com" and row["request_id"] == "rid-9"
    assert row["method"] == "GET" and row["path"] == "/api/v1/namespaces/payments/secrets"
    assert row["query"] == "limit=500"
    assert row["route_id"] == "kube-apiserver" and row["is_allowed"] is True and row["response_code"] == 200
    assert row["user_agent"] == "kubectl/v1.31.2 (darwin/arm64) kubernetes/5864a46"
    assert row["client_ip"] == "198.51.100.77" and row["cluster"] == "demo"


def test_oauth2_proxy_self_answered_is_not_allowed_and_code_masked() -> None:
    line = ('198.51.100.77 - rid - - [2026/11/25 16:18:52] kube-oidc.demo.example.com GET - '
            '"/oauth2/callback?code=4%2F0AVG&state=Zk3x" HTTP/1.1 "Mozilla/5.0" 302 24 0.212')
    row = one(line)
    assert row["is_allowed"] is False and row["route_id"] is None and row["user_id"] is None
    assert row["query"] == f"code={MASK}&state=Zk3x"


def test_oauth2_proxy_timeless_line_is_bad_timestamp() -> None:
    rows, rejected = run([OAUTH2.replace("[2026/11/25 16:20:05]", "[TIMELESS]")])
    assert rows == [] and [r.reason for r in rejected] == [Reason.BAD_TIMESTAMP]
    assert rejected[0].raw.startswith(b"198.51.100.77 - rid-9")


# --- what is not a proxy decision -------------------------------------------------------------

NOT_PROXY: list[Any] = [
    {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "a", "stage": "ResponseComplete", "verb": "get"},
    {"kind": "EventList", "items": []},
    {"level": "error", "service": "identity_manager", "user-id": "u", "session-id": "s",
     "time": "2026-11-24T10:06:12+01:00", "message": "failed to update user info, deleting session"},
    {"level": "info", "service": "authorize", "request-id": "r", "time": "2026-11-24T10:06:12+01:00",
     "message": "clearing session due to missing or invalid session or service account"},
    {"level": "info", "service": "authenticate", "time": "2026-11-24T10:06:12+01:00", "message": "authenticate: ok"},
    {"event": "lock.created", "code": "TLK00I", "target": {"user": "x"}, "time": "2023-09-21T00:00:00Z"},
    {"event": "kube.request"},  # no Kubernetes fields at all
    {"Action": "login", "Allowed": True, "AppDomain": "x", "Email": "a@b.c", "RayID": "1"},  # Cloudflare Access
    {"eventType": "user.session.start", "published": "2020-02-14T20:18:57.718Z", "uuid": "u"},
    {"authority": "AUTHORITY"},  # a lone field (Pomerium unit-test expectation)
    "a string", 42, None, [], [AUTHZ, {"kind": "Event"}],
]


@pytest.mark.parametrize("value", NOT_PROXY, ids=range(len(NOT_PROXY)))
def test_unwrap_rejects_other_kinds(value: Any) -> None:
    assert N.unwrap(value) is None


def test_unwrap_claims_a_list_of_proxy_records() -> None:
    got = N.unwrap([AUTHZ, ACCESS, TELEPORT])
    assert got is not None and [u.form for u in got] == ["pomerium-authorize", "pomerium-access", "teleport"]


@pytest.mark.parametrize("line", [
    "21:01:45,403 WARN  [org.keycloak.events] (default task-1) type=LOGIN_ERROR, realmId=test",
    "[2026/11/25 16:20:05] [oauthproxy.go:980] Fatal refresh error detected (session revoked or invalid)",
    '198.51.100.77 - rid - bob [2026/11/25 16:20:05] [AuthSuccess] Authenticated via OAuth2',
    "", "not a log line",
    '127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
])
def test_parse_text_only_takes_oauth2_request_lines(line: str) -> None:
    assert N.parse_text(line) is None


# --- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "masked"), [
    ("limit=500", "limit=500"),
    ("access_token=abc&limit=1", f"access_token={MASK}&limit=1"),
    ("X-Amz-Signature=ff&X-Amz-Credential=AK/x&X-Amz-Date=1",
     f"X-Amz-Signature={MASK}&X-Amz-Credential={MASK}&X-Amz-Date=1"),
    ("sig=1&key=2&pwd=3&password=4&client_secret=5",
     f"sig={MASK}&key={MASK}&pwd={MASK}&password={MASK}&client_secret={MASK}"),
    ("q=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig", f"q={MASK}"),
    ("?watch=true&id_token=x", f"watch=true&id_token={MASK}"),
    ("", ""),
    (None, None),
])
def test_mask_query(query: str | None, masked: str | None) -> None:
    """A logged query string as it reaches the lake: the normalizer drops its ``?`` and the central
    redaction step masks credentials."""
    rec = dict(AUTHZ, query=query)
    assert one(rec)["query"] == (masked or None)


# --- robustness: a field of any JSON type never raises --------------------------------------

ODD_VALUES: list[Any] = [None, 1, True, "x", [], {}, [1], {"a": 1}, 1e300, -1, 2**70, "2026-11-20T10:00:00Z"]


@pytest.mark.parametrize("base", [AUTHZ, ACCESS, TELEPORT], ids=["authorize", "access", "teleport"])
def test_any_field_of_any_type_never_raises(base: dict[str, Any]) -> None:
    for key in base:
        for odd in ODD_VALUES:
            value = dict(base, **{key: odd})
            got = N.unwrap(value)
            if got is None:
                continue
            table, rejected = N.to_table(got, ["t:0"] * len(got), CTX)
            assert table.num_rows + len(rejected) == len(got), (key, odd)


def test_quarantined_raw_is_scrubbed() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    rec = dict(AUTHZ, headers={"Cookie": f"_pomerium={jwt}"}, **{"id-token": jwt})
    rec.pop("time")
    _, rejected = run([rec, OAUTH2.replace("[2026/11/25 16:20:05]", "[TIMELESS]")
                       .replace("?limit=500", "?limit=500&access_token=s3cr3t")])
    assert len(rejected) == 2
    for r in redact_rejects(rejected):  # what process() does to every reject of its batch
        assert jwt.encode() not in r.raw and b"s3cr3t" not in r.raw


# --- Pomerium v0.30 server lines (real-stack.md; lines as the real Pomerium wrote them) -------------------

#: Server lines of a real Pomerium v0.30 run: not decisions, counted ignored.
POMERIUM_SERVER_LINES = [
    {"level": "info", "server-name": "all", "grpc.service": "envoy.service.auth.v3.Authorization",
     "grpc.method": "Check", "grpc.code": "OK", "grpc.duration": 0.86, "time": "2026-12-06T12:20:32Z",
     "message": "finished call"},
    {"level": "info", "service": "all", "config": "local", "checksum": "3c303ba3dc6170d0",
     "time": "2026-12-06T12:20:32Z", "message": "config: updated config"},
    {"level": "info", "server-name": "all", "error": "record not found",
     "request-id": "2ac092c0-9cc1-4ff2-855a-44d51c83f545", "time": "2026-12-06T12:21:44Z",
     "message": "clearing session due to missing or invalid session or service account"},
    {"level": "info", "ip": "127.0.0.1", "user_agent": "Python-urllib/3.11",
     "request-id": "6f7b8ad8-d9ab-4d74-9c8a-a1d77a8cfe44", "time": "2026-12-06T12:20:37Z",
     "message": "authenticate: signed URL, adding CORS headers"},
]

#: Decision-shaped lines no normalizer reads (a renamed key, no service): quarantined, never ignored.
DECISION_LOOKALIKES = [
    {"level": "info", "time": "2026-12-06T12:20:37Z", "message": "authorize check", "request-id": "r1",
     "allowed": True},
    {"level": "info", "service": "all", "time": "2026-12-06T12:20:37Z", "message": "authorize check",
     "request-id": "r2", "email": "alice@example.com"},
    {"level": "info", "time": "2026-12-06T12:20:37Z", "message": "something new", "user": "u1",
     "session-id": "s1"},
]


def _counts(values: list[dict[str, Any]]) -> tuple[int, int, int]:
    from ztaudit.pipeline.process import process
    from ztaudit.pipeline.records import LineOrigins, RawBatch

    res = process(RawBatch([orjson.dumps(v) for v in values], LineOrigins("pomerium.log", 1)), CTX)
    return res.written, len(res.rejected), sum(res.ignored.values())


def test_pomerium_server_lines_are_ignored_not_quarantined() -> None:
    assert _counts(POMERIUM_SERVER_LINES) == (0, 0, len(POMERIUM_SERVER_LINES))


def test_decision_lookalikes_are_quarantined_not_ignored() -> None:
    assert _counts(DECISION_LOOKALIKES) == (0, len(DECISION_LOOKALIKES), 0)

"""The planted-marker corpus (issue 11, items 12-15): a unique marker in every place a secret can
hide, across every source kind and every quarantine reason, and the check that none reaches a
lake file. Used by tests/hostile/test_markers.py (ingest, detect, compact) and
tests/integration/test_consume_markers.py (the same corpus through ``ztaudit consume``).
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

#: Records over this size are quarantined ``oversized``; the corpus keeps every other record under it.
MAX_RECORD = 16 * 1024
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


class Markers:
    """Unique markers, each remembered with where it was planted."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(4)
        self.planted: dict[str, str] = {}

    def __call__(self, where: str) -> str:
        m = f"ZTMARK-{len(self.planted)}-{self.run}"
        self.planted[m] = where
        return m

    def needles(self) -> dict[bytes, str]:
        """Every marker, and its base64 forms (Secret data is base64), as bytes."""
        out: dict[bytes, str] = {}
        for m, where in self.planted.items():
            out[m.encode()] = where
            out[base64.b64encode(m.encode())[:16]] = where + " (base64)"
        return out


def _ts(i: int) -> str:
    return (T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jwt(mark: str) -> str:
    return "eyJhbGciOiJSUzI1NiJ9." + mark + ".c2lnbmF0dXJl"


def _event(i: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse", "auditID": f"mark-{i}",
        "stage": "ResponseComplete", "verb": "get", "user": {"username": "alice@example.com", "groups": ["dev"]},
        "requestURI": "/api/v1/namespaces/prod/pods", "sourceIPs": ["10.0.0.1"], "userAgent": "kubectl/v1.31",
        "objectRef": {"resource": "pods", "namespace": "prod", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": _ts(i), "stageTimestamp": _ts(i),
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    ev.update(over)
    return ev


def _secret(mk: Markers, what: str) -> dict[str, Any]:
    plain = mk(f"{what} stringData")
    b64 = mk(f"{what} data")
    lac = mk(f"{what} last-applied-configuration")
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(
                    {"apiVersion": "v1", "kind": "Secret", "stringData": {"pw": lac}}).decode()}},
            "data": {"password": base64.b64encode(b64.encode()).decode(), "raw": b64},
            "stringData": {"plain": plain}}


def audit_events(mk: Markers) -> list[dict[str, Any]]:
    """Valid audit events, each hiding markers where items 12-15 found secrets."""
    evs = [
        _event(1, verb="create", objectRef={"resource": "secrets", "namespace": "prod", "name": "db"},
               requestObject=_secret(mk, "Secret create request"),
               responseObject=_secret(mk, "Secret create response")),
        _event(2, verb="list", objectRef={"resource": "secrets", "namespace": "prod"},
               responseObject={"kind": "SecretList",
                               "items": [_secret(mk, "List item 0"), _secret(mk, "List item 1")]}),
        _event(3, verb="create", requestURI="/api/v1/namespaces/prod/serviceaccounts/app/token",
               objectRef={"resource": "serviceaccounts", "subresource": "token", "namespace": "prod", "name": "app"},
               requestObject={"kind": "TokenRequest", "spec": {"audiences": ["api"]}},
               responseObject={"kind": "TokenRequest", "status": {"token": _jwt(mk("TokenRequest status.token")),
                                                                  "expirationTimestamp": "2026-03-02T10:00:00Z"}},
               annotations={"authentication.kubernetes.io/issued-credential-id": "JTI=jti-1"}),
        _event(4, verb="create", requestURI="/apis/authentication.k8s.io/v1/tokenreviews",
               objectRef={"resource": "tokenreviews", "apiGroup": "authentication.k8s.io"},
               requestObject={"kind": "TokenReview", "spec": {"token": mk("TokenReview spec.token")}},
               responseObject={"kind": "TokenReview", "spec": {"token": mk("TokenReview response spec.token")},
                               "status": {"authenticated": True}}),
        _event(5, requestURI=f"/api/v1/namespaces/prod/pods?watch=true&access_token={mk('URI access_token')}"
                             f"&token={mk('URI token')}&client_secret={mk('URI client_secret')}"
                             f"&%74oken={mk('URI %74oken')}&bearer={mk('URI bearer')}"),
        _event(6, verb="create", requestURI="/api/v1/namespaces/prod/pods/p/exec?command=mysql"
                                            f"&command=-p{mk('exec -pPASSWORD')}&container=db&stdin=true",
               objectRef={"resource": "pods", "subresource": "exec", "namespace": "prod", "name": "p"}),
        _event(7, userAgent=f"curl/8.1 token={mk('user agent token=')} {_jwt(mk('user agent JWT'))}"),
        _event(8, verb="create", level="Request", objectRef={"resource": "secrets", "namespace": "prod", "name": "x"},
               annotations={"patch.webhook.admission.k8s.io/round_0_index_0": orjson.dumps(
                   {"configuration": "c", "webhook": "w", "patchType": "JSONPatch",
                    "patch": [{"op": "add", "path": "/data/k", "value": mk("webhook patch value")}]}).decode()}),
        _event(9, annotations={"authorization.k8s.io/decision": "allow",
                               "authorization.k8s.io/reason": f"webhook said refresh_token={mk('authz reason')}"}),
    ]
    return evs


def quarantined_audit_lines(mk: Markers) -> list[bytes]:
    """One record per quarantine reason, each carrying body and query markers."""
    def body(what: str) -> dict[str, Any]:
        return _event(100, requestURI=f"/x?access_token={mk(what + ' URI')}", requestObject=_secret(mk, what))

    stray_comma = orjson.dumps(body("invalid_json")).replace(b'"stringData":', b'"stringData":,', 1)
    truncated = orjson.dumps(body("truncated"))
    truncated = truncated[: truncated.index(b'"plain"') + 12]
    not_utf8 = b"\xff" + orjson.dumps(body("not_utf8"))
    oversized = orjson.dumps(dict(body("oversized"), padding="p" * MAX_RECORD))
    wrong_type = orjson.dumps(dict(body("wrong_type"), user="alice", responseStatus={"code": "two hundred"}))
    bad_ts = orjson.dumps(dict(body("bad_timestamp"), requestReceivedTimestamp="yesterday",
                               stageTimestamp="yesterday"))
    no_id = body("missing_field")
    del no_id["auditID"]
    unknown = {"hello": f"client_secret={mk('unknown_shape field')}", "data": mk("unknown_shape data"),
               "headers": {"authorization": f"Bearer {mk('unknown_shape bearer')}"}}
    # Item 13: a pretty-printed Secret event with one stray comma, read line by line.
    pretty = orjson.dumps(body("pretty stray comma"), option=orjson.OPT_INDENT_2).replace(
        b'"stringData": {', b'"stringData": {,', 1)
    return [stray_comma, truncated, not_utf8, oversized, wrong_type, bad_ts, orjson.dumps(no_id),
            orjson.dumps(unknown), pretty]


def proxy_lines(mk: Markers) -> list[bytes]:
    def authz(i: int, **over: Any) -> dict[str, Any]:
        rec = {"level": "info", "service": "authorize", "message": "authorize check", "time": _ts(i)[:19] + "Z",
               "allow": True, "allow-why-true": ["email-ok"], "deny": False, "email": "alice@example.com",
               "host": "k8s.example.com", "method": "GET", "path": "/api/v1/namespaces/prod/pods",
               "request-id": f"r-{i}", "check-request-id": f"c-{i}", "ip": "198.51.100.7"}
        rec.update(over)
        return rec

    headers = {"authorization": f"Bearer {mk('Pomerium authorization Bearer')}",
               "proxy-authorization": f"Basic {mk('Pomerium Basic')}",
               "cookie": f"_pomerium={mk('Pomerium cookie')}; other=1",
               "user-agent": f"kubectl token={mk('Pomerium header user-agent')}"}
    recs = [
        authz(1, query=f"a=b&token={mk('Pomerium query token')}&%74oken={mk('Pomerium %74oken')}", headers=headers),
        authz(2, path=f"/api/v1/pods?access_token={mk('Pomerium old path query')}",
              **{"user-agent": f"client {_jwt(mk('Pomerium user-agent JWT'))}"}),
        {"level": "info", "service": "envoy", "message": "http-request", "time": _ts(3)[:19] + "Z",
         "method": "GET", "authority": "k8s.example.com", "path": f"/x?bearer={mk('Envoy bearer')}",
         "response-code": 200, "request-id": "c-3", "user-agent": f"x {_jwt(mk('Envoy user-agent JWT'))}"},
        # Quarantined: an authorize check without "allow" (missing_field), with the same headers.
        {k: v for k, v in authz(4, headers=dict(headers, cookie=f"_pomerium={mk('quarantined cookie')}"),
                                query=f"token={mk('quarantined query')}").items() if k != "allow"},
    ]
    lines = [orjson.dumps(r) for r in recs]
    # oauth2-proxy request lines (docs/proxy-and-idp.md §2.2), one valid, one a bad timestamp.
    for ts, what in (("2026/03/02 09:00:05", "oauth2-proxy"), ("2026/13/45 99:00:05", "oauth2-proxy bad time")):
        lines.append((f'198.51.100.7 - rid-1 - alice@example.com [{ts}] k8s.example.com GET upstream '
                      f'"/oauth2/callback?code={mk(what + " code")}&state=s&access_token={mk(what + " token")}" '
                      f'HTTP/1.1 "curl/8 token={mk(what + " user agent")}" 200 12 0.003').encode())
    return lines


def idp_lines(mk: Markers) -> list[bytes]:
    okta = {"actor": {"id": "00uA", "type": "User", "alternateId": "admin@example.com"},
            "eventType": "user.session.clear", "published": _ts(10), "uuid": "u-1", "outcome": {"result": "SUCCESS"},
            "target": [{"id": "00uB", "type": "User", "alternateId": "bob@example.com"}],
            "debugContext": {"debugData": {"client_secret": mk("Okta debugData client_secret"),
                                           "refresh_token": mk("Okta debugData refresh_token"),
                                           "requestUri": f"/oauth2/v1/token?code={mk('Okta requestUri code')}"}}}
    okta_bad = dict(okta, published="not a time", uuid="u-2",
                    debugContext={"debugData": {"client_secret": mk("Okta quarantined client_secret")}})
    keycloak = {"time": 1772442000000, "realmId": "r", "operationType": "UPDATE", "resourceType": "USER",
                "resourcePath": "users/6f1c", "authDetails": {"realmId": "r", "username": "admin"},
                "representation": orjson.dumps({"username": "bob", "enabled": False, "credentials": [
                    {"type": "password", "value": mk("Keycloak representation credential")}]}).decode()}
    keycloak_err = {"time": 1772442001000, "realmId": "r", "type": "REFRESH_TOKEN_ERROR", "userId": "6f1c",
                    "error": f"invalid_token refresh_token={mk('Keycloak error text')}",
                    "details": {"refresh_token_id": mk("Keycloak details refresh_token_id")}}
    google = {"kind": "admin#reports#activity",
              "id": {"time": _ts(12), "uniqueQualifier": "1", "applicationName": "admin"},
              "actor": {"callerType": "USER", "email": "g@example.org"},
              "events": [{"type": "USER_SETTINGS", "name": "SUSPEND_USER",
                          "parameters": [{"name": "USER_EMAIL", "value": "bob@example.org"},
                                         {"name": "OAUTH_TOKEN", "value": mk("Google parameter token")}]}]}
    entra = {"id": "Directory_1", "category": "UserManagement", "result": "success",
             "activityDisplayName": "Disable account", "activityDateTime": _ts(13),
             "initiatedBy": {"user": {"userPrincipalName": "it@contoso.example"}},
             "targetResources": [{"id": "oid", "type": "User", "userPrincipalName": "erin@contoso.example",
                                  "modifiedProperties": [{"displayName": "PasswordProfile",
                                                          "newValue": mk("Entra modifiedProperties")}]}]}
    revocation = {"kind": "revocation", "revoked_at": _ts(14), "subject": "bob@example.com",
                  "reason": f"leaked: token={mk('revocation list reason')}"}
    return [orjson.dumps(r) for r in (okta, okta_bad, keycloak, keycloak_err, google, entra, revocation)]


def corpus(mk: Markers) -> dict[str, list[bytes]]:
    """The planted records per file name: enough audit lines for the columnar fast path, and a
    small set of each other kind (per-record path). One record per list item (a pretty-printed
    document is one item over several lines)."""
    filler = [orjson.dumps(_event(1000 + i)) for i in range(80)]
    audit = [orjson.dumps(e) for e in audit_events(mk)]
    return {
        "audit.jsonl": filler + audit + quarantined_audit_lines(mk),
        "audit-small.jsonl": [orjson.dumps(e) for e in audit_events(mk)],
        "pomerium.jsonl": proxy_lines(mk),
        "idp.jsonl": idp_lines(mk),
    }


def write_corpus(folder: Path, mk: Markers) -> list[Path]:
    """The planted corpus (:func:`corpus`) as files in ``folder``, one record per line."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, lines in corpus(mk).items():
        p = folder / name
        p.write_bytes(b"\n".join(lines) + b"\n")
        out.append(p)
    return out


def assert_no_marker(lake: Path, mk: Markers) -> int:
    """No marker in any byte of any file under ``lake``, nor in any decoded Parquet value.
    Returns how many files were read."""
    needles = mk.needles()
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        for n, where in needles.items():
            assert n not in data, f"marker from {where!r} found in {p}"
        if p.suffix == ".parquet":
            text = repr(pq.read_table(p).to_pylist()).encode()
            for n, where in needles.items():
                assert n not in text, f"marker from {where!r} found decoded in {p}"
    return len(files)

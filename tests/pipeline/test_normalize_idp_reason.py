"""idp_event: the ``reason`` column, Keycloak's Quarkus JSON log, and the IdP confirming a disable.

The Keycloak and Pomerium lines are modelled on what a real Keycloak 26.x and Pomerium v0.30 wrote
when a user was disabled (../shared/reference/real-stack.md §4): the admin event ``UPDATE``
``users/<id>`` (resourceType ``USER``, no representation) in the admin's realm, Pomerium's
``failed to refresh oauth2 token, deleting session`` 58 s later with the IdP's ``invalid_grant
"User disabled"``, and Keycloak's ``REFRESH_TOKEN_ERROR ... reason="User disabled"`` twice, 9 ms
apart, with ``userId="null"`` and the user only in ``refresh_token_sub``. Each record goes through
:func:`ztaudit.pipeline.process.process`, as ingest and consume run it (redaction included).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.core.schema import IDP_EVENT
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.idp_common import REASON_MAX_CHARS
from ztaudit.pipeline.normalize.idp_vendors import pomerium_reason
from ztaudit.pipeline.process import BatchResult, process
from ztaudit.pipeline.records import LineOrigins, RawBatch

CTX = NormalizeContext(cluster="lab", ingested_at=datetime(2026, 3, 3, tzinfo=UTC))

USER = "8c1f4e2a-5b7d-4c39-9e06-2a4b6c8d0f13"  # the disabled user in realm "zt"
ADMIN = "d2a4c6e8-1f3b-4d57-8a9c-0b2d4f6a8c1e"  # the admin, realm "master"
MASTER = "a7c9e1b3-5d2f-4068-9a1c-3e5f7b9d1a2c"
ZT = "4e6a8c0b-2d4f-4a61-b8c3-5d7f9b1c3e50"
SID = "b5d7f9a1-3c5e-4a70-8b2d-4f6a8c0e2a41"


def quarkus(logger: str, message: str, *, ts: str, level: str = "INFO", seq: int = 9312) -> dict[str, Any]:
    """A record of Keycloak's JSON log (``--log-console-output=json``, quarkus-logging-json)."""
    return {"timestamp": ts, "sequence": seq, "loggerClassName": "org.jboss.logging.Logger", "loggerName": logger,
            "level": level, "message": message, "threadName": "executor-thread-7", "threadId": 52, "mdc": {},
            "ndc": "", "hostName": "keycloak", "processName": "QuarkusEntryPoint", "processId": 1}


DISABLE_MSG = (f'operationType="UPDATE", realmId="{MASTER}", realmName="master", clientId="{ADMIN[:8]}-cli", '
               f'userId="{ADMIN}", ipAddress="127.0.0.1", resourceType="USER", resourcePath="users/{USER}"')


def refresh_error_msg(refresh_token_id: str) -> str:
    return (f'type="REFRESH_TOKEN_ERROR", realmId="{ZT}", realmName="zt", clientId="pomerium", userId="null", '
            f'sessionId="null", ipAddress="127.0.0.1", error="invalid_token", reason="User disabled", '
            f'grant_type="refresh_token", refresh_token_id="{refresh_token_id}", refresh_token_type="Refresh", '
            f'refresh_token_sub="{USER}", client_auth_method="client-secret"')


KC_DISABLE = quarkus("org.keycloak.events", DISABLE_MSG, ts="2026-03-02T14:07:31.418512Z")
KC_REFRESH_1 = quarkus("org.keycloak.events", refresh_error_msg("0c2e4a6b-8d1f-4b35-a7c9-e1f3b5d7f902"),
                       ts="2026-03-02T14:08:29.511203Z", level="WARN", seq=9402)
KC_REFRESH_2 = quarkus("org.keycloak.events", refresh_error_msg("0c2e4a6b-8d1f-4b35-a7c9-e1f3b5d7f902"),
                       ts="2026-03-02T14:08:29.520877Z", level="WARN", seq=9403)
POMERIUM_DELETE = {"level": "error", "service": "identity_manager", "user-id": USER, "session-id": SID,
                   "error": 'oauth2: "invalid_grant" "User disabled"', "time": "2026-03-02T15:08:29+01:00",
                   "message": "failed to refresh oauth2 token, deleting session"}
CLEARING = {"level": "info", "service": "authorize", "request-id": "6d1f3b5a-7c9e-4e20-b4d6-f8a0c2e4a6b8",
            "time": "2026-03-02T15:08:41+01:00",
            "message": "clearing session due to missing or invalid session or service account"}
DENIED = {"level": "info", "service": "authorize", "request-id": "6d1f3b5a-7c9e-4e20-b4d6-f8a0c2e4a6b8",
          "check-request-id": "2f4b6d8e-0a1c-4e35-9b7d-1f3a5c7e9b02", "method": "GET",
          "host": "k8s.lab.example", "path": "/api/v1/namespaces/default/pods", "allow": False,
          "allow-why-false": ["user-unauthenticated"], "deny": False, "deny-why-false": [], "user": "",
          "email": "", "time": "2026-03-02T15:08:41+01:00", "message": "authorize check"}


def run(*values: Any) -> BatchResult:
    raw = [v.encode() if isinstance(v, str) else orjson.dumps(v) for v in values]
    res = process(RawBatch(raw, LineOrigins("kc.jsonl")), CTX)
    assert res.balanced(), (res.records, res.written, res.quarantined, res.ignored)
    return res


def rows(res: BatchResult, table: str = "idp_event") -> list[dict[str, Any]]:
    if table not in res.tables:
        return []
    return [{k: v for k, v in r.items() if k != "ingested_at"} for r in res.tables[table].to_pylist()]


def test_reason_column_is_the_last_own_column_of_idp_event() -> None:
    assert IDP_EVENT.names[-3:] == ["reason", "origin", "ingested_at"]
    assert IDP_EVENT.field("reason").type == "string"
    assert b"stated reason or error" in (IDP_EVENT.field("reason").metadata or {})[b"description"]


# --- Keycloak's Quarkus JSON log (real-stack.md §4) -------------------------------------------


def test_keycloak_quarkus_json_disable_story() -> None:
    res = run(KC_DISABLE, KC_REFRESH_1, KC_REFRESH_2, POMERIUM_DELETE)
    assert res.rejected == [] and res.written == 4
    got = sorted(rows(res), key=lambda r: (r["idp"], r["occurred_at"]))
    disable, refresh1, refresh2, pomerium = got  # keycloak by time, then pomerium (whole seconds)
    # (c) the admin disable, without representation: kept as a non-revocation about the user
    assert (disable["event_type"], disable["subject_id"], disable["actor"]) == ("admin:UPDATE:USER", USER, ADMIN)
    assert (disable["is_revocation"], disable["revocation_scope"], disable["reason"]) == (False, None, None)
    assert disable["occurred_at"] == datetime(2026, 3, 2, 14, 7, 31, 418512, tzinfo=UTC)
    # (b) the IdP confirming the disable: subject from refresh_token_sub, not a revocation
    for r in (refresh1, refresh2):
        assert (r["idp"], r["event_type"], r["subject_id"]) == ("keycloak", "REFRESH_TOKEN_ERROR", USER)
        assert (r["outcome"], r["reason"]) == ("FAILURE", "User disabled")
        assert (r["is_revocation"], r["revocation_scope"]) == (False, None)
        assert r["actor"] is None and r["session_id"] is None  # "null" is absent, not a user called null
    assert (refresh2["occurred_at"] - refresh1["occurred_at"]).total_seconds() == pytest.approx(0.009674)
    # Pomerium's error: the IdP's OAuth error, readable after redaction
    assert (pomerium["subject_id"], pomerium["session_id"], pomerium["revocation_scope"]) == (USER, SID, "session")
    assert pomerium["reason"] == 'invalid_grant "User disabled"'


@pytest.mark.parametrize("logger", ["io.quarkus", "org.keycloak.services", "org.infinispan.CLUSTER",
                                    "org.keycloak.quarkus.runtime.hostname.DefaultHostnameProvider",
                                    "com.example.custom.Spi"])
def test_keycloak_quarkus_json_of_other_loggers_is_ignored(logger: str) -> None:
    record = quarkus(logger, "KC-SERVICES0009: Added user 'admin' to realm 'master'", ts="2026-03-02T13:59:02.1Z")
    res = run(record, KC_DISABLE)
    assert res.rejected == [] and res.written == 1
    assert dict(res.ignored) == {("idp_event", "not_an_event"): 1}


def test_keycloak_quarkus_json_event_logger_without_event_is_quarantined() -> None:
    # Same rule as the ECS form: the events logger writing something that is not an event is
    # unexpected, so it is kept in quarantine rather than silently counted.
    res = run(quarkus("org.keycloak.events", "something else entirely", ts="2026-03-02T13:59:02.1Z"))
    assert res.written == 0 and [r.reason for r in res.rejected] == [Reason.UNKNOWN_SHAPE]


def test_keycloak_legacy_unquoted_refresh_error_and_json_event() -> None:
    text = ("2026-03-02 14:08:29,511 WARN  [org.keycloak.events] (executor-thread-7) type=REFRESH_TOKEN_ERROR, "
            f"realmId={ZT}, clientId=pomerium, userId=null, ipAddress=127.0.0.1, error=invalid_token, "
            f"reason=User disabled, grant_type=refresh_token, refresh_token_sub={USER}")
    event_json = {"time": 1772460509511, "type": "REFRESH_TOKEN_ERROR", "realmId": ZT, "clientId": "pomerium",
                  "userId": None, "ipAddress": "127.0.0.1", "error": "invalid_token",
                  "details": {"reason": "User disabled", "grant_type": "refresh_token", "refresh_token_sub": USER}}
    res = run(text, event_json)
    assert res.rejected == []
    for r in rows(res):
        assert (r["event_type"], r["subject_id"], r["outcome"], r["reason"], r["is_revocation"]) == (
            "REFRESH_TOKEN_ERROR", USER, "FAILURE", "User disabled", False)


def test_keycloak_user_id_null_everywhere_is_absent() -> None:
    res = run(quarkus("org.keycloak.events", f'type="LOGIN_ERROR", realmId="{ZT}", realmName="zt", '
                      'clientId="pomerium", userId="null", ipAddress="192.0.2.2", error="user_not_found", '
                      'username="mallory"', ts="2026-03-02T14:00:00.000001Z", level="WARN"))
    (r,) = rows(res)
    assert (r["subject_id"], r["actor"], r["subject_login"]) == (None, None, "mallory")
    assert (r["outcome"], r["reason"]) == ("FAILURE", "user_not_found")  # no reason detail: the error


def test_keycloak_admin_update_user_26_text_line() -> None:
    line = f"2026-03-02 14:07:31,418 INFO  [org.keycloak.events] (executor-thread-3) {DISABLE_MSG}"
    (r,) = rows(run(line))
    assert (r["event_type"], r["subject_id"], r["is_revocation"], r["actor"]) == (
        "admin:UPDATE:USER", USER, False, ADMIN)


# --- reason for the other IdPs ------------------------------------------------------------------


def test_okta_outcome_reason() -> None:
    lock = {"actor": {"id": "00u1", "type": "User", "alternateId": "carol@example.com"},
            "eventType": "user.account.lock", "outcome": {"result": "FAILURE", "reason": "LOCKED_OUT"},
            "published": "2026-03-02T09:00:00.412Z", "target": None, "uuid": "e-1", "version": "0"}
    (r,) = rows(run(lock))
    assert (r["outcome"], r["reason"]) == ("FAILURE", "LOCKED_OUT")
    lock["outcome"] = {"result": "SUCCESS", "reason": None}
    (r,) = rows(run(lock))
    assert r["reason"] is None


def test_entra_result_reason() -> None:
    inner = {"id": "Directory_1", "category": "UserManagement", "result": "failure",
             "resultReason": "Insufficient privileges to complete the operation.",
             "activityDisplayName": "Disable account", "activityDateTime": "2026-03-02T13:40:05.1234567+00:00",
             "initiatedBy": {"user": {"id": "adm", "userPrincipalName": "it-admin@contoso.example"}},
             "targetResources": [{"id": "oid", "type": "User", "userPrincipalName": "erin@contoso.example"}]}
    diag = {"time": "2026-03-02T13:40:05.1234567Z", "operationName": "Disable account", "category": "AuditLogs",
            "tenantId": "t", "properties": {**inner, "resultReason": ""}}
    got = {r["origin"]: r for r in rows(run(inner, diag))}
    assert got["file:kc.jsonl:1"]["reason"] == "Insufficient privileges to complete the operation."
    assert got["file:kc.jsonl:1"]["is_revocation"] is False
    assert got["file:kc.jsonl:2"]["reason"] is None  # "" on success


@pytest.mark.parametrize(("error", "reason"), [
    ('oauth2: "invalid_grant" "User disabled"', 'invalid_grant "User disabled"'),
    ('oauth2: "invalid_grant" "Token is not active"', 'invalid_grant "Token is not active"'),
    ('oauth2: "invalid_grant"', "invalid_grant"),
    # older golang.org/x/oauth2: status line and body
    ('oauth2: cannot fetch token: 400 Bad Request\nResponse: {"error":"invalid_grant",'
     '"error_description":"Session not active"}', 'invalid_grant "Session not active"'),
    ("context deadline exceeded", "context deadline exceeded"),
    (None, None),
])
def test_pomerium_error_is_the_reason(error: str | None, reason: str | None) -> None:
    line = dict(POMERIUM_DELETE, error=error) if error is not None else {
        k: v for k, v in POMERIUM_DELETE.items() if k != "error"}
    (r,) = rows(run(line))
    assert r["reason"] == reason and r["revocation_scope"] == "session"


def test_reason_is_cut_and_masked() -> None:
    long_error = "upstream said: " + "x" * 5000
    assert len(pomerium_reason(long_error) or "") == 5015  # the builder's cap applies in the row
    (r,) = rows(run(dict(POMERIUM_DELETE, error=long_error)))
    assert len(r["reason"]) == REASON_MAX_CHARS and r["reason"].endswith("…")
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    (r,) = rows(run(dict(POMERIUM_DELETE, error=f"refresh failed: refresh_token: {jwt}")))
    assert jwt not in r["reason"] and "***" in r["reason"]


def test_revocation_list_reason() -> None:
    (r,) = rows(run({"kind": "revocation", "revoked_at": "2026-03-02T08:00:00Z", "subject": "m@example.com",
                     "reason": "left the company"}))
    assert (r["event_type"], r["reason"]) == ("left the company", "left the company")


# --- Pomerium authorize: the line before each denial after revocation (§1.4) --------------------


def test_pomerium_clearing_session_line_is_ignored_not_quarantined() -> None:
    res = run(CLEARING, DENIED)
    assert res.rejected == []
    assert dict(res.ignored) == {("proxy_decision", "not_an_event"): 1}
    (d,) = rows(res, "proxy_decision")
    assert (d["is_allowed"], d["user_id"], d["session_id"], d["allow_reasons"]) == (
        False, None, None, ["user-unauthenticated"])
    # with the source named, too (ingest --source proxy_decision)
    raw = [orjson.dumps(CLEARING)]
    named = process(RawBatch(raw, LineOrigins("p.jsonl"), source="proxy_decision"), CTX)
    assert named.rejected == [] and dict(named.ignored) == {("proxy_decision", "not_an_event"): 1}

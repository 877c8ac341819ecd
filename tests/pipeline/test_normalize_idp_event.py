"""idp_event normalizer: each IdP format and the revocation list, positive and negative.

Formats: docs/proxy-and-idp.md §3 (Okta, Entra, Google Workspace, Keycloak), §1.4 (Pomerium
identity_manager), §2.1 (Teleport locks); the revocation list is docs/revocation-list.md. Records
are written for the tests; the corpus is checked in test_corpus_proxy_idp.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ztaudit.core.quarantine import Reason
from ztaudit.core.schema import IDP_EVENT
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped
from ztaudit.pipeline.normalize.idp_event import IdpEventNormalizer
from ztaudit.pipeline.redact import redact_rejects

N = IdpEventNormalizer()
CTX = NormalizeContext(cluster="demo", ingested_at=datetime(2026, 11, 27, tzinfo=UTC))

CAROL = {"id": "00u5cq2r7TwVb3Hy6d1e", "type": "User", "alternateId": "carol@example.com", "displayName": "Carol"}
ADMIN = {"id": "00u5adm1n7XqWz2Lp8k4", "type": "User", "alternateId": "okta-admin@example.com", "displayName": "Admin"}


def okta(event_type: str, actor: dict[str, Any], target: list[dict[str, Any]] | None,
         result: str = "SUCCESS") -> dict[str, Any]:
    return {"actor": actor, "authenticationContext": {"externalSessionId": "102ActorSession"},
            "displayMessage": "x", "eventType": event_type, "outcome": {"result": result, "reason": None},
            "published": "2026-11-24T09:00:00.412Z", "severity": "INFO", "target": target, "uuid": "e-1",
            "version": "0"}


def entra_inner(activity: str, result: str = "success") -> dict[str, Any]:
    return {"id": "Directory_1", "category": "UserManagement", "result": result, "activityDisplayName": activity,
            "activityDateTime": "2026-11-23T13:40:05.1234567+00:00", "loggedByService": "Core Directory",
            "initiatedBy": {"user": {"id": "adm", "userPrincipalName": "it-admin@contoso.example"}},
            "targetResources": [{"id": "8b1d-oid", "type": "User", "userPrincipalName": "erin@contoso.example",
                                 "modifiedProperties": []},
                                {"id": "grp", "type": "Group", "displayName": "k8s-admins"}]}


def entra_diag(activity: str) -> dict[str, Any]:
    return {"time": "2026-11-23T13:40:05.1234567Z", "operationName": activity, "category": "AuditLogs",
            "tenantId": "t", "properties": entra_inner(activity)}


def google(app: str, name: str, params: list[dict[str, str]] | None = None,
           actor: str = "gadmin@example.org") -> dict[str, Any]:
    return {"kind": "admin#reports#activity",
            "id": {"time": "2026-11-22T18:02:13.517Z", "uniqueQualifier": "1", "applicationName": app},
            "actor": {"callerType": "USER", "email": actor},
            "events": [{"type": "USER_SETTINGS", "name": name, "parameters": params or []}]}


def pomerium(message: str, **extra: Any) -> dict[str, Any]:
    return {"level": "error", "service": "identity_manager", **extra, "time": "2026-11-24T10:06:12+01:00",
            "message": message}


def run(values: list[Any], ctx: NormalizeContext = CTX) -> tuple[list[dict[str, Any]], list[Any]]:
    recs: list[Unwrapped] = []
    for v in values:
        got = N.parse_text(v) if isinstance(v, str) else N.unwrap(v)
        assert got is not None, v
        recs.extend(got)
    table, rejected = N.to_table(recs, [f"t:{i}" for i in range(len(recs))], ctx)
    assert table.schema == IDP_EVENT
    return table.to_pylist(), rejected


def one(value: Any) -> dict[str, Any]:
    rows, rejected = run([value])
    assert rejected == [] and len(rows) == 1
    return rows[0]


def rev(row: dict[str, Any]) -> tuple[bool, str | None]:
    return row["is_revocation"], row["revocation_scope"]


# --- Okta (§3.1) ------------------------------------------------------------------------------


def test_okta_deactivate() -> None:
    row = one(okta("user.lifecycle.deactivate", ADMIN, [CAROL]))
    assert row["idp"] == "okta" and row["event_type"] == "user.lifecycle.deactivate"
    assert rev(row) == (True, "identity")
    assert row["occurred_at"] == datetime(2026, 11, 24, 9, 0, 0, 412000, tzinfo=UTC)
    assert (row["subject_id"], row["subject_login"]) == ("00u5cq2r7TwVb3Hy6d1e", "carol@example.com")
    assert row["actor"] == "okta-admin@example.com" and row["outcome"] == "SUCCESS"
    # the externalSessionId is the admin's session, not carol's
    assert row["session_id"] is None
    assert row["origin"] == "t:0" and row["ingested_at"] == CTX.ingested_at


@pytest.mark.parametrize(("event_type", "scope"), [
    ("user.lifecycle.suspend", "identity"),
    ("user.lifecycle.delete.initiated", "identity"),
    ("user.session.clear", "session"),
    ("user.authentication.universal_logout", "session"),
    ("application.user_membership.remove", "grant"),
    ("user.lifecycle.unsuspend", None),
    ("user.account.lock", None),
    ("user.lifecycle.activate", None),
])
def test_okta_revocation_types(event_type: str, scope: str | None) -> None:
    row = one(okta(event_type, ADMIN, [CAROL, {"id": "0oa1", "type": "AppInstance", "alternateId": "Pomerium"}]))
    assert rev(row) == (scope is not None, scope)
    assert row["subject_login"] == "carol@example.com"


def test_okta_logout_is_kept_but_not_a_revocation() -> None:
    # user.session.end ends the Okta browser session only (see idp_event module docstring).
    row = one(okta("user.session.end", CAROL, None))
    assert rev(row) == (False, None)
    assert row["subject_login"] == "carol@example.com" and row["session_id"] == "102ActorSession"


def test_okta_failed_deactivate_revokes_nothing() -> None:
    assert rev(one(okta("user.lifecycle.deactivate", ADMIN, [CAROL], result="FAILURE"))) == (False, None)


def test_okta_event_hook_and_array() -> None:
    hook = {"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
            "data": {"events": [okta("user.lifecycle.suspend", ADMIN, [CAROL]),
                                okta("user.session.clear", ADMIN, [CAROL])]}}
    rows, _ = run([hook])
    assert [r["event_type"] for r in rows] == ["user.lifecycle.suspend", "user.session.clear"]
    got = N.unwrap([okta("user.session.start", CAROL, None)])
    assert got is not None and len(got) == 1


def test_okta_missing_published() -> None:
    ev = okta("user.lifecycle.deactivate", ADMIN, [CAROL])
    ev["published"] = None
    rows, rejected = run([ev])
    assert rows == [] and [r.reason for r in rejected] == [Reason.MISSING_FIELD]


# --- Entra (§3.2) -----------------------------------------------------------------------------


@pytest.mark.parametrize(("activity", "scope"), [
    ("Update StsRefreshTokenValidFrom Timestamp", "token"),
    ("Disable account", "identity"),
    ("Delete user", "identity"),
    ("Hard Delete user", "identity"),
    ("Remove member from group", "grant"),
    ("Update user", None),
    ("Add member to group", None),
])
def test_entra_both_shapes(activity: str, scope: str | None) -> None:
    for value in (entra_diag(activity), entra_inner(activity)):
        row = one(value)
        assert row["idp"] == "entra" and row["event_type"] == activity
        assert rev(row) == (scope is not None, scope)
        assert (row["subject_id"], row["subject_login"]) == ("8b1d-oid", "erin@contoso.example")
        assert row["actor"] == "it-admin@contoso.example"
        assert row["occurred_at"] == datetime(2026, 11, 23, 13, 40, 5, 123456, tzinfo=UTC)


def test_entra_failure_and_envelopes() -> None:
    assert rev(one(entra_inner("Disable account", result="failure"))) == (False, None)
    rows, _ = run([{"records": [entra_diag("Disable account"), entra_diag("Delete user")]}])
    assert len(rows) == 2
    rows, _ = run([{"@odata.context": "x", "value": [entra_inner("Delete user")]}])
    assert rows[0]["event_type"] == "Delete user"
    app = entra_inner("Disable account")
    app["initiatedBy"] = {"app": {"displayName": "Lifecycle Workflows", "servicePrincipalId": "sp"}}
    assert one(app)["actor"] == "Lifecycle Workflows"


# --- Google Workspace (§3.3) ------------------------------------------------------------------


@pytest.mark.parametrize(("app", "name", "scope"), [
    ("admin", "SUSPEND_USER", "identity"), ("admin", "DELETE_USER", "identity"),
    ("admin", "REMOVE_GROUP_MEMBER", "grant"), ("admin", "UNSUSPEND_USER", None),
    ("login", "account_disabled_hijacked", "identity"), ("login", "account_disabled_password_leak", "identity"),
    ("login", "login_success", None),
])
def test_google(app: str, name: str, scope: str | None) -> None:
    row = one(google(app, name, [{"name": "USER_EMAIL", "value": "ivan@example.org"}]))
    assert row["idp"] == "google_workspace" and row["event_type"] == name
    assert rev(row) == (scope is not None, scope)
    assert row["subject_login"] == "ivan@example.org"
    assert row["occurred_at"] == datetime(2026, 11, 22, 18, 2, 13, 517000, tzinfo=UTC)


def test_google_login_disable_names_the_actor_and_events_split() -> None:
    row = one(google("login", "account_disabled_spamming", actor="kim@example.org"))
    assert row["subject_login"] == "kim@example.org" and rev(row) == (True, "identity")
    act = google("admin", "REMOVE_GROUP_MEMBER", [{"name": "USER_EMAIL", "value": "judy@example.org"}])
    act["events"].append({"type": "USER_SETTINGS", "name": "DELETE_USER",
                          "parameters": [{"name": "USER_EMAIL", "value": "judy@example.org"}]})
    rows, _ = run([act])
    assert [(r["event_type"], r["revocation_scope"]) for r in rows] == [("REMOVE_GROUP_MEMBER", "grant"),
                                                                        ("DELETE_USER", "identity")]
    rows, _ = run([{"kind": "admin#reports#activities", "items": [google("admin", "SUSPEND_USER")]}])
    assert len(rows) == 1


# --- Keycloak (§3.4) --------------------------------------------------------------------------

REALM = "b3d5f7a9"
KC_USER = "3f5a7c9e-1b2d-4e68-9a0c-c2e4f6a8b1d3"


def kc(type_: str, **extra: Any) -> dict[str, Any]:
    return {"time": 1795168800000, "type": type_, "realmId": REALM, "clientId": "pomerium", "userId": KC_USER,
            "ipAddress": "198.51.100.120", **extra}


@pytest.mark.parametrize(("type_", "scope"), [
    ("LOGOUT", "session"), ("REVOKE_GRANT", "grant"), ("DELETE_ACCOUNT", "identity"),
    ("USER_DISABLED_BY_PERMANENT_LOCKOUT", "identity"), ("USER_DISABLED_BY_TEMPORARY_LOCKOUT", None),
    ("LOGIN", None), ("LOGOUT_ERROR", None), ("REFRESH_TOKEN", None),
])
def test_keycloak_user_events(type_: str, scope: str | None) -> None:
    row = one(kc(type_, sessionId="sess-1", details={"username": "lena@example.net"}))
    assert row["idp"] == "keycloak" and row["event_type"] == type_
    assert rev(row) == (scope is not None, scope)
    assert (row["subject_id"], row["subject_login"], row["session_id"]) == (KC_USER, "lena@example.net", "sess-1")
    assert row["occurred_at"] == datetime(2026, 11, 20, 10, tzinfo=UTC)


def test_keycloak_error_event_revokes_nothing() -> None:
    row = one(kc("LOGOUT", error="session_expired"))
    assert rev(row) == (False, None) and row["outcome"] == "FAILURE"


def admin(op: str, path: str, representation: Any = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"time": 1795168800000, "realmId": REALM,
                          "authDetails": {"realmId": REALM, "clientId": "security-admin-console", "userId": "admin-1",
                                          "ipAddress": "198.51.100.121"},
                          "operationType": op, "resourceType": "USER", "resourcePath": path}
    if representation is not None:
        ev["representation"] = representation
    return ev


@pytest.mark.parametrize(("event", "scope", "subject", "session"), [
    (admin("UPDATE", f"users/{KC_USER}", orjson.dumps({"enabled": False}).decode()), "identity", KC_USER, None),
    (admin("UPDATE", f"users/{KC_USER}", {"enabled": False}), "identity", KC_USER, None),
    (admin("UPDATE", f"users/{KC_USER}", {"enabled": True}), None, KC_USER, None),
    (admin("UPDATE", f"users/{KC_USER}"), None, KC_USER, None),  # no representation: not guessed
    (admin("DELETE", f"users/{KC_USER}"), "identity", KC_USER, None),
    (admin("ACTION", f"users/{KC_USER}/logout"), "session", KC_USER, None),
    (admin("DELETE", f"users/{KC_USER}/groups/g-1"), "grant", KC_USER, None),
    (admin("DELETE", "sessions/sess-9"), "session", None, "sess-9"),
    (admin("CREATE", "users"), None, None, None),
])
def test_keycloak_admin_events(event: dict[str, Any], scope: str | None, subject: str | None,
                               session: str | None) -> None:
    row = one(event)
    assert rev(row) == (scope is not None, scope)
    assert row["subject_id"] == subject and row["session_id"] == session
    assert row["actor"] == "admin-1" and row["event_type"].startswith("admin:")


def test_keycloak_admin_enable_is_marked_in_the_event_type() -> None:
    """An UPDATE whose representation enables the user ends a disable's judgement (detectors/
    revocations_view.py): its event type says so; a disable or an UPDATE without representation does not."""
    kinds = [one(admin("UPDATE", f"users/{KC_USER}", rep))["event_type"]
             for rep in ({"enabled": True}, orjson.dumps({"enabled": True, "email": "a@b"}).decode(),
                         {"enabled": False}, None, {"firstName": "Dana"})]
    assert kinds == ["admin:UPDATE:USER:enabled"] * 2 + ["admin:UPDATE:USER"] * 3


def test_keycloak_jboss_text_quoted_and_unquoted() -> None:
    quoted = ('2026-11-24 12:31:44,918 INFO  [org.keycloak.events] (executor-thread-2) type="LOGOUT", '
              f'realmId="{REALM}", realmName="lab", clientId="pomerium", userId="{KC_USER}", sessionId="s-2", '
              'ipAddress="198.51.100.122", redirect_uri="https://a.example.net/x, y"')
    bare = ("2026-11-24 13:02:07,553 WARN  [org.keycloak.events] (default task-12) "
            "type=USER_DISABLED_BY_TEMPORARY_LOCKOUT, "
            f"realmId={REALM}, clientId=pomerium, userId={KC_USER}, ipAddress=203.0.113.99, username=nina@example.net")
    adm = (f"2026-11-24 13:05:59,010 INFO  [org.keycloak.events] (default task-3) operationType=DELETE, "
           f"realmId={REALM}, clientId=security-admin-console, userId=admin-1, ipAddress=198.51.100.121, "
           "resourceType=USER_SESSION, resourcePath=sessions/s-2")
    rows, rejected = run([quoted, bare, adm])
    assert rejected == []
    assert [(r["event_type"], r["revocation_scope"]) for r in rows] == [
        ("LOGOUT", "session"), ("USER_DISABLED_BY_TEMPORARY_LOCKOUT", None),
        ("admin:DELETE:USER_SESSION", "session")]
    assert rows[0]["session_id"] == "s-2" and rows[0]["subject_id"] == KC_USER
    assert rows[0]["occurred_at"] == datetime(2026, 11, 24, 12, 31, 44, 918000, tzinfo=UTC)
    assert rows[1]["subject_login"] == "nina@example.net"
    assert rows[2]["session_id"] == "s-2" and rows[2]["actor"] == "admin-1"


def test_keycloak_text_time_without_zone_is_read_in_the_idp_offset_not_the_proxy_one() -> None:
    """A jboss-logging line's time has no zone: it is the Keycloak server's, read in
    correlation.idp_utc_offset (default UTC); the proxy's offset (proxy_utc_offset, e.g. for
    oauth2-proxy lines) used to move every Keycloak event too, and every latency with it."""
    line = (f"2026-11-24 12:31:44,918 INFO  [org.keycloak.events] (executor-thread-2) type=LOGOUT, "
            f"realmId={REALM}, userId={KC_USER}, sessionId=s-2")
    at = {name: run([line], ctx)[0][0]["occurred_at"] for name, ctx in (
        ("utc", CTX), ("proxy+1", NormalizeContext(cluster="demo", proxy_utc_offset="+01:00")),
        ("idp+1", NormalizeContext(cluster="demo", idp_utc_offset="+01:00")))}
    assert at["utc"] == at["proxy+1"] == datetime(2026, 11, 24, 12, 31, 44, 918000, tzinfo=UTC)
    assert at["idp+1"] == datetime(2026, 11, 24, 11, 31, 44, 918000, tzinfo=UTC)


def test_keycloak_text_without_date_is_bad_timestamp() -> None:
    line = "21:01:45,403 WARN  [org.keycloak.events] (default task-1) type=LOGOUT, realmId=test, userId=u"
    rows, rejected = run([line])
    assert rows == [] and [r.reason for r in rejected] == [Reason.BAD_TIMESTAMP]
    assert rejected[0].raw == line.encode()


def test_keycloak_ecs_json() -> None:
    ecs = {"@timestamp": "2026-11-25T06:40:02.123456789Z", "log.logger": "org.keycloak.events", "log.level": "INFO",
           "message": f'type="DELETE_ACCOUNT", realmId="{REALM}", clientId="account-console", userId="{KC_USER}", '
                      'username="omar@example.net"', "service.name": "Keycloak"}
    row = one(ecs)
    assert (row["event_type"], row["revocation_scope"], row["subject_login"]) == (
        "DELETE_ACCOUNT", "identity", "omar@example.net")
    assert row["occurred_at"] == datetime(2026, 11, 25, 6, 40, 2, 123456, tzinfo=UTC)
    other = dict(ecs, message="Keycloak 26.4.2 on JVM started")
    rows, rejected = run([other])
    assert rows == [] and [r.reason for r in rejected] == [Reason.UNKNOWN_SHAPE]


# --- Pomerium identity_manager (§1.4) ---------------------------------------------------------


@pytest.mark.parametrize(("message", "scope"), [
    ("failed to refresh oauth2 token, deleting session", "session"),
    ("failed to update user info, deleting session", "session"),
    ("deleting expired session", "session"),
    ("no authenticator defined, deleting session", "session"),
    ("deleting session", "session"),
    ("failed to refresh oauth2 token", None),
    ("refreshing session", None),
])
def test_pomerium_identity_manager(message: str, scope: str | None) -> None:
    row = one(pomerium(message, **{"user-id": "00u5cq", "session-id": "s-1"}))
    assert row["idp"] == "pomerium" and row["event_type"] == message
    assert rev(row) == (scope is not None, scope)
    assert (row["subject_id"], row["session_id"]) == ("00u5cq", "s-1")
    assert row["occurred_at"] == datetime(2026, 11, 24, 9, 6, 12, tzinfo=UTC)


def test_pomerium_underscore_keys_and_missing_time() -> None:
    row = one(pomerium("failed to refresh oauth2 token, deleting session", user_id="u-2", session_id="s-2",
                       config_file_source="/etc/pomerium/config.yaml", bootstrap=True))
    assert (row["subject_id"], row["session_id"], row["revocation_scope"]) == ("u-2", "s-2", "session")
    no_time = pomerium("deleting session", **{"session-id": "s"})
    no_time.pop("time")
    rows, rejected = run([no_time])
    assert rows == [] and [r.reason for r in rejected] == [Reason.MISSING_FIELD]


# --- Teleport (§2.1) --------------------------------------------------------------------------


def test_teleport_locks() -> None:
    lock = {"code": "TLK00I", "event": "lock.created", "target": {"user": "erin@example.com"},
            "time": "2026-11-23T13:41:00.000000Z", "updated_by": "secops@example.com", "user": "secops@example.com"}
    row = one(lock)
    assert (row["idp"], row["subject_login"], row["actor"]) == ("teleport", "erin@example.com", "secops@example.com")
    assert rev(row) == (True, "identity")
    assert rev(one(dict(lock, target={"role": "admin"}))) == (False, None)
    assert rev(one(dict(lock, event="lock.deleted"))) == (False, None)
    deleted = one({"code": "T1004I", "event": "user.delete", "name": "erin", "time": "2026-11-23T13:41:00Z",
                   "user": "secops@example.com"})
    assert (deleted["subject_login"], deleted["revocation_scope"]) == ("erin", "identity")


# --- revocation list (docs/revocation-list.md) ------------------------------------------------


def test_revocation_list_jsonl() -> None:
    row = one({"kind": "revocation", "revoked_at": "2026-11-22T19:30:00Z", "subject": "mallory@example.com",
               "subject_id": "00u5ml", "scope": "identity", "reason": "contract ended", "actor": "hr"})
    assert (row["idp"], row["event_type"], row["subject_login"], row["subject_id"], row["actor"]) == (
        "list", "contract ended", "mallory@example.com", "00u5ml", "hr")
    assert rev(row) == (True, "identity")
    row = one({"kind": "revocation", "revoked_at": "2026-11-26T08:00:00+01:00", "session_id": "s-1"})
    assert (row["session_id"], row["revocation_scope"], row["event_type"]) == ("s-1", "identity", "revocation")
    assert row["occurred_at"] == datetime(2026, 11, 26, 7, tzinfo=UTC)


def test_revocation_list_csv_rows() -> None:
    header = ["revoked_at", "subject", "subject_id", "session_id", "scope", "reason", "actor"]
    row = one(dict(zip(header, ["2026-11-21T08:00:00Z", "oscar@example.com", "", "", "grant", "", ""], strict=True)))
    assert (row["subject_login"], row["subject_id"], row["revocation_scope"], row["actor"]) == (
        "oscar@example.com", None, "grant", None)
    # the minimum: revoked_at and one subject column
    assert one({"revoked_at": "2026-11-21T08:00:00Z", "subject": "x@example.com"})["revocation_scope"] == "identity"


@pytest.mark.parametrize(("row", "reason"), [
    ({"kind": "revocation", "revoked_at": "2026-11-21T08:00:00Z", "subject": "x", "scope": "everything"},
     Reason.WRONG_TYPE),
    ({"kind": "revocation", "revoked_at": "2026-11-21T08:00:00Z", "subject": "", "subject_id": ""},
     Reason.MISSING_FIELD),
    ({"kind": "revocation", "subject": "x"}, Reason.MISSING_FIELD),
    ({"kind": "revocation", "revoked_at": "last tuesday", "subject": "x"}, Reason.BAD_TIMESTAMP),
    ({"kind": "revocation", "revoked_at": "2026-11-21T08:00:00Z", "subject": "x", "note": "?"},
     Reason.UNKNOWN_SHAPE),
])
def test_revocation_list_bad_rows(row: dict[str, Any], reason: Reason) -> None:
    rows, rejected = run([row])
    assert rows == [] and [r.reason for r in rejected] == [reason]


# --- what is not an IdP event -----------------------------------------------------------------

NOT_IDP: list[Any] = [
    {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "a", "stage": "ResponseComplete", "verb": "get",
     "requestReceivedTimestamp": "2026-11-20T10:00:00Z"},
    {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []},
    {"records": [{"category": "kube-audit", "properties": {"log": "{}"}}]},  # AKS Event Hub batch
    {"records": [entra_diag("Disable account"), {"category": "kube-audit", "properties": {"log": "{}"}}]},
    {"level": "info", "service": "authorize", "request-id": "r", "allow": True, "deny": False,
     "time": "2026-11-24T10:06:12+01:00", "message": "authorize check"},
    {"level": "info", "service": "envoy", "message": "http-request", "time": "2026-11-24T10:06:12+01:00"},
    {"event": "kube.request", "kubernetes_cluster": "c", "time": "2020-11-12T20:35:44.978Z"},
    {"Action": "login", "Allowed": True, "AppDomain": "x", "Email": "a@b.c", "RayID": "1"},
    {"revoked_at": "2026-11-21T08:00:00Z"},  # no subject column: not the list format
    {"revoked_at": "2026-11-21T08:00:00Z", "subject": "x", "colour": "red"},  # header not ours
    {"kind": "revocations", "revoked_at": "2026-11-21T08:00:00Z", "subject": "x", "extra": 1},
    {"message": "type=LOGOUT, realmId=x"},  # no keycloak logger
    {"eventType": "com.okta.event_hook", "data": {"events": [{"kind": "Event"}]}},
    [], [okta("user.session.start", CAROL, None), {"kind": "Event"}], "text", 1, None,
]


@pytest.mark.parametrize("value", NOT_IDP, ids=range(len(NOT_IDP)))
def test_unwrap_rejects_other_kinds(value: Any) -> None:
    assert N.unwrap(copy.deepcopy(value)) is None


@pytest.mark.parametrize("line", [
    '198.51.100.77 - rid - bob [2026/11/25 16:20:05] host GET up "/x" HTTP/1.1 "ua" 200 1 0.1',
    "2026-11-24 12:31:44,918 INFO  [org.keycloak.services] (main) KC-SERVICES0050: Initializing master realm",
    "2026-11-24 12:31:44,918 INFO  [org.keycloak.events] (main) something else entirely",
    "", "type=LOGOUT, userId=u",
])
def test_parse_text_only_takes_keycloak_event_lines(line: str) -> None:
    assert N.parse_text(line) is None


# --- robustness: a field of any JSON type never raises --------------------------------------

ODD_VALUES: list[Any] = [None, 1, True, "x", [], {}, [1], {"a": 1}, 1e300, -1, 2**70, "2026-11-20T10:00:00Z"]
BASES: list[dict[str, Any]] = [
    okta("user.lifecycle.deactivate", ADMIN, [CAROL]), entra_diag("Disable account"), entra_inner("Delete user"),
    google("admin", "SUSPEND_USER", [{"name": "USER_EMAIL", "value": "a@b.c"}]), kc("LOGOUT"),
    admin("UPDATE", f"users/{KC_USER}", {"enabled": False}),
    pomerium("deleting session", **{"session-id": "s"}),
    {"code": "TLK00I", "event": "lock.created", "target": {"user": "e"}, "time": "2026-11-23T13:41:00Z"},
    {"kind": "revocation", "revoked_at": "2026-11-22T19:30:00Z", "subject": "m@example.com"},
]


@pytest.mark.parametrize("base", BASES, ids=range(len(BASES)))
def test_any_field_of_any_type_never_raises(base: dict[str, Any]) -> None:
    def paths(v: Any, pre: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else []
        for k, x in items:
            out.append((*pre, k))
            out.extend(paths(x, (*pre, k)))
        return out

    for path in paths(base):
        for odd in ODD_VALUES:
            value = copy.deepcopy(base)
            target = value
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = odd
            got = N.unwrap(value)
            if got is None:
                continue
            table, rejected = N.to_table(got, ["t:0"] * len(got), CTX)
            assert table.num_rows + len(rejected) == len(got), (path, odd)


def test_quarantined_raw_is_scrubbed() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    rows, rejected = run([{"kind": "revocation", "revoked_at": "soon", "subject": "x", "comment": f"token {jwt}"}])
    # process() scrubs every reject of its batch before anything is written (redact_rejects)
    rejected = redact_rejects(rejected)
    assert rows == [] and len(rejected) == 1 and jwt.encode() not in rejected[0].raw

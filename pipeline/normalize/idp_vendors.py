"""One row builder per identity-provider format: Okta, Microsoft Entra, Google Workspace, Keycloak,
Pomerium's identity manager, Teleport, and the plain revocation list (see :mod:`.idp_event`).

Each ``is_*`` recognises its format without raising; each ``*_row`` builds an ``idp_event`` row or
raises :class:`~ztaudit.pipeline.normalize.idp_common.Reject` with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.idp_common import (
    LIST_COLUMNS,
    LIST_SUBJECT,
    SCOPES,
    Reject,
    Row,
    as_list,
    as_map,
    as_str,
    dig,
    get_field,
    idp_row,
    parse_when,
    short_reason,
)
from ztaudit.pipeline.normalize.teleport import IDP_EVENTS as TELEPORT_IDP_EVENTS

# --- Okta (§3.1) ---------------------------------------------------------------------------------

_OKTA_SCOPE: Final[dict[str, str]] = {
    "user.lifecycle.deactivate": "identity",
    "user.lifecycle.suspend": "identity",
    "user.lifecycle.delete.initiated": "identity",
    "user.lifecycle.delete.completed": "identity",
    "user.session.clear": "session",
    "user.authentication.universal_logout": "session",
    "application.user_membership.remove": "grant",
    # user.session.end deliberately absent: see the module docstring.
}


def is_okta(v: Mapping[str, Any]) -> bool:
    return (isinstance(v.get("eventType"), str) and "published" in v
            and ("uuid" in v or isinstance(v.get("actor"), Mapping)))


def okta_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    event_type = str(rec["eventType"])
    occurred_at = parse_when(rec.get("published"), "okta event 'published'", ctx)
    actor = as_map(rec.get("actor"))
    targets = as_list(rec.get("target"))
    user = next((t for t in targets if isinstance(t, Mapping) and t.get("type") == "User"), None)
    self_event = user is None and dig(actor, "type") == "User"
    if self_event:
        user = actor  # sign-in / sign-out events name the user only as the actor
    outcome = dig(rec, "outcome", "result")
    # The event's externalSessionId is the *actor's* session: it names the subject's session only
    # when the subject acted on itself (an admin's "clear sessions" must not name the admin's).
    same = self_event or (user is not None and user.get("id") is not None and user.get("id") == actor.get("id"))
    scope = _OKTA_SCOPE.get(event_type)
    if outcome is not None and str(outcome).upper() not in ("SUCCESS", "ALLOW"):
        scope = None
    return idp_row(occurred_at, "okta", event_type, scope,
                subject_id=dig(user, "id"), subject_login=dig(user, "alternateId"),
                session_id=dig(rec, "authenticationContext", "externalSessionId") if same else None,
                actor=actor.get("alternateId") or actor.get("displayName"), outcome=outcome,
                reason=dig(rec, "outcome", "reason"))


# --- Microsoft Entra (§3.2) ----------------------------------------------------------------------

_ENTRA_SCOPE: Final[dict[str, str]] = {
    "update stsrefreshtokenvalidfrom timestamp": "token",
    "disable account": "identity",
    "delete user": "identity",
    "hard delete user": "identity",
    "remove member from group": "grant",
    "remove app role assignment from user": "grant",
}


def _is_entra_inner(v: Mapping[str, Any]) -> bool:
    return (isinstance(v.get("activityDisplayName"), str) and "activityDateTime" in v
            and ("targetResources" in v or "initiatedBy" in v))


def is_entra(v: Mapping[str, Any]) -> bool:
    if v.get("category") == "AuditLogs" and isinstance(v.get("properties"), Mapping):
        return True
    return _is_entra_inner(v)


def entra_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    inner = rec["properties"] if isinstance(rec.get("properties"), Mapping) else rec
    activity = as_str(inner.get("activityDisplayName")) or as_str(rec.get("operationName"))
    occurred_at = parse_when(inner.get("activityDateTime") or rec.get("time"), "entra activityDateTime", ctx)
    targets = as_list(inner.get("targetResources"))
    user = next((t for t in targets if isinstance(t, Mapping) and str(t.get("type", "")).lower() == "user"), None)
    by = as_map(inner.get("initiatedBy"))
    actor = (dig(by, "user", "userPrincipalName") or dig(by, "user", "id")
             or dig(by, "app", "displayName") or dig(by, "app", "servicePrincipalId"))
    result = inner.get("result") or rec.get("resultType")
    scope = _ENTRA_SCOPE.get((activity or "").lower())
    if result is not None and str(result).lower() not in ("success", ""):
        scope = None
    # resultReason: why the operation failed, in both the Graph and the Azure Monitor shape
    # (directoryAudit resource, Microsoft Graph v1.0); "" on success.
    return idp_row(occurred_at, "entra", activity, scope,
                subject_id=dig(user, "id"), subject_login=dig(user, "userPrincipalName"),
                actor=actor, outcome=result, reason=inner.get("resultReason") or rec.get("resultReason"))


# --- Google Workspace (§3.3) ---------------------------------------------------------------------

_GOOGLE_ADMIN_SCOPE: Final[dict[str, str]] = {
    "SUSPEND_USER": "identity",
    "DELETE_USER": "identity",
    "REMOVE_GROUP_MEMBER": "grant",
}


def is_google(v: Mapping[str, Any]) -> bool:
    return v.get("kind") == "admin#reports#activity" and isinstance(v.get("id"), Mapping)


def google_events(value: Any) -> list[Any]:
    """An activity's ``events``: the Reports API writes a list; Elastic's Google Workspace
    collector writes one activity per event with ``events`` as that one object. Both are read;
    anything else is no events."""
    if isinstance(value, Mapping):
        return [value]
    return as_list(value)


def _google_param(p: Mapping[str, Any]) -> Any:
    """A Reports API parameter's value: ``value``, else the first of ``multiValue`` (§3.3)."""
    if "value" in p:
        return p.get("value")
    multi = p.get("multiValue")
    return multi[0] if isinstance(multi, list) and multi else None


def google_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    app = as_str(dig(rec, "id", "applicationName"))
    occurred_at = parse_when(dig(rec, "id", "time"), "google activity id.time", ctx)
    events = google_events(rec.get("events"))
    ev = events[0] if events and isinstance(events[0], Mapping) else None
    if ev is None or as_str(ev.get("name")) is None:
        # Without the event name nothing says what happened (a SUSPEND_USER would be stored as a
        # nameless non-revocation): quarantine it instead.
        raise Reject(Reason.MISSING_FIELD, "google activity without an event name in 'events'")
    name = as_str(ev.get("name"))
    params = {str(p.get("name")): _google_param(p) for p in google_events(ev.get("parameters"))
              if isinstance(p, Mapping)}
    actor = dig(rec, "actor", "email")
    login = params.get("USER_EMAIL")
    scope: str | None = None
    if app == "admin":
        scope = _GOOGLE_ADMIN_SCOPE.get(name or "")
    elif app == "login" and (name or "").startswith("account_disabled"):
        scope = "identity"  # Google disabled the account itself; the user is the actor (§3.3)
        login = login or actor
    return idp_row(occurred_at, "google_workspace", name, scope, subject_login=login, actor=actor)


# --- Keycloak (§3.4) -----------------------------------------------------------------------------

_KEYCLOAK_USER_SCOPE: Final[dict[str, str]] = {
    "LOGOUT": "session",
    "REVOKE_GRANT": "grant",
    "DELETE_ACCOUNT": "identity",
    "USER_DISABLED_BY_PERMANENT_LOCKOUT": "identity",
    # USER_DISABLED_BY_TEMPORARY_LOCKOUT is not one: brute-force protection refuses new logins for a
    # while and lifts itself without any event, and existing sessions keep working (§3.4)
}
# key=value pairs of a jboss-logging event line; values quoted (26.x) or bare (older versions).
_KV: Final = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|\s*$)')
_JBOSS_LINE: Final = re.compile(
    r"^(?P<ts>(?:\d{4}-\d{2}-\d{2}[T ])?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+"
    r"(?P<level>[A-Z]+)\s+\[org\.keycloak\.events\]\s+(?:\([^)]*\)\s+)?(?P<body>(?:type|operationType)=.*)$"
)
_USERS_PATH: Final = re.compile(r"^users/([^/]+)(?:/(.*))?$")
#: Ends the event type of an admin UPDATE of a user whose representation says ``enabled: true``
#: (``admin:UPDATE:USER:enabled``): the user is enabled after it, which ends a disable's judgement.
KEYCLOAK_ENABLED_SUFFIX: Final = ":enabled"
_SESSIONS_PATH: Final = re.compile(r"^sessions/([^/]+)$")


def _kv(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _KV.finditer(body):
        key, value = m.group(1), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(.)', r"\1", value[1:-1])
        out[key] = value
    return out


#: The logger Keycloak's jboss-logging event listener writes to (JBossLoggingEventListenerProvider,
#: services/src/main/java/org/keycloak/events/log/): every user and admin event, one record each.
EVENTS_LOGGER: Final = "org.keycloak.events"


def is_quarkus_json_log(v: Mapping[str, Any]) -> bool:
    """A record of Quarkus' JSON log format (quarkus-logging-json, Keycloak ``--log-console-output=json``
    or ``--log-file-output=json``): ``timestamp``, ``sequence``, ``loggerClassName``, ``loggerName``,
    ``level``, ``message``, ``threadName``, ``hostName``, ... Called by :func:`is_keycloak` and by the
    normalizer's ``ignore``; never raises."""
    return (isinstance(v.get("loggerName"), str) and "message" in v and isinstance(v.get("level"), str)
            and ("loggerClassName" in v or "sequence" in v))


def is_keycloak(v: Mapping[str, Any]) -> bool:
    if v.get("log.logger") == EVENTS_LOGGER or dig(v, "log", "logger") == EVENTS_LOGGER:
        return isinstance(v.get("message"), str)
    if v.get("loggerName") == EVENTS_LOGGER and is_quarkus_json_log(v):
        # Quarkus JSON log (Keycloak's default JSON format, not ECS): the event is the jboss-logging
        # key=value text in ``message``, as in the console line (real-stack.md §4).
        return isinstance(v.get("message"), str)
    if isinstance(v.get("operationType"), str) and isinstance(v.get("resourcePath"), str):
        return "realmId" in v or isinstance(v.get("authDetails"), Mapping)
    return isinstance(v.get("type"), str) and "realmId" in v and ("time" in v or "userId" in v)


def _detail(ev: Mapping[str, Any], details: Mapping[str, Any], key: str) -> str | None:
    """An event detail: under ``details`` in event JSON, a top-level key in a parsed jboss-logging
    line (the listener writes the details after the event's own fields, as ``key=value``). Called
    by :func:`_keycloak_event`; None when absent, empty or ``"null"``, never raises."""
    return as_str(details.get(key)) or as_str(ev.get(key))


def _keycloak_event(ev: Mapping[str, Any], when: Any, ctx: NormalizeContext) -> Row:
    """A Keycloak user event or admin event, from JSON or parsed key=value pairs."""
    occurred_at = parse_when(when, "keycloak event time", ctx)
    details = as_map(ev.get("details"))
    op = as_str(ev.get("operationType"))
    if op is not None:  # admin event
        path = as_str(ev.get("resourcePath")) or ""
        auth = as_map(ev.get("authDetails")) or ev
        actor = as_str(auth.get("username")) or as_str(auth.get("userId"))
        subject_id = session_id = None
        scope: str | None = None
        enables = False
        mu, ms = _USERS_PATH.match(path), _SESSIONS_PATH.match(path)
        if mu:
            subject_id, rest = mu.group(1), mu.group(2) or ""
            rep = ev.get("representation")
            if isinstance(rep, str):
                try:
                    rep = orjson.loads(rep)
                except orjson.JSONDecodeError:
                    rep = None
            if op == "DELETE" and rest == "":
                scope = "identity"
            elif op == "UPDATE" and rest == "" and isinstance(rep, Mapping) and rep.get("enabled") is False:
                # Disabling a user is only visible with "include representation" on (§3.4); an
                # UPDATE without it is kept as a non-revocation rather than guessed.
                scope = "identity"
            elif op == "UPDATE" and rest == "" and isinstance(rep, Mapping) and rep.get("enabled") is True:
                # the user is enabled after it (re-enabled if it was disabled): a restoration, marked
                # in the event type (the representation itself is not kept: it may hold credentials)
                enables = True
            elif op == "ACTION" and rest == "logout":
                scope = "session"
            elif op == "DELETE" and (rest.startswith(("groups/", "role-mappings/", "consents/"))):
                scope = "grant"
        elif ms and op == "DELETE":
            session_id, scope = ms.group(1), "session"
        event_type = f"admin:{op}:{as_str(ev.get('resourceType')) or path.split('/', 1)[0] or '?'}"
        # resourceType is USER (26.x writes resourceType="USER") for users/<id>; an UPDATE without
        # representation stays admin:UPDATE:USER, a non-revocation (see above).
        if enables:
            event_type += KEYCLOAK_ENABLED_SUFFIX
        return idp_row(occurred_at, "keycloak", event_type, scope, subject_id=subject_id,
                    session_id=session_id, actor=actor, outcome=ev.get("error") and "FAILURE",
                    reason=ev.get("error"))
    etype = as_str(ev.get("type"))
    scope = _KEYCLOAK_USER_SCOPE.get(etype or "")
    error = as_str(ev.get("error"))
    if error:
        scope = None
    # ``userId`` is the literal text "null" when the event has no user (the jboss-logging listener
    # formats a null with String.valueOf); as_str treats it as absent.
    user_id = as_str(ev.get("userId"))
    # A refresh that fails because the user was disabled (TokenManager refuses the refresh token:
    # error "invalid_token" / "invalid_grant", reason "User disabled") is logged with userId
    # "null": the user is only in the detail refresh_token_sub, the refresh token's ``sub``
    # (Details.REFRESH_TOKEN_SUB; seen on Keycloak 26, real-stack.md §4). It is the IdP confirming
    # a disable, not a revocation itself: the revocation detector infers one from it.
    subject_id = user_id or _detail(ev, details, "refresh_token_sub")
    login = as_str(details.get("username")) or as_str(ev.get("username"))
    # User events are the user's own actions, except lockouts, which Keycloak's brute-force
    # detector performs (the event names no other actor).
    actor = None if (etype or "").startswith("USER_DISABLED_BY_") else user_id
    return idp_row(occurred_at, "keycloak", etype, scope, subject_id=subject_id, subject_login=login,
                session_id=ev.get("sessionId"), actor=actor,
                outcome="FAILURE" if error else None,
                reason=short_reason(_detail(ev, details, "reason"), error))


def keycloak_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    if rec.get("form") == "keycloak-text":
        ts = rec["ts"]
        if not re.match(r"^\d{4}-", ts):
            raise Reject(Reason.BAD_TIMESTAMP,
                          f"keycloak log line has a time of day ({ts}) but no date: configure the log format "
                          "with a date (quarkus.log.console.format %d{yyyy-MM-dd HH:mm:ss,SSS})")
        return _keycloak_event(rec["kv"], ts, ctx)
    message = rec.get("message")
    if isinstance(message, str):  # ECS or Quarkus JSON log; the event is the jboss-logging message
        kv = _kv(message)
        if "type" not in kv and "operationType" not in kv:
            raise Reject(Reason.UNKNOWN_SHAPE, "org.keycloak.events message without type= or operationType=")
        return _keycloak_event(kv, rec.get("@timestamp") or rec.get("timestamp"), ctx)
    return _keycloak_event(rec, rec.get("time"), ctx)


# --- Pomerium identity_manager (§1.4) ------------------------------------------------------------


# golang.org/x/oauth2 RetrieveError.Error() (token.go), which Pomerium logs as the ``error`` of a
# failed refresh: ``oauth2: "<error>" "<error_description>"`` (``%q``-quoted), or, when the body
# had no error code, ``oauth2: cannot fetch token: <status>\nResponse: <body>``.
_OAUTH2_CODE: Final = re.compile(r'oauth2: "((?:[^"\\]|\\.)*)"(?: "((?:[^"\\]|\\.)*)")?')
_OAUTH2_BODY: Final = re.compile(r"oauth2: cannot fetch token: [^\n]*\nResponse: (\{.*\})\s*$", re.S)
#: Longest ``error`` text looked into for the OAuth error (the patterns above are linear; this
#: bounds the work on a hostile line).
_ERROR_SCAN_CHARS: Final = 4096


def _go_unquote(s: str) -> str:
    """A Go ``%q`` string's content without its backslash escapes (``\\"`` -> ``"``); approximate
    for ``\\n``/``\\xNN`` forms, which a reason does not need exactly."""
    return re.sub(r"\\(.)", r"\1", s) if "\\" in s else s


def pomerium_reason(error: Any) -> str | None:
    """The reason of a Pomerium ``error`` field: the IdP's OAuth error and description
    (``invalid_grant "User disabled"``, real-stack.md §4) when the text is golang.org/x/oauth2's
    RetrieveError, else the text as logged. Called by :func:`pomerium_row`; never raises.

    Taking the OAuth error out of its ``oauth2: ...`` wrapping also keeps it readable after the
    central redaction step, whose header rule masks whatever follows a credential-like name and a
    colon (``oauth2:`` contains ``auth``, docs/redaction.md §2).
    """
    text = as_str(error)
    if text is None:
        return None
    head = text[:_ERROR_SCAN_CHARS]
    quoted = _OAUTH2_CODE.search(head)
    if quoted:
        code, desc = _go_unquote(quoted.group(1)), quoted.group(2)
        return f'{code} "{_go_unquote(desc)}"' if desc else code
    status = _OAUTH2_BODY.search(head)
    if status:
        try:
            body = orjson.loads(status.group(1))
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, Mapping) and (error_code := as_str(body.get("error"))) is not None:
            description = as_str(body.get("error_description"))
            return f'{error_code} "{description}"' if description else error_code
    return text


def is_pomerium(v: Mapping[str, Any]) -> bool:
    return v.get("service") == "identity_manager" and isinstance(v.get("message"), str)


def pomerium_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    message = str(rec["message"])
    occurred_at = parse_when(rec.get("time"), "pomerium identity_manager 'time'", ctx, proxy=True)
    # "... deleting session", "deleting expired session", "deleting session": the session is gone.
    # "failed to refresh oauth2 token" without "deleting" is a temporary error; the session stays.
    scope = "session" if "deleting" in message and "session" in message else None
    # ``error``: the refresh or user-info failure as Pomerium logged it (zerolog's error field,
    # pkg/identity/manager/manager.go), e.g. the IdP's ``invalid_grant "User disabled"``.
    return idp_row(occurred_at, "pomerium", message, scope,
                subject_id=get_field(rec, "user-id"), session_id=get_field(rec, "session-id"),
                reason=pomerium_reason(rec.get("error")))


# --- Teleport (§2.1) -----------------------------------------------------------------------------

def is_teleport(v: Mapping[str, Any]) -> bool:
    event = v.get("event")
    return isinstance(event, str) and event in TELEPORT_IDP_EVENTS and ("code" in v or "time" in v)


def teleport_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    event = str(rec["event"])
    occurred_at = parse_when(rec.get("time"), f"teleport {event} 'time'", ctx, proxy=True)
    actor = rec.get("updated_by") or rec.get("user")
    if event == "user.delete":
        return idp_row(occurred_at, "teleport", event, "identity", subject_login=rec.get("name"), actor=actor)
    target = rec.get("target")
    if event == "lock.created" and not (isinstance(target, Mapping) and any(as_str(v) for v in target.values())):
        # Teleport's LockCreate event carries the lock's LockTarget as ``target`` (user, role,
        # login, node, mfa_device, device, ...; events.proto). Without one nothing says who was
        # locked out: quarantined rather than stored as a non-revocation that hides a lock.
        raise Reject(Reason.MISSING_FIELD,
                     f"teleport lock.created without a 'target': the locked identity is unknown "
                     f"(see `tctl get lock/{as_str(rec.get('name')) or 'NAME'}`)")
    target_user = dig(rec, "target", "user")
    # A lock on a user locks that identity out and ends its sessions; locks on roles, nodes or
    # devices are kept as non-revocations (they do not name a person).
    scope = "identity" if event == "lock.created" and as_str(target_user) else None
    return idp_row(occurred_at, "teleport", event, scope, subject_login=target_user, actor=actor)


# --- plain revocation list (docs/revocation-list.md) ---------------------------------------------


def is_list(v: Mapping[str, Any]) -> bool:
    if v.get("kind") == "revocation":
        return True
    keys = set(v)
    # CSV rows carry every header key, empty or not; recognise by the header set.
    return "revoked_at" in keys and bool(keys & set(LIST_SUBJECT)) and keys <= LIST_COLUMNS


def revocation_list_row(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    unknown = set(rec) - LIST_COLUMNS
    if unknown:
        raise Reject(Reason.UNKNOWN_SHAPE, f"revocation list: unknown column(s) {sorted(unknown)}; "
                      f"allowed: {sorted(LIST_COLUMNS)}")
    occurred_at = parse_when(rec.get("revoked_at"), "revocation list 'revoked_at'", ctx, proxy=True)
    if not any(as_str(rec.get(k)) for k in LIST_SUBJECT):
        raise Reject(Reason.MISSING_FIELD, "revocation list: none of subject, subject_id, session_id is set")
    scope = (as_str(rec.get("scope")) or "identity").lower()
    if scope not in SCOPES:
        raise Reject(Reason.WRONG_TYPE, f"revocation list: scope {rec.get('scope')!r} is not one of {SCOPES}")
    return idp_row(occurred_at, "list", as_str(rec.get("reason")) or "revocation", scope,
                subject_id=rec.get("subject_id"), subject_login=rec.get("subject"),
                session_id=rec.get("session_id"), actor=rec.get("actor"), reason=rec.get("reason"))

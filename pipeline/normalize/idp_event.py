"""``idp_event``: identity lifecycle and revocation events, one row per event.

Formats (field references: ``shared/reference/proxy-idp-formats.md``, cited as §n):

* Okta System Log events (§3.1), bare, in a JSON array, or inside an event-hook envelope
  (``{"data":{"events":[...]}}``).
* Microsoft Entra audit records (§3.2): the Azure Monitor diagnostic shape (``category:
  "AuditLogs"``, activity in ``properties``; also inside an Event Hub ``{"records":[...]}``) and
  the Microsoft Graph ``directoryAudit`` shape (same inner object at top level; also a Graph page
  ``{"value":[...]}``).
* Google Workspace Admin SDK Reports activities (§3.3), one row per entry of ``events[]``.
* Keycloak events (§3.4): event JSON (``type``/``realmId``), admin-event JSON
  (``operationType``/``resourcePath``), the ECS-JSON console log whose ``message`` is a
  jboss-logging event line, and jboss-logging text lines (quoted 26.x and unquoted legacy values)
  through :meth:`parse_text`.
* Pomerium ``identity_manager`` session lines (§1.4), hyphen and underscore key styles.
* Teleport ``lock.created`` / ``lock.deleted`` / ``user.delete`` (§2.1).
* The plain revocation list (JSONL with ``"kind":"revocation"``, or CSV rows keyed by header;
  format in ``docs/revocation-list.md``).

Revocation semantics (``is_revocation`` / ``revocation_scope``), decided here once:

* ``identity``: the person can no longer authenticate (deactivate, suspend, disable, delete,
  Teleport user lock).
* ``session``: sessions are ended (Okta ``user.session.clear``, universal logout, Keycloak
  ``LOGOUT``, Pomerium session deletion). ``session_id`` null means all sessions of the subject.
* ``token``: refresh tokens are invalidated (Entra ``Update StsRefreshTokenValidFrom Timestamp``).
* ``grant``: one grant is removed (app unassignment, group-membership removal, Keycloak
  ``REVOKE_GRANT``).
* An event whose outcome is a failure revokes nothing (``is_revocation`` False).
* Okta ``user.session.end`` (a user logging out of Okta) is kept with ``is_revocation`` False: it
  ends the Okta browser session only; refresh tokens already held by the proxy keep working, so
  treating it as a revocation would report correct behaviour as "not enforced". Keycloak
  ``LOGOUT`` is different: it ends the Keycloak user session that the proxy's refresh token
  belongs to (the "Session not active" refresh failure of pomerium/pomerium#4063, §3.4), so it
  is a session revocation.

Everything else from these IdPs (logins, locks, updates) is kept with ``is_revocation`` False.
What is not claimed: Kubernetes audit events and proxy decisions (Pomerium ``authorize``/
``envoy`` lines, Teleport ``kube.request``), which return ``None`` from :meth:`unwrap`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import orjson
import pyarrow as pa

from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.core.schema import IDP_EVENT
from ztaudit.core.timeutil import TimestampError, parse_timestamp
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped
from ztaudit.pipeline.normalize.rowmap import RecordMapper, RecordRejected

__all__ = ["LIST_COLUMNS", "SCOPES", "IdpEventNormalizer"]

SOURCE: Final = "idp_event"
SCOPES: Final = ("identity", "session", "token", "grant")

#: Columns of the plain revocation list (docs/revocation-list.md). ``revoked_at`` is required and
#: at least one of ``subject``, ``subject_id``, ``session_id``.
LIST_COLUMNS: Final = frozenset(
    {"kind", "revoked_at", "subject", "subject_id", "session_id", "scope", "reason", "actor", "idp", "comment"}
)
_LIST_SUBJECT: Final = ("subject", "subject_id", "session_id")

Row = dict[str, Any]


_Reject = RecordRejected  # a builder's refusal: the record goes to quarantine

# --- small readers -------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value if value and value not in ("<null>", "null", "unknown") else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _dig(rec: Any, *path: str) -> Any:
    cur = rec
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _get(rec: Mapping[str, Any], key: str) -> Any:
    """A hyphen key or its underscore spelling (Pomerium key styles, §1.2 "Version drift")."""
    if key in rec:
        return rec[key]
    return rec.get(key.replace("-", "_"))


def _when(value: Any, what: str, ctx: NormalizeContext) -> Any:
    if value is None or value == "":
        raise _Reject(Reason.MISSING_FIELD, f"{what}: no event time, so it cannot be ordered against requests")
    try:
        return parse_timestamp(value, ctx.proxy_utc_offset)
    except TimestampError as exc:
        raise _Reject(Reason.BAD_TIMESTAMP, f"{what}: {exc}") from None


def _row(occurred_at: Any, idp: str, event_type: str | None, scope: str | None, *,
         subject_id: Any = None, subject_login: Any = None, session_id: Any = None, actor: Any = None,
         outcome: Any = None) -> Row:
    return {
        "occurred_at": occurred_at,
        "idp": idp,
        "event_type": event_type,
        "is_revocation": scope is not None,
        "subject_id": _str(subject_id),
        "subject_login": _str(subject_login),
        "session_id": _str(session_id),
        "actor": _str(actor),
        "outcome": _str(outcome),
        "revocation_scope": scope,
    }


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


def _is_okta(v: Mapping[str, Any]) -> bool:
    return (isinstance(v.get("eventType"), str) and "published" in v
            and ("uuid" in v or isinstance(v.get("actor"), Mapping)))


def _okta(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    event_type = str(rec["eventType"])
    occurred_at = _when(rec.get("published"), "okta event 'published'", ctx)
    actor = _map(rec.get("actor"))
    targets = _list(rec.get("target"))
    user = next((t for t in targets if isinstance(t, Mapping) and t.get("type") == "User"), None)
    self_event = user is None and _dig(actor, "type") == "User"
    if self_event:
        user = actor  # sign-in / sign-out events name the user only as the actor
    outcome = _dig(rec, "outcome", "result")
    # The event's externalSessionId is the *actor's* session: it names the subject's session only
    # when the subject acted on itself (an admin's "clear sessions" must not name the admin's).
    same = self_event or (user is not None and user.get("id") is not None and user.get("id") == actor.get("id"))
    scope = _OKTA_SCOPE.get(event_type)
    if outcome is not None and str(outcome).upper() not in ("SUCCESS", "ALLOW"):
        scope = None
    return _row(occurred_at, "okta", event_type, scope,
                subject_id=_dig(user, "id"), subject_login=_dig(user, "alternateId"),
                session_id=_dig(rec, "authenticationContext", "externalSessionId") if same else None,
                actor=actor.get("alternateId") or actor.get("displayName"), outcome=outcome)


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


def _is_entra(v: Mapping[str, Any]) -> bool:
    if v.get("category") == "AuditLogs" and isinstance(v.get("properties"), Mapping):
        return True
    return _is_entra_inner(v)


def _entra(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    inner = rec["properties"] if isinstance(rec.get("properties"), Mapping) else rec
    activity = _str(inner.get("activityDisplayName")) or _str(rec.get("operationName"))
    occurred_at = _when(inner.get("activityDateTime") or rec.get("time"), "entra activityDateTime", ctx)
    targets = _list(inner.get("targetResources"))
    user = next((t for t in targets if isinstance(t, Mapping) and str(t.get("type", "")).lower() == "user"), None)
    by = _map(inner.get("initiatedBy"))
    actor = (_dig(by, "user", "userPrincipalName") or _dig(by, "user", "id")
             or _dig(by, "app", "displayName") or _dig(by, "app", "servicePrincipalId"))
    result = inner.get("result") or rec.get("resultType")
    scope = _ENTRA_SCOPE.get((activity or "").lower())
    if result is not None and str(result).lower() not in ("success", ""):
        scope = None
    return _row(occurred_at, "entra", activity, scope,
                subject_id=_dig(user, "id"), subject_login=_dig(user, "userPrincipalName"),
                actor=actor, outcome=result)


# --- Google Workspace (§3.3) ---------------------------------------------------------------------

_GOOGLE_ADMIN_SCOPE: Final[dict[str, str]] = {
    "SUSPEND_USER": "identity",
    "DELETE_USER": "identity",
    "REMOVE_GROUP_MEMBER": "grant",
}


def _is_google(v: Mapping[str, Any]) -> bool:
    return v.get("kind") == "admin#reports#activity" and isinstance(v.get("id"), Mapping)


def _google(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    app = _str(_dig(rec, "id", "applicationName"))
    occurred_at = _when(_dig(rec, "id", "time"), "google activity id.time", ctx)
    events = _list(rec.get("events"))
    ev = events[0] if events and isinstance(events[0], Mapping) else {}
    name = _str(ev.get("name"))
    params = {str(p.get("name")): p.get("value") for p in _list(ev.get("parameters")) if isinstance(p, Mapping)}
    actor = _dig(rec, "actor", "email")
    login = params.get("USER_EMAIL")
    scope: str | None = None
    if app == "admin":
        scope = _GOOGLE_ADMIN_SCOPE.get(name or "")
    elif app == "login" and (name or "").startswith("account_disabled"):
        scope = "identity"  # Google disabled the account itself; the user is the actor (§3.3)
        login = login or actor
    return _row(occurred_at, "google_workspace", name, scope, subject_login=login, actor=actor)


# --- Keycloak (§3.4) -----------------------------------------------------------------------------

_KEYCLOAK_USER_SCOPE: Final[dict[str, str]] = {
    "LOGOUT": "session",
    "REVOKE_GRANT": "grant",
    "DELETE_ACCOUNT": "identity",
    "USER_DISABLED_BY_PERMANENT_LOCKOUT": "identity",
    "USER_DISABLED_BY_TEMPORARY_LOCKOUT": "identity",
}
# key=value pairs of a jboss-logging event line; values quoted (26.x) or bare (older versions).
_KV: Final = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|\s*$)')
_JBOSS_LINE: Final = re.compile(
    r"^(?P<ts>(?:\d{4}-\d{2}-\d{2}[T ])?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+"
    r"(?P<level>[A-Z]+)\s+\[org\.keycloak\.events\]\s+(?:\([^)]*\)\s+)?(?P<body>(?:type|operationType)=.*)$"
)
_USERS_PATH: Final = re.compile(r"^users/([^/]+)(?:/(.*))?$")
_SESSIONS_PATH: Final = re.compile(r"^sessions/([^/]+)$")


def _kv(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _KV.finditer(body):
        key, value = m.group(1), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(.)', r"\1", value[1:-1])
        out[key] = value
    return out


def _is_keycloak(v: Mapping[str, Any]) -> bool:
    if v.get("log.logger") == "org.keycloak.events" or _dig(v, "log", "logger") == "org.keycloak.events":
        return isinstance(v.get("message"), str)
    if isinstance(v.get("operationType"), str) and isinstance(v.get("resourcePath"), str):
        return "realmId" in v or isinstance(v.get("authDetails"), Mapping)
    return isinstance(v.get("type"), str) and "realmId" in v and ("time" in v or "userId" in v)


def _keycloak_event(ev: Mapping[str, Any], when: Any, ctx: NormalizeContext) -> Row:
    """A Keycloak user event or admin event, from JSON or parsed key=value pairs."""
    occurred_at = _when(when, "keycloak event time", ctx)
    details = _map(ev.get("details"))
    op = _str(ev.get("operationType"))
    if op is not None:  # admin event
        path = _str(ev.get("resourcePath")) or ""
        auth = _map(ev.get("authDetails")) or ev
        actor = _str(auth.get("username")) or _str(auth.get("userId"))
        subject_id = session_id = None
        scope: str | None = None
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
            elif op == "ACTION" and rest == "logout":
                scope = "session"
            elif op == "DELETE" and (rest.startswith(("groups/", "role-mappings/", "consents/"))):
                scope = "grant"
        elif ms and op == "DELETE":
            session_id, scope = ms.group(1), "session"
        event_type = f"admin:{op}:{_str(ev.get('resourceType')) or path.split('/', 1)[0] or '?'}"
        return _row(occurred_at, "keycloak", event_type, scope, subject_id=subject_id,
                    session_id=session_id, actor=actor, outcome=ev.get("error") and "FAILURE")
    etype = _str(ev.get("type"))
    scope = _KEYCLOAK_USER_SCOPE.get(etype or "")
    error = _str(ev.get("error"))
    if error:
        scope = None
    user_id = _str(ev.get("userId"))
    login = _str(details.get("username")) or _str(ev.get("username"))
    # User events are the user's own actions, except lockouts, which Keycloak's brute-force
    # detector performs (the event names no other actor).
    actor = None if (etype or "").startswith("USER_DISABLED_BY_") else user_id
    return _row(occurred_at, "keycloak", etype, scope, subject_id=user_id, subject_login=login,
                session_id=ev.get("sessionId"), actor=actor,
                outcome="FAILURE" if error else None)


def _keycloak(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    if rec.get("form") == "keycloak-text":
        ts = rec["ts"]
        if not re.match(r"^\d{4}-", ts):
            raise _Reject(Reason.BAD_TIMESTAMP,
                          f"keycloak log line has a time of day ({ts}) but no date: configure the log format "
                          "with a date (quarkus.log.console.format %d{yyyy-MM-dd HH:mm:ss,SSS})")
        return _keycloak_event(rec["kv"], ts, ctx)
    message = rec.get("message")
    if isinstance(message, str):  # ECS-JSON console log; the event is the jboss-logging message
        kv = _kv(message)
        if "type" not in kv and "operationType" not in kv:
            raise _Reject(Reason.UNKNOWN_SHAPE, "org.keycloak.events message without type= or operationType=")
        return _keycloak_event(kv, rec.get("@timestamp") or rec.get("timestamp"), ctx)
    return _keycloak_event(rec, rec.get("time"), ctx)


# --- Pomerium identity_manager (§1.4) ------------------------------------------------------------


def _is_pomerium(v: Mapping[str, Any]) -> bool:
    return v.get("service") == "identity_manager" and isinstance(v.get("message"), str)


def _pomerium(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    message = str(rec["message"])
    occurred_at = _when(rec.get("time"), "pomerium identity_manager 'time'", ctx)
    # "... deleting session", "deleting expired session", "deleting session": the session is gone.
    # "failed to refresh oauth2 token" without "deleting" is a temporary error; the session stays.
    scope = "session" if "deleting" in message and "session" in message else None
    return _row(occurred_at, "pomerium", message, scope,
                subject_id=_get(rec, "user-id"), session_id=_get(rec, "session-id"))


# --- Teleport (§2.1) -----------------------------------------------------------------------------

_TELEPORT_EVENTS: Final = ("lock.created", "lock.deleted", "user.delete")


def _is_teleport(v: Mapping[str, Any]) -> bool:
    return v.get("event") in _TELEPORT_EVENTS and ("code" in v or "time" in v)


def _teleport(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    event = str(rec["event"])
    occurred_at = _when(rec.get("time"), f"teleport {event} 'time'", ctx)
    actor = rec.get("updated_by") or rec.get("user")
    if event == "user.delete":
        return _row(occurred_at, "teleport", event, "identity", subject_login=rec.get("name"), actor=actor)
    target_user = _dig(rec, "target", "user")
    # A lock on a user locks that identity out and ends its sessions; locks on roles, nodes or
    # devices are kept as non-revocations (they do not name a person).
    scope = "identity" if event == "lock.created" and _str(target_user) else None
    return _row(occurred_at, "teleport", event, scope, subject_login=target_user, actor=actor)


# --- plain revocation list (docs/revocation-list.md) ---------------------------------------------


def _is_list(v: Mapping[str, Any]) -> bool:
    if v.get("kind") == "revocation":
        return True
    keys = set(v)
    # CSV rows carry every header key, empty or not; recognise by the header set.
    return "revoked_at" in keys and bool(keys & set(_LIST_SUBJECT)) and keys <= LIST_COLUMNS


def _revocation_list(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    unknown = set(rec) - LIST_COLUMNS
    if unknown:
        raise _Reject(Reason.UNKNOWN_SHAPE, f"revocation list: unknown column(s) {sorted(unknown)}; "
                      f"allowed: {sorted(LIST_COLUMNS)}")
    occurred_at = _when(rec.get("revoked_at"), "revocation list 'revoked_at'", ctx)
    if not any(_str(rec.get(k)) for k in _LIST_SUBJECT):
        raise _Reject(Reason.MISSING_FIELD, "revocation list: none of subject, subject_id, session_id is set")
    scope = (_str(rec.get("scope")) or "identity").lower()
    if scope not in SCOPES:
        raise _Reject(Reason.WRONG_TYPE, f"revocation list: scope {rec.get('scope')!r} is not one of {SCOPES}")
    return _row(occurred_at, "list", _str(rec.get("reason")) or "revocation", scope,
                subject_id=rec.get("subject_id"), subject_login=rec.get("subject"),
                session_id=rec.get("session_id"), actor=rec.get("actor"))


# --- dispatch ------------------------------------------------------------------------------------

_RECOGNISERS: Final[tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...]] = (
    ("okta", _is_okta),
    ("entra", _is_entra),
    ("google", _is_google),
    ("keycloak", _is_keycloak),
    ("pomerium", _is_pomerium),
    ("teleport", _is_teleport),
    ("list", _is_list),
)
_BUILDERS: Final[dict[str, Callable[[Mapping[str, Any], NormalizeContext], Row]]] = {
    "okta": _okta,
    "entra": _entra,
    "google": _google,
    "keycloak": _keycloak,
    "keycloak-text": _keycloak,
    "pomerium": _pomerium,
    "teleport": _teleport,
    "list": _revocation_list,
}

_MAPPER: Final = RecordMapper(SOURCE, IDP_EVENT, _BUILDERS, lambda v: _kind(v), "not an IdP event",
                             text_forms=("keycloak-text",), envelope_cluster=False)


def _kind(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    for name, test in _RECOGNISERS:
        if test(value):
            return name
    return None


def _items(kind: str, value: Mapping[str, Any]) -> list[Unwrapped]:
    if kind == "google":  # one row per events[] entry, each with its own activity envelope
        events = value.get("events")
        if isinstance(events, list) and len(events) > 1:
            return [Unwrapped(record={**value, "events": [ev]}, form=kind) for ev in events]
    return [Unwrapped(record=value, form=kind)]


def _all_of(values: Any) -> list[Unwrapped] | None:
    """Every element recognised, or None (a list is claimed whole or not at all)."""
    if not isinstance(values, list) or not values:
        return None
    out: list[Unwrapped] = []
    for v in values:
        kind = _kind(v)
        if kind is None:
            return None
        out.extend(_items(kind, v))
    return out




class IdpEventNormalizer:
    """Normalizer for the ``idp_event`` source kind (see the module docstring for formats)."""

    source: ClassVar[str] = SOURCE

    def unwrap(self, value: Any) -> list[Unwrapped] | None:
        """Recognise a decoded JSON value as IdP events; ``None`` when it is not this kind.

        Called by the engine on every decoded value before any mapping. Envelopes: a JSON array,
        an Okta event hook (``data.events``), an Event Hub batch (``records``), a Graph page
        (``value``), a Reports API page (``items``) — each claimed only when every element is an
        IdP event, so an AKS ``{"records":[...]}`` of audit events is never claimed. Never raises.
        """
        if isinstance(value, list):
            return _all_of(value)
        if not isinstance(value, Mapping):
            return None
        kind = _kind(value)
        if kind is not None:
            return _items(kind, value)
        for key in ("records", "value", "items"):
            if key in value:
                return _all_of(value[key])
        events = _dig(value, "data", "events")
        if events is not None and str(value.get("eventType", "")).startswith("com.okta.event_hook"):
            return _all_of(events)
        return None

    def parse_text(self, line: str) -> list[Unwrapped] | None:
        """Recognise a Keycloak jboss-logging event line (``[org.keycloak.events] type=...``)."""
        m = _JBOSS_LINE.match(line.strip())
        if not m:
            return None
        kv = _kv(m.group("body"))
        if "type" not in kv and "operationType" not in kv:
            return None
        record = {"form": "keycloak-text", "line": line.rstrip("\r\n"), "ts": m.group("ts"), "kv": kv}
        return [Unwrapped(record=record, form="keycloak-text")]

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Map recognised records to an ``idp_event`` table.

        Called once per batch with the records :meth:`unwrap` / :meth:`parse_text` returned and
        their origins. A record without a readable time, or a revocation-list row without a
        subject or with an unknown scope, becomes a :class:`Rejected` with a named reason; nothing
        raises for bad input.
        """
        return _MAPPER.to_table(records, origins, ctx)

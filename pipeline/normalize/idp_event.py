"""``idp_event``: identity lifecycle and revocation events, one row per event.

Formats (field references: ``docs/proxy-and-idp.md``, cited as §n):

* Okta System Log events (§3.1), bare, in a JSON array, or inside an event-hook envelope
  (``{"data":{"events":[...]}}``).
* Microsoft Entra audit records (§3.2): the Azure Monitor diagnostic shape (``category:
  "AuditLogs"``, activity in ``properties``; also inside an Event Hub ``{"records":[...]}``) and
  the Microsoft Graph ``directoryAudit`` shape (same inner object at top level; also a Graph page
  ``{"value":[...]}``).
* Google Workspace Admin SDK Reports activities (§3.3), one row per entry of ``events[]``;
  ``events`` may also be one object (Elastic's collector writes one activity per event).
* Keycloak events (§3.4): event JSON (``type``/``realmId``), admin-event JSON
  (``operationType``/``resourcePath``), the ECS-JSON and the Quarkus JSON log (``loggerName``
  ``org.keycloak.events``) whose ``message`` is a jboss-logging event line, and jboss-logging text
  lines (quoted 26.x and unquoted legacy values) through :meth:`parse_text`.
* Pomerium ``identity_manager`` session lines (§1.4), hyphen and underscore key styles.
* Teleport ``lock.created`` / ``lock.deleted`` / ``user.delete`` (§2.1).
* The plain revocation list (JSONL with ``"kind":"revocation"``, or CSV rows keyed by header;
  format in ``docs/revocation-list.md``).

Revocation semantics (``is_revocation`` / ``revocation_scope``), decided here once:

* ``identity``: the person can no longer authenticate (deactivate, suspend, disable, delete,
  Teleport user lock).
* ``session``: sessions are ended (Okta ``user.session.clear``, universal logout, Keycloak
  ``LOGOUT``, Pomerium session deletion). ``session_id`` null means all sessions of the subject,
  except for a Keycloak user ``LOGOUT``, which ends one SSO session even when it does not name it.
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
Valid records that are not events are **ignored** (counted, not quarantined) by
:meth:`IdpEventNormalizer.ignore`: Keycloak server log lines (jboss-logging text or ECS JSON of
loggers other than ``org.keycloak.events``, or of that logger without ``type=``; Quarkus JSON log
records of any other logger).

``reason`` holds the IdP's or proxy's stated reason or error when the record has one (Keycloak
``reason`` detail, else ``error``; Pomerium ``error``; Okta ``outcome.reason``; Entra
``resultReason``; the revocation list's ``reason``), cut to 200 characters.

What is not claimed: Kubernetes audit events and proxy decisions (Pomerium ``authorize``/
``envoy`` lines, Teleport ``kube.request``), which return ``None`` from :meth:`unwrap`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import pyarrow as pa

from ztaudit.core.quarantine import IgnoreReason, Rejected
from ztaudit.core.schema import IDP_EVENT
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped
from ztaudit.pipeline.normalize.idp_common import SOURCE, Row, dig
from ztaudit.pipeline.normalize.idp_vendors import (
    _JBOSS_LINE,
    _kv,
    entra_row,
    google_row,
    is_entra,
    is_google,
    is_keycloak,
    is_list,
    is_okta,
    is_pomerium,
    is_quarkus_json_log,
    is_teleport,
    keycloak_row,
    okta_row,
    pomerium_row,
    revocation_list_row,
    teleport_row,
)
from ztaudit.pipeline.normalize.rowmap import RecordMapper

__all__ = ["IdpEventNormalizer"]
# --- dispatch ------------------------------------------------------------------------------------

_RECOGNISERS: Final[tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...]] = (
    ("okta", is_okta),
    ("entra", is_entra),
    ("google", is_google),
    ("keycloak", is_keycloak),
    ("pomerium", is_pomerium),
    ("teleport", is_teleport),
    ("list", is_list),
)
_BUILDERS: Final[dict[str, Callable[[Mapping[str, Any], NormalizeContext], Row]]] = {
    "okta": okta_row,
    "entra": entra_row,
    "google": google_row,
    "keycloak": keycloak_row,
    "keycloak-text": keycloak_row,
    "pomerium": pomerium_row,
    "teleport": teleport_row,
    "list": revocation_list_row,
}

# A jboss-logging / Quarkus console line: time, level, [logger] (Keycloak's default format,
# docs/proxy-and-idp.md §3.4), and the loggers of a Keycloak server's own components.
_SERVER_LINE: Final = re.compile(
    r"^(?:\d{4}-\d{2}-\d{2}[T ])?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\S*\s+"
    r"(?:TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\s+\[(?P<logger>[\w.$-]+)\]")
_KEYCLOAK_LOGGERS: Final = ("org.keycloak", "io.quarkus", "org.infinispan", "org.jgroups", "org.hibernate",
                            "org.jboss", "io.smallrye", "io.vertx", "liquibase", "com.arjuna")

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
        events = dig(value, "data", "events")
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

    def ignore(self, value: Any, text: str | None) -> IgnoreReason | None:
        """Called on a record no normalizer claimed: a Keycloak server log line (text, ECS JSON of
        a Keycloak logger, or Quarkus JSON of any logger) is valid but not an event
        (``not_an_event``); anything else None. Never raises."""
        if text is not None:
            m = _SERVER_LINE.match(text)
            return IgnoreReason.NOT_AN_EVENT if m and m.group("logger").startswith(_KEYCLOAK_LOGGERS) else None
        if not isinstance(value, Mapping):
            return None
        logger = value.get("log.logger") or dig(value, "log", "logger")
        if isinstance(logger, str) and logger.startswith(_KEYCLOAK_LOGGERS) and "message" in value:
            return IgnoreReason.NOT_AN_EVENT
        if is_quarkus_json_log(value):
            # Keycloak's Quarkus JSON log: a record of any logger but org.keycloak.events (which
            # is_keycloak claimed) is a server message (startup, cache, warnings), not an event.
            return IgnoreReason.NOT_AN_EVENT
        return None

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Map recognised records to an ``idp_event`` table.

        Called once per batch with the records :meth:`unwrap` / :meth:`parse_text` returned and
        their origins. A record without a readable time, or a revocation-list row without a
        subject or with an unknown scope, becomes a :class:`Rejected` with a named reason; nothing
        raises for bad input.
        """
        return _MAPPER.to_table(records, origins, ctx)

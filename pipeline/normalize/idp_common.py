"""What the IdP record builders share: the source id, revocation scopes, the plain revocation
list's columns, and small readers of untrusted JSON values (each returns None or raises
:class:`Reject` instead of guessing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ztaudit.core.quarantine import Reason
from ztaudit.core.timeutil import TimestampError, parse_timestamp
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.rowmap import RecordRejected, in_event_range

SOURCE: Final = "idp_event"
SCOPES: Final = ("identity", "session", "token", "grant")

#: Columns of the plain revocation list (docs/revocation-list.md). ``revoked_at`` is required and
#: at least one of ``subject``, ``subject_id``, ``session_id``.
LIST_COLUMNS: Final = frozenset(
    {"kind", "revoked_at", "subject", "subject_id", "session_id", "scope", "reason", "actor", "idp", "comment"}
)
LIST_SUBJECT: Final = ("subject", "subject_id", "session_id")

Row = dict[str, Any]


Reject = RecordRejected  # a builder's refusal: the record goes to quarantine

# --- small readers -------------------------------------------------------------------------------


def as_str(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value if value and value not in ("<null>", "null", "unknown") else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def dig(rec: Any, *path: str) -> Any:
    cur = rec
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def get_field(rec: Mapping[str, Any], key: str) -> Any:
    """A hyphen key or its underscore spelling (Pomerium key styles, §1.2 "Version drift")."""
    if key in rec:
        return rec[key]
    return rec.get(key.replace("-", "_"))


def parse_when(value: Any, what: str, ctx: NormalizeContext, *, proxy: bool = False) -> Any:
    """The event time of an IdP row builder's record; a time without a zone is read in
    ``correlation.idp_utc_offset``, or in ``proxy_utc_offset`` for the proxy's own lines (``proxy``:
    Pomerium's identity_manager, Teleport, and the revocation list as docs/revocation-list.md says).
    Raises :class:`Reject` (missing, unreadable or out-of-range time)."""
    if value is None or value == "":
        raise Reject(Reason.MISSING_FIELD, f"{what}: no event time, so it cannot be ordered against requests")
    try:
        when = parse_timestamp(value, ctx.proxy_utc_offset if proxy else ctx.idp_utc_offset)
    except TimestampError as exc:
        raise Reject(Reason.BAD_TIMESTAMP, f"{what}: {exc}") from None
    return in_event_range(when, ctx, what)


#: Longest ``reason`` kept, in characters. An IdP's reason is a short phrase ("User disabled",
#: "INVALID_CREDENTIALS", an OAuth error code); Pomerium's ``error`` wraps the IdP's HTTP answer,
#: which can run long (a response body). The start says what happened; the rest is cut.
REASON_MAX_CHARS: Final = 200


def short_reason(*values: Any) -> str | None:
    """The first of ``values`` that is a non-empty string (:func:`as_str`), cut to
    :data:`REASON_MAX_CHARS`; None when there is none. Called by the row builders for the
    ``reason`` column; never raises. The text is masked later by the central redaction step
    (``reason`` is a text column, docs/redaction.md §3)."""
    for value in values:
        text = as_str(value)
        if text is not None:
            return text if len(text) <= REASON_MAX_CHARS else text[:REASON_MAX_CHARS - 1] + "…"
    return None


def idp_row(occurred_at: Any, idp: str, event_type: str | None, scope: str | None, *,
         subject_id: Any = None, subject_login: Any = None, session_id: Any = None, actor: Any = None,
         outcome: Any = None, reason: Any = None) -> Row:
    """One ``idp_event`` row (without the origin columns, which the mapper adds).

    Called by every ``*_row`` builder once it has read its record; ``is_revocation`` is derived
    from ``scope``. String fields go through :func:`as_str` (empty, ``null``, non-strings ->
    None) and ``reason`` through :func:`short_reason`. Never raises.
    """
    return {
        "occurred_at": occurred_at,
        "idp": idp,
        "event_type": event_type,
        "is_revocation": scope is not None,
        "subject_id": as_str(subject_id),
        "subject_login": as_str(subject_login),
        "session_id": as_str(session_id),
        "actor": as_str(actor),
        "outcome": as_str(outcome),
        "revocation_scope": scope,
        "reason": short_reason(reason),
    }

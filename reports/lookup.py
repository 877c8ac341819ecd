"""Names typed for report filters checked against the lake, and the lake's time span.

Called by ``ztaudit report`` after it opens the lake, before a report runs: an identity
(``ACTOR``/``--actor``) or ``--cluster`` the lake does not hold would otherwise give an empty report
that looks like a clean answer. :func:`resolve_value` uses the exact name when the lake holds it,
else the one name that differs only in case (with a note), else raises
:class:`~ztaudit.core.names.UnknownName` (exit 2) with the nearest names. :func:`window_note` says
what time span each table covers when a ``--since/--until`` window matched nothing (added by
:func:`ztaudit.reports.run_report`). Every value is a bound parameter; table and column names come
from this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import duckdb

from ztaudit.core.names import UnknownName, did_you_mean
from ztaudit.reports.filters import Filters

#: Where an identity can appear: table -> columns (the columns the reports' ``--actor`` matches).
IDENTITY_COLUMNS: Mapping[str, Sequence[str]] = {
    "k8s_audit": ("actor",), "proxy_decision": ("email", "user_id"),
    "idp_event": ("subject_login", "subject_id", "actor"), "findings": ("actor",),
}
#: Where a cluster name can appear.
CLUSTER_COLUMNS: Mapping[str, Sequence[str]] = {
    "k8s_audit": ("cluster",), "proxy_decision": ("cluster",), "findings": ("cluster",),
}
#: table -> (first time column, last time column) for :func:`data_span`.
SPAN_COLUMNS: Mapping[str, tuple[str, str]] = {
    "k8s_audit": ("request_received_at", "request_received_at"), "proxy_decision": ("decided_at", "decided_at"),
    "idp_event": ("occurred_at", "occurred_at"), "findings": ("first_seen", "last_seen"),
}
WINDOW_NOTE_START = "nothing in the window"


def _exists(con: duckdb.DuckDBPyConnection, value: str, columns: Mapping[str, Sequence[str]]) -> bool:
    for table, cols in columns.items():
        where = " OR ".join(f'"{c}" = ?' for c in cols)
        if con.execute(f'SELECT 1 FROM "{table}" WHERE {where} LIMIT 1', [value] * len(cols)).fetchone():
            return True
    return False


def _distinct(con: duckdb.DuckDBPyConnection, columns: Mapping[str, Sequence[str]]) -> list[str]:
    parts = [f'SELECT DISTINCT CAST("{c}" AS VARCHAR) AS v FROM "{t}"' for t, cols in columns.items() for c in cols]
    rows = con.execute(f"SELECT DISTINCT v FROM ({' UNION ALL '.join(parts)}) WHERE v IS NOT NULL AND v <> ''")
    return sorted(str(r[0]) for r in rows.fetchall())


def resolve_value(con: duckdb.DuckDBPyConnection, value: str, *, what: str, option: str,
                  columns: Mapping[str, Sequence[str]]) -> tuple[str, str | None]:
    """``value`` as the lake spells it, and a note when it was changed.

    The exact value when any of ``columns`` holds it (the usual case: one ``LIMIT 1`` query per
    table); the lake's one spelling that differs only in case, with a note saying so; ``value``
    unchanged when the lake holds no values at all (the report then says the lake is empty).
    Otherwise raises :class:`~ztaudit.core.names.UnknownName` (exit 2) naming the nearest values.
    """
    if _exists(con, value, columns):
        return value, None
    names = _distinct(con, columns)
    if not names:
        return value, None
    same = [n for n in names if n.lower() == value.lower()]
    if len(same) == 1:
        return same[0], f"{what} {value!r} is not in the lake; showing {same[0]!r} (same name, other case)"
    raise UnknownName(f"no {what} {value!r} in the lake{did_you_mean(value, names)}",
                      fix=f"check the spelling of {option}; `ztaudit report summary` shows what the lake holds")


def data_span(con: duckdb.DuckDBPyConnection) -> list[tuple[str, datetime, datetime]]:
    """(table, first, last) event time of every table of :data:`SPAN_COLUMNS` that has rows."""
    out: list[tuple[str, datetime, datetime]] = []
    for table, (first, last) in SPAN_COLUMNS.items():
        row = con.execute(f'SELECT min("{first}"), max("{last}") FROM "{table}"').fetchone()
        if row and row[0] is not None and row[1] is not None:
            out.append((table, row[0], row[1]))
    return out


def _iso(at: datetime) -> str:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def window_note(con: duckdb.DuckDBPyConnection, filters: Filters) -> str:
    """The note for a ``--since/--until`` window that matched nothing: the window, and the first and
    last event time of each table (or that the lake holds no events)."""
    start = _iso(filters.since) if filters.since else "(start)"
    window = f"{start} .. {_iso(filters.until) if filters.until else '(now)'}"
    span = data_span(con)
    if not span:
        return f"{WINDOW_NOTE_START} {window}; the lake holds no events yet"
    held = "; ".join(f"{t} {_iso(a)} .. {_iso(b)}" for t, a, b in span)
    return f"{WINDOW_NOTE_START} {window}; the lake holds {held}"

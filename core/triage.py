"""Triage: what people decided about findings, stored in the lake as data, and what that makes them.

Two sources of decisions (docs/triage.md):

* **Explicit**, per finding: ``ztaudit findings ack|suppress|expire ID`` appends one row to the
  ``triage`` table (:data:`~ztaudit.core.schema.TRIAGE`: who, when, why, until). The table is
  append-only; a finding's current explicit decision is its *latest* row (:func:`latest_decisions`).
* **Rules**, in the config: ``[[triage.suppress]]`` tables (detector, actor and namespace globs,
  an expiry and a reason), parsed and checked by :func:`parse_rules` when the config is loaded.

:func:`status_of` combines them into one of :data:`STATUSES` for a finding. It is called by
``report findings`` (``--status``; default open and acked) and by the consumer's streaming hook
(which never produces a suppressed finding to the findings topic).

What an end date means (the same for an explicit ``suppress --until`` and a rule's ``expires``):
the suppression covers the finding while its ``last_seen`` is at or before that date, so a
suppressed finding that *recurs* after the expiry (detect sees it again later) comes back as open,
and one that never recurs stays suppressed. ``ack --until`` is a snooze: from that date on the
finding is open again. ``expire`` ends the finding's explicit ack or suppression now (rules still
apply). An explicit decision in force wins over the rules.

Patterns are globs with ``*`` (any run of characters) and ``?`` (one character), matched whole,
case-sensitively (Kubernetes user names are), by :class:`Glob` in time linear in the log value's
length (no backtracking: the literal pieces between stars are found left to right). Actor names
come from the logs and are attacker-chosen; patterns come from the config.

Failure: a bad rule raises :class:`~ztaudit.core.errors.ConfigError` naming
``triage.suppress[N].KEY``; a finding id that matches nothing or several findings raises
:class:`~ztaudit.core.names.UnknownName` (exit 2), like git does for an ambiguous prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Final

import duckdb
import pyarrow as pa

from ztaudit.core.errors import ConfigError
from ztaudit.core.names import UnknownName, did_you_mean
from ztaudit.core.schema import TRIAGE
from ztaudit.core.sink import LakeSink
from ztaudit.core.timeutil import parse_time

#: What a finding can be, in the order reports and help list them.
STATUSES: Final = ("open", "acked", "suppressed")
#: What ``report findings`` shows without ``--status``: what still needs or has an owner.
DEFAULT_STATUSES: Final = ("open", "acked")
#: Triage commands -> the status their row gives a finding.
ACTIONS: Final[dict[str, str]] = {"ack": "acked", "suppress": "suppressed", "expire": "open"}
#: The triage fields every machine output of a finding adds to the ``findings`` table's columns
#: (``report findings --format json``, the findings topic).
TRIAGE_FIELDS: Final = ("status", "triage_reason", "triaged_by", "triaged_at", "triage_until")
#: Shortest finding-id prefix accepted (git accepts 4 too).
MIN_PREFIX: Final = 4
_MAX_PATTERN: Final = 512
_RULE_KEYS: Final = ("detector", "actor", "namespace", "expires", "reason")
#: A duration such as ``30d`` (core/timeutil.py reads it as counted back from now).
_RELATIVE: Final = re.compile(r"\s*\d+(?:\.\d+)?\s*[smhdw]\s*", re.IGNORECASE)


class Glob:
    """A ``*``/``?`` glob matched against a whole string in O(len(text) x len(pattern)).

    The pattern is cut at its stars into pieces; the first piece must start the text, the last
    must end it, and each middle piece is taken at its leftmost place after the previous one
    (leftmost is always right when only stars separate the pieces), so nothing is retried.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pieces = pattern.split("*")

    @staticmethod
    def _at(text: str, piece: str, i: int) -> bool:
        if i + len(piece) > len(text):
            return False
        return all(p == "?" or p == text[i + k] for k, p in enumerate(piece))

    def _find(self, text: str, piece: str, start: int, end: int) -> int:
        if "?" not in piece:
            return text.find(piece, start, end)
        for i in range(start, end - len(piece) + 1):
            if self._at(text, piece, i):
                return i
        return -1

    def match(self, text: str | None) -> bool:
        if text is None:
            return False
        pieces = self.pieces
        if len(pieces) == 1:
            return len(text) == len(pieces[0]) and self._at(text, pieces[0], 0)
        first, *middle, last = pieces
        if len(first) + len(last) > len(text) or not self._at(text, first, 0) \
                or not self._at(text, last, len(text) - len(last)):
            return False
        pos, end = len(first), len(text) - len(last)
        for piece in middle:
            if not piece:
                continue
            i = self._find(text, piece, pos, end)
            if i < 0:
                return False
            pos = i + len(piece)
        return True


@dataclass(frozen=True)
class SuppressRule:
    """One ``[[triage.suppress]]`` table: findings of ``detector`` whose actor and namespace match."""

    index: int
    detector: Glob
    actor: Glob | None
    namespace: Glob | None
    expires: datetime | None
    reason: str

    @property
    def name(self) -> str:
        return f"triage.suppress[{self.index}]"

    def matches(self, finding: Mapping[str, Any]) -> bool:
        return (self.detector.match(finding.get("detector"))
                and (self.actor is None or self.actor.match(finding.get("actor")))
                and (self.namespace is None or self.namespace.match(finding.get("namespace"))))


def _pattern(key: str, value: Any) -> Glob:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty glob, got {value!r}",
                          fix='write a name or a glob like "system:serviceaccount:ci:*"')
    if len(value) > _MAX_PATTERN:
        raise ConfigError(key, f"longer than {_MAX_PATTERN} characters", fix="shorten the pattern")
    return Glob(value)


def parse_rules(raw: Sequence[Mapping[str, Any]]) -> list[SuppressRule]:
    """The config's ``[[triage.suppress]]`` tables as rules; called when the config is loaded.

    Each needs ``detector`` (an id or a glob such as ``credential.*``), ``reason``, and at least one
    of ``actor`` / ``namespace`` (a rule for a whole detector belongs in the detector's settings,
    not in triage); ``expires`` is an ISO-8601 time (UTC if no zone) or absent. Raises
    :class:`ConfigError` naming the first bad key.
    """
    rules = []
    for i, item in enumerate(raw):
        base = f"triage.suppress[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(base, f"must be a table, got {item!r}",
                              fix='write [[triage.suppress]] with detector = "...", actor = "...", reason = "..."')
        unknown = sorted(set(item) - set(_RULE_KEYS))
        if unknown:
            raise ConfigError(f"{base}.{unknown[0]}", f"unknown key{did_you_mean(unknown[0], _RULE_KEYS)}",
                              fix=f"valid keys: {', '.join(_RULE_KEYS)}")
        if "actor" not in item and "namespace" not in item:
            raise ConfigError(base, "names neither actor nor namespace",
                              fix="add actor = \"GLOB\" and/or namespace = \"GLOB\"")
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{base}.reason", "is required: say why these findings are not a problem",
                              fix='add reason = "..."')
        expires = item.get("expires")
        when: datetime | None = None
        if expires is not None:
            if isinstance(expires, datetime):  # a TOML datetime
                when = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            elif isinstance(expires, str) and _RELATIVE.fullmatch(expires):
                raise ConfigError(f"{base}.expires", f"{expires!r} is relative; a rule needs a fixed date",
                                  fix="write an ISO-8601 time such as 2026-12-31T00:00Z")
            else:
                try:
                    when = parse_time(str(expires), option=f"{base}.expires")
                except Exception as exc:
                    raise ConfigError(f"{base}.expires", f"{expires!r} is not a time",
                                      fix="write an ISO-8601 time such as 2026-12-31T00:00Z") from exc
        rules.append(SuppressRule(
            i, _pattern(f"{base}.detector", item.get("detector")),
            _pattern(f"{base}.actor", item["actor"]) if "actor" in item else None,
            _pattern(f"{base}.namespace", item["namespace"]) if "namespace" in item else None,
            when, reason.strip()))
    return rules


@dataclass(frozen=True)
class Decision:
    """A finding's latest ``triage`` row."""

    finding_id: str
    action: str
    reason: str | None
    until: datetime | None
    triaged_by: str | None
    triaged_at: datetime


@dataclass(frozen=True)
class State:
    """What triage makes of one finding: its status and the decision behind it (none when open)."""

    status: str
    reason: str | None = None
    by: str | None = None
    at: datetime | None = None
    until: datetime | None = None

    def fields(self) -> dict[str, Any]:
        """The :data:`TRIAGE_FIELDS` of a finding's machine record."""
        return {"status": self.status, "triage_reason": self.reason, "triaged_by": self.by,
                "triaged_at": self.at, "triage_until": self.until}


def _covers(until: datetime | None, last_seen: datetime | None) -> bool:
    """A suppression ending at ``until`` still covers a finding last seen at ``last_seen``."""
    return until is None or last_seen is None or last_seen <= until


def status_of(finding: Mapping[str, Any], decision: Decision | None, rules: Iterable[SuppressRule],
              now: datetime | None = None) -> State:
    """The finding's triage state (module docstring): the explicit decision if in force, else the
    first matching rule that covers it, else open."""
    now = now or datetime.now(UTC)
    last_seen = finding.get("last_seen")
    if decision is not None:
        if decision.action == "suppress" and _covers(decision.until, last_seen):
            return State("suppressed", decision.reason, decision.triaged_by, decision.triaged_at, decision.until)
        if decision.action == "ack" and (decision.until is None or now < decision.until):
            return State("acked", decision.reason, decision.triaged_by, decision.triaged_at, decision.until)
    for rule in rules:
        if rule.matches(finding) and _covers(rule.expires, last_seen):
            return State("suppressed", rule.reason, f"config {rule.name}", None, rule.expires)
    return State("open")


def latest_decisions(con: duckdb.DuckDBPyConnection, ids: Sequence[str] | None = None) -> dict[str, Decision]:
    """Each finding's latest ``triage`` row (of ``ids`` only, when given), read through the lake's
    ``triage`` view of ``con`` (:func:`~ztaudit.core.lake.open_lake`); ids are bound parameters."""
    where = ""
    if ids is not None:
        if not ids:
            return {}
        con.execute("CREATE OR REPLACE TEMP TABLE _triage_ids (id VARCHAR)")
        con.executemany("INSERT INTO _triage_ids VALUES (?)", [[i] for i in dict.fromkeys(ids)])
        where = "WHERE finding_id IN (SELECT id FROM _triage_ids)"
    rows = con.execute(f"""
        SELECT finding_id, action, reason, "until", triaged_by, triaged_at FROM triage {where}
        QUALIFY row_number() OVER (PARTITION BY finding_id ORDER BY triaged_at DESC, action) = 1""").fetchall()
    return {r[0]: Decision(*r) for r in rows}


def resolve_id(con: duckdb.DuckDBPyConnection, prefix: str) -> str:
    """The one finding id in the lake that starts with ``prefix`` (or equals it).

    Raises :class:`UnknownName` (exit 2) when the prefix is shorter than :data:`MIN_PREFIX`, matches
    no finding (naming the nearest ids), or matches several (listing some, like git's "short
    object ID is ambiguous").
    """
    text = prefix.strip().lower()
    if len(text) < MIN_PREFIX:
        raise UnknownName(f"finding id {prefix!r} is too short", fix=f"give at least {MIN_PREFIX} characters "
                          "of the id (ztaudit report findings --format json shows finding_id)")
    rows = con.execute("SELECT DISTINCT finding_id FROM findings WHERE starts_with(lower(finding_id), ?) "
                       "ORDER BY 1 LIMIT 6", [text]).fetchall()
    ids = [r[0] for r in rows]
    if len(ids) == 1:
        return str(ids[0])
    if not ids:
        known = [r[0] for r in con.execute("SELECT DISTINCT finding_id FROM findings").fetchall()]
        raise UnknownName(f"no finding with id {prefix!r}{did_you_mean(text, known)}",
                          fix="list them with `ztaudit findings list` or `ztaudit report findings`")
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    raise UnknownName(f"finding id {prefix!r} is ambiguous: it starts {shown}",
                      fix="give more characters of the id")


def triage_row(finding_id: str, action: str, reason: str, *, by: str, until: datetime | None = None,
               at: datetime | None = None) -> dict[str, Any]:
    """One ``triage`` row; ``action`` is a key of :data:`ACTIONS`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown triage action {action!r}")
    return {"triaged_at": at or datetime.now(UTC), "finding_id": finding_id, "action": action,
            "reason": reason, "until": until, "triaged_by": by}


def append(lake: str | Path, rows: Sequence[dict[str, Any]]) -> list[PurePath]:
    """Append ``rows`` to the lake's ``triage`` table through the sink: one new file per call, named
    by the first row's time and finding, so nothing earlier is ever rewritten. Raises ``SinkError``."""
    if not rows:
        return []
    first = rows[0]
    key = f"triage+{first['triaged_at'].astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}+{first['finding_id'][:16]}"
    table = pa.Table.from_pylist(list(rows), schema=TRIAGE)
    sink = LakeSink(Path(lake))
    paths = sink.write("triage", table, key)
    sink.publish()
    return paths

"""Report filters (``--since/--until/--cluster/--actor``) turned into bound SQL predicates.

Nothing a user types is ever formatted into SQL: :meth:`Filters.where` returns a predicate with
``?`` placeholders and the list of values to bind. Column names come from the report code, never
from input. Time bounds also add a predicate on the hive partition column ``dt`` so DuckDB skips
whole days of files (partition pruning) instead of reading their row-group statistics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ztaudit.core.errors import ConfigError

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """Parse an absolute ISO-8601 time or a relative duration (``90m``, ``24h``, ``7d``, ``2w``).

    Relative values count back from ``now`` (default: the current UTC time). A time without a
    zone is read as UTC. Returns a tz-aware UTC datetime. Raises :class:`ConfigError` (exit code
    2) naming ``option`` for anything else.
    """
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(option, f"{value!r} is not a time",
                          fix="use ISO-8601 (2026-11-26, 2026-11-26T10:00:00Z) or a duration like "
                              "24h, 7d, 90m") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


@dataclass(frozen=True)
class Filters:
    """The common report filters. ``since`` is inclusive, ``until`` exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    cluster: str | None = None
    actor: str | None = None

    def where(self, *, time_col: str | None, cluster_col: str | None = "cluster",
              actor_cols: Sequence[str] = (), dt: bool = True, use_actor: bool = True,
              alias: str = "") -> tuple[str, list[Any]]:
        """A predicate (``TRUE`` if nothing applies) and the values to bind, in order.

        ``actor_cols`` match if any of them equals ``--actor``. ``dt`` adds partition pruning on
        the hive ``dt`` column (compared as text, so it works whether DuckDB typed it DATE or
        VARCHAR). ``alias`` prefixes column names (``"r."``).
        """
        parts: list[str] = []
        params: list[Any] = []
        if time_col is not None:
            if self.since is not None:
                parts.append(f"{alias}{time_col} >= ?")
                params.append(self.since)
                if dt:
                    parts.append(f"CAST({alias}dt AS VARCHAR) >= ?")
                    params.append(self.since.date().isoformat())
            if self.until is not None:
                parts.append(f"{alias}{time_col} < ?")
                params.append(self.until)
                if dt:
                    parts.append(f"CAST({alias}dt AS VARCHAR) <= ?")
                    params.append(self.until.date().isoformat())
        if self.cluster is not None and cluster_col is not None:
            parts.append(f"{alias}{cluster_col} = ?")
            params.append(self.cluster)
        if use_actor and self.actor is not None and actor_cols:
            parts.append("(" + " OR ".join(f"{alias}{c} = ?" for c in actor_cols) + ")")
            params.extend([self.actor] * len(actor_cols))
        return (" AND ".join(parts) if parts else "TRUE"), params

    def describe(self) -> dict[str, Any]:
        """The filters as a JSON-friendly dict (for report headers)."""
        return {"since": self.since, "until": self.until, "cluster": self.cluster, "actor": self.actor}

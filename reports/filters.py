"""Report filters (``--since/--until/--cluster/--actor``) turned into bound SQL predicates.

Nothing a user types is ever formatted into SQL: :meth:`Filters.where` returns a predicate with
``?`` placeholders and the list of values to bind. Column names come from the report code, never
from input. Time bounds also add a predicate on the hive partition column ``dt`` (the UTC day,
spelled as :func:`ztaudit.core.window.utc_day` spells it) so DuckDB skips whole days of files
(partition pruning) instead of reading their row-group statistics. Detector functions take the
same bounds as a :class:`ztaudit.core.window.Window` (:attr:`Filters.window`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ztaudit.core.window import Window, utc_day


@dataclass(frozen=True)
class Filters:
    """The common report filters. ``since`` is inclusive, ``until`` exclusive; None is an open end."""

    since: datetime | None = None
    until: datetime | None = None
    cluster: str | None = None
    actor: str | None = None

    @property
    def window(self) -> Window:
        """The time bounds as the :class:`~ztaudit.core.window.Window` detector functions judge."""
        return Window(self.since, self.until)

    def from_day_start(self) -> Filters:
        """These filters with ``since`` moved back to the start of its UTC day.

        For tables with one row per day (``credentials``): the row of the day ``since`` falls in
        holds uses at and after ``since``, so it must not be cut off.
        """
        if self.since is None:
            return self
        day = self.since.astimezone(UTC) if self.since.tzinfo else self.since.replace(tzinfo=UTC)
        return dataclasses.replace(self, since=day.replace(hour=0, minute=0, second=0, microsecond=0))

    def where(self, *, time_col: str | None, cluster_col: str | None = "cluster",
              actor_cols: Sequence[str] = (), dt: bool = True, use_actor: bool = True,
              alias: str = "") -> tuple[str, list[Any]]:
        """A predicate (``TRUE`` if nothing applies) and the values to bind, in order.

        Called by every report query. ``actor_cols`` match if any of them equals ``--actor``.
        ``dt`` adds partition pruning on the hive ``dt`` column (compared as text, so it works
        whether DuckDB typed it DATE or VARCHAR); pass ``dt=False`` when ``time_col`` is not the
        column the table's partitions were derived from. ``alias`` prefixes column names (``"r."``).
        """
        parts: list[str] = []
        params: list[Any] = []
        if time_col is not None:
            if self.since is not None:
                parts.append(f"{alias}{time_col} >= ?")
                params.append(self.since)
                if dt:
                    parts.append(f"CAST({alias}dt AS VARCHAR) >= ?")
                    params.append(utc_day(self.since))
            if self.until is not None:
                parts.append(f"{alias}{time_col} < ?")
                params.append(self.until)
                if dt:
                    parts.append(f"CAST({alias}dt AS VARCHAR) <= ?")
                    params.append(utc_day(self.until))
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

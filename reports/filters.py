"""Report filters (``--since/--until/--cluster/--actor``) turned into bound SQL predicates.

Nothing a user types is ever formatted into SQL: :meth:`Filters.where` returns a predicate with
``?`` placeholders and the list of values to bind. Column names come from the report code, never
from input. Time bounds also add a predicate on the hive partition column ``dt`` so DuckDB skips
whole days of files (partition pruning) instead of reading their row-group statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


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

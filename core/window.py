"""The time window a detector or report judges: ``[since, until)`` over event time, with day pruning.

Every reader of the lake bounds its queries the same way: an open end is a far sentinel (not
NULL, so one bound SQL text serves both cases), and the ``dt=YYYY-MM-DD`` hive partitions (UTC
days of the table's event time, docs/design.md "Lake layout") are bounded too, so DuckDB skips whole
days of files instead of reading their row-group statistics. :class:`Window` owns both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

#: Bounds an open window end stands for (inside DuckDB's TIMESTAMPTZ range and Python's datetime).
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


def utc_day(ts: datetime) -> str:
    """The UTC day of ``ts`` as the lake's ``dt`` partitions spell it (a naive time is UTC, as the
    session time zone of :func:`ztaudit.core.lake.open_lake` makes it for DuckDB)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC).date().isoformat()


@dataclass(frozen=True)
class Window:
    """Events with ``since <= t < until``; None is an open end."""

    since: datetime | None = None
    until: datetime | None = None

    @property
    def lo(self) -> datetime:
        """The lower bound to bind (:data:`EARLIEST` when open)."""
        return self.since or EARLIEST

    @property
    def hi(self) -> datetime:
        """The upper bound to bind (:data:`LATEST` when open)."""
        return self.until or LATEST

    def widened(self, before: timedelta = timedelta(0), after: timedelta = timedelta(0)) -> Window:
        """The window with ``before`` added in front and ``after`` behind (open ends stay open)."""
        return Window(self.since - before if self.since else None, self.until + after if self.until else None)

    def params(self, prefix: str = "") -> dict[str, datetime | str]:
        """Bound parameters ``$<prefix>lo``, ``$<prefix>hi`` and the partition days
        ``$<prefix>lo_day``, ``$<prefix>hi_day`` for :meth:`sql`."""
        return {f"{prefix}lo": self.lo, f"{prefix}hi": self.hi,
                f"{prefix}lo_day": utc_day(self.lo), f"{prefix}hi_day": utc_day(self.hi)}

    @staticmethod
    def sql(col: str, alias: str = "", prefix: str = "") -> str:
        """Predicate: ``col`` in ``[$lo, $hi)`` and the alias's ``dt`` partition within the window's days.

        ``col`` is the table's partition time column (the one ``dt`` was derived from), so no row of
        the window is pruned. Pass names from code, never from input; the values are bound.
        """
        a = f"{alias}." if alias else ""
        return (f"{a}{col} >= ${prefix}lo AND {a}{col} < ${prefix}hi "
                f"AND CAST({a}dt AS VARCHAR) >= ${prefix}lo_day AND CAST({a}dt AS VARCHAR) <= ${prefix}hi_day")

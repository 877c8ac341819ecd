"""Derived lake tables that detectors build before they run (``reach``, ``credentials``).

``ztaudit detect`` calls each builder first (:func:`ztaudit.detectors.run.build_derived`): a builder
reads the lake through the views, returns an Arrow table of its schema in
:data:`ztaudit.core.schema.TABLES`, and detect writes it to ``LAKE/<name>/dt=.../``. A run over the
whole lake replaces the table; a run over a window (``detect --since 2d``, the hourly job of
docs/deploy.md) replaces only the rows whose partition time its build covers (:attr:`Derived.cover`)
and keeps every other row, so the table keeps its history. Reports, notebooks and the detectors then
read these tables like any other. One explicit registry, keyed by table name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import pyarrow as pa

from ztaudit.core.window import EARLIEST, LATEST, Window
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.credentials import inventory
from ztaudit.detectors.reach import build_reach_table
from ztaudit.detectors.reach_features import floor_to, window_seconds

#: The span of partition times a build covers: ``[lo, hi)``, or None for the whole table.
Cover = tuple[datetime, datetime] | None
DAY: Final = timedelta(days=1)


@dataclass(frozen=True)
class Derived:
    """One derived table: ``build`` makes its rows for a run, ``cover`` says which rows they replace."""

    build: Callable[[DetectContext], pa.Table]
    cover: Callable[[DetectContext], Cover]


def _day_floor(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)


def _whole_days(ctx: DetectContext) -> Cover:
    """The run's window widened to whole UTC days (a ``credentials`` row is one credential's day)."""
    if ctx.since is None and ctx.until is None:
        return None
    w = Window(ctx.since, ctx.until)
    hi = w.hi if w.hi >= LATEST else _day_floor(w.hi - timedelta(microseconds=1)) + DAY
    return _day_floor(w.lo), hi


def _credentials(ctx: DetectContext) -> pa.Table:
    cover = _whole_days(ctx)
    return inventory(ctx.engine, *(cover or (None, None)))


def _reach_cover(ctx: DetectContext) -> Cover:
    """The reach windows a build makes: whole windows, from the one holding ``since`` to the one
    holding ``until`` (:func:`_reach`)."""
    if ctx.since is None and ctx.until is None:
        return None
    wsec = window_seconds(ctx.config)
    lo = EARLIEST if ctx.since is None else floor_to(ctx.since, wsec)
    return lo, LATEST if ctx.until is None else _window_end(ctx.until, wsec)


def _window_end(until: datetime, wsec: int) -> datetime:
    """The end of the reach window holding the last instant before ``until``."""
    return floor_to(until - timedelta(microseconds=1), wsec) + timedelta(seconds=wsec)


def _reach(ctx: DetectContext) -> pa.Table:
    """The reach rows of whole windows (:func:`_reach_cover`): the window holding ``--until`` is built
    from all its events, or a windowed run would replace a complete row with the part before ``until``."""
    if ctx.until is not None:
        ctx = replace(ctx, until=_window_end(ctx.until, window_seconds(ctx.config)))
    return build_reach_table(ctx)


#: table name -> its builder and cover, in build order.
DERIVED_TABLES: Final[dict[str, Derived]] = {
    "credentials": Derived(_credentials, _whole_days),
    "reach": Derived(_reach, _reach_cover),
}

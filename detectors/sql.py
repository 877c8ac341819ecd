"""Running the detectors' named SQL statements: the steps of their plans, on an engine.

Detectors keep each statement as a module constant whose values are bound parameters (``$name``); a
plan is a tuple of steps, each saying what it does to which temp table (:class:`Table`,
:class:`EmptyTable`, :class:`Insert`, :class:`View`, :class:`Drop`), so an engine can carry each out
its own way (DuckDB runs the SQL as written; :mod:`ztaudit.detectors.engine`). A run binds one dict of
everything the steps of a plan may need, and each statement is passed only the entries it names.
Called by the correlation, impersonation and revocation plans; SQL errors propagate. ``execute``
(a statement on a DuckDB connection) stays importable from here for ``tests/core/test_views.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ztaudit.detectors.engine import Engine
from ztaudit.detectors.engine import execute_on_connection as execute  # transitional re-export, see there

__all__ = ["Drop", "EmptyTable", "Insert", "Step", "Table", "View", "execute", "run", "run_all"]


@dataclass(frozen=True)
class Table:
    """Temp table ``name`` := the rows of ``select``, materialised (:meth:`Engine.create_table`)."""

    name: str
    select: str


@dataclass(frozen=True)
class EmptyTable:
    """Temp table ``name`` := empty, with ``columns`` (SQL column definitions)."""

    name: str
    columns: str


@dataclass(frozen=True)
class Insert:
    """Append the rows of ``select`` to temp table ``name``, by position or ``by_name``."""

    name: str
    select: str
    by_name: bool = False


@dataclass(frozen=True)
class View:
    """View ``name`` := ``select``, not materialised (the config views)."""

    name: str
    select: str


@dataclass(frozen=True)
class Drop:
    """Forget temp table ``name`` (so the next detector has its memory)."""

    name: str


Step = Table | EmptyTable | Insert | View | Drop


def run(engine: Engine, step: Step, params: Mapping[str, Any] | None = None) -> None:
    """Carry out one ``step`` on ``engine`` with the entries of ``params`` its SQL names."""
    match step:
        case Table(name, select):
            engine.create_table(name, select, params)
        case EmptyTable(name, columns):
            engine.create_empty_table(name, columns)
        case Insert(name, select, by_name):
            engine.insert_into(name, select, params, by_name=by_name)
        case View(name, select):
            engine.create_view(name, select)
        case Drop(name):
            engine.drop(name)


def run_all(engine: Engine, steps: Iterable[Step], params: Mapping[str, Any] | None = None) -> None:
    """:func:`run` each of ``steps`` in order."""
    for step in steps:
        run(engine, step, params)

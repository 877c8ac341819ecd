"""Every SQL statement a run sends to DuckDB, captured in order with its parameters (issue 17).

:func:`capture_statements` replaces ``duckdb.connect`` for the duration of a ``with`` block by a
function that returns a :class:`RecordingConnection`: a thin proxy that forwards everything to the
real connection and records each ``execute``/``sql``/``query`` (SQL text and parameters) and each
``register``/``unregister`` of an Arrow table, in call order. Nothing is mocked: the statements run
on DuckDB as usual, so the run's results are the real ones. Used by tests/detectors/test_spark_dialect.py
to transpile (and replay on Spark) every statement ``ztaudit detect`` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb


@dataclass
class Call:
    """One call: ``op`` is ``sql`` (a statement; ``text`` and ``params``) or ``register`` /
    ``unregister`` (``text`` is the name, ``params`` the Arrow object)."""

    op: str
    text: str
    params: Any = None


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    @property
    def statements(self) -> list[Call]:
        return [c for c in self.calls if c.op == "sql"]


class RecordingConnection:
    """A DuckDB connection that records what it is asked to run (see the module doc)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rec: Recorder) -> None:
        self._con = con
        self._rec = rec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        # ``isinstance(x, duckdb.DuckDBPyConnection)`` falls back to ``x.__class__``: code that wraps a
        # connection in the engine seam (detectors/engine.py ``as_engine``) then wraps this proxy too,
        # so every statement still passes through it.
        return duckdb.DuckDBPyConnection

    def execute(self, sql: str, params: Any = None) -> Any:
        self._rec.calls.append(Call("sql", sql, params))
        return self._con.execute(sql, params)

    def sql(self, sql: str, **kw: Any) -> Any:
        self._rec.calls.append(Call("sql", sql, kw.get("params")))
        return self._con.sql(sql, **kw)

    def query(self, sql: str, **kw: Any) -> Any:
        self._rec.calls.append(Call("sql", sql, kw.get("params")))
        return self._con.query(sql, **kw)

    def register(self, name: str, obj: Any) -> Any:
        self._rec.calls.append(Call("register", name, obj))
        return self._con.register(name, obj)

    def unregister(self, name: str) -> Any:
        self._rec.calls.append(Call("unregister", name))
        return self._con.unregister(name)

    def __enter__(self) -> RecordingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()


@contextmanager
def capture_statements() -> Iterator[Recorder]:
    """Record every statement of every DuckDB connection opened inside the block."""
    rec = Recorder()
    real = duckdb.connect

    def connect(*args: Any, **kw: Any) -> Any:
        return RecordingConnection(real(*args, **kw), rec)

    duckdb.connect = connect  # type: ignore[assignment]
    try:
        yield rec
    finally:
        duckdb.connect = real

"""The engine session: the one place the detectors and derived-table builders reach the SQL engine.

Every detector and builder reads the lake through ``ctx.engine``
(:attr:`~ztaudit.detectors.base.DetectContext.engine`), an :class:`Engine`, and never through
``duckdb`` itself (``tests/detectors/test_engine.py`` fails on a detector module that imports
``duckdb`` or calls a DuckDB connection). The operations are the ones the detectors' SQL pipelines
need, named for what they do (issue 17, item 1):

* :meth:`~Engine.read_lake`: make the lake's tables and derived views readable by name for a
  :class:`~ztaudit.core.window.Window` (the views :func:`~ztaudit.core.lake.open_lake` makes);
* :meth:`~Engine.create_table`: a temp table from a ``SELECT``, **materialised** (computed once; each
  later statement reads the stored rows, never re-runs the query);
  :meth:`~Engine.create_empty_table` declares one by its columns;
* :meth:`~Engine.insert_into`: append a ``SELECT``'s rows to such a table;
* :meth:`~Engine.create_view`: a named query, recomputed where it is read (the config views);
* :meth:`~Engine.register_arrow`: an Arrow table (computed in Python) as a named relation;
* :meth:`~Engine.query`: a query's rows as Arrow, with the helpers :meth:`~Engine.rows` (Python
  tuples), :meth:`~Engine.records` (dicts by column name) and :meth:`~Engine.frame` (a pandas
  DataFrame, the scikit-learn step's input);
* :meth:`~Engine.drop`: forget a temp table or registered relation;
* :meth:`~Engine.wider_in_filters`: let scans push IN filters of many values (a performance hint).

SQL text is DuckDB's dialect and every value from a user or a log is a bound named parameter
(``$name``); a statement is passed the entries of ``params`` it names. The scikit-learn step and
finding assembly stay in Python on the caller's side.

:class:`DuckDBEngine` implements it over a ``duckdb.DuckDBPyConnection`` (from ``open_lake``: UTC
session, macros, views) with exactly the SQL the detectors ran on the connection before this seam
existed. **Every statement it runs passes through** :meth:`DuckDBEngine.execute`, the one place a
capture or transpile step hooks (subclass it and override ``execute``). Reports, ``ztaudit sql``,
notebooks and the streaming hook stay on DuckDB: the public functions of ``detectors/`` that reports
call (``impersonation_summary``, ``revocation_status``, ...) accept either an :class:`Engine` or a
DuckDB connection (:data:`Session`, wrapped by :func:`as_engine`).

Failure: SQL errors propagate as the engine's own exceptions (``duckdb.Error`` for DuckDB), after
which temp tables a plan was writing may be partly written; the caller (``detectors/run.py``) reports
the failing detector and runs the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import duckdb
import pyarrow as pa

from ztaudit.core import catalog
from ztaudit.core.lake import open_lake
from ztaudit.core.window import Window

if TYPE_CHECKING:  # pandas costs ~0.3 s to import: only the reach model needs frames
    import pandas as pd

#: Bound parameters of a statement: ``$name`` -> value (None: the statement names none).
Params = Mapping[str, Any] | None

#: A DuckDB connection, for annotations outside this module (reports, tests and the streaming hook still
#: hand the detectors' public functions a connection; see :data:`Session`).
DuckDBConnection = duckdb.DuckDBPyConnection

_PARAM: Final = re.compile(r"\$([A-Za-z_]\w*)")


@runtime_checkable
class Engine(Protocol):
    """The SQL engine a detector run reads the lake through (module docstring). Names of tables and
    views are chosen by the code, never by input; values are bound."""

    def read_lake(self, lake: Path, window: Window) -> None:
        """Make the lake's tables and derived views (``k8s_audit``, ``k8s_requests``, ``reach``, ...)
        readable by name for statements about ``window`` and the lookback they bound themselves.

        Called when a run starts reading and again after it wrote the derived tables. An engine may
        use ``window`` to choose what to read; the statements still bound their own reads."""
        ...

    def create_table(self, name: str, select: str, params: Params = None) -> None:
        """Replace temp table ``name`` with the rows of ``select``, materialised: computed once, and
        every later statement reads the stored rows."""
        ...

    def create_empty_table(self, name: str, columns: str) -> None:
        """Replace temp table ``name`` with an empty one of ``columns`` (SQL column definitions,
        ``"p_pk UBIGINT, a_pk UBIGINT, tier VARCHAR"``), to be filled by :meth:`insert_into`."""
        ...

    def insert_into(self, name: str, select: str, params: Params = None, *, by_name: bool = False) -> None:
        """Append the rows of ``select`` to temp table ``name``: by position, or by column name
        (``by_name``: columns the select lacks are NULL)."""
        ...

    def create_view(self, name: str, select: str) -> None:
        """Replace view ``name`` with ``select`` (not materialised: read where it is used)."""
        ...

    def register_arrow(self, name: str, table: pa.Table) -> None:
        """Make ``table`` (rows computed in Python) readable as relation ``name`` until :meth:`drop`."""
        ...

    def drop(self, name: str) -> None:
        """Forget temp table or registered relation ``name`` (nothing happens when it does not exist)."""
        ...

    def query(self, sql: str, params: Params = None) -> pa.Table:
        """The rows of query ``sql`` as an Arrow table."""
        ...

    def rows(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """The rows of query ``sql`` as Python tuples (for small results read in Python)."""
        ...

    def records(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        """The rows of query ``sql`` as dicts keyed by column name (for small results read in Python)."""
        ...

    def frame(self, sql: str, params: Params = None) -> pd.DataFrame:
        """The rows of query ``sql`` as a pandas DataFrame with the engine's own conversion (for DuckDB:
        nullable integers as ``Int64``, text as ``object``; Arrow's ``to_pandas`` gives ``float64`` and
        ``string`` instead, which the reach model's inputs and explanations must not silently get)."""
        ...

    def wider_in_filters(self, values: int) -> AbstractContextManager[None]:
        """While the block runs, let a semi-join on up to ``values`` keys be pushed into the scans
        below it as an IN filter (a performance hint; an engine without such a limit ignores it)."""
        ...


class TempStatements:
    """The statements of :class:`Engine` that are plain SQL in both engines' common subset: what makes a
    temp table, an empty one, an insert or a view. A subclass provides ``execute`` (its one funnel,
    where an engine materialises, translates or binds as it must)."""

    def execute(self, sql: str, params: Params = None) -> object:
        raise NotImplementedError

    def create_table(self, name: str, select: str, params: Params = None) -> None:
        """``CREATE OR REPLACE TEMP TABLE name AS select``: the engine stores the rows (materialised)."""
        self.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}", params)

    def create_empty_table(self, name: str, columns: str) -> None:
        self.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({columns})")

    def insert_into(self, name: str, select: str, params: Params = None, *, by_name: bool = False) -> None:
        self.execute(f"INSERT INTO {name} {'BY NAME ' if by_name else ''}{select}", params)

    def create_view(self, name: str, select: str) -> None:
        self.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")


class DuckDBEngine(TempStatements):
    """:class:`Engine` over a DuckDB connection, running the SQL exactly as given (module docstring).

    The connection is the caller's (``open_lake``'s: UTC session time zone, macros, views); :meth:`open`
    makes one and :meth:`close` closes it. Not thread-safe, like the connection.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._registered: set[str] = set()

    @classmethod
    def open(cls, lake: str | Path, *, must_exist: bool = True, memory_limit: str | None = None,
             spill_dir: Path | None = None) -> DuckDBEngine:
        """An engine on a new :func:`~ztaudit.core.lake.open_lake` connection over ``lake`` (its errors:
        ``LakeError`` when ``must_exist`` and it is no lake); the caller closes it."""
        return cls(open_lake(lake, must_exist=must_exist, memory_limit=memory_limit, spill_dir=spill_dir))

    def close(self) -> None:
        """Close the connection (its temp tables and registered relations go with it)."""
        self._con.close()

    def transitional_connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection itself, for code not yet on the seam. **Transitional**, one caller:
        :func:`execute_on_connection` (kept for ``tests/core/test_views.py``, which reads a result from
        the connection). Nothing else may."""
        return self._con

    # --- the one funnel -------------------------------------------------------------------------

    def execute(self, sql: str, params: Params = None, *,
                result: bool = False) -> duckdb.DuckDBPyRelation | None:
        """Run one statement with the entries of ``params`` it names (``$name``; DuckDB rejects a
        named parameter a statement does not use). Every statement of this engine passes here.

        ``result``: a query whose rows the caller reads, run as DuckDB's ``sql`` and returned as its
        relation (Arrow comes out of it without the copy a DB-API result makes); otherwise a statement
        run for its effect with DuckDB's ``execute``. A name ``params`` lacks is left unbound, and
        DuckDB then raises; SQL errors raise ``duckdb.Error``.
        """
        names = set(_PARAM.findall(sql))
        bound = {n: params[n] for n in names if n in params} if names and params else None
        if result:
            return self._con.sql(sql, params=bound)
        self._con.execute(sql, bound)
        return None

    def _relation(self, sql: str, params: Params) -> duckdb.DuckDBPyRelation:
        rel = self.execute(sql, params, result=True)
        if rel is None:  # DuckDB returns no relation for a statement that is not a query
            raise ValueError(f"not a query: {sql.strip()[:80]!r}")
        return rel

    # --- Engine ---------------------------------------------------------------------------------

    def read_lake(self, lake: Path, window: Window) -> None:
        """(Re)create the views over the lake's files (:func:`ztaudit.core.catalog.create_views`). They
        span the whole lake whatever ``window`` is: each statement prunes by ``dt`` itself."""
        catalog.create_views(self._con, lake)

    def register_arrow(self, name: str, table: pa.Table) -> None:
        self._con.register(name, table)
        self._registered.add(name)

    def drop(self, name: str) -> None:
        """Unregister a relation of :meth:`register_arrow`, else ``DROP TABLE IF EXISTS``."""
        if name in self._registered:
            self._registered.discard(name)
            self._con.unregister(name)
        else:
            self.execute(f"DROP TABLE IF EXISTS {name}")

    def query(self, sql: str, params: Params = None) -> pa.Table:
        return self._relation(sql, params).to_arrow_table()

    def rows(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """DuckDB's own Python values (``fetchall``), as the detectors read them before the seam."""
        return self._relation(sql, params).fetchall()

    def records(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        rel = self._relation(sql, params)
        names = list(rel.columns)
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]

    def frame(self, sql: str, params: Params = None) -> pd.DataFrame:
        """DuckDB's ``df()``, as the reach features were read before the seam."""
        df: pd.DataFrame = self._relation(sql, params).df()
        return df

    @contextmanager
    def _wider_in_filters(self, values: int) -> Iterator[None]:
        # DuckDB pushes a semi-join's keys into a Parquet scan as an IN filter only up to
        # ``dynamic_or_filter_threshold`` values (50 by default; the setting is absent before DuckDB 1.2).
        setting = self.rows("SELECT value FROM duckdb_settings() WHERE name = 'dynamic_or_filter_threshold'")
        old = int(setting[0][0]) if setting else None
        if old is not None:
            self.execute(f"SET dynamic_or_filter_threshold = {max(old, int(values))}")
        try:
            yield
        finally:
            if old is not None:
                self.execute(f"SET dynamic_or_filter_threshold = {old}")

    def wider_in_filters(self, values: int) -> AbstractContextManager[None]:
        """DuckDB's ``dynamic_or_filter_threshold`` raised to ``values`` for the block, then restored."""
        return self._wider_in_filters(values)


#: What the detectors' public functions accept: an engine, or (reports, tests, notebooks and the
#: streaming hook, which stay on DuckDB) a DuckDB connection, wrapped by :func:`as_engine`.
Session = Engine | duckdb.DuckDBPyConnection


def as_engine(session: Session) -> Engine:
    """``session`` as an :class:`Engine`: a DuckDB connection is wrapped in a :class:`DuckDBEngine`
    (a new wrapper per call, over the same connection and so the same temp tables)."""
    if isinstance(session, duckdb.DuckDBPyConnection):
        return DuckDBEngine(session)
    return session


def execute_on_connection(con: Session, sql: str, params: Params) -> duckdb.DuckDBPyConnection:
    """Run ``sql`` through a :class:`DuckDBEngine` on DuckDB connection ``con``; returns ``con`` (a DB-API
    cursor over the result). **Transitional**: for callers outside ``detectors/`` that read a query's
    result from the connection (``tests/core/test_views.py``, as ``ztaudit.detectors.sql.execute``);
    detectors use their engine."""
    engine = as_engine(con)
    if not isinstance(engine, DuckDBEngine):
        raise TypeError("execute_on_connection needs a DuckDB connection; use an engine's query() elsewhere")
    engine.execute(sql, params)
    return engine.transitional_connection()

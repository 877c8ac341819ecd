"""The engine session on Apache Spark: ``ztaudit detect --engine spark`` (issue 17, item 1).

:class:`SparkEngine` implements :class:`~ztaudit.detectors.engine.Engine` over a ``SparkSession`` whose
catalog is the lake's Iceberg catalog (:func:`ztaudit.core.spark_session.spark_session`). It is
opened by :func:`ztaudit.detectors.run.run_detectors` when ``detect.engine`` (or ``--engine``) is
``spark``, and closed (the session stopped) when the run ends. The detectors do not know which engine
they run on: they send the same DuckDB SQL, and this class

* translates **every statement** with :func:`ztaudit.detectors.spark_dialect.transpile_statement`
  (the one funnel, :meth:`SparkEngine.execute`), so each DuckDB idiom goes through a reviewed rule;
* binds values as **named parameters** (``spark.sql(sql, args={...})``; the dialect prints ``$name``
  as ``:name``), never formatted into the SQL;
* **materialises** temp tables: a Spark temp view is a query recomputed at every reference, so the
  rows of ``CREATE TEMP TABLE AS`` and of each ``INSERT`` are computed once and pinned with
  ``DataFrame.localCheckpoint()`` (kept on the executors, lineage cut) before being named with
  ``createOrReplaceTempView``. On a cluster, ``localCheckpoint`` keeps the blocks on the executors
  that computed them (lost with an executor); a scratch Iceberg namespace would survive that and is
  the next step for long runs;
* reads the lake (:meth:`read_lake`) as temp views over the Iceberg tables (``ztaudit.lake.<t>``,
  the same snapshot files DuckDB reads), an empty typed view for a table the lake has no rows of yet,
  and the derived views of :mod:`ztaudit.core.views` translated by the dialect. The scalar macros of
  :data:`ztaudit.core.lake.SCALAR_MACROS` are expanded inline by the dialect's ``scalar_macro`` rule
  (no ``CREATE FUNCTION`` is needed, so nothing is registered in the session); the table macros are
  for analysts on DuckDB and no detector uses them.

The scikit-learn step and finding assembly stay in Python on the driver: :meth:`query`,
:meth:`rows`, :meth:`records` and :meth:`frame` collect a result through Arrow (``toArrow()``).

Failure: a lake that is not Iceberg raises :class:`~ztaudit.core.errors.LakeError` (exit 2) naming
``ztaudit migrate``; missing PySpark or jars raise :class:`~ztaudit.core.spark_session.SparkUnavailable`
(exit 2); both before anything runs. A statement the dialect cannot translate raises
:class:`SparkStatementError` (not a ``ZtauditError``: like a DuckDB SQL error, it fails the detector
or builder that sent it, which ``detectors/run.py`` reports while the others run); Spark's own errors
(``AnalysisException``, ...) propagate the same way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from ztaudit.core.errors import LakeError
from ztaudit.core.iceberg import iceberg_arrow_schema, is_iceberg
from ztaudit.core.schema import TABLES
from ztaudit.core.spark_session import SparkUnavailable, qualified, spark_session
from ztaudit.core.views import VIEWS
from ztaudit.core.window import Window
from ztaudit.detectors.engine import Params, TempStatements
from ztaudit.detectors.spark_dialect import SparkStatement, UnsupportedIdiom, transpile_statement

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

_PARAM: Final = re.compile(r"\$([A-Za-z_]\w*)")
#: ``scripts/spark-jars`` of a source checkout (the one place that knows the jar cache).
_JARS_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "spark-jars"


#: Derived views of :data:`ztaudit.core.views.VIEWS` that :meth:`SparkEngine.read_lake` leaves out: views
#: for analysts on DuckDB that no detector reads (the detectors build the same pairs and revocations
#: step by step in temp tables). ``proxy_audit_match`` chains eleven CTEs, most referenced several
#: times; Spark's analyzer inlines them into a plan that exhausts even a 3 GiB driver heap on the demo lake.
ANALYST_VIEWS: Final = frozenset({"proxy_audit_match", "revocations"})


class SparkStatementError(RuntimeError):
    """A detector statement that cannot run on Spark (the dialect has no rewrite for an idiom in it).

    Deliberately not a ``ZtauditError``: ``detectors/run.py`` then fails only the detector or builder
    that sent the statement, as it does for a DuckDB SQL error, and runs the others."""

    def __init__(self, idiom: str, message: str) -> None:
        self.idiom = idiom
        super().__init__(message)


def resolve_jars(classpath: str) -> list[Path]:
    """The jars of a Spark session: ``classpath`` (``detect.spark_jars``, ``:``-separated) when set,
    else what ``scripts/spark-jars --offline`` prints in a source checkout (never fetched here).

    Called by :meth:`SparkEngine.open`. Raises :class:`SparkUnavailable` (exit 2) naming the fetch
    command when neither gives a classpath."""
    if classpath.strip():
        return [Path(p) for p in classpath.split(":") if p]
    if _JARS_SCRIPT.is_file():
        p = subprocess.run([str(_JARS_SCRIPT), "--offline"], capture_output=True, text=True, timeout=60,
                           check=False)
        if p.returncode == 0 and p.stdout.strip():
            return [Path(j) for j in p.stdout.strip().split(":") if j]
    raise SparkUnavailable("the Spark jars (Iceberg runtime, SQLite JDBC) are not in the cache",
                           fix="run scripts/spark-jars (fetches them once from Maven Central), or set "
                               "detect.spark_jars to their classpath")


def _sparkable(table: pa.Table) -> pa.Table:
    """``table`` with types Spark's Arrow reader takes: unsigned 64-bit integers (DuckDB's UBIGINT
    hashes) as int64, wrapped like the dialect's ``ubigint`` rule (only equality is used on them)."""
    if not any(pa.types.is_uint64(f.type) for f in table.schema):
        return table
    cols = [c.cast(pa.int64(), safe=False) if pa.types.is_uint64(c.type) else c for c in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names)


class SparkEngine(TempStatements):
    """:class:`~ztaudit.detectors.engine.Engine` on a Spark session (module docstring).

    :meth:`open` starts a session over an Iceberg lake and :meth:`close` stops it; an engine made
    over an existing session (tests) leaves it running. Not thread-safe (one run at a time)."""

    def __init__(self, spark: SparkSession, *, owns_session: bool = False) -> None:
        self._spark = spark
        self._owns = owns_session
        self._names: set[str] = set()  # temp views this engine made (dropped on close)
        #: derived views the dialect cannot translate yet (name -> why), by the last :meth:`read_lake`
        self.unavailable_views: dict[str, str] = {}

    @classmethod
    def open(cls, lake: str | Path, *, master: str = "local[2]", jars: str = "",
             extra: Mapping[str, str] | None = None) -> SparkEngine:
        """An engine on a new Spark session over ``lake``'s Iceberg catalog; the caller closes it.

        Raises :class:`LakeError` for a lake that is not Iceberg (the fix names ``ztaudit migrate``)
        and :class:`SparkUnavailable` without PySpark or the jars, before a JVM is started."""
        root = Path(lake)
        if not is_iceberg(root):
            raise LakeError(f"{root} is a plain Parquet lake; --engine spark reads Iceberg lakes only",
                            fix=f"convert it once with `ztaudit migrate --lake {root}` (DuckDB reads it as "
                                "before), or run detect with --engine duckdb")
        session = spark_session(root, master=master, jars=resolve_jars(jars), extra=extra)
        engine = cls(session, owns_session=True)
        try:
            engine.read_lake(root, Window(None, None))  # as open_lake's views are there for DuckDB
        except BaseException:
            engine.close()
            raise
        return engine

    @property
    def spark(self) -> SparkSession:
        """The session (for tests and benchmarks that read a temp table back)."""
        return self._spark

    def close(self) -> None:
        """Drop the temp views this engine made; stop the session if :meth:`open` started it."""
        for name in sorted(self._names):
            self._spark.catalog.dropTempView(name)
        self._names.clear()
        if self._owns:
            self._spark.stop()

    # --- the one funnel -------------------------------------------------------------------------

    def translate(self, sql: str, params: Params = None) -> SparkStatement:
        """``sql`` (DuckDB, as the detectors write it) as the dialect's :class:`SparkStatement`;
        :class:`SparkStatementError` when an idiom has no rewrite."""
        try:
            return transpile_statement(sql, params)
        except UnsupportedIdiom as exc:
            raise SparkStatementError(exc.idiom, str(exc)) from exc

    def _df(self, sql: str, original: str, params: Params) -> DataFrame:
        names = set(_PARAM.findall(original))
        args = {n: params[n] for n in names if n in params} if names and params else None
        return self._spark.sql(sql, args=args) if args else self._spark.sql(sql)

    def _name(self, name: str, df: DataFrame) -> None:
        df.localCheckpoint(eager=True).createOrReplaceTempView(name)
        self._names.add(name)

    def execute(self, sql: str, params: Params = None, *, result: bool = False) -> DataFrame | None:
        """Translate and run one DuckDB statement with the entries of ``params`` it names. Every
        statement of this engine passes here. A query returns its DataFrame (``result``); a temp
        table, insert, view or drop is done and returns None. Raises :class:`SparkStatementError`
        or Spark's own exceptions."""
        st = self.translate(sql, params)
        if st.kind == "query":
            return self._df(st.sql, sql, params)
        if result:
            raise ValueError(f"not a query: {sql.strip()[:80]!r}")
        assert st.target is not None or st.kind == "query"
        target = st.target or ""
        if st.kind in ("materialise", "create_empty"):
            self._name(target, self._df(st.sql, sql, params))
        elif st.kind == "insert":
            self._insert(target, self._df(st.sql, sql, params), by_name=st.by_name)
        elif st.kind == "view":
            self._spark.sql(f"CREATE OR REPLACE TEMP VIEW {target} AS {st.sql}")
            self._names.add(target)
        elif st.kind == "drop":
            self.drop(target)
        else:  # pragma: no cover - the dialect's kinds are the ones above
            raise ValueError(f"unknown statement kind {st.kind!r}")
        return None

    def _insert(self, name: str, new: DataFrame, *, by_name: bool) -> None:
        """Append ``new`` to temp table ``name``: by position with ``name``'s column types (as an
        INSERT casts), or by name with absent columns NULL; the union is materialised again."""
        from pyspark.sql import functions as F

        old = self._spark.table(name)
        if by_name:
            cols = [F.col(f.name).cast(f.dataType) if f.name in new.columns else F.lit(None).cast(f.dataType)
                    for f in old.schema.fields]
            new = new.select(*[c.alias(f.name) for c, f in zip(cols, old.schema.fields, strict=True)])
        else:
            if len(new.columns) != len(old.columns):
                raise SparkStatementError("insert", f"INSERT INTO {name}: {len(new.columns)} columns for "
                                                    f"{len(old.columns)}")
            new = new.select(*[F.col(f"`{c}`").cast(f.dataType).alias(f.name)
                               for c, f in zip(new.columns, old.schema.fields, strict=True)])
        self._name(name, old.unionByName(new))

    def _collect(self, sql: str, params: Params) -> pa.Table:
        df = self.execute(sql, params, result=True)
        assert df is not None
        return df.toArrow()

    # --- Engine ---------------------------------------------------------------------------------

    def read_lake(self, lake: Path, window: Window) -> None:
        """Temp views named like the lake's tables over its Iceberg tables (every day: the
        statements bound their own reads, lookback included, and Iceberg prunes the files by the
        ``dt`` and time predicates Spark pushes into each scan), an empty typed view for a table not
        created yet, then the derived views of :data:`ztaudit.core.views.VIEWS` the detectors read,
        translated (not :data:`ANALYST_VIEWS`). A view the dialect cannot translate is logged and
        listed in :attr:`unavailable_views`; a statement reading it then fails naming it."""
        namespace = qualified(self._spark, "")[:-1]  # `<the lake's catalog>`.lake
        present = {r[1] if len(r) > 1 else r[0] for r in self._spark.sql(f"SHOW TABLES IN {namespace}").collect()}
        for table in TABLES:
            if table in present:
                df = self._spark.table(qualified(self._spark, table))
            else:
                df = self._spark.createDataFrame(iceberg_arrow_schema(table).empty_table())
            df.createOrReplaceTempView(table)
            self._names.add(table)
        self.unavailable_views.clear()
        for view in VIEWS.values():
            if view.name in ANALYST_VIEWS:
                continue
            try:
                self.create_view(view.name, view.sql)
            except SparkStatementError as exc:  # a statement reading it fails, naming the view
                self.unavailable_views[view.name] = str(exc)
                log.warning("derived view %s is not available on Spark: %s", view.name, exc)

    def register_arrow(self, name: str, table: pa.Table) -> None:
        """``spark.createDataFrame`` from the Arrow table, materialised like a temp table."""
        self._name(name, self._spark.createDataFrame(_sparkable(table)))

    def drop(self, name: str) -> None:
        self._spark.catalog.dropTempView(name)
        self._names.discard(name)

    def query(self, sql: str, params: Params = None) -> pa.Table:
        return self._collect(sql, params)

    def rows(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        t = self._collect(sql, params)
        return list(zip(*(c.to_pylist() for c in t.columns), strict=True)) if t.num_columns else []

    def records(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._collect(sql, params).to_pylist()
        return out

    def frame(self, sql: str, params: Params = None) -> pd.DataFrame:
        """Arrow to pandas with DuckDB's ``df()`` conversion (integers as nullable ``Int64`` only where
        DuckDB gives them: see :func:`_duckdb_like_frame`)."""
        return _duckdb_like_frame(self._collect(sql, params))

    @contextlib.contextmanager
    def _no_hint(self) -> Iterator[None]:
        yield

    def wider_in_filters(self, values: int) -> AbstractContextManager[None]:
        """Nothing to widen: Spark's runtime filters have no such value limit."""
        return self._no_hint()


def _duckdb_like_frame(table: pa.Table) -> pd.DataFrame:
    """``table`` as DuckDB's ``df()`` gives a result: an integer or boolean column holding a NULL as
    the pandas nullable type of its width (``Int32``, ``Int64``, ``boolean``), one without NULLs as
    the NumPy type (``int32``, ``int64``, ``bool``); other types as Arrow's ``to_pandas`` gives them.
    The reach model's inputs (``reach_scoring``) must not silently turn into ``float64``."""
    import pandas as pd

    nullable: dict[pa.DataType, Any] = {
        pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    df: pd.DataFrame = table.to_pandas()
    for f in table.schema:
        col = table.column(f.name)
        if f.type in nullable and col.null_count:
            df[f.name] = col.to_pandas(types_mapper=nullable.get)
    return df

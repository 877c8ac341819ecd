"""The engine session seam (issue 17, item 1): detectors reach the SQL engine only through it.

* No detector module imports ``duckdb`` or calls a DuckDB connection (an AST scan of ``detectors/``;
  ``engine.py`` is the one module that may, and ``rbac.py`` is the one documented transitional
  exception, whose functions still take a connection while another change to it is in progress).
* Every statement a detect run sends to DuckDB passes through :meth:`DuckDBEngine.execute`, the one
  place a capture or transpile step hooks: a connection that records what it is given sees exactly
  what the engine's ``execute`` saw.
* Each :class:`DuckDBEngine` operation does what its name says on a real DuckDB connection: a temp
  table is materialised (computed once), ``insert_into`` appends by position or by name, a view is
  recomputed, an Arrow table is readable until dropped, parameters are bound (only those a
  statement names), ``frame`` keeps DuckDB's dtypes, ``wider_in_filters`` restores the setting, and
  ``read_lake`` makes newly written lake files readable.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import SAMPLE_LOGS
from support.lakes import build_sample_lake

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.window import Window
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.engine import DuckDBEngine, Engine, Params, as_engine
from ztaudit.detectors.run import run_detectors

DETECTORS = Path(__file__).resolve().parents[2] / "detectors"

#: Modules allowed to name duckdb: the engine itself, and (transitional) rbac.py, whose public functions
#: still take a DuckDB connection (reports/nhi.py and reports/reach.py call them; its performance work is
#: in progress elsewhere). ``impersonation_rights`` reaches it through
#: ``DuckDBEngine.transitional_connection``.
ALLOWED: dict[str, str] = {"engine.py": "the seam itself", "rbac.py": "transitional: takes a connection",
                           "spark_engine.py": "the seam on Spark: its .sql() is SparkSession.sql, never DuckDB"}

#: Methods of a DuckDB connection, relation or result a detector must not call (it has its engine).
DUCKDB_CALLS = frozenset({"execute", "executemany", "sql", "fetchall", "fetchone", "fetchmany",
                          "fetchdf", "fetch_df", "df", "fetchnumpy", "to_arrow_table", "fetch_arrow_table",
                          "register", "unregister", "cursor"})
#: Receivers whose ``.sql(...)`` is not DuckDB's: :meth:`ztaudit.core.window.Window.sql` builds a predicate.
NOT_DUCKDB_RECEIVERS = frozenset({"Window"})


def violations(source: str, module: str) -> list[str]:
    """Where ``source`` (a detectors/ module) imports duckdb, calls a DuckDB method or reads ``.con``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        where = f"{module}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] == "duckdb"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "duckdb":
            out.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            out.append(f"{where} imports duckdb by name")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            recv = node.func.value
            if (node.func.attr in DUCKDB_CALLS and not (isinstance(recv, ast.Name) and recv.id in NOT_DUCKDB_RECEIVERS)
                    and not _renders_sql(node)):
                out.append(f"{where} calls .{node.func.attr}() (a DuckDB method; use the engine)")
        elif isinstance(node, ast.Attribute) and node.attr == "description":
            out.append(f"{where} reads .description (a DuckDB cursor's; use engine.records)")
        elif isinstance(node, ast.Attribute) and node.attr == "con" and module != "base.py":
            out.append(f"{where} reads .con (use ctx.engine)")
    return out


def _renders_sql(call: ast.Call) -> bool:
    """sqlglot's ``Expression.sql("duckdb")`` / ``.sql(dialect=...)``: renders text, runs nothing (a
    dialect is one word; SQL text given to a connection never is)."""
    first = call.args[0] if call.args else None
    return isinstance(call.func, ast.Attribute) and call.func.attr == "sql" and (
        any(k.arg == "dialect" for k in call.keywords)
        or (isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.isidentifier()))


def _imports_by_name(call: ast.Call) -> bool:
    """``importlib.import_module("duckdb...")`` or ``__import__("duckdb...")``."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    first = call.args[0] if call.args else None
    return (name in ("import_module", "__import__") and isinstance(first, ast.Constant)
            and str(first.value).split(".")[0] == "duckdb")


def test_no_detector_module_reaches_duckdb_directly() -> None:
    found = [v for path in sorted(DETECTORS.glob("*.py")) if path.name not in ALLOWED
             for v in violations(path.read_text(), path.name)]
    assert not found, "detectors must use ctx.engine (detectors/engine.py):\n" + "\n".join(found)


def test_the_exceptions_are_still_needed() -> None:
    """An allowed module that no longer names duckdb leaves the list (so the exception cannot outlive it)."""
    for name in ALLOWED:
        assert violations((DETECTORS / name).read_text(), name), f"{name} no longer needs its exception"


@pytest.mark.parametrize("snippet", [
    "import duckdb", "import duckdb.typing as t", "from duckdb import DuckDBPyConnection",
    "importlib.import_module('duckdb')", "ctx.con.execute('SELECT 1')", "rows = con.sql(q).fetchall()",
    "names = [d[0] for d in cur.description]", "con.register('t', table)", "x = ctx.con",
    "con.unregister('t')", "df = rel.df()",
])
def test_the_scan_sees_each_way_in(snippet: str) -> None:
    assert violations(snippet, "x.py"), snippet


@pytest.mark.parametrize("snippet", [
    "ctx.engine.rows(q, {'lo': lo})", "engine.query(q)", "as_engine(con).query(q)", "tree.sql('duckdb')",
    "Window.sql('decided_at', 'd')", "run(engine, step, params)", "ctx.engine.register_arrow('t', table)",
])
def test_the_scan_allows_the_seam(snippet: str) -> None:
    assert not violations(snippet, "x.py"), snippet


# --- every statement goes through DuckDBEngine.execute ---------------------------------------------

class _RecordingConnection:
    """A DuckDB connection that records every SQL text given to ``execute`` or ``sql``."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.seen: list[str] = []
        self.paused = False

    def execute(self, sql: str, params: Any = None) -> Any:
        if not self.paused:
            self.seen.append(sql)
        return self._con.execute(sql, params)

    def sql(self, sql: str, params: Any = None) -> Any:
        if not self.paused:
            self.seen.append(sql)
        return self._con.sql(sql, params=params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class _RecordingEngine(DuckDBEngine):
    """The hook a capture step would use: override ``execute``."""

    def __init__(self, con: Any) -> None:
        super().__init__(con)
        self.statements: list[str] = []
        self.recorder: _RecordingConnection = con

    def execute(self, sql: str, params: Params = None, *, result: bool = False) -> duckdb.DuckDBPyRelation | None:
        self.statements.append(sql)
        return super().execute(sql, params, result=result)

    def read_lake(self, lake: Path, window: Window) -> None:
        # the views' DDL is core.catalog's (the lake's tables), not a statement of a detector
        self.recorder.paused = True
        try:
            super().read_lake(lake, window)
        finally:
            self.recorder.paused = False


#: Detectors that still reach DuckDB outside the seam, each with the transitional path it takes.
#: Detectors allowed to bypass the seam: none (impersonation.unapproved_right reads the RBAC snapshot
#: through the engine since the Spark engine runs it).
OUTSIDE_THE_SEAM: dict[str, str] = {}


def test_every_statement_of_a_detect_run_passes_through_execute(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path / "lake", SAMPLE_LOGS, detect=False)
    recorder = _RecordingConnection(open_lake(lake))
    engine = _RecordingEngine(recorder)
    ids = [d for d in registry.DETECTORS if d not in OUTSIDE_THE_SEAM]
    result = run_detectors(lake, Config(), detector_ids=ids, write=False, con=engine)
    assert not result.errors, result.errors
    assert result.tables_built and sum(result.counts.values()) > 0  # the run did real work
    assert recorder.seen == engine.statements
    text = "\n".join(engine.statements)
    for produced in ("zt_unmatched_proxy", "zt_rev_status", "zt_rev_stream", "_cred_uses_", "_reach_feat_"):
        assert produced in text, produced  # the plans of every family went through the hook


# --- the DuckDBEngine operations --------------------------------------------------------------------

@pytest.fixture
def engine() -> DuckDBEngine:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE src AS SELECT range AS i FROM range(5)")
    return DuckDBEngine(con)


def test_create_table_is_materialised_and_a_view_is_not(engine: DuckDBEngine) -> None:
    engine.create_table("t", "SELECT i, random() AS r FROM src WHERE i < $n", {"n": 3})
    first = engine.rows("SELECT * FROM t ORDER BY i")
    assert len(first) == 3 and engine.rows("SELECT * FROM t ORDER BY i") == first  # not recomputed
    engine.create_view("v", "SELECT count(*) AS n FROM src")
    engine.insert_into("src", "SELECT 99")
    assert engine.rows("SELECT count(*) FROM t") == [(3,)]  # the stored rows, not the query
    assert engine.rows("SELECT n FROM v") == [(6,)]  # the view reads the source again
    engine.create_table("t", "SELECT 1 AS one")  # replaces
    assert engine.records("SELECT * FROM t") == [{"one": 1}]


def test_insert_by_position_and_by_name(engine: DuckDBEngine) -> None:
    engine.create_empty_table("p", "a BIGINT, b VARCHAR, c TIMESTAMPTZ")
    engine.insert_into("p", "SELECT 1, $b, $c", {"b": "x", "c": datetime(2026, 1, 2, tzinfo=UTC)})
    engine.insert_into("p", "SELECT 'y' AS b, 2 AS a", by_name=True)
    got = engine.rows("SELECT a, b, c FROM p ORDER BY a")
    assert [(a, b) for a, b, _ in got] == [(1, "x"), (2, "y")]
    assert got[0][2] == datetime(2026, 1, 2, tzinfo=UTC) and got[1][2] is None


def test_parameters_are_bound_and_only_those_named(engine: DuckDBEngine) -> None:
    hostile = "x'; DROP TABLE src; --"
    assert engine.rows("SELECT $v AS v", {"v": hostile, "unused": 1}) == [(hostile,)]
    assert engine.rows("SELECT count(*) FROM src") == [(5,)]
    assert engine.rows("SELECT 42") == [(42,)]  # no parameters at all, given or not
    with pytest.raises(duckdb.Error):  # a parameter the dict lacks is an error, never a silent NULL
        engine.rows("SELECT $missing", {"other": 1})


def test_register_arrow_query_and_drop(engine: DuckDBEngine) -> None:
    engine.register_arrow("arr", pa.table({"k": ["a", "b"], "n": [1, 2]}))
    got = engine.query("SELECT k, n * $m AS n FROM arr ORDER BY k", {"m": 10})
    assert isinstance(got, pa.Table) and got.to_pylist() == [{"k": "a", "n": 10}, {"k": "b", "n": 20}]
    engine.drop("arr")
    with pytest.raises(duckdb.Error):
        engine.rows("SELECT * FROM arr")
    engine.create_table("tmp", "SELECT 1 AS x")
    engine.drop("tmp")
    engine.drop("tmp")  # absent: nothing happens
    with pytest.raises(duckdb.Error):
        engine.rows("SELECT * FROM tmp")


def test_frame_keeps_duckdbs_dtypes(engine: DuckDBEngine) -> None:
    sql = "SELECT CASE WHEN i = 1 THEN NULL ELSE i END AS n, 'a' || i AS s FROM src ORDER BY i"
    df = engine.frame(sql)
    assert str(df["n"].dtype) == "Int64" and df["n"].isna().sum() == 1
    assert str(df["s"].dtype) == str(engine.transitional_connection().sql(sql).df()["s"].dtype)


def test_wider_in_filters_raises_and_restores(engine: DuckDBEngine) -> None:
    setting = "SELECT value FROM duckdb_settings() WHERE name = 'dynamic_or_filter_threshold'"
    before = engine.rows(setting)
    if not before:
        pytest.skip("this DuckDB has no dynamic_or_filter_threshold")
    with engine.wider_in_filters(100_000):
        assert engine.rows(setting) == [("100000",)]
    assert engine.rows(setting) == before
    with pytest.raises(RuntimeError), engine.wider_in_filters(100_000):
        raise RuntimeError("a failing scan")
    assert engine.rows(setting) == before  # restored on error too


def test_read_lake_makes_new_files_readable(tmp_path: Path) -> None:
    from support.lakes import audit, write_rows

    lake = tmp_path / "lake"
    lake.mkdir()
    engine = DuckDBEngine.open(lake, must_exist=False)
    try:
        assert engine.rows("SELECT count(*) FROM k8s_requests") == [(0,)]
        write_rows(lake, {"k8s_audit": audit("ann@example.com", datetime(2026, 3, 2, 10, tzinfo=UTC))})
        engine.read_lake(lake, Window())
        assert engine.rows("SELECT actor FROM k8s_requests") == [("ann@example.com",)]
    finally:
        engine.close()


def test_a_context_made_with_a_connection_reads_through_an_engine(tmp_path: Path) -> None:
    con = open_lake(tmp_path, must_exist=False)
    ctx = DetectContext(con, Config())
    assert isinstance(ctx.engine, DuckDBEngine) and isinstance(ctx.engine, Engine)
    assert ctx.engine.transitional_connection() is con
    engine = DuckDBEngine(con)
    assert DetectContext(engine, Config()).engine is engine and as_engine(engine) is engine

"""The Spark engine session (detectors/spark_engine.py): each Engine operation, against DuckDB's.

The operations run on a plain local Spark session (loopback, UI off, UTC; no Iceberg jars: these
tests do not read a lake) and on a :class:`DuckDBEngine` over the same Arrow tables; results must be
equal. What is checked beyond equal rows: parameters are bound, never formatted into the SQL; a temp
table is materialised (computed once: a later change of its source does not change it); an INSERT
casts to the table's types, by position or by name; and a Parquet lake is refused with the
``ztaudit migrate`` fix before any JVM starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from support.spark import end_jvm, plain_session

from ztaudit.core.errors import LakeError
from ztaudit.detectors.engine import DuckDBEngine, Engine
from ztaudit.detectors.spark_engine import SparkEngine, SparkStatementError, _duckdb_like_frame

pytestmark = [pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:"
                                         "pytest.PytestUnraisableExceptionWarning")]

T0 = datetime(2026, 11, 20, 23, 59, 59, 999_999, tzinfo=UTC)
EVENTS = pa.table({"who": ["alice", "bob", "alice", None], "n": pa.array([1, 2, 3, None], pa.int64()),
                   "ts": pa.array([T0, T0, None, T0], pa.timestamp("us", tz="UTC")),
                   "h": pa.array([1, 2**64 - 1, 3, 4], pa.uint64())})


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = plain_session()  # skips locally / fails in CI without PySpark
    yield session
    end_jvm()


@pytest.fixture
def engines(spark: Any) -> Iterator[tuple[Engine, Engine]]:
    duck = DuckDBEngine(duckdb.connect())
    sp = SparkEngine(spark)
    for e in (duck, sp):
        e.register_arrow("events", EVENTS)
    yield duck, sp
    sp.close()
    duck.close()


def _same(duck: Engine, sp: Engine, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    want = sorted(duck.rows(sql, params), key=repr)
    got = sorted(sp.rows(sql, params), key=repr)
    assert got == want, sql
    assert want, "no rows: the comparison proves nothing"
    return got


def test_a_parquet_lake_is_refused_naming_migrate(tmp_path: Path) -> None:
    (tmp_path / "k8s_audit").mkdir()
    with pytest.raises(LakeError) as err:
        SparkEngine.open(tmp_path)
    assert "ztaudit migrate" in (err.value.fix or "") and "Iceberg" in str(err.value)


@pytest.mark.spark
@pytest.mark.slow
def test_parameters_are_bound_not_formatted(engines: tuple[Engine, Engine], spark: Any) -> None:
    duck, sp = engines
    evil = "alice' OR '1'='1"
    assert sp.rows("SELECT count(*) FROM events WHERE who = $w", {"w": evil}) == [(0,)]
    _same(duck, sp, "SELECT who, n FROM events WHERE who = $w AND ts >= $t", {"w": "alice", "t": T0, "unused": 1})
    assert isinstance(sp, SparkEngine)
    assert sp.translate("SELECT * FROM events WHERE who = $w").sql.endswith("who = :w")


@pytest.mark.spark
@pytest.mark.slow
def test_temp_tables_are_materialised_once(engines: tuple[Engine, Engine], spark: Any) -> None:
    duck, sp = engines
    for e in (duck, sp):
        e.create_table("zt_t", "SELECT who, n * $k AS n2, hash(who) AS h FROM events WHERE n IS NOT NULL", {"k": 10})
    _same(duck, sp, "SELECT who, n2 FROM zt_t")
    # the source changes; the temp table keeps the rows it was made with (it is not a view)
    sp.register_arrow("events", EVENTS.slice(0, 1))
    assert sorted(sp.rows("SELECT n2 FROM zt_t")) == [(10,), (20,), (30,)]
    plan = spark.table("zt_t")._jdf.queryExecution().analyzed().toString()
    assert "events" not in plan.lower()  # lineage cut by localCheckpoint: nothing recomputes the source


@pytest.mark.spark
@pytest.mark.slow
def test_insert_by_position_and_by_name_cast_to_the_table(engines: tuple[Engine, Engine]) -> None:
    duck, sp = engines
    for e in (duck, sp):
        e.create_empty_table("zt_p", "p_pk UBIGINT, tier VARCHAR, n INTEGER")
        e.insert_into("zt_p", "SELECT hash(who), 'A', n FROM events WHERE n = $n", {"n": 1})
        e.insert_into("zt_p", "SELECT 'B' AS tier, 7 AS n", by_name=True)
    _same(duck, sp, "SELECT tier, n, p_pk IS NULL FROM zt_p")
    assert sp.query("SELECT * FROM zt_p").schema.field("n").type == pa.int32()
    for e in (duck, sp):
        e.drop("zt_p")
        e.drop("zt_p")  # dropping twice is no error
    with pytest.raises(Exception, match="zt_p"):  # Spark's AnalysisException: the table is gone
        sp.rows("SELECT * FROM zt_p")


@pytest.mark.spark
@pytest.mark.slow
def test_views_records_frames_and_arrow(engines: tuple[Engine, Engine]) -> None:
    duck, sp = engines
    for e in (duck, sp):
        e.create_view("zt_v", "SELECT who, count(*) AS c, max(n) AS top FROM events GROUP BY who")
    assert sorted(sp.records("SELECT * FROM zt_v"), key=repr) == sorted(duck.records("SELECT * FROM zt_v"), key=repr)
    sql = "SELECT who, CAST(top AS INTEGER) AS top, c FROM zt_v ORDER BY who NULLS LAST"
    want, got = duck.frame(sql), sp.frame(sql)
    assert dict(got.dtypes.astype(str)) == dict(want.dtypes.astype(str))
    assert got.astype(object).where(got.notna(), None).values.tolist() == \
        want.astype(object).where(want.notna(), None).values.tolist()
    assert sp.query(sql).num_rows == duck.query(sql).num_rows == 3
    with sp.wider_in_filters(10_000):
        _same(duck, sp, "SELECT who FROM events WHERE who IN (SELECT who FROM zt_v)")


def test_frames_keep_integer_widths_and_nulls_like_duckdb() -> None:
    t = pa.table({"a": pa.array([1, None], pa.int32()), "b": pa.array([1, 2], pa.int32()),
                  "c": pa.array([1, None], pa.int64()), "f": [True, None]})
    df = _duckdb_like_frame(t)
    want = duckdb.connect().sql("SELECT * FROM t").df()
    assert dict(df.dtypes.astype(str)) == dict(want.dtypes.astype(str))


@pytest.mark.spark
@pytest.mark.slow
def test_an_untranslatable_statement_fails_the_caller_not_the_run(engines: tuple[Engine, Engine]) -> None:
    _, sp = engines
    with pytest.raises(SparkStatementError) as err:
        sp.rows("SELECT v.* REPLACE (lower(v.who) AS who) FROM events v")
    assert err.value.idiom == "star_replace"
    assert not isinstance(err.value, LakeError)


@pytest.mark.spark
@pytest.mark.slow
def test_config_pairs_are_the_same_rows_on_both_engines(engines: tuple[Engine, Engine]) -> None:
    """install_config's (host, cluster) and (cluster, user) pairs: as configured on both engines. They
    were two unnests in one SELECT, which Spark ran as a cross product: every proxy host mapped to every
    cluster, so a generated month's unpaired decisions became findings in all three clusters."""
    from ztaudit.core.config import load_config
    from ztaudit.detectors.correlate import install_config

    cfg = load_config(os.devnull, env={}, overrides={"impersonation": {
        "proxy_hosts": {"k8s-prod.example.com": "prod", "K8S-Dev.example.com:443": "dev",
                        "k8s-stg.example.com": "staging"},
        "approved_impersonators": {"prod": ["system:serviceaccount:pomerium:a"], "dev": ["x", "y"]}}})
    for e in engines:
        e.register_arrow("k8s_audit", pa.table({"cluster": ["prod", "dev"]}))
        install_config(e, cfg)
    hosts = _same(*engines, "SELECT host, cluster FROM zt_proxy_hosts")
    assert hosts == [("k8s-dev.example.com", "dev"), ("k8s-prod.example.com", "prod"),
                     ("k8s-stg.example.com", "staging")]
    approved = _same(*engines, "SELECT cluster, username FROM zt_approved_impersonators")
    assert approved == [("dev", "x"), ("dev", "y"), ("prod", "system:serviceaccount:pomerium:a")]
    defaults = load_config(os.devnull, env={})
    for e in engines:  # no host map: an empty table of strings, on both
        install_config(e, defaults)
        assert e.rows("SELECT count(*), count(host) FROM zt_proxy_hosts") == [(0, 0)]
    assert len(_same(*engines, "SELECT cluster, username FROM zt_approved_impersonators")) == sum(
        len(users) for users in defaults.impersonation.approved_impersonators.values())

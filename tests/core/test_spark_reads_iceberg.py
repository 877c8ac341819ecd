"""Spark reads the Iceberg lake and gets the same rows as DuckDB (issue 16 item 8, groundwork for issue 17).

Every table of :data:`~ztaudit.core.schema.TABLES` is made with pyiceberg directly, in the lake's
layout (:mod:`ztaudit.core.iceberg`: catalog ``ztaudit`` in ``LAKE/_iceberg/catalog.db``, namespace
``lake``, partitioned by ``identity(dt)``, data files under ``LAKE/<table>/dt=YYYY-MM-DD/``), with its
real columns and generated values of every kind (strings with quotes, newlines and NULs, timestamps
before the epoch, integer extremes, ``-0.0``/``inf``/``nan``, bytes, lists with NULLs, unordered
maps), in three commits so that the snapshot matters:

1. ``add_files`` of Parquet files written beside the table (no field ids: read through the name
   mapping), one per day and one undated (``dt`` NULL, the ``dt=unknown`` folder);
2. an ``append`` (pyiceberg writes its own files, with field ids);
3. an ``overwrite`` of the first day: its files leave the snapshot but stay on disk.

Spark reads through :func:`ztaudit.core.spark_session.spark_session` (JDBC catalog on the same SQLite
file); DuckDB reads exactly the files pyiceberg's scan plans (``read_parquet([...])``). Both digests
(:mod:`support.spark`) must equal the digest of the rows the test knows the snapshot holds.
"""

from __future__ import annotations

import ipaddress
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.spark import arrow_digest, spark_jars, table_digest_duckdb, table_digest_spark

from ztaudit.core.catalog import sql_literal
from ztaudit.core.iceberg import CATALOG_NAME, ICEBERG_DIR, NAMESPACE, catalog_file
from ztaudit.core.schema import TABLES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    # PySpark 4.1's collect()/toArrow() (pyspark/util.py, _load_from_socket) leave the loopback socket
    # they read the JVM's answer from to the garbage collector; Python reports it as unclosed.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

DAY1 = date(2026, 3, 2)
DAY2 = date(2026, 3, 3)
STRINGS = ["", "alice@example.com", "system:serviceaccount:prod:app", "quote ' and \" and `", "a\nb\tc",
           "nul\x00byte", "ünïcødé ✓ 🔑", "'; DROP TABLE iceberg_tables; --", "x" * 300]
INTS32 = [0, 1, -1, 2**31 - 1, -(2**31), 200, 403]
INTS64 = [0, 1, -1, 2**63 - 1, -(2**63), 1_772_442_000_000_000]
FLOATS = [0.0, -0.0, 0.1, -2.5, 1e308, float("inf"), float("-inf"), float("nan")]


# --- the lake ------------------------------------------------------------------------------------

def _schema(name: str) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in TABLES[name]]
                     + [pa.field("dt", pa.date32(), nullable=True)])


def _value(rng: random.Random, typ: pa.DataType, day: date | None) -> Any:
    if rng.random() < 0.15:
        return None
    if pa.types.is_timestamp(typ):
        if day is None or rng.random() < 0.1:  # an instant before the epoch, on no row's day
            return datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
        base = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return base + timedelta(microseconds=rng.randrange(86_400 * 10**6))
    if pa.types.is_string(typ):
        return rng.choice(STRINGS) + str(rng.randrange(1000))
    if pa.types.is_int32(typ):
        return rng.choice(INTS32)
    if pa.types.is_int64(typ):
        return rng.choice(INTS64)
    if pa.types.is_floating(typ):
        return rng.choice(FLOATS)
    if pa.types.is_boolean(typ):
        return rng.random() < 0.5
    if pa.types.is_binary(typ):
        return bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
    if pa.types.is_map(typ):  # keys in no particular order; a map has none
        keys = rng.sample(["authorization.k8s.io/decision", "b", "a", "zz", "ключ", "k'"], rng.randrange(4))
        return [(k, None if rng.random() < 0.2 else rng.choice(STRINGS)) for k in keys]
    if pa.types.is_list(typ):
        return [None if rng.random() < 0.1 else rng.choice(STRINGS) for _ in range(rng.randrange(4))]
    raise AssertionError(f"no generator for {typ}")


def _rows(name: str, rng: random.Random, n: int, day: date | None) -> pa.Table:
    schema = _schema(name)
    cols = {f.name: [_value(rng, f.type, day) for _ in range(n)] for f in schema if f.name != "dt"}
    cols["dt"] = [day] * n
    return pa.table(cols, schema=schema)


class Lake:
    """The lake the test built: its folder, and per table the rows its current snapshot must hold
    and the file the overwrite took out of the snapshot (still on disk)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.expected: dict[str, pa.Table] = {}
        self.dropped: dict[str, Path] = {}

    def catalog(self) -> Any:
        from pyiceberg.catalog.sql import SqlCatalog

        return SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{catalog_file(self.root)}",
                          warehouse=(self.root / ICEBERG_DIR).as_uri())

    def plan(self, name: str) -> list[str]:
        """Local paths of the data files pyiceberg plans for a full scan of the current snapshot."""
        tbl = self.catalog().load_table((NAMESPACE, name))
        return sorted(t.file.file_path.removeprefix("file://") for t in tbl.scan().plan_files())


def _write(lake: Path, name: str, folder: str, key: str, rows: pa.Table) -> Path:
    p = lake / name / f"dt={folder}" / f"{key}.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, p)
    return p


def build_lake(root: Path, *, seed: int = 16) -> Lake:
    from pyiceberg.expressions import EqualTo

    (root / ICEBERG_DIR).mkdir(parents=True)
    lake = Lake(root)
    cat = lake.catalog()
    cat.create_namespace(NAMESPACE)
    for name in TABLES:
        rng = random.Random(f"{seed}:{name}")
        tbl = cat.create_table((NAMESPACE, name), schema=_schema(name),
                               location=(root / ICEBERG_DIR / name).as_uri(),
                               properties={"format-version": "2", "write.data.path": (root / name).as_uri()})
        with tbl.update_spec() as spec:
            spec.add_identity("dt")
        tbl = cat.load_table((NAMESPACE, name))
        # 1: files written beside the table, registered (no field ids: the name mapping reads them).
        first = _rows(name, rng, 40, DAY1)
        second = _rows(name, rng, 30, DAY2)
        undated = _rows(name, rng, 5, None)
        files = [_write(root, name, str(DAY1), "0123456789abcdef+0", first),
                 _write(root, name, str(DAY2), "0123456789abcdef+4096", second),
                 _write(root, name, "unknown", "0123456789abcdef+8192", undated)]
        # Named as ztaudit.core.iceberg names them: scheme-less absolute paths (a file: URI would
        # percent-encode the '=' of dt= and the '+' of the file keys).
        tbl.add_files([str(p) for p in files])
        # 2: an append that pyiceberg writes itself, on both days.
        appended = pa.concat_tables([_rows(name, rng, 20, DAY1), _rows(name, rng, 20, DAY2)])
        tbl.append(appended)
        # 3: the first day overwritten: its files (the registered one included) leave the snapshot.
        replacement = _rows(name, rng, 25, DAY1)
        tbl.overwrite(replacement, overwrite_filter=EqualTo("dt", DAY1))
        kept = appended.filter(pc.field("dt") != pa.scalar(DAY1, pa.date32()))
        lake.expected[name] = pa.concat_tables([second, undated, kept, replacement])
        lake.dropped[name] = files[0]
    return lake


@pytest.fixture(scope="module")
def jars() -> list[Path]:
    return spark_jars()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("iceberg") / "lake")


@pytest.fixture(scope="module")
def spark(lake: Lake, jars: list[Path]) -> Iterator[Any]:
    from ztaudit.core.spark_session import spark_session

    t0 = time.monotonic()
    session = spark_session(lake.root, jars=jars)
    print(f"\nSpark session started in {time.monotonic() - t0:.1f} s")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def con(lake: Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB with one view per table over exactly the files pyiceberg plans."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    for name in TABLES:
        files = ", ".join(sql_literal(p) for p in lake.plan(name))
        c.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{files}], hive_partitioning = false, '
                  "union_by_name = true)")
    yield c
    c.close()


# --- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TABLES))
def test_spark_and_duckdb_read_the_same_rows(name: str, lake: Lake, spark: Any, con: duckdb.DuckDBPyConnection) -> None:
    expected = arrow_digest(lake.expected[name])
    via_duckdb = table_digest_duckdb(con, name)
    via_spark = table_digest_spark(spark, name)
    assert via_spark == via_duckdb
    assert via_duckdb == expected, "DuckDB does not read the rows the snapshot holds"
    assert expected[0] == 30 + 5 + 20 + 25  # day 2, undated, the append's day 2, the replacement
    # Partition pruning agrees too: one day's rows, through each engine's own day predicate.
    day2_spark = spark.table(f"{CATALOG_NAME}.{NAMESPACE}.{name}").where(f"dt = DATE'{DAY2}'").count()
    [(day2_duckdb,)] = con.execute(f"SELECT count(*) FROM \"{name}\" WHERE dt = DATE '{DAY2}'").fetchall()
    assert day2_spark == day2_duckdb == 50


def test_a_file_out_of_the_snapshot_is_read_by_neither(lake: Lake, spark: Any, con: duckdb.DuckDBPyConnection) -> None:
    """The overwritten day's registered file is still on disk and readable, yet neither engine reads it."""
    name = "k8s_audit"
    dropped = lake.dropped[name]
    assert dropped.is_file()
    on_disk = arrow_digest(pq.read_table(dropped))
    assert on_disk[0] == 40
    assert str(dropped) not in lake.plan(name)
    # ``_file``: Iceberg's metadata column, the data file each row was read from.
    spark_files = {r[0].removeprefix("file://").removeprefix("file:") for r in
                   spark.sql(f"SELECT DISTINCT _file FROM {CATALOG_NAME}.{NAMESPACE}.{name}").collect()}
    assert spark_files == set(lake.plan(name))
    # A glob would read it: the snapshot, not the folder, is what keeps its rows out.
    glob = str(lake.root / name / "*" / "*.parquet")
    [(globbed,)] = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(glob)}, hive_partitioning = false)"
                               ).fetchall()
    assert globbed == table_digest_duckdb(con, name)[0] + 40 + 20  # + the dropped file + the dropped append
    assert table_digest_spark(spark, name) == arrow_digest(lake.expected[name])


def test_spark_leaves_the_catalog_as_pyiceberg_made_it(lake: Lake, spark: Any) -> None:
    """pyiceberg 0.12 creates the JDBC catalog's V1 layout (``iceberg_type``); Spark's JdbcCatalog with
    ``jdbc.schema-version=V1`` lists and reads it without changing a table definition."""
    db = catalog_file(lake.root)

    def layout() -> list[tuple[str, str]]:
        with sqlite3.connect(db) as c:
            return sorted(c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())

    before = layout()
    assert any("iceberg_type" in sql for _, sql in before)
    listed = {r.tableName for r in spark.sql(f"SHOW TABLES IN {CATALOG_NAME}.{NAMESPACE}").collect()}
    assert listed == set(TABLES)
    assert spark.table(f"{NAMESPACE}.detect_runs").count() == lake.expected["detect_runs"].num_rows  # default catalog
    assert layout() == before
    with sqlite3.connect(db) as c:
        types = {t for (t,) in c.execute("SELECT DISTINCT iceberg_type FROM iceberg_tables")}
    assert types == {"TABLE"}


def test_a_commit_made_after_the_session_started_is_seen(lake: Lake, spark: Any) -> None:
    """No cached table: a long-running session reads the newest snapshot, as the consumer commits."""
    from pyiceberg.expressions import EqualTo

    name = "triage"
    ident = f"{CATALOG_NAME}.{NAMESPACE}.{name}"
    before = spark.table(ident).count()
    tbl = lake.catalog().load_table((NAMESPACE, name))
    extra = _rows(name, random.Random("late"), 7, DAY2)
    tbl.append(extra)
    assert spark.table(ident).count() == before + 7
    tbl.delete(EqualTo("dt", DAY2))  # leave the table as the other tests expect it
    tbl.append(lake.expected[name].filter(pc.field("dt") == pa.scalar(DAY2, pa.date32())))
    assert table_digest_spark(spark, name) == arrow_digest(lake.expected[name])


def test_spark_listens_on_loopback_only(spark: Any) -> None:
    psutil = pytest.importorskip("psutil")
    jvms = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
    assert jvms, "no Spark JVM under this process"
    listening = [c.laddr for p in jvms for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "the driver listens somewhere"
    for a in listening:  # a Java socket on 127.0.0.1 shows as the IPv4-mapped ::ffff:127.0.0.1
        ip = ipaddress.ip_address(a.ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        assert ip == ipaddress.IPv4Address("127.0.0.1"), listening
    assert spark.conf.get("spark.ui.enabled") == "false"
    assert "spark.jars.packages" not in dict(spark.sparkContext.getConf().getAll())


# --- the digest itself (no Spark needed) -----------------------------------------------------------

def test_the_digest_is_of_the_multiset_of_rows_not_of_their_form() -> None:
    ts = pa.timestamp("us", tz="UTC")
    m = pa.map_(pa.string(), pa.string())
    base = pa.table({"id": pa.array([1, 2, 2], pa.int32()),
                     "at": pa.array([datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)] * 3, ts),
                     "m": pa.array([[("a", "1"), ("b", None)], None, []], m),
                     "l": pa.array([["x", None], [], None], pa.list_(pa.string()))})
    d = arrow_digest(base)
    assert d[0] == 3
    # Same rows in another order, another integer width, another timestamp unit and zone label,
    # map entries in another order, columns in another order: the same digest.
    same_instant = datetime(1970, 1, 1, 1, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=2)))
    other = pa.table({"l": pa.array([None, ["x", None], []], pa.list_(pa.string())),
                      "m": pa.array([[], [("b", None), ("a", "1")], None], m),
                      "at": pa.array([same_instant] * 3, pa.timestamp("ns", tz="+02:00")),
                      "id": pa.array([2, 1, 2], pa.int64())})
    assert arrow_digest(other) == d
    assert arrow_digest(base.slice(0, 2)) != d  # a duplicate row counts
    assert arrow_digest(base.slice(0, 2))[0] == 2
    changed = base.set_column(3, "l", pa.array([["x", None], [], []], pa.list_(pa.string())))  # NULL vs []
    assert arrow_digest(changed) != d
    reordered = base.set_column(3, "l", pa.array([[None, "x"], [], None], pa.list_(pa.string())))  # list order
    assert arrow_digest(reordered) != d
    assert arrow_digest(base.rename_columns(["id", "at", "m", "k"])) != d  # column names count
    def at(us: int) -> pa.Table:
        return pa.table({"at": pa.array([datetime(2026, 3, 2, 9, 0, 0, us, tzinfo=UTC)], ts)})

    assert arrow_digest(at(1)) != arrow_digest(at(2))  # microseconds count

"""Spark beside DuckDB in the tests: the jars, and a digest of a table that both engines compute alike.

**The jars.** :func:`spark_jars` asks ``scripts/spark-jars --offline`` for the classpath (the script is
the one place that knows the cache folder) and never fetches. Without the jars, or without PySpark,
a test skips locally with the command to run and fails in CI (``CI=true``), which fetches them
(``.ci/run``), as :mod:`support.realstack` does for the real stack.

**The digest.** :func:`table_digest_duckdb` and :func:`table_digest_spark` return ``(row count,
checksum)`` of a whole table, and :func:`arrow_digest` does the same for any Arrow table (what
pyiceberg's own scan returns, or the rows a test wrote). Equal digests mean the same multiset of
rows. Why it is computed in Python over Arrow, not in SQL:

* SQL hashes are engine-specific: DuckDB's ``hash()`` is 64-bit, Spark's is 32-bit Murmur3, and
  ``md5(CAST(row AS VARCHAR))`` depends on how each engine prints timestamps, maps, floats and
  bytes. Both engines hand over Arrow (``DataFrame.toArrow()`` in PySpark 4, ``fetch_record_batch``
  in DuckDB), so one Python function sees the same values from both.
* Values are normalised to what they mean, not how they are typed: timestamps become UTC
  microseconds since the epoch (whatever the unit or zone label), dates days since the epoch, every
  integer width a Python ``int``, string and large string ``str``, binary ``bytes``; maps become
  their entries sorted by key (a map has no order; engines keep the file's, which need not agree),
  lists keep their order (it is data), structs their fields by name, floats stay floats (``repr`` is
  exact, so ``-0.0``, ``inf`` and ``nan`` survive). Columns are taken by name in sorted order, and the
  names are hashed too, so a missing or renamed column changes the checksum.
* Each row is hashed on its own (SHA-256 of the ``repr`` of its normalised tuple, which is
  unambiguous for attacker-chosen strings) and the row hashes are **added** modulo 2**256. A sum
  needs no sort of the whole table and keeps multiplicities (unlike XOR, two equal rows do not
  cancel), so the checksum is the multiset's, whatever order each engine returns rows in, computed
  one record batch at a time. Spark's ``toArrow()`` still collects the table on the driver: this is
  for test-sized tables, not a lake of 10**10 rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest

from ztaudit.core.spark_session import qualified

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "spark-jars"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
_MOD = 1 << 256


def spark_jars() -> list[Path]:
    """The cached Spark jars (``scripts/spark-jars --offline``); skip locally / fail in CI without
    them or without PySpark."""
    why = None
    try:
        import pyspark  # noqa: F401
    except ImportError:
        why = "PySpark is not installed (pip install -c constraints.txt -e '.[dev]')"
    if why is None:
        p = subprocess.run([str(SCRIPT), "--offline"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            return [Path(j) for j in p.stdout.strip().split(":") if j]
        why = f"the Spark jars are not fetched here: run scripts/spark-jars ({p.stderr.strip()})"
    if IN_CI:
        pytest.fail(f"CI must have Spark: {why}")
    pytest.skip(why)


#: The test JVM's heap. Spark's default (1 GiB) is what detect's replayed statements peak near on the
#: sample lake, and an earlier module's JVM, reused by ``getOrCreate``, arrives with its own garbage:
#: CI once ran out of heap there. The machine has 24 GiB; two test JVMs never run at once.
DRIVER_MEMORY = "3g"


def plain_session() -> Any:
    """A local ``SparkSession`` without the lake's catalog (``local[2]``, UTC, 127.0.0.1 only, no UI,
    :data:`DRIVER_MEMORY` of heap), for tests that run SQL on Spark; skips locally / fails in CI without
    PySpark. It starts a JVM of its own (any earlier one is ended first: heap size is fixed at launch and
    an earlier module's JVM carries its state). End it with :func:`end_jvm` when done."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        why = "PySpark is not installed (pip install -c constraints.txt -e '.[dev]')"
        if IN_CI:
            pytest.fail(f"CI must have Spark: {why}")
        pytest.skip(why)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    end_jvm()
    warehouse = tempfile.mkdtemp(prefix="ztaudit-test-spark-")
    _WAREHOUSES.append(warehouse)
    builder = SparkSession.builder
    for k, v in {"spark.master": "local[2]", "spark.driver.memory": DRIVER_MEMORY,
                 "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                 "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                 "spark.sql.session.timeZone": "UTC", "spark.sql.catalogImplementation": "in-memory",
                 # Spark creates its warehouse folder at start, in the working directory by default
                 "spark.sql.warehouse.dir": warehouse}.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def hash_collisions(spark: Any, cluster: str, at: datetime, n: int = 300_000) -> list[tuple[str, str]]:
    """Pairs of audit ids ``audit-<i>`` (``i < n``) that Spark's own 32-bit Murmur3
    ``hash(cluster, id, at)`` maps to one value: forced collisions of the detectors' request key, found
    by a birthday search (about ``n**2 / 2**33`` pairs: 10 at 300k), in ascending order."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # the session's zone is UTC
    rows = spark.sql(f"""
        SELECT sort_array(collect_list(id)) AS ids FROM (
            SELECT concat('audit-', cast(id AS STRING)) AS id FROM range({int(n)})) q
        GROUP BY hash(:cluster, id, TIMESTAMP'{stamp}') HAVING count(*) > 1""", args={"cluster": cluster}).collect()
    return sorted((r[0][0], r[0][1]) for r in rows)


# --- the digest ---------------------------------------------------------------------------------

def _norm(value: Any, typ: pa.DataType) -> Any:
    """``value`` (from ``to_pylist``) as an engine-neutral Python value of Arrow type ``typ``."""
    if value is None:
        return None
    if pa.types.is_timestamp(typ):
        if isinstance(value, datetime):
            if value.tzinfo is None:  # a zone-less timestamp is read as UTC, like the lake's
                value = value.replace(tzinfo=UTC)
            delta = value - _EPOCH
            return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return int(value)
    if pa.types.is_date(typ):
        return (value - _EPOCH_DAY).days
    if pa.types.is_map(typ):
        entries = [(_norm(k, typ.key_type), _norm(v, typ.item_type)) for k, v in value]
        return ("map", tuple(sorted(entries, key=repr)))
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return tuple(_norm(v, typ.value_type) for v in value)
    if pa.types.is_struct(typ):
        fields = sorted(typ.field(i).name for i in range(typ.num_fields))
        return tuple((n, _norm(value[n], typ.field(n).type)) for n in fields)
    if pa.types.is_integer(typ):
        return int(value)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
        return bytes(value)
    return value  # str, bool, float


class _Digest:
    """Row count and the sum of row hashes, fed one record batch at a time."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0
        self.names: list[str] | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        names = sorted(batch.schema.names)
        if self.names is None:
            self.names = names
        assert names == self.names, f"columns changed between batches: {self.names} vs {names}"
        columns = []
        for n in names:
            col = batch.column(n)
            if pa.types.is_timestamp(col.type):  # to_pylist of nanoseconds would not be datetimes
                col = col.cast(pa.timestamp("us", tz="UTC"))
            columns.append([_norm(v, col.type) for v in col.to_pylist()])
        for row in zip(*columns, strict=True):
            self.total = (self.total + int.from_bytes(hashlib.sha256(repr(row).encode()).digest(), "big")) % _MOD
        self.rows += batch.num_rows

    def result(self) -> tuple[int, str]:
        header = hashlib.sha256(repr(self.names or []).encode()).digest()
        return self.rows, hashlib.sha256(header + self.total.to_bytes(32, "big")).hexdigest()


def arrow_digest(batches: pa.Table | Iterable[pa.RecordBatch]) -> tuple[int, str]:
    """(rows, checksum) of an Arrow table or stream of record batches (see the module doc)."""
    d = _Digest()
    for b in batches.to_batches() if isinstance(batches, pa.Table) else batches:
        d.add(b)
    if d.names is None and isinstance(batches, pa.Table):
        d.names = sorted(batches.schema.names)
    return d.result()


def table_digest_duckdb(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, str]:
    """(rows, checksum) of ``table`` (a view or table of ``con``) as DuckDB reads it."""
    reader = con.sql(f'SELECT * FROM "{table}"').to_arrow_reader(8192)
    d = _Digest()
    for b in reader:
        d.add(b)
    if d.names is None:
        d.names = sorted(reader.schema.names)
    return d.result()


def table_digest_spark(spark: SparkSession, table: str) -> tuple[int, str]:
    """(rows, checksum) of the lake's ``table`` as Spark reads it (``ztaudit.lake.<table>``)."""
    return arrow_digest(spark.table(qualified(spark, table)).toArrow())


#: Warehouse folders of the sessions :func:`plain_session` started; :func:`end_jvm` removes them.
_WAREHOUSES: list[str] = []


def end_jvm() -> None:
    """Stop the active session and end PySpark's JVM, so that the next session starts a new JVM with
    ``os.environ`` as it is then (``session.stop()`` alone keeps the JVM and its environment)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    # Not SparkSession.getActiveSession(): after a JVM ran out of memory it may find no active session
    # while the context lives on, and the next session then meets a context without a JVM (CI saw it).
    sc = SparkContext._active_spark_context
    if sc is not None:
        try:
            sc.stop()
        except Exception:  # a JVM that ran out of memory may not answer; its process is ended below
            pass
    SparkContext._active_spark_context = None
    SparkSession._instantiatedSession = None
    gateway = SparkContext._gateway
    if gateway is None:
        _remove_warehouses()
        return
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    except Exception:  # the connection may already be gone; the process is what matters
        pass
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # PythonGatewayServer exits on EOF of its stdin
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    _remove_warehouses()  # after the JVM ended: it may have been writing there


def _remove_warehouses() -> None:
    while _WAREHOUSES:
        shutil.rmtree(_WAREHOUSES.pop(), ignore_errors=True)

"""A Spark session over the Iceberg lake: the one place ztaudit configures Spark (issue 16 item 8, issue 17).

:func:`spark_session` is called by whatever runs on Spark (the fidelity test of issue 16; ``detect
--engine spark`` of issue 17) once per process, before the first query. It returns a session whose
catalog ``ztaudit`` is the lake's own Iceberg catalog, so ``spark.table("ztaudit.lake.k8s_audit")``
(or ``lake.k8s_audit``: ``ztaudit`` is the default catalog) reads exactly the files of the table's
current snapshot, the same files DuckDB reads (:func:`ztaudit.core.iceberg.snapshot_files`).

What it sets, and why:

* **The catalog.** Iceberg's ``SparkCatalog`` over ``org.apache.iceberg.jdbc.JdbcCatalog`` on
  ``jdbc:sqlite:LAKE/_iceberg/catalog.db``, named ``ztaudit`` like pyiceberg's ``SqlCatalog``: the
  JDBC catalog keeps every catalog's rows in the same two tables, told apart by ``catalog_name``, so
  the Spark catalog must carry the name pyiceberg wrote (Iceberg docs, "JDBC Catalog"). The
  warehouse is the same ``file://LAKE/_iceberg``.
* **``jdbc.schema-version=V1``.** pyiceberg 0.12's ``SqlCatalog`` creates ``iceberg_tables`` *with*
  the ``iceberg_type`` column (``'TABLE'`` on each row) and ``iceberg_namespace_properties``: that is
  the JDBC catalog's V1 layout (tables and views in one table). Iceberg's ``JdbcCatalog`` switches
  to V1 on its own when the column exists, whatever the property says; the property only decides
  what happens when it is missing (a catalog of pyiceberg < 0.10): V0 reads it view-less, V1 adds
  the column (``ALTER TABLE``, which pyiceberg reads too). V1 is stated so that Spark and pyiceberg
  agree on one layout; the test proves Spark leaves the catalog's tables as pyiceberg made them.
* **``cache-enabled=false``.** Iceberg's Spark catalog caches a loaded table (30 s by default), so
  a long-running session would not see the commits ``ztaudit consume`` makes meanwhile. Without the
  cache each query plans from the newest snapshot, as DuckDB's readers do.
* **Session time zone UTC**, like every DuckDB lake connection (docs/design.md §3): ``dt`` and day
  buckets are UTC days, and ``timestamptz`` values are shown and cast in UTC.
* **Local and closed.** ``local[2]`` by default; the UI is off; the driver binds and advertises
  ``127.0.0.1`` (``spark.driver.host``, ``spark.driver.bindAddress``, and ``SPARK_LOCAL_IP`` for the
  JVM when unset) so nothing listens beyond loopback; the jars are ``spark.jars`` from the local
  cache that ``scripts/spark-jars`` fills from Maven Central, never ``spark.jars.packages``, so no
  session fetches anything at run time.

Failure: without PySpark (the optional ``spark`` extra), without the jars or without the lake's
catalog it raises :class:`SparkUnavailable` or :class:`~ztaudit.core.errors.LakeError` (exit 2)
with the fix; nothing is started. An active session of this process configured for another lake is
refused (:class:`SparkUnavailable`): Spark keeps one session per JVM and its catalogs are fixed once
loaded, so reusing it would silently read the wrong lake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ztaudit.core.errors import LakeError, ZtauditError
from ztaudit.core.iceberg import CATALOG_NAME, ICEBERG_DIR, catalog_file

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Driver address: every port Spark opens (driver RPC, block manager) is on loopback.
LOOPBACK: Final = "127.0.0.1"
#: The Spark property that names the lake a session reads (compared when a session is reused).
CATALOG_URI_KEY: Final = f"spark.sql.catalog.{CATALOG_NAME}.uri"


class SparkUnavailable(ZtauditError):
    """Spark cannot be started here: PySpark or the jars are missing, or a session for another lake runs."""

    exit_code = 2


def spark_conf(lake: Path, *, master: str = "local[2]", jars: Sequence[Path],
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark properties of a session over ``lake`` (pure; :func:`spark_session` applies them).

    ``extra`` is applied last (a cluster's memory settings, say) and may override anything."""
    root = Path(lake).resolve()
    db = catalog_file(root)
    if "?" in str(db):  # sqlite-jdbc reads what follows '?' in its URL as connection options
        raise LakeError(f"the lake path {root} contains '?', which a SQLite JDBC URL cannot carry",
                        fix="move or link the lake to a path without '?'")
    cat = f"spark.sql.catalog.{CATALOG_NAME}"
    conf = {
        "spark.master": master,
        "spark.app.name": "ztaudit",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.jars": ",".join(str(Path(j).resolve()) for j in jars),
        "spark.sql.session.timeZone": "UTC",
        # No Hive metastore (and no metastore_db/ in the working directory); the lake is the catalog.
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.defaultCatalog": CATALOG_NAME,
        cat: "org.apache.iceberg.spark.SparkCatalog",
        f"{cat}.type": "jdbc",
        f"{cat}.uri": f"jdbc:sqlite:{db}",
        f"{cat}.warehouse": (root / ICEBERG_DIR).as_uri(),
        f"{cat}.jdbc.schema-version": "V1",
        f"{cat}.cache-enabled": "false",
    }
    conf.update(extra or {})
    return conf


def spark_session(lake: Path, *, master: str = "local[2]", jars: list[Path],
                  extra: Mapping[str, str] | None = None) -> SparkSession:
    """A Spark session whose catalog ``ztaudit`` is ``lake``'s Iceberg catalog (see the module doc).

    ``jars`` is the classpath ``scripts/spark-jars`` prints (the Iceberg Spark runtime and the SQLite
    JDBC driver). Starting the JVM takes seconds (about 5 s on 2 cores); callers keep the session
    and stop it with ``session.stop()`` when done."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable("PySpark is not installed", fix="pip install 'ztaudit[spark]'") from exc
    if not catalog_file(lake).is_file():
        raise LakeError(f"{lake} has no Iceberg catalog ({catalog_file(lake)})",
                        fix="Spark reads Iceberg lakes only: `ztaudit migrate --lake DIR` converts a plain one")
    missing = [str(j) for j in jars if not Path(j).is_file()]
    if missing or not jars:
        raise SparkUnavailable(f"Spark jars missing: {', '.join(missing) or 'none given'}",
                               fix="run scripts/spark-jars and pass the classpath it prints")
    conf = spark_conf(lake, master=master, jars=jars, extra=extra)
    active = SparkSession.getActiveSession()
    if active is not None:
        if active.conf.get(CATALOG_URI_KEY, None) != conf[CATALOG_URI_KEY]:
            raise SparkUnavailable(
                f"this process already runs a Spark session for {active.conf.get(CATALOG_URI_KEY, None)}",
                fix="stop it (session.stop()) before opening another lake")
        return active
    if master.startswith("local"):
        # The JVM picks its own address for what the properties above do not cover; keep it on loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()

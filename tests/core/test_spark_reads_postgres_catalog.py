"""Spark reads a lake whose Iceberg catalog is on PostgreSQL (``lake.catalog_uri``, issue 16 item 1 and
item 8): the JDBC catalog on the same database, under the lake's own catalog name, the password only in
libpq's password file (read by the PostgreSQL JDBC driver in the JVM), and the same rows as DuckDB.

The JVM inherits the process environment once, when it starts (see :func:`support.spark.end_jvm`): the
test sets ``PGPASSFILE`` before its session starts a JVM of its own, and ends it afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.postgres import PgServer
from support.spark import end_jvm, spark_jars, table_digest_duckdb, table_digest_spark

from ztaudit.core import iceberg
from ztaudit.core.lake import open_lake
from ztaudit.core.spark_session import DEFAULT_CATALOG_KEY, catalog_name, spark_conf, spark_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

ROOT = Path(__file__).resolve().parent.parent.parent
TABLES = ("k8s_audit", "proxy_decision", "idp_event", "quarantine", "findings")


def test_spark_reads_a_lake_with_its_catalog_on_postgresql(postgres: PgServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    jars = spark_jars()
    assert any(j.name.startswith("postgresql-") for j in jars), "scripts/spark-jars lacks the PostgreSQL driver"
    monkeypatch.setenv("PGPASSFILE", str(postgres.pgpass))
    monkeypatch.delenv("ZTAUDIT_LAKE_CATALOG_URI", raising=False)
    lake = tmp_path / "lake"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ZTAUDIT_LAKE")},
           "ZTAUDIT_LAKE_FORMAT": "iceberg", "ZTAUDIT_LAKE_CATALOG_URI": postgres.uri}
    ztaudit = str(ROOT / ".venv" / "bin" / "ztaudit")
    for args in (["ingest", "-q", "--lake", str(lake), "--cluster", "demo", str(ROOT / "sample_logs")],
                 ["detect", "-q", "--lake", str(lake)]):
        p = subprocess.run([ztaudit, *args], capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    assert iceberg.is_shared(lake)
    name = catalog_name(lake)
    assert name.startswith("ztaudit-") and name == iceberg.recorded_catalog(lake)[1]

    # The properties: the database's JDBC URL and user, the lake's catalog name, no password anywhere.
    conf = spark_conf(lake, jars=jars)
    assert conf[DEFAULT_CATALOG_KEY] == name
    assert conf[f"spark.sql.catalog.{name}.uri"].startswith("jdbc:postgresql://127.0.0.1:")
    assert not any(postgres.password in f"{k}={v}" for k, v in conf.items())

    con = open_lake(lake)
    duck = {t: table_digest_duckdb(con, t) for t in TABLES}
    con.close()
    assert duck["k8s_audit"][0] > 50 and duck["findings"][0] > 5
    end_jvm()  # a JVM started earlier has another environment (no PGPASSFILE)
    spark = spark_session(lake, jars=jars)
    try:
        spark.sparkContext.setLogLevel("ERROR")
        for t in TABLES:
            assert table_digest_spark(spark, t) == duck[t], t
        pairs = list(spark.sparkContext.getConf().getAll())
        assert not [k for k, v in pairs if postgres.password in str(v)], "the password is in Spark's properties"
    finally:
        end_jvm()
    # The catalog's tables are as pyiceberg made them: ztaudit still reads and writes the lake after Spark.
    con = open_lake(lake)
    assert table_digest_duckdb(con, "k8s_audit") == duck["k8s_audit"]
    con.close()

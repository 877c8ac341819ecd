"""Spark reads a lake that ztaudit itself wrote as Iceberg tables and gets DuckDB's rows (issue 16,
"What must be shown": Spark reads each table and its row counts and a checksum per table equal
DuckDB's). The lake is the demo's: ``sample_logs/`` ingested with ``lake.format = "iceberg"``, then
``detect`` (derived tables, findings, detect_runs), then a compaction of one day (an overwrite
commit), so every writer's commits are in it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.spark import spark_jars, table_digest_duckdb, table_digest_spark

from ztaudit.core.config import Config, LakeSettings
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.iceberg_snapshot import snapshot_files
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import SOURCE_KINDS, TABLES
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.compact import compact
from ztaudit.pipeline.ingest import ingest_paths

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

SAMPLES = Path(__file__).resolve().parent.parent.parent / "sample_logs"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("ztaudit-iceberg") / "lake"
    cfg = replace(Config(), lake=LakeSettings(format="iceberg"))
    for kind in (*SOURCE_KINDS, "rbac_snapshot"):
        ingest_paths([SAMPLES / kind], lake, source=kind, cluster="demo", config=cfg)
    assert is_iceberg(lake)
    result = run_detectors(lake, cfg)
    assert not result.errors, result.errors
    busiest = max((p for p in (lake / "k8s_audit").glob("dt=*")), key=lambda p: len(list(p.glob("*.parquet"))))
    assert len(list(busiest.glob("*.parquet"))) > 1
    compact(lake, "k8s_audit", busiest.name[3:])
    day = busiest.name[3:]
    assert len(snapshot_files(lake, "k8s_audit", (day, day))) == 1, "the compaction's overwrite commit is in"
    return lake


@pytest.fixture(scope="module")
def spark(lake: Path) -> Iterator[Any]:
    from ztaudit.core.spark_session import spark_session

    t0 = time.monotonic()
    session = spark_session(lake, jars=spark_jars())
    print(f"\nSpark session started in {time.monotonic() - t0:.1f} s")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def con(lake: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = open_lake(lake)
    yield c
    c.close()


@pytest.mark.parametrize("name", list(TABLES))
def test_spark_reads_each_table_ztaudit_wrote_with_duckdbs_rows(name: str, lake: Path, spark: Any,
                                                                 con: duckdb.DuckDBPyConnection) -> None:
    via_duckdb = table_digest_duckdb(con, name)
    via_spark = table_digest_spark(spark, name)
    print(f"{name}: {via_duckdb[0]} rows, checksum {via_duckdb[1][:16]}")
    assert via_spark == via_duckdb
    if name in ("k8s_audit", "proxy_decision", "idp_event", "findings", "reach", "rbac_snapshot"):
        assert via_duckdb[0] > 0, f"{name} is empty: the comparison proves nothing"

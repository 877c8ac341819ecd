"""Derived tables (detectors/tables.py, written by :func:`ztaudit.detectors.run.write_derived`): a
``detect`` over a window replaces only the rows its build covers.

An analyst trial: ``detect --since 2d`` (the hourly job of docs/deploy.md) left the ``credentials``
and ``reach`` tables with the last two days only, so ``report credentials`` and ``report reach``
silently lost their history. Each test fails without the fix.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from support.cases import row

from ztaudit.core.config import Config, replace
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.run import run_detectors

T = datetime(2026, 3, 2, tzinfo=UTC)
ORDER = {"credentials": "day, credential_key", "reach": "window_start, actor, cluster"}


def _rows(days: range, hours: tuple[int, ...] = (9, 16)) -> list[dict[str, Any]]:
    """Requests of a person and a service account at ``hours`` of ``days``."""
    rows = []
    for d in days:
        for hour in hours:
            ts = T + timedelta(days=d, hours=hour)
            rows.append(row(ts, "alice@example.com", "get", "pods", "web", cluster="c1",
                            credential_id=f"JTI=alice-{d}"))
            rows.append(row(ts, "system:serviceaccount:web:app", "list", "secrets", "web", cluster="c1",
                            credential_id="JTI=app"))
    return rows


def _write(lake: Path, table_format: str, rows: list[dict[str, Any]], key: str) -> None:
    sink = LakeSink(lake, table_format=table_format)
    schema = pa.schema([f for f in TABLES["k8s_audit"] if f.name in {k for r in rows for k in r}])
    sink.write("k8s_audit", pa.Table.from_pylist(rows, schema=schema), key)
    sink.publish()  # an Iceberg lake: the files become the table's snapshot


def _table(lake: Path, name: str) -> list[dict[str, Any]]:
    con = open_lake(lake)
    try:
        return con.sql(f"SELECT * EXCLUDE (dt) FROM {name} ORDER BY {ORDER[name]}").to_arrow_table().to_pylist()
    finally:
        con.close()


def _detect(lake: Path, cfg: Config, since: datetime | None = None, until: datetime | None = None) -> None:
    result = run_detectors(lake, cfg, since=since, until=until, detector_ids=["credential.stale"])
    assert not result.errors, result.errors
    assert set(result.tables_built) == set(ORDER)


@pytest.mark.parametrize("since, until, table_format, window", [
    (T + timedelta(days=3, hours=14), None, "plain", "day"),  # the hourly job: from mid-afternoon of day 3
    (T + timedelta(days=3, hours=14), None, "plain", "hour"),
    (T + timedelta(days=3, hours=14), None, "iceberg", "hour"),
    # a window inside the data, ending mid-day: the reach day holding --until is built whole
    (T + timedelta(days=3, hours=12), T + timedelta(days=4, hours=12), "plain", "day"),
])
def test_a_windowed_detect_keeps_the_rows_outside_its_window(tmp_path: Path, since: datetime, until: datetime | None,
                                                             table_format: str, window: str) -> None:
    """Day 4's afternoon arrives after a whole-lake detect; a windowed detect then gives the tables a
    whole-lake detect over all the data gives, row for row (before the fix a windowed run deleted the
    days outside its window; a first version of the fix failed on reading the kept day's file, which
    this test missed while it compared an unchanged table with itself)."""
    cfg = replace(Config(), "reach", window=window)
    early, late = _rows(range(5)), _rows(range(4, 5), hours=(13, 17))
    expected = tmp_path / "expected"
    _write(expected, table_format, early + late, "all")
    _detect(expected, cfg)
    lake = tmp_path / "lake"
    _write(lake, table_format, early, "early")
    _detect(lake, cfg)
    _write(lake, table_format, late, "late")
    _detect(lake, cfg, since, until)
    for name in ORDER:
        got, want = _table(lake, name), _table(expected, name)
        assert got == want, name
    assert {r["day"].date().isoformat() for r in _table(lake, "credentials")} == {
        (T + timedelta(days=d)).date().isoformat() for d in range(5)}

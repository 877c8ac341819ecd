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

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.run import run_detectors

T = datetime(2026, 3, 2, tzinfo=UTC)
ORDER = {"credentials": "day, credential_key", "reach": "window_start, actor, cluster"}


def _traffic(lake: Path, table_format: str) -> None:
    """Five days, two requests a day at 09:00 and 16:00 by a person and a service account."""
    rows = []
    for d in range(5):
        for hour in (9, 16):
            ts = T + timedelta(days=d, hours=hour)
            rows.append(row(ts, "alice@example.com", "get", "pods", "web", cluster="c1",
                            credential_id=f"JTI=alice-{d}"))
            rows.append(row(ts, "system:serviceaccount:web:app", "list", "secrets", "web", cluster="c1",
                            credential_id="JTI=app"))
    sink = LakeSink(lake, table_format=table_format)
    schema = pa.schema([f for f in TABLES["k8s_audit"] if f.name in {k for r in rows for k in r}])
    sink.write("k8s_audit", pa.Table.from_pylist(rows, schema=schema), "case")
    sink.publish()  # an Iceberg lake: the files become the table's snapshot


def _table(lake: Path, name: str) -> list[dict[str, Any]]:
    con = open_lake(lake)
    try:
        return con.sql(f"SELECT * EXCLUDE (dt) FROM {name} ORDER BY {ORDER[name]}").to_arrow_table().to_pylist()
    finally:
        con.close()


@pytest.mark.parametrize("since, until, table_format", [
    (T + timedelta(days=3, hours=14), None, "plain"),  # the hourly job: from mid-afternoon of day 3
    (T + timedelta(days=1, hours=12), T + timedelta(days=2, hours=12), "plain"),  # a window inside the data
    (T + timedelta(days=3, hours=14), None, "iceberg"),
])
def test_a_windowed_detect_keeps_the_rows_outside_its_window(lake: Path, since: datetime,
                                                             until: datetime | None, table_format: str) -> None:
    _traffic(lake, table_format)
    run_detectors(lake, Config(), detector_ids=["credential.stale"])
    whole = {name: _table(lake, name) for name in ORDER}
    assert {r["day"].date().isoformat() for r in whole["credentials"]} == {
        (T + timedelta(days=d)).date().isoformat() for d in range(5)}
    run_detectors(lake, Config(), since=since, until=until, detector_ids=["credential.stale"])
    for name in ORDER:
        # the same data gives the same rows, whether built at once or rebuilt for a window
        assert _table(lake, name) == whole[name], name

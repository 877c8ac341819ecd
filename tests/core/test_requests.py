"""``requests_select`` keeps, per request, the stage the ``k8s_requests`` view keeps (core/requests.py).

The view and the aggregation are compared on drawn stages with colliding keys, equal and NULL
``stage_at``, NULL and duplicate origins: every row of ``k8s_audit`` carries a unique ``name``, so a
different choice of stage shows as a different row. Draws where two stages of a request tie on all
ordering columns are left out: both sides settle those arbitrarily.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztaudit.core.lake import SCALAR_MACROS
from ztaudit.core.requests import requests_select
from ztaudit.core.views import VIEWS

T0 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
STAGES = ["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic", "Bogus"]
COLUMNS = ["cluster", "audit_id", "request_received_at", "stage", "stage_at", "origin", "name", "actor"]

stage_row = st.tuples(
    st.sampled_from(["prod", None]),                       # cluster (NULL is a key value too)
    st.sampled_from(["a", "b"]),                           # audit_id: clients choose it, so it collides
    st.sampled_from([T0, T0 + timedelta(microseconds=1)]),  # request_received_at
    st.sampled_from(STAGES),
    st.sampled_from([None, T0, T0 + timedelta(seconds=1)]),  # stage_at
    st.sampled_from([None, "file:a.log", "kafka:k8s:0:7", ""]),  # origin
)


def _con(rows: list[tuple[Any, ...]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, params, _, body in SCALAR_MACROS:
        con.execute(f"CREATE MACRO {name}({params}) AS {body}")
    con.execute("CREATE TABLE k8s_audit (cluster VARCHAR, audit_id VARCHAR, request_received_at TIMESTAMPTZ, "
                "stage VARCHAR, stage_at TIMESTAMPTZ, origin VARCHAR, name VARCHAR, actor VARCHAR)")
    con.executemany("INSERT INTO k8s_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*r, f"row{i}", "system:serviceaccount:ci:deployer") for i, r in enumerate(rows)])
    con.execute(f"CREATE VIEW k8s_requests AS {VIEWS['k8s_requests'].sql}")
    return con


def _rank(stage: str) -> int:
    return {"ResponseComplete": 4, "Panic": 3, "ResponseStarted": 2}.get(stage, 1)


def _both(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    con = _con(rows)
    view = con.execute(f"SELECT {', '.join(COLUMNS)} FROM k8s_requests ORDER BY name").fetchall()
    agg = con.execute(f"SELECT {', '.join(COLUMNS)} FROM ({requests_select(COLUMNS)}) ORDER BY name").fetchall()
    return view, agg


@settings(max_examples=300, deadline=None)
@given(st.lists(stage_row, min_size=1, max_size=12))
def test_same_stage_as_the_view(rows: list[tuple[Any, ...]]) -> None:
    ties = [(c, a, t, _rank(s), at, o) for c, a, t, s, at, o in rows]
    if len(set(ties)) < len(ties):
        return  # a full tie: both choose arbitrarily (module docstring)
    view, agg = _both(rows)
    assert agg == view


@pytest.mark.parametrize(("stages", "kept"), [
    # (stage, stage_at offset in s or None, origin) per row; which row (by index) speaks for the request
    ([("RequestReceived", 0, "a"), ("ResponseComplete", 1, "a")], 1),
    ([("ResponseComplete", 1, "a"), ("Panic", 2, "a")], 0),             # the stage rank first, not time
    ([("ResponseComplete", None, "a"), ("ResponseComplete", 0, "b")], 1),  # a NULL stage_at comes last
    ([("ResponseComplete", 0, "b"), ("ResponseComplete", 0, "a")], 1),    # then the smallest origin
    ([("ResponseComplete", 0, None), ("ResponseComplete", 0, "z")], 1),   # a NULL origin comes last
    # a NULL stage_at after any time, even one before 1970 (a negative epoch: a sentinel of 0 fails)
    ([("ResponseComplete", None, "a"), ("ResponseComplete", -2_000_000_000, "b")], 1),
])
def test_named_cases(stages: list[tuple[str, int | None, str | None]], kept: int) -> None:
    rows = [("prod", "a", T0, s, None if at is None else T0 + timedelta(seconds=at), o) for s, at, o in stages]
    view, agg = _both(rows)
    assert [r[6] for r in agg] == [f"row{kept}"] == [r[6] for r in view]


def test_unknown_column_is_refused() -> None:
    with pytest.raises(ValueError, match="request_object"):
        requests_select(["actor", "request_object"])
    with pytest.raises(ValueError):
        requests_select([])

"""The derived views the detectors mirror stay equal to the detectors' SQL (core/views/*.sql).

* ``proxy_audit_match.sql`` is :data:`ztaudit.detectors.correlate.VIEW_SQL` and
  ``revocations.sql`` is :data:`ztaudit.detectors.revocations_view.REVOCATIONS_SQL`, token for token
  (whitespace and ``--`` comments aside): the detectors build their bounded queries from the same
  named pieces, so a change to either side that the other lacks fails here.
* ``zt_*.sql`` (the configuration as relations) hold the built-in defaults: on any lake they give the
  same columns, types and rows as ``correlate.install_config`` with the default :class:`Config`.
* The views give the rows the detectors' bounded plans give over an open window.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.cases import case_files, load_case, row, write_case, write_rows

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.views import VIEWS
from ztaudit.core.window import Window
from ztaudit.detectors import correlate, revocations_view
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.sql import execute

#: view -> the SQL the detectors build for it (the unbounded case).
MIRRORED = {"proxy_audit_match": correlate.VIEW_SQL, "revocations": revocations_view.REVOCATIONS_SQL}


def tokens(sql: str) -> str:
    """``sql`` without ``--`` comments, whitespace runs as one space (the SQL here has no ``--`` in literals)."""
    return " ".join(re.sub(r"--[^\n]*", " ", sql).split())


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_view_file_is_the_detectors_sql(name: str) -> None:
    assert tokens(VIEWS[name].sql) == tokens(MIRRORED[name]), (
        f"core/views/{name}.sql and the detectors' SQL drifted: render the file from the detectors' SQL")


def test_drift_is_detected() -> None:
    """The comparison is not blind to a one-token change (a changed literal, a dropped predicate)."""
    sql = VIEWS["revocations"].sql
    assert tokens(sql.replace("'FAILURE'", "'FAILED'")) != tokens(revocations_view.REVOCATIONS_SQL)
    assert tokens(sql.replace("AND subresource IS NULL", "")) != tokens(revocations_view.REVOCATIONS_SQL)


def test_every_config_view_is_a_view_file() -> None:
    assert set(correlate.CONFIG_VIEWS) == {n for n in VIEWS if n.startswith("zt_")}


def _relation(con: Any, name: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    cols = [(str(r[0]), str(r[1])) for r in con.execute(f"DESCRIBE SELECT * FROM {name}").fetchall()]
    return cols, sorted(con.execute(f"SELECT * FROM {name}").fetchall(), key=repr)


@pytest.mark.parametrize("clusters", [(), ("prod",), ("prod", "staging")], ids=["empty", "one", "two"])
def test_default_config_views_are_the_default_config(lake: Path, clusters: tuple[str, ...]) -> None:
    from datetime import UTC, datetime

    if clusters:
        write_rows([row(datetime(2026, 3, 2, 10, tzinfo=UTC), "ann@example.com", cluster=c) for c in clusters], lake)
    con = open_lake(lake, must_exist=False)
    defaults = {v: _relation(con, v) for v in correlate.CONFIG_VIEWS}
    correlate.install_config(con, Config())
    assert {v: _relation(con, v) for v in correlate.CONFIG_VIEWS} == defaults


def _lake_of(family: str, lake: Path) -> None:
    for path in case_files(family):
        write_case(load_case(path), lake)


def _rows(con: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in con.description or []]
    return sorted((dict(zip(names, r, strict=True)) for r in con.fetchall()), key=repr)


def test_revocations_view_is_the_bounded_query_over_an_open_window(lake: Path) -> None:
    _lake_of("revocation", lake)
    con = open_lake(lake, must_exist=False)
    view = _rows(con.execute("SELECT * FROM revocations"))
    assert len(view) >= 10
    assert _rows(execute(con, revocations_view.REVOCATIONS_IN_WINDOW_SQL, Window().params())) == view
    # a bounded window gives the view's rows of that window
    times = sorted(r["revoked_at"] for r in view)
    window = Window(times[1], times[-2])
    inside = [r for r in view if window.lo <= r["revoked_at"] < window.hi]
    assert 0 < len(inside) < len(view)
    assert _rows(execute(con, revocations_view.REVOCATIONS_IN_WINDOW_SQL, window.params())) == inside


def test_proxy_audit_match_view_counts_what_the_detect_plan_counts(tmp_path: Path) -> None:
    # one lake per case: cases reuse audit ids and times, and two requests with the same (cluster,
    # audit_id, request_received_at) are one request by the lake's key
    totals: dict[str, int] = {}
    for path in case_files("impersonation"):
        lake = tmp_path / path.stem
        write_case(load_case(path), lake)
        con = open_lake(lake, must_exist=False)
        view = dict(con.execute("SELECT coalesce(tier, side), count(*) FROM proxy_audit_match GROUP BY 1").fetchall())
        corr = correlate.ensure(DetectContext(con, Config()))
        got = con.execute(f"""SELECT coalesce(sum(matched_tier_a), 0), coalesce(sum(matched_tier_b), 0),
                                     coalesce(sum(matched_tier_c), 0),
                                     coalesce(sum(unmatched_proxy + unmatched_audit + pending), 0)
                              FROM {corr.summary}""").fetchone()
        # tier S (paired with a measured proxy clock offset) is counted with tier C
        assert (view.get("A", 0), view.get("B", 0), view.get("C", 0) + view.get("S", 0),
                view.get("proxy", 0) + view.get("audit", 0)) == got, path.name
        for k, n in view.items():
            totals[k] = totals.get(k, 0) + n
        con.close()
    assert set(totals) == {"A", "B", "C", "S", "proxy", "audit"}, totals


@pytest.mark.parametrize(("stages", "winner"), [
    (["RequestReceived", "ResponseStarted", "ResponseComplete"], "ResponseComplete"),
    (["ResponseComplete", "RequestReceived"], "ResponseComplete"),
    (["RequestReceived", "Panic"], "Panic"),
    (["RequestReceived", "ResponseStarted"], "ResponseStarted"),
    (["RequestReceived"], "RequestReceived"),
])
def test_k8s_requests_keeps_the_most_complete_stage(tmp_path: Path, stages: list[str], winner: str) -> None:
    """One row per (cluster, audit_id, request_received_at): the most complete stage speaks for the request,
    and a client reusing an Audit-ID at another time is another request."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
    rows = [row(t0, "system:serviceaccount:a:b", audit_id="same", stage=s, stage_at=t0 + timedelta(seconds=i))
            for i, s in enumerate(stages)]
    rows.append(row(t0 + timedelta(hours=1), "system:serviceaccount:a:b", audit_id="same", stage="RequestReceived",
                    stage_at=t0 + timedelta(hours=1)))
    write_rows(rows, tmp_path / "lake")
    con = open_lake(tmp_path / "lake")
    got = con.execute("SELECT request_received_at, stage FROM k8s_requests ORDER BY 1").fetchall()
    assert got == [(t0, winner), (t0 + timedelta(hours=1), "RequestReceived")]

"""Opening the lake: the one place a DuckDB connection over the lake is made.

:func:`open_lake` is called by every reader (detectors, reports, ``ztaudit sql`` and ``catalog``,
notebooks, benchmarks). It sets what every query relies on, in this order: UTC session time zone
(day buckets and ``dt`` partitions are UTC days, docs/design.md), optional memory limit, threads and a
private spill directory, the scalar macros, the table views and derived views
(:func:`ztaudit.core.catalog.create_views`), and the analyst table macros. Table macros are SQL
functions whose arguments DuckDB binds like parameters, so ``SELECT * FROM requests_by(?)`` is as
injection-safe as any bound query.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import duckdb

from ztaudit.core.catalog import create_views, sql_literal
from ztaudit.core.errors import LakeError

#: Scalar macros the views and detectors use: (name, parameters, description, expression).
SCALAR_MACROS: Final[list[tuple[str, str, str, str]]] = [
    # Stages of one request, most complete first (audit.k8s.io/v1 Stage; a Panic ends a request
    # without ResponseComplete): the row that speaks for a request is the most complete stage.
    ("stage_rank", "stage", "Rank of an audit stage: ResponseComplete 4 > Panic 3 > ResponseStarted 2 > "
     "RequestReceived 1.",
     "CASE stage WHEN 'ResponseComplete' THEN 4 WHEN 'Panic' THEN 3 WHEN 'ResponseStarted' THEN 2 ELSE 1 END"),
]

#: Table macros for analysts: (name, parameters, description, body). Bodies reference only views.
MACROS: Final[list[tuple[str, str, str, str]]] = [
    ("requests_by", "who", "Kubernetes requests (one row each) whose effective actor is `who`, oldest first.",
     "SELECT * FROM k8s_requests WHERE actor = who ORDER BY request_received_at"),
    ("findings_for", "who", "Findings about `who`, newest first.",
     "SELECT * FROM findings WHERE actor = who ORDER BY last_seen DESC"),
    ("decisions_for", "who", "Proxy decisions for `who` (email or IdP user id), oldest first.",
     "SELECT * FROM proxy_decision WHERE email = who OR user_id = who ORDER BY decided_at"),
    ("idp_events_for", "who", "IdP events about or by `who` (login, subject id or acting admin).",
     "SELECT * FROM idp_event WHERE subject_login = who OR subject_id = who OR actor = who "
     "ORDER BY occurred_at"),
    ("credential_uses", "cred", "Kubernetes requests made with credential id `cred` (JTI=..., X509SHA256=...).",
     "SELECT * FROM k8s_requests WHERE credential_id = cred ORDER BY request_received_at"),
    ("requests_between", "t0, t1", "Kubernetes requests received in [t0, t1) (pruned by day partition).",
     "SELECT * FROM k8s_requests WHERE request_received_at >= CAST(t0 AS TIMESTAMPTZ) "
     "AND request_received_at < CAST(t1 AS TIMESTAMPTZ) "
     "AND CAST(dt AS VARCHAR) >= strftime(CAST(t0 AS TIMESTAMPTZ), '%Y-%m-%d') "
     "AND CAST(dt AS VARCHAR) <= strftime(CAST(t1 AS TIMESTAMPTZ), '%Y-%m-%d') "
     "ORDER BY request_received_at"),
]


def create_macros(con: duckdb.DuckDBPyConnection, *, persistent: bool = False, scalar: bool = True,
                  table: bool = True) -> list[str]:
    """Create the :data:`SCALAR_MACROS` and/or the table :data:`MACROS` on ``con``; returns their names.

    Scalar macros come before the views (views use them), table macros after (they read views).
    """
    kind = "MACRO" if persistent else "TEMP MACRO"
    names = []
    if scalar:
        for name, args, _desc, body in SCALAR_MACROS:
            con.execute(f"CREATE OR REPLACE {kind} {name}({args}) AS {body}")
            names.append(name)
    if table:
        for name, args, _desc, body in MACROS:
            con.execute(f"CREATE OR REPLACE {kind} {name}({args}) AS TABLE {body}")
            names.append(name)
    return names


@contextmanager
def spill_directory() -> Iterator[Path]:
    """A fresh 0700 directory with an unguessable name for DuckDB's spill files, removed afterwards.

    Spilled rows are lake data, and a fixed name in a shared /tmp could be pre-created or
    symlinked by another user; the current directory is no place for them either.
    """
    path = Path(tempfile.mkdtemp(prefix="ztaudit-duckdb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_lake(lake: str | Path, *, must_exist: bool = True, database: str = ":memory:",
              memory_limit: str | None = None, threads: int | None = None,
              spill_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over ``lake``: UTC, settings, macros, every table view and derived view.

    ``database`` is ``:memory:`` (temporary views) or a file (``ztaudit catalog --out``: persistent
    views over absolute paths). Raises :class:`LakeError` (exit 2) when ``must_exist`` and the
    directory is missing; ``duckdb.Error`` on a broken lake.
    """
    path = Path(lake)
    if must_exist and not path.is_dir():
        raise LakeError(f"lake {path} does not exist",
                        fix="pass --lake DIR, or build one with `ztaudit ingest PATH... --lake DIR` "
                            "or `ztaudit demo`")
    persistent = database != ":memory:"
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    try:  # no progress bar on stderr; inside a Jupyter kernel DuckDB refuses the setting without ipywidgets
        con.execute("SET enable_progress_bar = false")
    except duckdb.InvalidInputException:
        pass  # then it shows no progress bar there anyway
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = " + sql_literal(memory_limit))
    if spill_dir is not None:
        con.execute("SET temp_directory = " + sql_literal(str(spill_dir)))
    create_macros(con, persistent=persistent, table=False)
    create_views(con, path.resolve(), persistent=persistent)
    create_macros(con, persistent=persistent, scalar=False)
    return con

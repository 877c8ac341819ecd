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
from ztaudit.core.iceberg import ICEBERG_DIR, READY_FILE
from ztaudit.core.schema import TABLES

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


def is_lake(path: Path) -> bool:
    """True when ``path`` is a directory that ztaudit wrote: it has ``_state/``, or a table folder of
    :data:`~ztaudit.core.schema.TABLES` with a ``dt=`` partition in it (a folder of raw logs named
    ``k8s_audit/`` is not a lake). Unreadable entries count as absent."""
    try:
        # an Iceberg lake is marked READY (its catalog may be gone: readers then say so, migrate mends it);
        # a catalog folder that cannot be read is a lake too (readers say why)
        try:
            marked = (path / ICEBERG_DIR / READY_FILE).is_file()
        except PermissionError:
            marked = (path / ICEBERG_DIR).is_dir()
        if (path / "_state").is_dir() or marked:
            return True
        return any((path / t).is_dir() and any(p.name.startswith("dt=") for p in (path / t).iterdir())
                   for t in TABLES)
    except OSError:
        return False


def check_lake(lake: str | Path) -> Path:
    """``lake`` as a Path after checking that it is a lake; raises :class:`LakeError` (exit 2) if not.

    Called first by every command that reads a lake (through :func:`open_lake`, and directly by
    ``detect`` and ``compact`` before they create anything). A lake is what :func:`is_lake` says:
    a mistyped path, a file, an empty directory or a folder of logs is refused with a fix, rather
    than answered with "0 findings" or an empty report.
    """
    path = Path(lake)
    shown = path.absolute()
    build = "build one with `ztaudit ingest LOGS... --lake DIR`, or try `ztaudit demo`"
    if not path.exists():
        raise LakeError(f"lake {shown} does not exist",
                        fix=f"pass --lake DIR or set ZTAUDIT_LAKE to the lake `ingest` wrote, or {build}")
    if not path.is_dir():
        raise LakeError(f"lake {shown} is not a directory", fix=f"pass the lake's directory as --lake, or {build}")
    if is_lake(path):
        return path
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError as exc:
        raise LakeError(f"cannot read lake {shown}: {exc.strerror or exc}",
                        fix="check the directory's permissions") from exc
    inner = [c for c in children if is_lake(c)]
    if inner:
        raise LakeError(f"{shown} is not a ztaudit lake, but {inner[0].name}/ in it is",
                        fix=f"pass --lake {shown / inner[0].name}")
    if not any(path.iterdir()):
        raise LakeError(f"{shown} is not a ztaudit lake: it is empty", fix=build)
    logs = [c.name for c in children if c.name in TABLES]
    if logs:
        raise LakeError(f"{shown} is not a ztaudit lake: it looks like a folder of logs ({', '.join(logs)}/)",
                        fix=f"ingest it first: ztaudit ingest {shown} --lake LAKE; then pass --lake LAKE")
    raise LakeError(f"{shown} is not a ztaudit lake: it has no table folders ({', '.join(TABLES)}) "
                    "with dt= partitions and no _state/", fix=f"pass the lake's directory as --lake, or {build}")


def open_lake(lake: str | Path, *, must_exist: bool = True, database: str = ":memory:",
              memory_limit: str | None = None, threads: int | None = None,
              spill_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over ``lake``: UTC, settings, macros, every table view and derived view.

    ``database`` is ``:memory:`` (temporary views) or a file (``ztaudit catalog --out``: persistent
    views over absolute paths). Raises :class:`LakeError` (exit 2) when ``must_exist`` and ``lake``
    is not a lake (:func:`check_lake`); ``duckdb.Error`` on a broken lake. ``must_exist=False`` is
    for tests and builders that open a lake they are about to fill.
    """
    path = check_lake(lake) if must_exist else Path(lake)
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

"""Opening the lake for reports, ``ztaudit sql`` and ``ztaudit catalog``: views plus table macros.

The views come from :func:`ztaudit.pipeline.catalog.connect`; this module adds the session
settings reports rely on (UTC time zone, so day buckets are UTC days) and the analyst macros.
Macros are SQL functions whose arguments DuckDB binds like parameters, so
``SELECT * FROM requests_by(?)`` is as injection-safe as any bound query.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from ztaudit.pipeline.catalog import DERIVED_VIEWS, connect
from ztaudit.pipeline.errors import LakeError

#: (name, parameters, description, body). Bodies reference only views; parameters are bound.
MACROS: list[tuple[str, str, str, str]] = [
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


def create_macros(con: duckdb.DuckDBPyConnection, *, persistent: bool = False) -> list[str]:
    """Create :data:`MACROS` on ``con`` (TEMP unless ``persistent``); returns their names."""
    kind = "MACRO" if persistent else "TEMP MACRO"
    for name, args, _desc, body in MACROS:
        con.execute(f"CREATE OR REPLACE {kind} {name}({args}) AS TABLE {body}")
    return [m[0] for m in MACROS]


def load_table_providers() -> None:
    """Import the module that registers the derived tables' schemas (``reach``, ``credentials``).

    Registration (``schema.register_table``) at import is how the catalog learns to create a view
    for them; the module holds only schemas, so this costs no pandas/scikit-learn import. Missing
    module (a checkout without the detectors) is skipped.
    """
    fn = optional("ztaudit.detectors.table_schemas:registered")
    if fn is not None:
        fn()


def open_lake(lake: str | Path, *, must_exist: bool = True, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over ``lake`` with UTC session time, every view and the macros.

    Raises :class:`LakeError` when ``must_exist`` and the directory is missing.
    """
    path = Path(lake)
    if must_exist and not path.is_dir():
        raise LakeError(f"lake {path} does not exist",
                        fix="pass --lake DIR, or build one with `ztaudit ingest PATH... --lake DIR` "
                            "or `ztaudit demo`")
    load_table_providers()
    con: duckdb.DuckDBPyConnection = connect(path.resolve(), database)
    con.execute("SET TimeZone = 'UTC'")
    create_macros(con, persistent=database != ":memory:")
    return con


def has_view(name: str) -> bool:
    """True when a derived view called ``name`` is registered (after providers loaded)."""
    return name in DERIVED_VIEWS


def optional(target: str) -> Callable[..., Any] | None:
    """The function ``module:attr`` if its module exists in this checkout, else None.

    A missing module (another engineer's code not landed yet) or attribute means the caller falls
    back to plain SQL; any other import error is a real bug and propagates.
    """
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None
        raise
    fn = getattr(module, attr, None)
    return fn if callable(fn) else None

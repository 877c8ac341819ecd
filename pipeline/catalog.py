"""DuckDB views over the lake: what ``ztaudit sql``, reports, detectors and notebooks query.

:func:`connect` opens an in-memory DuckDB (or a database file for ``ztaudit catalog``) and
creates one view per lake table (``read_parquet('LAKE/<table>/dt=*/*.parquet',
hive_partitioning=true)``), or an empty, correctly typed view when the lake has no file of that
table yet, so queries never fail just because a source was not ingested. Derived views (one row
per request, proxy/audit matches, ...) are registered in :data:`DERIVED_VIEWS` by the module that
owns them and created after the base views, in registration order.

Paths are embedded as SQL string literals with quotes doubled (DuckDB cannot bind a parameter
inside ``CREATE VIEW``); every value that comes from a user or a log is bound as a parameter
by the code that queries these views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from .schema import TABLES


def sql_literal(value: str) -> str:
    """A SQL string literal for ``value`` (single quotes doubled). Only for paths we built."""
    return "'" + value.replace("'", "''") + "'"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_binary(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_map(t):
        return f"MAP({_duck_type(t.key_type)}, {_duck_type(t.item_type)})"
    raise TypeError(f"no DuckDB type for {t}")


@dataclass(frozen=True)
class DerivedView:
    """A view defined over other views. ``sql`` is the SELECT; it may not take user input."""

    name: str
    description: str
    sql: str


#: name -> view; modules register theirs with :func:`register_view` at import time.
DERIVED_VIEWS: dict[str, DerivedView] = {}
#: callables that import the modules which register views (kept lazy so the catalog does not
#: import scikit-learn just to open a connection).
VIEW_PROVIDERS: list[str] = [
    "ztaudit.pipeline.views",
    "ztaudit.detectors.views",
]


def register_view(name: str, description: str, sql: str) -> None:
    """Register a derived view; called at import time by the module that owns it."""
    DERIVED_VIEWS[name] = DerivedView(name, description, sql)


def _load_providers() -> None:
    import importlib

    for mod in VIEW_PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def table_glob(lake: Path, table: str) -> str:
    """The glob of a table's committed Parquet files (temp files start with '.' and never match)."""
    return str(Path(lake) / table / "dt=*" / "*.parquet")


def has_files(lake: Path, table: str) -> bool:
    """Whether the lake holds at least one committed file of ``table``."""
    root = Path(lake) / table
    return root.exists() and any(p for p in root.glob("dt=*/*.parquet") if not p.name.startswith("."))


def create_views(con: duckdb.DuckDBPyConnection, lake: Path, *, persistent: bool = False) -> list[str]:
    """Create the base and derived views on ``con``; returns their names."""
    _load_providers()
    kind = "VIEW" if persistent else "TEMP VIEW"
    names = []
    for table, schema in TABLES.items():
        if has_files(lake, table):
            cols = ", ".join(f'"{f.name}"' for f in schema)
            src = (f"read_parquet({sql_literal(table_glob(lake, table))}, hive_partitioning = true, "
                   f"union_by_name = true)")
            con.execute(f'CREATE OR REPLACE {kind} "{table}" AS SELECT {cols}, dt FROM {src}')
        else:
            cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
            con.execute(f'CREATE OR REPLACE {kind} "{table}" AS SELECT {cols}, CAST(NULL AS VARCHAR) AS dt '
                        f"WHERE false")
        names.append(table)
    for view in DERIVED_VIEWS.values():
        con.execute(f'CREATE OR REPLACE {kind} "{view.name}" AS {view.sql}')
        names.append(view.name)
    return names


def connect(lake: str | Path, database: str = ":memory:", *, threads: int | None = None,
            memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every lake view. Raises nothing for an empty lake."""
    con = duckdb.connect(database)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = " + sql_literal(memory_limit))
    create_views(con, Path(lake), persistent=database != ":memory:")
    return con


"""Views over the lake's files: one per table of :data:`~ztaudit.core.schema.TABLES`, then the derived views.

Each table view reads ``read_parquet('LAKE/<table>/dt=*/*.parquet', hive_partitioning=true)``, or is
an empty, correctly typed view when the lake has no file of that table yet, so queries never fail
just because a source was not ingested. The derived views (:mod:`ztaudit.core.views`) follow.

Paths are embedded as SQL string literals with quotes doubled (DuckDB cannot bind a parameter
inside ``CREATE VIEW``); every value that comes from a user or a log is bound as a parameter
by the code that queries these views.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from ztaudit.core.schema import TABLES
from ztaudit.core.views import VIEWS


def sql_literal(value: str | None) -> str:
    """A SQL string literal for ``value`` (single quotes doubled), or ``NULL``.

    Only for text the code itself chose (paths it built, its own regexes and descriptions) where
    DuckDB cannot bind a parameter (``CREATE VIEW``, ``COMMENT ON``, ``SET``); values from a user
    or a log are always bound.
    """
    if value is None:
        return "NULL"
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


def table_glob(lake: Path, table: str) -> str:
    """The glob of a table's committed Parquet files (temp files start with '.' and never match)."""
    return str(Path(lake) / table / "dt=*" / "*.parquet")


def has_files(lake: Path, table: str) -> bool:
    """Whether the lake holds at least one committed file of ``table``."""
    root = Path(lake) / table
    return root.exists() and any(p for p in root.glob("dt=*/*.parquet") if not p.name.startswith("."))


def create_views(con: duckdb.DuckDBPyConnection, lake: Path, *, persistent: bool = False) -> list[str]:
    """Create the base table views and then :data:`~ztaudit.core.views.VIEWS` on ``con``; their names.

    Called by :func:`ztaudit.core.lake.open_lake`, and again by ``detect`` after it wrote derived
    tables (a table that had no file gets its real view). Raises ``duckdb.Error`` on a broken lake.
    """
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
    for view in VIEWS.values():
        con.execute(f'CREATE OR REPLACE {kind} "{view.name}" AS {view.sql}')
        names.append(view.name)
    return names



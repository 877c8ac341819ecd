"""Views over the lake's files: one per table of :data:`~ztaudit.core.schema.TABLES`, then the derived views.

Each table view reads ``read_parquet('LAKE/<table>/dt=*/[!.]*.parquet', hive_partitioning=true)``, or
is an empty, correctly typed view when the lake has no file of that table yet, so queries never
fail just because a source was not ingested. The derived views (:mod:`ztaudit.core.views`) follow.

The views read the lake's own files only (issue 11, items 3 and 19):

* ``[!.]*`` skips hidden files (DuckDB's ``*`` matches a leading dot, unlike a shell), and before a
  view is made :func:`~ztaudit.core.files.table_files` checks that every file the glob will read is
  the lake's own, raising :class:`~ztaudit.core.errors.LakeError` that names any foreign one.
* The lake path is literal: DuckDB expands ``*``, ``?`` and ``[...]`` in the whole argument of
  ``read_parquet``, so a lake named ``lk[1]`` would read ``lk1``'s files. :func:`glob_escape`
  quotes each of those characters as a one-character class (``[[]``, ``[*]``, ``[?]``), which DuckDB's
  glob matches literally. The view stays a glob (not a file list) so that new files and
  compacted days appear without rebuilding it (``ztaudit catalog --out``), and ``dt`` still
  comes from hive partitioning, so day filters prune files.

A lake written by an earlier version lacks the columns added since (``idp_event.reason``,
``k8s_audit.proxy_session_id``, ...): ``union_by_name`` fills a column that *some* file has, but a
column that *no* file of a table has cannot be selected. :func:`create_views` then reads the
table's union schema once (``DESCRIBE``) and selects each absent column as a typed NULL. A lake
whose files all have every column (the usual case) pays nothing for this: the view is first
created as if nothing were missing, and only a binder error naming a column leads to the
``DESCRIBE``. A persistent catalog (``ztaudit catalog --out``) made over such a lake keeps the
NULL until it is rebuilt, even after files with the column arrive.

Paths are embedded as SQL string literals with quotes doubled (DuckDB cannot bind a parameter
inside ``CREATE VIEW``); every value that comes from a user or a log is bound as a parameter
by the code that queries these views.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from ztaudit.core import warehouse
from ztaudit.core.duckdb_fs import attach
from ztaudit.core.errors import LakeError
from ztaudit.core.files import table_files
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.iceberg_snapshot import snapshot_files
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


_GLOB_CHARS = re.compile(r"([*?\[])")


def glob_escape(path: str) -> str:
    """``path`` with DuckDB's glob characters quoted, so DuckDB's glob matches it literally.

    ``*``, ``?`` and ``[`` become ``[*]``, ``[?]`` and ``[[]`` (a class of one character; ``]`` and
    ``!`` outside a class are literal already). Tested against DuckDB with sibling lakes ``lk[1]``
    and ``lk1``. DuckDB's glob treats ``\\`` as a path separator, which no quoting undoes, so a
    path holding one raises :class:`LakeError`.
    """
    if "\\" in path:
        raise LakeError(f"the lake path {path!r} holds a backslash, which DuckDB reads as a directory separator",
                        fix="move or rename the lake to a path without '\\'")
    return _GLOB_CHARS.sub(r"[\1]", path)


def table_glob(lake: Path, table: str) -> str:
    """The DuckDB glob of a table's committed files: literal lake path, ``dt=*``, no hidden file."""
    return glob_escape(str(Path(lake) / table)) + "/dt=*/[!.]*.parquet"


def has_files(lake: Path, table: str) -> bool:
    """Whether the lake holds at least one committed file of ``table``; :class:`LakeError` names any
    foreign file the table's glob would read (:func:`~ztaudit.core.files.table_files`)."""
    return bool(table_files(Path(lake) / table))


def _create_table_view(con: duckdb.DuckDBPyConnection, kind: str, table: str, schema: pa.Schema,
                       src: str) -> None:
    """``CREATE {kind} table AS SELECT <schema columns>, dt FROM src``; columns absent from every
    file of the table (a lake written before they existed) are selected as ``CAST(NULL AS type)``.

    Called by :func:`create_views` for each table with files. The view is created with every
    column first: DuckDB binds it then, reading the files' schemas once. Only if that fails with
    a binder error is the union schema read (``DESCRIBE``, once) and the view made with typed
    NULLs for what is missing; a binder error with nothing missing is raised as it was.
    """
    def create(missing: frozenset[str]) -> None:
        cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' if f.name in missing
                         else f'"{f.name}"' for f in schema)
        con.execute(f'CREATE OR REPLACE {kind} "{table}" AS SELECT {cols}, dt FROM {src}')

    try:
        create(frozenset())
    except duckdb.BinderException:
        present = {str(row[0]) for row in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        missing = frozenset(f.name for f in schema if f.name not in present)
        if not missing:
            raise
        create(missing)


def create_views(con: duckdb.DuckDBPyConnection, lake: Path, *, persistent: bool = False) -> list[str]:
    """Create the base table views and then :data:`~ztaudit.core.views.VIEWS` on ``con``; their names.

    Called by :func:`ztaudit.core.lake.open_lake`, and again by ``detect`` after it wrote derived
    tables (a table that had no file gets its real view). Raises :class:`LakeError` naming any file
    in a table folder that is not the lake's own; ``duckdb.Error`` on a broken lake.
    """
    kind = "VIEW" if persistent else "TEMP VIEW"
    names = []
    iceberg = is_iceberg(lake)
    wh = warehouse.of_lake(lake) if iceberg else None
    if wh is not None:
        # The files are s3:// objects: DuckDB reads them through pyarrow's S3 client, never through
        # its httpfs extension (downloaded at run time: impossible on an air-gapped machine).
        attach(con, wh.filesystem)
    for table, schema in TABLES.items():
        files = snapshot_files(lake, table) if iceberg else None
        if files:
            # (on S3 a HEAD per object would cost more than the read: DuckDB names a missing one itself)
            gone = [f for f in files if not Path(f).is_file()] if wh is None else []
            if gone:
                raise LakeError(f"the Iceberg snapshot of {table} lists {len(gone)} file(s) that are gone, e.g. "
                                f"{gone[0]}", fix="restore them (from a backup), or re-ingest their input; or "
                                f"unlist them (their rows leave the lake): ztaudit migrate --lake {lake}")
            # An Iceberg lake: exactly the current snapshot's files, each with its own DATE dt.
            # each element of the list is a glob to DuckDB: a local lake at lk[1] must not read lk1's files
            listed = ", ".join(sql_literal(glob_escape(f) if wh is None and _GLOB_CHARS.search(f) else f)
                               for f in files)
            try:
                _create_table_view(con, kind, table, schema, f"read_parquet([{listed}], union_by_name = true)")
            except (duckdb.IOException, duckdb.InvalidInputException) as exc:
                # binding reads every listed file's footer: a damaged or unreadable one fails here
                said = " ".join(str(exc).split())[:400]
                if wh is None:
                    raise LakeError(f"the Iceberg snapshot of {table} lists a file that cannot be read: {said}",
                                    fix="restore the file (its permissions, or a copy), or delete it and re-ingest "
                                        f"its input, then run: ztaudit migrate --lake {lake}") from None
                raise LakeError(f"the Iceberg snapshot of {table} names an object of {wh.uri} that cannot be read: "
                                f"{said}", fix="check that the store is up and the credentials may read the bucket; "
                                "an object deleted by hand: restore it, or re-ingest its input") from None
        elif files is None and has_files(lake, table):
            src = (f"read_parquet({sql_literal(table_glob(lake, table))}, hive_partitioning = true, "
                   f"union_by_name = true)")
            _create_table_view(con, kind, table, schema, src)
        else:
            cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
            con.execute(f'CREATE OR REPLACE {kind} "{table}" AS SELECT {cols}, CAST(NULL AS DATE) AS dt '
                        f"WHERE false")
        names.append(table)
    for view in VIEWS.values():
        con.execute(f'CREATE OR REPLACE {kind} "{view.name}" AS {view.sql}')
        names.append(view.name)
    return names



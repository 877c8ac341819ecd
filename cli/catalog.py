"""``ztaudit catalog``: describe the lake's views, or write them to a DuckDB database file.

``--out FILE.duckdb`` writes a persistent database holding one view per lake table (over the
Parquet files by absolute path, so new files in existing tables show up without rebuilding), the
derived views, the analyst macros and a ``ztaudit_columns`` table with every column's
description (also attached as DuckDB comments). Open it with the ``duckdb`` CLI, no Python
needed::

    duckdb lake.duckdb "SELECT * FROM findings_for('alice@example.com')"

Rebuild it when the lake moves or a new table (e.g. ``reach``) appears. The file is built in a
private temporary directory beside it and renamed, so a reader never sees half a catalog, and a
failure (a full disk is exit 4) leaves neither a temporary file nor a ``.wal`` behind
(:func:`write_catalog`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import duckdb

from ztaudit.cli.options import lake_option
from ztaudit.cli.report import write_output
from ztaudit.core import warehouse
from ztaudit.core.catalog import sql_literal
from ztaudit.core.columns import describe
from ztaudit.core.errors import SinkError
from ztaudit.core.files import FILE_MODE, fsync_dir, makedirs
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.lake import MACROS, SCALAR_MACROS, open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.views import VIEWS
from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.formats import FORMATS, render


def catalog_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(views, columns): each view with kind/description, and each column with type/description."""
    views: list[dict[str, Any]] = []
    columns: list[dict[str, Any]] = []
    for table, schema in TABLES.items():
        desc = (schema.metadata or {}).get(b"description", b"").decode()
        views.append({"name": table, "kind": "table", "description": desc})
        for name, typ, d in describe(schema):
            columns.append({"view": table, "column": name, "type": typ, "description": d})
        columns.append({"view": table, "column": "dt", "type": "date",
                        "description": "Hive partition: UTC day of the table's event time (prune with it)."})
    for v in VIEWS.values():
        views.append({"name": v.name, "kind": "view", "description": v.description})
        for name, typ in con.execute('SELECT column_name, data_type FROM duckdb_columns() '
                                     'WHERE table_name = ? ORDER BY column_index', [v.name]).fetchall():
            columns.append({"view": v.name, "column": name, "type": typ, "description": ""})
    for name, args, desc, _ in [*SCALAR_MACROS, *MACROS]:
        views.append({"name": f"{name}({args})", "kind": "macro", "description": desc})
    return views, columns


def write_catalog(lake: str | Path, out: str | Path) -> dict[str, int]:
    """Write the persistent DuckDB catalog for ``lake`` to ``out``; returns counts of objects.

    Called by ``ztaudit catalog --out``. DuckDB builds the database (and its ``.wal``) inside a
    fresh private directory beside ``out`` (``mkdtemp``: mode 0700, unguessable name, so no other
    user can plant a symlink where DuckDB creates its files); it is checkpointed, closed, set to
    0600 like the lake's files, fsynced and renamed over ``out`` (one file system, so the rename is
    atomic: a reader sees the old catalog or the new one). Whatever fails, the private directory
    with the half-built database and its ``.wal`` is removed and an existing ``out`` is untouched.
    Raises :class:`SinkError` (exit 4) when the file cannot be written (full disk, I/O error) and
    :class:`~ztaudit.core.errors.LakeError` (exit 2) for a lake that cannot be read.
    """
    out = Path(out).resolve()
    makedirs(out.parent)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise SinkError(f"cannot write {out}: {exc.strerror or exc}",
                        fix="free some space, or pass an --out in a writable directory") from exc
    try:
        tmp = work / out.name
        try:
            counts = _build_catalog(Path(lake).resolve(), tmp)
            os.chmod(tmp, FILE_MODE)  # like the lake's own files: 0600, whatever the umask
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, out)
            fsync_dir(out.parent)
        except OSError as exc:
            raise SinkError(f"cannot write {out}: {exc.strerror or exc}",
                            fix="free some space, or pass an --out in a writable directory") from exc
        except duckdb.Error as exc:
            # DuckDB reports a failed write of its own file (ENOSPC, EIO, EFBIG) as an IOException or,
            # at commit, a TransactionException, both naming the file; an error that names our
            # database or its .wal is a failure to write the output, anything else is about the lake.
            if str(work) not in str(exc):
                raise
            raise SinkError(f"cannot write {out}: {str(exc).strip()}",
                            fix="free some space, or pass an --out in a writable directory") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return counts


def _build_catalog(lake: Path, database: Path) -> dict[str, int]:
    """Create the views, macros and column tables in the new DuckDB file ``database``; counts."""
    con = open_lake(lake, database=str(database))
    try:
        views, columns = catalog_rows(con)
        con.execute("CREATE OR REPLACE TABLE ztaudit_columns (view VARCHAR, \"column\" VARCHAR, type VARCHAR, "
                    "description VARCHAR)")
        con.executemany("INSERT INTO ztaudit_columns VALUES (?, ?, ?, ?)",
                        [[c["view"], c["column"], c["type"], c["description"]] for c in columns])
        con.execute("CREATE OR REPLACE TABLE ztaudit_views (name VARCHAR, kind VARCHAR, description VARCHAR)")
        con.executemany("INSERT INTO ztaudit_views VALUES (?, ?, ?)",
                        [[v["name"], v["kind"], v["description"]] for v in views])
        # COMMENT ON takes a literal, not a parameter; the text is ours (schema descriptions).
        for v in views:
            if v["kind"] != "macro":
                con.execute(f'COMMENT ON VIEW "{v["name"]}" IS ' + sql_literal(v["description"]))
        for c in columns:
            if c["description"] and c["view"] in TABLES:
                con.execute(f'COMMENT ON COLUMN "{c["view"]}"."{c["column"]}" IS ' + sql_literal(c["description"]))
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {"views": sum(v["kind"] != "macro" for v in views), "macros": len(SCALAR_MACROS) + len(MACROS),
            "columns": len(columns)}


@click.command(context_settings={"max_content_width": 100})
@lake_option()
@click.option("--out", type=click.Path(dir_okay=False), help="Write a DuckDB database file (FILE.duckdb).")
@click.option("--columns", "show_columns", is_flag=True, help="List every column with its description.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table", show_default=True)
def catalog(lake: str, out: str | None, show_columns: bool, fmt: str) -> None:
    """Describe the lake's views and macros, or write them to a DuckDB file with --out."""
    if out:
        counts = write_catalog(lake, out)
        click.echo(f"wrote {out}: {counts['views']} views, {counts['macros']} macros; "
                   f"try: duckdb {out} \"SELECT * FROM findings LIMIT 5\"", err=True)
        wh = warehouse.of_lake(Path(lake)) if is_iceberg(Path(lake)) else None
        if wh is not None:
            # The views name s3:// objects, which ztaudit reads through pyarrow; a plain DuckDB needs its
            # httpfs extension and an S3 secret (never written here) to open them.
            endpoint = (f", ENDPOINT '{urlsplit(wh.endpoint).netloc}', URL_STYLE 'path', USE_SSL "
                        f"{str(wh.secure).lower()}") if wh.endpoint else ""
            click.echo(f"note: the views read objects in {wh.uri}; a DuckDB outside ztaudit opens them only "
                       f"with its httpfs extension and an S3 secret, e.g.: INSTALL httpfs; CREATE SECRET "
                       f"(TYPE s3, KEY_ID '<access key id>', SECRET '<secret access key>', REGION '{wh.region}'"
                       f"{endpoint});", err=True)
        return
    con = open_lake(lake)
    try:
        views, columns = catalog_rows(con)
    finally:
        con.close()
    sections = [Section("views", "Views and macros", ["name", "kind", "description"], views)]
    if show_columns:
        sections.insert(0 if fmt in ("json", "csv") else 1,
                        Section("columns", "Columns", ["view", "column", "type", "description"], columns))
    write_output(render(ReportResult("catalog", f"Catalog of {lake}", sections), fmt), None, quiet=True)

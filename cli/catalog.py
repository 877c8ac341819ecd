"""``ztaudit catalog``: describe the lake's views, or write them to a DuckDB database file.

``--out FILE.duckdb`` writes a persistent database holding one view per lake table (over the
Parquet files by absolute path, so new files in existing tables show up without rebuilding), the
derived views, the analyst macros and a ``ztaudit_columns`` table with every column's
description (also attached as DuckDB comments). Open it with the ``duckdb`` CLI, no Python
needed::

    duckdb lake.duckdb "SELECT * FROM findings_for('alice@example.com')"

Rebuild it when the lake moves or a new table (e.g. ``reach``) appears. The file is written to a
temporary name and renamed, so a reader never sees half a catalog.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import duckdb

from ztaudit.cli.report import write_output
from ztaudit.core.catalog import sql_literal
from ztaudit.core.columns import describe
from ztaudit.core.files import FILE_MODE
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
    """Write the persistent DuckDB catalog for ``lake`` to ``out``; returns counts of objects."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        p.unlink(missing_ok=True)
    con = open_lake(Path(lake).resolve(), database=str(tmp))
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
    os.chmod(tmp, FILE_MODE)  # like the lake's own files (sink.FILE_MODE): 0640, whatever the umask
    os.replace(tmp, out)
    return {"views": sum(v["kind"] != "macro" for v in views), "macros": len(SCALAR_MACROS) + len(MACROS),
            "columns": len(columns)}


@click.command(context_settings={"max_content_width": 100})
@click.option("--lake", default="./lake", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Write a DuckDB database file (FILE.duckdb).")
@click.option("--columns", "show_columns", is_flag=True, help="List every column with its description.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table", show_default=True)
def catalog(lake: str, out: str | None, show_columns: bool, fmt: str) -> None:
    """Describe the lake's views and macros, or write them to a DuckDB file with --out."""
    if out:
        counts = write_catalog(lake, out)
        click.echo(f"wrote {out}: {counts['views']} views, {counts['macros']} macros; "
                   f"try: duckdb {out} \"SELECT * FROM findings LIMIT 5\"", err=True)
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

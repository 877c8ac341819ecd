"""``ztaudit sql QUERY``: DuckDB SQL over the lake views and macros, printed in any format.

Values go in as bound parameters (``--param name=value`` -> ``$name``), never pasted into the
query text: ``ztaudit sql 'SELECT * FROM findings_for($who)' --param who="o'brien@example.com"``.
"""

from __future__ import annotations

import sys

import click
import duckdb

from ztaudit.cli.options import lake_option
from ztaudit.cli.report import write_output
from ztaudit.core.lake import open_lake
from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.formats import FORMATS, render


class QueryError(click.ClickException):
    """DuckDB rejected the query (syntax, unknown column, ...): exit code 2."""

    exit_code = 2


@click.command(context_settings={"max_content_width": 100})
@click.argument("query")
@lake_option()
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind $NAME to VALUE (a string); repeatable.")
@click.option("--width", type=click.IntRange(40), default=100, show_default=True)
def sql(query: str, lake: str, fmt: str, out: str | None, params: tuple[str, ...], width: int) -> None:
    """Run QUERY (DuckDB SQL; '-' reads it from stdin) over the lake views.

    \b
    Views: k8s_audit, k8s_requests, proxy_decision, idp_event, findings, quarantine, and derived
    views (`ztaudit catalog` lists them). Macros: requests_by(who), findings_for(who),
    decisions_for(who), idp_events_for(who), credential_uses(cred), requests_between(t0, t1).
    """
    if query == "-":
        query = sys.stdin.read()
    bound: dict[str, str] = {}
    for p in params:
        k, sep, v = p.partition("=")
        if not sep or not k.isidentifier():
            raise click.UsageError(f"--param {p!r}: expected NAME=VALUE")
        bound[k] = v
    con = open_lake(lake)
    try:
        try:
            cur = con.execute(query, bound)
            cols = [d[0] for d in cur.description or []]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}\n  fix: `ztaudit catalog --columns` lists views and columns") \
                from exc
    finally:
        con.close()
    result = ReportResult("sql", "Query result", [Section("result", "Result", cols, rows)], versioned=False)
    if fmt == "html" and out is None:
        out = "ztaudit-sql.html"
    write_output(render(result, fmt, width=width), out, quiet=False)

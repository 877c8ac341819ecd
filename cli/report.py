"""``ztaudit report NAME [ACTOR]``: run a registered report over the lake, in any format.

Thin: parse options, open the lake, run the report from the registry
(:data:`ztaudit.reports.REPORTS`), render, write. Every filter value is bound as a SQL
parameter by the report code; nothing typed here is formatted into SQL.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import duckdb

from ztaudit.cli.completion import (
    complete_cluster,
    complete_detector,
    complete_identity,
    complete_report,
    complete_subject,
)
from ztaudit.cli.options import terminal_width, use_color
from ztaudit.core.config import load_config
from ztaudit.core.errors import SinkError
from ztaudit.core.files import makedirs, write_bytes_atomic
from ztaudit.core.lake import open_lake
from ztaudit.core.names import UnknownName, did_you_mean
from ztaudit.core.timeutil import parse_time
from ztaudit.detectors import registry
from ztaudit.reports import REPORTS, run_report
from ztaudit.reports.base import Progress, ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import FORMATS, render
from ztaudit.reports.lookup import CLUSTER_COLUMNS, IDENTITY_COLUMNS, WINDOW_NOTE_START, resolve_value


def list_text() -> str:
    """Report names and one-line descriptions, for ``--list``."""
    width = max(len(n) for n in REPORTS)
    return "".join(f"{n.ljust(width)}  {s.description}\n" for n, s in REPORTS.items())


def write_output(text: str, out: str | None, *, quiet: bool) -> None:
    """Write ``text`` to ``out`` (a file) or stdout; say where a file went on stderr.

    Called by ``report``, ``sql`` and ``catalog`` with their ``--out``. A file goes through
    :func:`~ztaudit.core.files.write_bytes_atomic` like the lake's own files (exclusive no-follow
    temp file, fsync, rename; 0600, because reports name people): a reader sees the old file or the
    new one, and a failure leaves no temporary file behind. A full disk or an I/O error raises
    :class:`~ztaudit.core.errors.SinkError` (exit 4) naming the file.
    """
    if out is None or out == "-":
        click.echo(text, nl=False)
        return
    path = Path(out)
    try:
        makedirs(path.parent)
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}",
                        fix="free some space, or pass an --out in a writable directory") from exc
    if not quiet:
        click.echo(f"wrote {path}", err=True)


@click.command(context_settings={"max_content_width": 100})
@click.argument("name", required=False, shell_complete=complete_report)
@click.argument("subject", required=False, metavar="[ACTOR]", shell_complete=complete_subject)
@click.option("--lake", envvar="ZTAUDIT_LAKE", default="./lake", show_default=True, type=click.Path(file_okay=False),
              help="Lake directory.")
@click.option("--since", help="Start (inclusive): ISO-8601 time or relative duration (24h, 7d).")
@click.option("--until", help="End (exclusive): ISO-8601 time or relative duration.")
@click.option("--cluster", help="Only this cluster.", shell_complete=complete_cluster)
@click.option("--actor", help="Only this identity (for identity reports: the identity).",
              shell_complete=complete_identity)
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout "
              "(html defaults to ztaudit-NAME.html).")
@click.option("--section", help="JSON/CSV: the section to print (default: the report's first; json: 'all').")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="Rows for top-N sections (reach, credentials, timeline, quarantine records).")
@click.option("--detector", help="findings: only this detector id or family (credential or credential.*).",
              shell_complete=complete_detector)
@click.option("--severity", type=click.Choice(["info", "low", "medium", "high", "critical"]),
              help="findings: at least this severity.")
@click.option("--status", help="findings: triage statuses to show, comma-separated: open, acked, suppressed or all "
                                "(default open,acked; docs/triage.md).")
@click.option("--new", "new_only", is_flag=True,
              help="findings: only those first produced since the last detect run began.")
@click.option("--granted", is_flag=True,
              help="reach: compare what RBAC grants with what is used (needs an ingested RBAC snapshot).")
@click.option("--width", type=click.IntRange(40), default=None,
              help="Table width (default: $COLUMNS, else the terminal's, else 100).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="ztaudit.toml to use.")
@click.option("--list", "list_only", is_flag=True, help="List the reports and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or status messages on stderr.")
def report(name: str | None, subject: str | None, lake: str, since: str | None, until: str | None,
           cluster: str | None, actor: str | None, fmt: str, out: str | None, section: str | None, limit: int,
           detector: str | None, severity: str | None, status: str | None, new_only: bool, granted: bool,
           width: int | None,
           config_path: str | None, list_only: bool, quiet: bool) -> None:
    """Run report NAME over the lake (see --list). `identity` takes the identity as ACTOR.

    \b
    Examples:
      ztaudit report summary
      ztaudit report findings --since 7d --format json
      ztaudit report identity alice@example.com --format html --out alice.html
    """
    if list_only or name is None:
        click.echo(list_text(), nl=False)
        if name is None and not list_only:
            click.echo("\nusage: ztaudit report NAME [ACTOR] [options]; see --help", err=True)
        return
    if name not in REPORTS:
        raise UnknownName(f"unknown report {name!r}{did_you_mean(name, REPORTS)}",
                          fix=f"use one of: {', '.join(REPORTS)} (ztaudit report --list)")
    if subject is not None and not REPORTS[name].needs_subject:
        raise click.UsageError(f"report {name} takes no ACTOR argument; use --actor to filter")
    if section is not None and fmt not in ("json", "csv"):
        raise click.UsageError("--section applies to --format json or csv")
    now = datetime.now(UTC)
    filters = Filters(
        since=parse_time(since, now=now, option="--since") if since else None,
        until=parse_time(until, now=now, option="--until") if until else None,
        cluster=cluster, actor=actor,
    )
    if REPORTS[name].needs_subject and subject is None and actor is None:
        raise click.UsageError(f"report {name} needs an identity: ztaudit report {name} ACTOR")
    detector_ids = registry.resolve([detector]) if detector else None
    cfg = load_config(config_path)
    progress = Progress.auto(sys.stderr, quiet=quiet)
    con = open_lake(lake)
    try:
        filters, subject, notes = _resolve_names(con, filters, subject)
        ctx = ReportContext(con=con, config=cfg, filters=filters, progress=progress, want_charts=fmt == "html",
                            lake=str(Path(lake).resolve()),
                            limit=limit, options={"subject": subject, "detector": detector_ids, "severity": severity,
                                                  "granted": granted, "status": status, "new": new_only})
        result = run_report(name, ctx)
        result.generated_at = now
        result.notes[:0] = notes
        try:
            to_file = fmt == "html" or out not in (None, "-")
            text = render(result, fmt, section=section, width=terminal_width(width, to_file=to_file),
                          color=use_color(fmt, to_file=to_file))
        except (KeyError, ValueError) as exc:
            raise click.UsageError(str(exc).strip("'\"")) from exc
    finally:
        con.close()
    if fmt == "html" and out is None:
        out = f"ztaudit-{name}.html"
    write_output(text, out, quiet=quiet)
    if not quiet and ((fmt in ("json", "csv") and section != "all") or out not in (None, "-")):
        # Notes that change how to read the output; JSON/CSV and a file do not show them on the terminal.
        for note in result.notes:
            if note in notes or note.startswith(WINDOW_NOTE_START):
                click.echo(f"ztaudit: note: {note}", err=True)


def _resolve_names(con: duckdb.DuckDBPyConnection, filters: Filters,
                   subject: str | None) -> tuple[Filters, str | None, list[str]]:
    """The identity (``ACTOR``/``--actor``) and ``--cluster`` as the lake spells them, and notes.

    Called by ``report`` once the lake is open, before the report runs, so a typo is not an empty
    report: a name the lake holds in another case is used with a note; a name it does not hold at
    all raises :class:`~ztaudit.core.names.UnknownName` (exit 2) naming the nearest
    (:func:`~ztaudit.reports.lookup.resolve_value`).
    """
    notes: list[str] = []
    actor, cluster = filters.actor, filters.cluster
    if subject is not None:
        subject, note = resolve_value(con, subject, what="identity", option="ACTOR", columns=IDENTITY_COLUMNS)
        notes += [note] if note else []
    if actor is not None:
        actor, note = resolve_value(con, actor, what="identity", option="--actor", columns=IDENTITY_COLUMNS)
        notes += [note] if note else []
    if cluster is not None:
        cluster, note = resolve_value(con, cluster, what="cluster", option="--cluster", columns=CLUSTER_COLUMNS)
        notes += [note] if note else []
    return dataclasses.replace(filters, actor=actor, cluster=cluster), subject, notes

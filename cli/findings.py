"""``ztaudit findings ack|suppress|expire ID`` and ``ztaudit findings list``: triage findings.

Thin: resolve the id (a unique prefix, like git) on the lake, append one row to the ``triage``
table (:mod:`ztaudit.core.triage`), say what was decided. ``list`` runs the ``findings`` report
with the triage filters (``--status``, ``--new``) in any report format. What the decisions mean,
and the ``[[triage.suppress]]`` rules: docs/triage.md.

Exit codes (cli/main.py): 2 for an id that matches no finding or several, a path that is not a
lake, a bad date or status; 4 when the lake cannot be written.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from datetime import UTC, datetime

import click

from ztaudit.cli.options import lake_option
from ztaudit.cli.report import write_output
from ztaudit.core.config import load_config
from ztaudit.core.errors import ConfigError
from ztaudit.core.lake import open_lake
from ztaudit.core.timeutil import parse_time
from ztaudit.core.triage import ACTIONS, STATUSES, append, resolve_id, triage_row
from ztaudit.pipeline.redact import mask_text
from ztaudit.reports import run_report
from ztaudit.reports.base import Progress, ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import FORMATS, render

_DURATION = re.compile(r"\s*\d+(?:\.\d+)?\s*[smhdw]\s*", re.IGNORECASE)


def until_time(value: str | None, now: datetime) -> datetime | None:
    """``--until``: an ISO-8601 time (UTC if no zone) or a duration counted *forward* from now (``30d``)."""
    if value is None:
        return None
    t = parse_time(value, now=now, option="--until")
    if _DURATION.fullmatch(value):
        t = now + (now - t)
    return t


def who(by: str | None) -> str:
    """Who decides: ``--by``, else ``$ZTAUDIT_ACTOR``, else the OS user name."""
    if by:
        return by
    env = os.environ.get("ZTAUDIT_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _decide(action: str, finding: str, reason: str, until: str | None, by: str | None, lake: str,
            quiet: bool) -> None:
    now = datetime.now(UTC)
    end = until_time(until, now)
    if action == "ack" and end is not None and end <= now:
        raise ConfigError("--until", f"{until!r} is in the past; an ack with an end date is a snooze",
                          fix="give a future time or a duration such as 3d")
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    con = open_lake(lake)
    try:
        fid = resolve_id(con, finding)
        detector, actor = con.execute("SELECT any_value(detector), any_value(actor) FROM findings "
                                      "WHERE finding_id = ?", [fid]).fetchone() or (None, None)
    finally:
        con.close()
    # The reason is typed by a person, who may paste a log line: the lake's text rules apply to it.
    row = triage_row(fid, action, mask_text(reason.strip()) or "", by=who(by), until=end, at=now)
    append(lake, [row])
    if not quiet:
        span = f" until {end.strftime('%Y-%m-%d %H:%M:%S')} UTC" if end else ""
        click.echo(f"{fid}: {ACTIONS[action]}{span} ({detector}, {actor or '-'}) by {row['triaged_by']}: "
                   f"{row['reason']}")


def _decision_command(action: str, summary: str, *, until: bool) -> click.Command:
    """The ``ack``, ``suppress`` or ``expire`` subcommand."""

    @click.command(action, help=summary)
    @click.argument("finding_id", metavar="ID")
    @click.option("--reason", required=True, help="Why (stored with who and when).")
    @click.option("--by", help="Who decides (default $ZTAUDIT_ACTOR, else the OS user).")
    @lake_option()
    @click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
    def command(finding_id: str, reason: str, by: str | None, lake: str, quiet: bool,
                until: str | None = None) -> None:
        _decide(action, finding_id, reason, until, by, lake, quiet)

    if until:
        command = click.option("--until", "until", metavar="DATE",
                               help="End: ISO-8601 time (UTC if no zone) or a duration from now (7d).")(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def findings() -> None:
    """Triage findings: ack, suppress or expire one by ID (or a unique prefix); list them by status.

    \b
    Examples:
      ztaudit findings list --new
      ztaudit findings ack 3f2a9c --reason "SEC-123: on it" --until 3d
      ztaudit findings suppress 3f2a9c --reason "break-glass drill" --until 2026-12-01
      ztaudit findings expire 3f2a9c --reason "drill over"
      ztaudit findings list --status suppressed --format json
    """


findings.add_command(_decision_command(
    "ack", "Acknowledge finding ID: still shown (status acked); with --until, open again from then.", until=True))
findings.add_command(_decision_command(
    "suppress", "Suppress finding ID: hidden from reports and the findings topic; with --until, it comes "
    "back if it recurs after that date.", until=True))
findings.add_command(_decision_command(
    "expire", "End finding ID's ack or suppression now (config rules still apply).", until=False))


@findings.command("list")
@lake_option()
@click.option("--status", "status", default=None, metavar="STATUS[,STATUS]",
              help=f"{', '.join(STATUSES)} or all (default: open,acked).")
@click.option("--new", "new", is_flag=True, help="Only findings first produced since the last detect run began.")
@click.option("--detector", help="Only this detector id or family.")
@click.option("--severity", type=click.Choice(["info", "low", "medium", "high", "critical"]),
              help="At least this severity.")
@click.option("--since", help="Start (inclusive): ISO-8601 time or relative duration (24h, 7d).")
@click.option("--until", help="End (exclusive): ISO-8601 time or relative duration.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--width", type=click.IntRange(40), default=100, show_default=True, help="Table width.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="ztaudit.toml to use.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or notes on stderr.")
def list_(lake: str, status: str | None, new: bool, detector: str | None, severity: str | None,
          since: str | None, until: str | None, fmt: str, out: str | None, width: int,
          config_path: str | None, quiet: bool) -> None:
    """The findings report with its triage fields, filtered by status (same output as `report findings`)."""
    from ztaudit.detectors import registry  # here: it imports every detector

    now = datetime.now(UTC)
    filters = Filters(since=parse_time(since, now=now, option="--since") if since else None,
                      until=parse_time(until, now=now, option="--until") if until else None)
    ids = registry.resolve([detector]) if detector else None
    cfg = load_config(config_path)
    con = open_lake(lake)
    try:
        ctx = ReportContext(con=con, config=cfg, filters=filters, progress=Progress.auto(sys.stderr, quiet=quiet),
                            want_charts=fmt == "html",
                            options={"detector": ids, "severity": severity, "status": status, "new": new})
        result = run_report("findings", ctx)
        result.generated_at = now
        text = render(result, fmt, width=width)
    finally:
        con.close()
    if fmt == "html" and out is None:
        out = "ztaudit-findings.html"
    write_output(text, out, quiet=quiet)
    if not quiet and fmt != "table":
        for note in result.notes:
            click.echo(f"ztaudit: note: {note}", err=True)


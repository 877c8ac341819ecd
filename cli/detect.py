"""``ztaudit detect``: build derived tables, run detectors, store findings, print a count summary.

Thin click wrapper over :func:`ztaudit.detectors.run.run_detectors`. Exit codes (one place,
``cli/main.py``): 0 all detectors ran; 1 a detector or builder raised (the others' findings are
still written; the error is printed); 2 bad option, unknown detector id or bad config; 4 the
findings could not be written.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from ztaudit.cli.completion import complete_detector
from ztaudit.cli.options import lake_option
from ztaudit.core import warehouse
from ztaudit.core.config import load_config
from ztaudit.core.errors import ZtauditError
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.lake import check_lake
from ztaudit.core.progress import ProgressLine
from ztaudit.core.timeutil import parse_time
from ztaudit.detectors import registry
from ztaudit.detectors.run import run_detectors


class DetectFailed(ZtauditError):
    """At least one detector or derived-table builder raised."""

    exit_code = 1


@click.command("detect")
@lake_option()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="ztaudit.toml (default: $ZTAUDIT_CONFIG, else ./ztaudit.toml, else built-in defaults).")
@click.option("--since", default=None, help="Judge events from this time: ISO-8601 or relative (24h, 7d).")
@click.option("--until", default=None, help="Judge events before this time: ISO-8601 or relative.")
@click.option("--detector", "detectors", multiple=True, metavar="ID", shell_complete=complete_detector,
              help="Run only this detector id or family, e.g. credential or credential.* (repeatable). "
                   "Default: every registered detector.")
@click.option("--no-tables", is_flag=True, help="Do not rebuild derived tables (reach, credentials) first.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default=None,
              help="SQL engine: duckdb (embedded) or spark (an Iceberg lake; Spark master from the config, "
                   "detect.spark_master). Default: detect.engine of the config, else duckdb.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def detect(lake: str, config_path: str | None, since: str | None, until: str | None,
           detectors: tuple[str, ...], no_tables: bool, engine: str | None, quiet: bool) -> None:
    """Run the detectors over the lake and write findings to LAKE/findings/.

    Re-running over the same data replaces findings (stable finding ids), never duplicates them.
    A --lake that is not a lake is refused (exit 2) before anything is created in it.
    """
    ids = registry.resolve(detectors) or None  # names first: a typo is exit 2 whatever the lake
    path = check_lake(lake)
    cfg = load_config(config_path)
    now = datetime.now(UTC)
    t_since = parse_time(since, now=now, option="--since") if since else None
    t_until = parse_time(until, now=now, option="--until") if until else None
    if t_since and t_until and t_since >= t_until:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    with ProgressLine.auto("detect", quiet=quiet, unit="steps") as line:  # on a terminal only
        result = run_detectors(path, cfg, since=t_since, until=t_until, detector_ids=ids,
                               build_tables=not no_tables, memory_limit=cfg.detect.memory_limit or None,
                               progress=line, engine=engine)
    if not quiet:
        width = max([len(d) for d in [*result.counts, *result.errors]] + [8])
        click.echo(f"{'detector':<{width}}  findings  seconds")
        for did in sorted({*result.counts, *result.errors}):
            n = str(result.counts[did]) if did in result.counts else "ERROR"
            click.echo(f"{did:<{width}}  {n:>8}  {result.seconds.get(did, 0.0):7.2f}")
        for name, rows in result.tables_built.items():
            click.echo(f"derived table {name}: {rows} rows")
        wh = warehouse.of_lake(path) if is_iceberg(path) else None
        where = f"{wh.uri}/findings" if wh is not None else str(path / "findings")
        click.echo(f"total: {sum(result.counts.values())} findings "
                   f"({len(result.changed)} new or changed) written to {where}")
    for did, err in result.errors.items():
        click.echo(f"ztaudit detect: {did} failed: {err.splitlines()[0]}", err=True)
    if result.errors:
        raise DetectFailed(f"{len(result.errors)} detector(s) or builder(s) failed; the other findings were written",
                           fix="run with -vv for the traceback, and report it")
    sys.stdout.flush()

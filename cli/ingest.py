"""``ztaudit ingest PATH...``: files, folders, .gz files or stdin into the lake.

Thin: parses flags, calls :func:`ztaudit.pipeline.ingest.ingest_paths`, prints the summary. Errors
become exit codes in ``cli/main.py``: 2 for a bad path/config, 4 for an unwritable lake, 3
with ``--strict`` when anything was quarantined.
"""

from __future__ import annotations

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.config import load_config
from ztaudit.core.errors import QuarantinedRecords
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.registry import NORMALIZERS


@click.command()
@click.argument("paths", nargs=-1, required=True)
@lake_option("Lake directory to write into (created if missing).")
@click.option("--source", type=click.Choice(sorted(NORMALIZERS)), default=None,
              help="Source kind of every record (default: detect per record).")
@click.option("--cluster", default=None, help="Cluster name for records whose envelope does not name one.")
@click.option("--strict", is_flag=True, help="Exit 3 if any record was quarantined.")
@click.option("--max-record-bytes", type=click.IntRange(min=1024), default=None,
              help="Quarantine records larger than this (default: config ingest.max_record_bytes, 1 MiB).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: $ZTAUDIT_CONFIG or ./ztaudit.toml).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")
def ingest(paths: tuple[str, ...], lake: str, source: str | None, cluster: str | None, strict: bool,
           max_record_bytes: int | None, config_path: str | None, quiet: bool) -> None:
    """Normalize audit, proxy and IdP logs from PATHs (files, folders, .gz, - for stdin) into the lake.

    Re-ingesting the same input replaces the same lake files (no duplicates). Bad records go to
    LAKE/quarantine with their reason; the run always finishes.
    """
    cfg = load_config(config_path)
    stats = ingest_paths(list(paths), lake, source=source, cluster=cluster, config=cfg, progress=not quiet,
                         max_record_bytes=max_record_bytes)
    if not quiet:
        click.echo(stats.summary())
    if strict and stats.quarantined_total:
        reasons = ", ".join(f"{r}={n}" for r, n in stats.quarantined.most_common())
        raise QuarantinedRecords(f"{stats.quarantined_total} record(s) quarantined ({reasons})",
                                 fix=f"inspect them with: ztaudit sql \"SELECT origin, reason, detail FROM "
                                     f"quarantine\" --lake {lake}")

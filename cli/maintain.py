"""``ztaudit maintain``: keep an Iceberg lake bounded (snapshots, orphan files, retention).

Thin: flags -> :func:`ztaudit.pipeline.maintain.maintain`.
"""

from __future__ import annotations

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.config import load_config, parse_duration_seconds
from ztaudit.core.lake import check_lake
from ztaudit.pipeline.maintain import maintain as run_maintain


def _days(value: str | None) -> float | None:
    return None if value is None else parse_duration_seconds("--expire-snapshots", value) / 86400.0


@click.command()
@lake_option()
@click.option("--expire-snapshots", "expire", metavar="AGE", default=None,
              help="Expire snapshots older than AGE (7d, 12h; the current one always stays) and delete "
                   "the metadata files only they used.")
@click.option("--remove-orphans", is_flag=True,
              help="Delete data files that no snapshot lists and that are older than --orphan-grace.")
@click.option("--orphan-grace", metavar="AGE", default="1d", show_default=True,
              help="Younger unlisted files may be a running writer's, not yet published: kept.")
@click.option("--retention-days", type=click.IntRange(min=1), default=None,
              help="Drop whole days of the event and derived tables older than this many days (default: "
                   "lake.retention_days; 0 there keeps every day). Findings, triage and RBAC snapshots stay.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="ztaudit.toml (default: $ZTAUDIT_CONFIG, else ./ztaudit.toml, else built-in defaults).")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def maintain(lake: str, expire: str | None, remove_orphans: bool, orphan_grace: str,
             retention_days: int | None, config_path: str | None, quiet: bool) -> None:
    """Expire old snapshots, drop old days and remove orphan files of an Iceberg lake.

    Nothing is deleted before the commit that stops listing it. A plain lake is refused (exit 2):
    run `ztaudit migrate` first.
    """
    cfg = load_config(config_path)
    keep = retention_days if retention_days is not None else (cfg.lake.retention_days or None)
    result = run_maintain(check_lake(lake), expire_days=_days(expire), remove_orphans=remove_orphans,
                          orphan_grace_s=parse_duration_seconds("--orphan-grace", orphan_grace),
                          retention_days=keep)
    if not quiet:
        click.echo(f"maintain: {result.summary()}")

"""``ztaudit migrate``: turn a plain hive-partitioned lake into Apache Iceberg tables, in place.

Thin: flags -> :func:`ztaudit.pipeline.maintain.migrate` (idempotent; safe to rerun after a kill).
"""

from __future__ import annotations

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.config import load_config
from ztaudit.core.lake import check_lake
from ztaudit.pipeline.maintain import migrate as run_migrate


@click.command()
@lake_option()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="ztaudit.toml (default: $ZTAUDIT_CONFIG, else ./ztaudit.toml, else built-in defaults): "
                   "its lake.catalog_uri puts the new catalog on PostgreSQL.")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def migrate(lake: str, config_path: str | None, quiet: bool) -> None:
    """Make LAKE an Iceberg lake: give every file a DATE dt column, register every file.

    The files keep their names and rows; a rerun changes nothing. Afterwards every reader reads the
    tables' snapshot (docs/iceberg.md). A --lake that is not a lake is refused (exit 2).
    """
    path = check_lake(lake)
    load_config(config_path)  # records the file's lake.catalog_uri for the catalog this creates
    result = run_migrate(path)
    if not quiet:
        click.echo(f"migrate: {result.summary()}")

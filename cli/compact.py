"""``ztaudit compact``: merge one day's small Parquet files into a few large ones, atomically.

Thin: flags -> :func:`ztaudit.pipeline.compact.compact`. The guarantees (readers never see
duplicates or gaps; safe while ``consume`` writes other dates; replays do not reintroduce rows)
are in that module's docstring.
"""

from __future__ import annotations

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.lake import check_lake
from ztaudit.core.schema import COMPACTABLE_TABLES
from ztaudit.pipeline.compact import compact as run_compact


@click.command()
@lake_option()
@click.option("--source", "table", required=True, type=click.Choice(sorted(COMPACTABLE_TABLES)),
              help="Table (source kind) whose day to compact.")
@click.option("--date", "day", required=True, metavar="YYYY-MM-DD", help="The dt= partition to compact.")
@click.option("--target-rows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Rows per merged file (each file has DuckDB-sized row groups of 122,880 rows).")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def compact(lake: str, table: str, day: str, target_rows: int, quiet: bool) -> None:
    """Merge LAKE/SOURCE/dt=DATE into few large files: an atomic directory swap on a plain lake, one
    overwrite commit on an Iceberg lake (its files on disk or on S3). Prints one summary line (-v: the
    steps too).

    A --lake that is not a lake is refused (exit 2) before anything is touched.
    """
    result = run_compact(check_lake(lake), table, day, target_rows=target_rows)
    if not quiet:
        click.echo(f"compact: {result.summary()}")

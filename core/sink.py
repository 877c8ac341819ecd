"""The Parquet lake writer: deterministic names, temp file, fsync, rename.

Layout (docs/design.md, "Lake layout")::

    LAKE/<table>/dt=YYYY-MM-DD/<file_key>.parquet

``file_key`` is a function of the data's origin only (Kafka: ``<topic>+<partition>+<first offset>``;
files: content hash and byte range), so writing the same input twice replaces the same files and
never duplicates rows. A file is written to ``.<name>.tmp-<pid>``, fsynced, renamed into place with
``os.replace`` (atomic on one filesystem), and the directory is fsynced, so a reader or a crash sees
either the old file or the new one, never half a file. That rename is the durability point the
Kafka consumer commits offsets after.

Permissions: directories 0750 and files 0640 (owner read-write, owner group read, nothing for
others), whatever the umask, because audit logs name people and carry attacker-controlled
strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ztaudit.core.columns import conform
from ztaudit.core.files import UNDATED, makedirs, safe_key, write_parquet_atomic
from ztaudit.core.quarantine import QUARANTINE_RAW_CAP, Rejected
from ztaudit.core.schema import PARTITION_TIME, QUARANTINE, TABLES


def _dates(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.strftime(col, format="%Y-%m-%d")


def split_by_day(table: pa.Table, time_column: str) -> Iterator[tuple[str, pa.Table]]:
    """Yield (``YYYY-MM-DD``, rows of that UTC day); rows with a null time go to ``unknown``."""
    if table.num_rows == 0:
        return
    days = _dates(table.column(time_column)).fill_null(UNDATED)
    uniq = pc.unique(days).to_pylist()
    if len(uniq) == 1:
        yield str(uniq[0]), table
        return
    for day in sorted(str(d) for d in uniq):
        yield day, table.filter(pc.equal(days, day))


@dataclass
class LakeSink:
    """Writes conformed tables into the lake under deterministic names.

    Called by ``ingest`` once per input chunk and by ``consume`` once per flush. Each call is
    independent and idempotent for the same (table, rows, file_key).
    """

    lake: Path

    def __post_init__(self) -> None:
        self.lake = Path(self.lake)
        makedirs(self.lake)

    def table_dir(self, table: str) -> Path:
        return self.lake / table

    def path_for(self, table: str, day: str, file_key: str) -> Path:
        return self.lake / table / f"dt={day}" / f"{safe_key(file_key)}.parquet"

    def write(self, table_name: str, table: pa.Table, file_key: str) -> list[Path]:
        """Conform ``table`` to its schema, split it by UTC day, write one file per day.

        Returns the paths written (empty for an empty table). Raises :class:`SinkError`.
        """
        if table.num_rows == 0:
            return []
        schema = TABLES[table_name]
        table = conform(table, schema)
        written = []
        for day, part in split_by_day(table, PARTITION_TIME[table_name]):
            written.append(write_parquet_atomic(part, self.path_for(table_name, day, file_key)))
        return written

    def write_quarantine(self, rejected: list[Rejected], file_key: str,
                         now: datetime | None = None) -> list[Path]:
        """Write rejected records (raw capped at :data:`QUARANTINE_RAW_CAP`) to ``quarantine/``.

        The raw bytes must already be scrubbed of secrets (``pipeline.redact``) by whoever made
        the :class:`Rejected`.
        """
        if not rejected:
            return []
        ts = now or datetime.now(UTC)
        raws = [r.raw[:QUARANTINE_RAW_CAP] for r in rejected]
        table = pa.table(
            {
                "quarantined_at": pa.array([ts] * len(rejected), type=QUARANTINE.field("quarantined_at").type),
                "origin": [r.origin for r in rejected],
                "source_guess": [r.source_guess for r in rejected],
                "reason": [str(r.reason) for r in rejected],
                "detail": [r.detail[:2000] for r in rejected],
                "raw_size": [r.raw_size if r.raw_size >= 0 else len(r.raw) for r in rejected],
                "raw": pa.array(raws, type=pa.binary()),
                "raw_truncated": [len(r.raw) > QUARANTINE_RAW_CAP or (r.raw_size > len(r.raw))
                                  for r in rejected],
            }
        )
        # Quarantine is partitioned by when the record was rejected, but named by its origin,
        # so a replay of the same input on the same day replaces rather than duplicates.
        return self.write("quarantine", table, file_key)

    def files(self, table: str) -> list[Path]:
        """All committed Parquet files of ``table`` (temp files excluded), sorted."""
        root = self.table_dir(table)
        if not root.exists():
            return []
        return sorted(p for p in root.glob("dt=*/*.parquet") if not p.name.startswith("."))

"""What earlier runs left in the lake: leftover files of an uncommitted flush, and compacted days.

Why replay never duplicates
---------------------------

A partition's next chunk is cut only after the previous chunk's commit succeeded, so at most
**one** chunk per partition is durable-but-uncommitted at any time, and its key is
``<topic>+<partition>+<committed offset>``. Whoever reads the partition next (this process after a
crash, or another group member after a rebalance) starts at that committed offset, finds those
leftover files by their key (:func:`find_leftovers`, called by the main thread when the first
record of a fresh partition arrives), reads the highest offset in them and cuts its first chunk
exactly there (:attr:`~.buffers.PartitionBuffer.boundary`). So the replayed chunk has the same key
and the same records, ``os.replace`` overwrites each file with identical rows, leftovers it did not
rewrite are removed by the writer (step 5), and only then is the offset committed. A crash at any
point between buffering and the commit therefore leaves the lake with each record exactly once
after the replay; a crash after the commit replays nothing.

After ``ztaudit compact`` merged a day's files, rows a replay would write again into that day are
dropped against the day's ``_compacted.json`` offset ranges (:func:`drop_compacted`, called by the
writer thread for each table before it is written; :mod:`ztaudit.pipeline.compact`).

Limits (documented, not hidden): a *zombie* member that stalls longer than
``max.poll.interval.ms`` *inside* a write and then finishes its rename after the new owner
rewrote the same key can leave one overlapping file (plain file renames have no fencing token);
if the broker deletes (retention) a partition's uncommitted range before the replay, the leftover
file is kept as is. The natural key (``audit_id`` + ``stage``) is in every row for reports to
dedupe if either ever happens.

A topic deleted and created again under the same name starts its offsets over, and its first chunk
would replace the old topic's file of the same name. Each Kafka chunk file records a digest of its
first record (``CHUNK_FIRST``): a file at the starting offset whose digest differs from the record
now there is not a leftover of this stream, and :func:`find_leftovers` raises
:class:`OffsetsMovedBack` instead of letting the replay replace it. A new group re-reading the same
topic sees the same digests and rewrites the same files, as before. Files written before the digest
was kept, and days merged by ``compact`` (their files are gone), cannot be checked.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath

import pyarrow as pa
import pyarrow.compute as pc

from ztaudit.core.errors import ZtauditError
from ztaudit.core.files import safe_key
from ztaudit.core.keys import file_key, origin_offsets, read_manifest
from ztaudit.core.schema import PARTITION_TIME
from ztaudit.core.sink import CHUNK_FIRST, LakeSink
from ztaudit.pipeline.sources.kafka.base import TP, tp_name

log = logging.getLogger(__name__)


class OffsetsMovedBack(ZtauditError):
    """The record at a partition's starting offset is not the one the lake's file there was written
    from: a re-created topic (exit 2)."""

    exit_code = 2

#: An event-time window ``(min, max)``.
Window = tuple[datetime, datetime]


@dataclass(frozen=True)
class Leftovers:
    """Files an earlier, uncommitted flush left under a partition's next key."""

    paths: list[PurePath]
    #: the highest offset they hold (the replay's first chunk ends there); None when no readable
    #: file holds one at or after the key's first offset (the files are then simply replaced)
    boundary: int | None


def record_digest(value: bytes) -> str:
    """A digest of one Kafka record's raw bytes, stored in its chunk's files (``CHUNK_FIRST``)."""
    return hashlib.sha256(value).hexdigest()[:32]


def find_leftovers(sink: LakeSink, tp: TP, first: int, first_value: bytes | None = None) -> Leftovers | None:
    """The files of every table and day named ``<topic>+<partition>+<first>``, or None if none.

    Called on the main thread before the first record of a fresh partition is buffered (after an
    assignment, a rewind or a rejected commit), with that record's bytes (``first_value``). An
    unreadable leftover is logged and left to be replaced; it does not move the boundary. Raises
    :class:`OffsetsMovedBack` when a file there records another first record (its digest differs):
    the records now at ``first`` are not the ones the lake holds under that name, and replaying would
    replace them (a topic deleted and created again under the same name).
    """
    name = f"{safe_key(file_key(tp.topic, tp.partition, first))}.parquet"
    paths = sink.named(name)
    if not paths:
        return None
    if first_value is not None:
        _check_same_records(sink, tp, first, paths, record_digest(first_value))
    boundary = -1
    for path in paths:
        try:
            col = sink.read_table(path, ["origin"]).column("origin")
        except (OSError, pa.ArrowException, KeyError) as exc:
            log.warning("consume: %s leftover %s unreadable (%s); it will be replaced",
                        tp_name(tp.topic, tp.partition), path, exc)
            continue
        mx = pc.max(origin_offsets(col)).as_py()
        if mx is not None:
            boundary = max(boundary, int(mx))
    found = Leftovers(paths, boundary if boundary >= first else None)
    log.info("consume: %s offset %d: %d file(s) of an uncommitted earlier flush found; the replay ends its "
             "first file at offset %s so it rewrites them", tp_name(tp.topic, tp.partition), first,
             len(paths), found.boundary)
    return found


def _check_same_records(sink: LakeSink, tp: TP, first: int, paths: list[PurePath], digest: str) -> None:
    """Raise :class:`OffsetsMovedBack` when a file of ``paths`` records a first record other than
    ``digest`` (files written before the digest was kept record none: then nothing can be told)."""
    for path in paths:
        try:
            meta = sink.read_metadata(path).metadata or {}
        except (OSError, pa.ArrowException):
            continue  # unreadable: find_leftovers logs it, and it is replaced
        theirs = meta.get(CHUNK_FIRST)
        if theirs is None or theirs.decode() == digest:
            continue
        later = later_chunks(sink, tp, first)
        after = (f"; the lake also holds this partition's chunks from offset {min(later)} on ({len(later)} "
                 "file(s)), so those files were committed") if later else ""
        raise OffsetsMovedBack(
            f"{tp_name(tp.topic, tp.partition)}: the record now at offset {first} is not the one the lake's "
            f"file {sink.display(path)} was written from{after}. The topic was deleted and created again "
            "under the same name (its offsets started over). Nothing was written: the replay would replace "
            "that file, whose records are not in Kafka any more",
            fix="give a re-created topic a new name (or consume it into a new lake); to read it into this lake "
                "anyway, move the old topic's files out of the lake first")


def later_chunks(sink: LakeSink, tp: TP, first: int) -> dict[int, PurePath]:
    """Files of ``tp``'s chunks whose first offset is after ``first`` (any table or day), by offset.

    A partition has at most one durable-but-uncommitted chunk, and it is the newest (module
    docstring): a file at ``first`` with chunks after it is committed data, never a leftover."""
    stem = safe_key(file_key(tp.topic, tp.partition, 0))[:-20]  # ``<topic>+<partition>+``
    out: dict[int, PurePath] = {}
    for p in sink.named_like(stem):
        digits = p.name[len(stem):-len(".parquet")]
        if p.name.startswith(stem) and len(digits) == 20 and digits.isdigit() and int(digits) > first:
            out.setdefault(int(digits), p)
    return out


def drop_compacted(sink: LakeSink, table_name: str, table: pa.Table, tp: TP) -> tuple[pa.Table, int]:
    """Drop rows a replay would write again into a day that ``compact`` already merged (its
    ``_compacted.json`` lists this partition's offset ranges; on S3 the footers of the day's compacted
    objects the current snapshot lists, :func:`~ztaudit.core.keys.listed_manifests`); returns the rest
    and how many were dropped. Called on the writer thread; reads only manifests (cached by mtime, on
    S3 per snapshot: one catalog lookup per call). Raises :class:`SinkError` (retried) when the
    manifests of a lake on S3 cannot be read."""
    time_col = PARTITION_TIME.get(table_name)
    if time_col is None or table.num_rows == 0:
        return table, 0
    w = time_window(table, time_col)
    ranges_by_day: dict[str, list[tuple[int, int]]] = {}
    days = days_between(w) if w is not None else []
    if sink.filesystem is None:
        manifests = {day: read_manifest(sink.lake / table_name / f"dt={day}") for day in days}
    else:
        from ztaudit.core.keys import listed_manifests

        on_s3 = listed_manifests(sink.lake, table_name, days) if days else {}
        manifests = {day: on_s3.get(day) for day in days}
    for day, manifest in manifests.items():
        if manifest is not None:
            ranges = manifest.kafka_ranges.get(f"{tp.topic}+{tp.partition}")
            if ranges:
                ranges_by_day[day] = ranges
    if not ranges_by_day:
        return table, 0
    day_col = pc.strftime(table.column(time_col), format="%Y-%m-%d")
    offs = origin_offsets(table.column("origin"))
    drop = pa.array([False] * table.num_rows)
    for day, ranges in ranges_by_day.items():
        in_day = pc.equal(day_col, day)
        for lo, hi in ranges:
            hit = pc.and_(in_day, pc.and_(pc.greater_equal(offs, lo), pc.less_equal(offs, hi)))
            drop = pc.or_(drop, pc.fill_null(hit, False))
    n = int(pc.sum(pc.cast(drop, pa.int64())).as_py() or 0)
    if not n:
        return table, 0
    log.info("consume: %s: %d rows already in compacted %s day(s) %s; not written again",
             tp_name(tp.topic, tp.partition), n, table_name, ", ".join(sorted(ranges_by_day)))
    return table.filter(pc.invert(drop)), n


def time_window(table: pa.Table, col: str | None) -> Window | None:
    """``(min, max)`` of the event-time column ``col``, or None (no such column, no rows, all null)."""
    if col is None or col not in table.column_names or table.num_rows == 0:
        return None
    mm = pc.min_max(table.column(col))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None or hi is None:
        return None
    return lo, hi


def widen(window: Window | None, other: Window | None) -> Window | None:
    """The smallest window holding both (either may be None)."""
    if window is None or other is None:
        return other if window is None else window
    return min(window[0], other[0]), max(window[1], other[1])


def days_between(window: Window) -> list[str]:
    """The UTC days ``YYYY-MM-DD`` the window touches (at most 400)."""
    lo, hi = window[0].astimezone(UTC).date(), window[1].astimezone(UTC).date()
    out: list[str] = []
    d = lo
    while d <= hi and len(out) < 400:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out

"""``ztaudit compact``: merge one day's many small Parquet files into a few large ones, atomically.

The streaming consumer writes one file per partition per flush, so a busy day holds hundreds of
small files; DuckDB wants few files with 100k+ row groups (docs/pipeline-notes.md §4.4). Compaction of
``LAKE/<table>/dt=D``:

1. **lock** ``LAKE/<table>/.compact-dt=D.lock`` (one compactor per day), and finish any earlier
   compaction of D that crashed (step 6).
2. **snapshot** the day's committed files (``*.parquet``, not hidden): these are the *inputs*.
3. **stage** a new directory ``LAKE/<table>/.compact-dt=D-<h>/`` (``h`` = hash of the sorted input
   names) holding the merged rows, sorted by the table's time column, as
   ``compacted-<h>-<n>.parquet`` (``--target-rows`` rows each), and ``_compacted.json``: the input
   names and, per Kafka ``topic+partition``, the offset ranges the inputs covered (merged with the
   ranges of earlier compactions).
4. **swap** the staged directory and ``dt=D`` in one ``renameat2(RENAME_EXCHANGE)`` call (Linux
   3.15+, ext4/xfs/btrfs/tmpfs). Readers glob ``dt=*/*.parquet``, so at every instant they see either
   all the old files or all the new ones: never both (no duplicates), never neither (no gap).
5. **carry over** any file that is in the old directory but not an input (a consumer flush that
   landed between the snapshot and the swap) into the new ``dt=D`` (rename, same name).
6. **delete** the old directory. A crash after 4 leaves a hidden directory that the next
   ``compact`` of D carries over (5) and deletes (6); a crash before 4 leaves a hidden staging
   directory that the next run deletes. Hidden directories never match ``dt=*``.

Guarantees and honest limits:

* Readers never see duplicate or missing rows for D through the ``dt=*/*.parquet`` glob. A query
  that listed files *before* the swap and opens them *after* it fails with "file not found"
  (it does not return wrong rows); rerun it.
* Safe while ``consume`` writes *other* dates (only ``dt=D`` is touched). If a consumer writes D
  at the same moment, its rename can fail once (the directory moved under it); the consumer
  retries that flush, idempotently, into the new ``dt=D``.
* Replays after compaction: the consumer drops rows of D whose (topic, partition, offset) lies in
  a range of D's ``_compacted.json`` (:func:`ztaudit.pipeline.consume.recovery.drop_compacted`),
  so re-reading committed or uncommitted offsets does not reintroduce duplicates into D. For file
  chunks the manifest keeps, per merged chunk file, the input lines it held (``file_ranges``,
  cumulative over compactions); ``ingest`` writing the same chunk key again (the same input, or a
  grown file's superset chunk) drops those records, each from the day whose manifest names its line
  (:meth:`ztaudit.core.sink.LakeSink.write_chunk`), so re-ingesting after compaction does not
  double them. Limit: a record of that chunk that *changed table or day* in the new version (a
  truncated last line quarantined before compaction, complete now) keeps its old row inside the
  compacted file, since compaction cannot tell which of its rows came from which chunk.
* Without ``RENAME_EXCHANGE`` (another OS or file system) the fallback renames the merged files in
  and then deletes the inputs: readers can see duplicates for that moment; a warning says so.

**An Iceberg lake whose files are on S3** (``lake.warehouse``) has no rename and no directory: the
snapshot is the truth (:func:`_compact_on_s3`). The inputs are the day's files the current snapshot
lists; the merged objects ``compacted-<h>-<n>.parquet`` are written unlisted, each carrying the day's
manifest in its Parquet footer (:data:`~ztaudit.core.keys.FOOTER_MANIFEST`, never a separate object,
which could claim ranges merged by a commit that then failed); one overwrite commit lists them
instead of the inputs; the inputs are deleted after it. Re-ingest and replay read the manifests of
the compacted objects the snapshot lists (:func:`~ztaudit.core.keys.listed_manifests`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ztaudit.core import warehouse
from ztaudit.core.columns import conform
from ztaudit.core.errors import LakeError, SinkError
from ztaudit.core.files import (
    UNDATED,
    day_files,
    file_lock,
    fsync_dir,
    makedirs,
    with_dt,
    write_bytes_atomic,
    write_parquet_atomic,
)
from ztaudit.core.iceberg import is_iceberg, table_day, valid_day
from ztaudit.core.iceberg_publish import ChangedMeanwhile, publish
from ztaudit.core.iceberg_snapshot import snapshot_entries, snapshot_files
from ztaudit.core.keys import (
    COMPACTED_PREFIX,
    FOOTER_MANIFEST,
    KAFKA_FILE_NAME,
    MANIFEST,
    Manifest,
    footer_manifest,
    forget_manifest,
    line_ranges,
    merge_ranges,
    origin_offsets,
    read_manifest,
    union_manifests,
)
from ztaudit.core.schema import PARTITION_TIME, TABLES
from ztaudit.core.sink import LakeSink

log = logging.getLogger(__name__)

DEFAULT_TARGET_ROWS: Final = 1_000_000
_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100


def rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (``renameat2(RENAME_EXCHANGE)``); False if unsupported here."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _day_lock(table_dir: Path, day: str) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock of one day of one table, held while it is compacted (fails at once if held)."""
    return file_lock(table_dir / f".compact-dt={day}.lock", timeout=None, busy=lambda: LakeError(
        f"another `ztaudit compact` is working on {table_dir.name} dt={day}", fix="wait for it to finish"))


def _committed(day_dir: Path) -> list[Path]:
    """Visible ``*.parquet`` regular files of a directory: what carry-over moves after the swap."""
    return sorted(p for p in day_dir.glob("*.parquet") if not p.name.startswith(".") and p.is_file()
                  and not p.is_symlink())


def _finish_crashed(table_dir: Path, day: str, day_dir: Path) -> None:
    """Carry over / delete hidden directories an earlier compaction of ``day`` left behind."""
    manifest = read_manifest(day_dir)
    inputs = set(manifest.inputs) if manifest else set()
    for old in table_dir.glob(f".compact-dt={day}-*"):
        if not old.is_dir():
            continue
        swapped = manifest is not None and old.name.endswith(_hash_from_outputs(manifest))
        if swapped:  # the swap happened: this is the old day; carry over what was not an input
            for p in _committed(old):
                if p.name not in inputs and not (day_dir / p.name).exists():
                    os.rename(p, day_dir / p.name)
                    log.info("compact: carried over %s from an interrupted compaction", p.name)
        shutil.rmtree(old, ignore_errors=True)


def _hash_from_outputs(m: Manifest) -> str:
    return m.outputs[0].split("-")[1] if m.outputs and m.outputs[0].count("-") >= 2 else "\0"


def _offsets_of(table: pa.Table) -> pa.Array:
    return origin_offsets(table.column("origin"))


def _note_ranges(name: str, t: pa.Table, ranges: dict[str, list[tuple[int, int]]],
                 file_ranges: dict[str, list[tuple[str, int, int]]], outputs_before: set[str]) -> None:
    """Add what the input file ``name`` (rows ``t``) held to the manifest being built: a Kafka chunk's
    offset range, or a file chunk's input lines (not for an earlier compaction's output, whose chunks'
    lines are in the earlier manifest already)."""
    m = KAFKA_FILE_NAME.match(name)
    if m and "origin" in t.column_names and t.num_rows:
        hi = pc.max(_offsets_of(t)).as_py()
        if hi is not None:
            ranges.setdefault(m["tp"], []).append((int(m["first"]), int(hi)))
    elif not m and name not in outputs_before and "origin" in t.column_names and t.num_rows:
        # a file chunk: remember its lines, so an ingest that writes this key again drops them
        lines = line_ranges(t.column("origin"))
        if lines:
            file_ranges[name] = sorted({*file_ranges.get(name, []), *lines})


@dataclass
class CompactResult:
    table: str
    day: str
    inputs: int
    outputs: Sequence[PurePath]
    rows: int
    atomic: bool
    #: how the merged files replaced the inputs, when not by a directory swap (a lake on S3)
    how: str = ""

    def summary(self) -> str:
        how = self.how or ("atomic directory swap" if self.atomic else "NON-atomic fallback")
        return (f"{self.table} dt={self.day}: {self.inputs} files -> {len(self.outputs)} files, "
                f"{self.rows} rows ({how})")


def compact(lake: Path, table: str, day: str, *, target_rows: int = DEFAULT_TARGET_ROWS) -> CompactResult:
    """Merge ``LAKE/<table>/dt=<day>`` (see the module docstring for the steps and guarantees)."""
    if table not in TABLES:
        raise LakeError(f"unknown table {table!r}", fix=f"use one of {', '.join(sorted(TABLES))}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}|unknown", day) or not valid_day(day):
        raise LakeError(f"bad date {day!r}", fix="write --date YYYY-MM-DD (a real date) or unknown")
    if target_rows < 1:
        raise LakeError("--target-rows must be >= 1")
    if warehouse.of_lake(Path(lake)) is not None:
        return _compact_on_s3(Path(lake), table, day, target_rows)
    table_dir = Path(lake) / table
    day_dir = table_dir / f"dt={day}"
    if not day_dir.is_dir():
        raise LakeError(f"{day_dir} does not exist", fix="check --lake, --source and --date")
    with _day_lock(table_dir, day):
        _finish_crashed(table_dir, day, day_dir)
        # The lake's own files only: a foreign or damaged *.parquet raises LakeError naming it before
        # anything is merged (it would be read as data, or merged away with the day's evidence).
        inputs = day_files(day_dir)
        iceberg = is_iceberg(Path(lake))
        if iceberg:
            # An Iceberg lake's day is what its snapshot lists: not a killed compaction's unlisted
            # outputs, not a writer's files it has not published yet.
            listed = set(snapshot_files(Path(lake), table, (day, day))) if day != "unknown" else None
            if listed is not None:
                inputs = [p for p in inputs if str(p.resolve()) in listed]
        old = read_manifest(day_dir)
        if len(inputs) <= 1:
            rows = pq.ParquetFile(inputs[0]).metadata.num_rows if inputs else 0
            return CompactResult(table, day, len(inputs), inputs, rows, True, how="nothing to merge")
        names = [p.name for p in inputs]
        h = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
        ranges: dict[str, list[tuple[int, int]]] = {k: list(v) for k, v in (old.kafka_ranges if old else {}).items()}
        # cumulative over compactions: a chunk merged by an earlier one is inside this one's inputs
        file_ranges: dict[str, list[tuple[str, int, int]]] = dict(old.file_ranges) if old else {}
        outputs_before = set(old.outputs) if old else set()
        parts = []
        schema = TABLES[table]
        for p in inputs:
            try:
                t = pq.read_table(p)
            except (OSError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {p}: {exc}", fix="move the broken file away and rerun") from exc
            _note_ranges(p.name, t, ranges, file_ranges, outputs_before)
            parts.append(conform(t.drop_columns([c for c in ("dt",) if c in t.column_names]), schema))
        merged = pa.concat_tables(parts)
        time_col = PARTITION_TIME.get(table)
        if time_col and time_col in merged.column_names:
            merged = merged.sort_by([(time_col, "ascending")])
        staging = table_dir / f".compact-dt={day}-{h}"
        shutil.rmtree(staging, ignore_errors=True)
        makedirs(staging)
        outputs = []
        for n, start in enumerate(range(0, max(merged.num_rows, 1), target_rows)):
            name = f"compacted-{h}-{n:04d}.parquet"
            write_parquet_atomic(with_dt(merged.slice(start, target_rows), day), staging / name)
            outputs.append(name)
        manifest = Manifest(inputs=names, outputs=outputs,
                            kafka_ranges={k: merge_ranges(v) for k, v in ranges.items()}, file_ranges=file_ranges,
                            rows=merged.num_rows, created_at=datetime.now(UTC).isoformat())
        _write_text_atomic(staging / MANIFEST, manifest.to_json())
        fsync_dir(staging)
        if iceberg:
            return _swap_in_snapshot(Path(lake), table, day, day_dir, staging, inputs, outputs, merged.num_rows)
        try:
            atomic = rename_exchange(staging, day_dir)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise SinkError(f"cannot swap {staging} and {day_dir}: {exc}") from exc
        if atomic:
            fsync_dir(table_dir)
            # staging now holds the old day: carry over files that arrived after the snapshot
            for p in _committed(staging):
                if p.name not in set(names):
                    os.rename(p, day_dir / p.name)
                    log.info("compact: kept %s (written while compacting)", p.name)
            fsync_dir(day_dir)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            log.warning("compact: this file system cannot swap directories atomically; readers of %s may "
                        "see duplicate rows until the inputs are deleted", day_dir)
            for name in outputs:
                os.replace(staging / name, day_dir / name)
            os.replace(staging / MANIFEST, day_dir / MANIFEST)
            fsync_dir(day_dir)
            for p in inputs:
                p.unlink(missing_ok=True)
            fsync_dir(day_dir)
            shutil.rmtree(staging, ignore_errors=True)
        forget_manifest(day_dir)
        result = CompactResult(table, day, len(inputs), [day_dir / n for n in outputs], merged.num_rows, atomic)
        log.info("compact: %s", result.summary())
        return result


def _swap_in_snapshot(lake: Path, table: str, day: str, day_dir: Path, staging: Path, inputs: list[Path],
                      outputs: list[str], rows: int) -> CompactResult:
    """Steps 4-6 in an Iceberg lake: readers see the snapshot, not the folder, so the merged files are
    renamed into ``dt=D`` (unlisted: invisible), one overwrite commit lists them instead of the inputs,
    then the manifest is put in place and the inputs are deleted. A crash before the commit leaves
    unlisted outputs that the next ``compact`` of D writes again (same names) and publishes; a crash
    after it leaves unlisted inputs for ``maintain --remove-orphans``, and no manifest: a re-ingest of
    one of those chunks then doubles its rows (never loses them) until the day is compacted again."""
    for name in outputs:
        os.replace(staging / name, day_dir / name)
    fsync_dir(day_dir)
    publish(lake, added=[day_dir / n for n in outputs], removed=inputs,
            summary={"ztaudit.operation": "compact", "ztaudit.compacted_inputs": str(len(inputs))})
    os.replace(staging / MANIFEST, day_dir / MANIFEST)
    for p in inputs:
        p.unlink(missing_ok=True)
    fsync_dir(day_dir)
    shutil.rmtree(staging, ignore_errors=True)
    forget_manifest(day_dir)
    result = CompactResult(table, day, len(inputs), [day_dir / n for n in outputs], rows, True,
                           how="one Iceberg overwrite commit")
    log.info("compact: %s", result.summary())
    return result


def _compact_on_s3(lake: Path, table: str, day: str, target_rows: int) -> CompactResult:
    """Compaction of one day of an Iceberg lake whose files are on S3 (no rename, no directory swap:
    the snapshot is the truth):

    1. **inputs** = the day's files the current snapshot lists (not a listing: a killed writer's or a
       killed compaction's unlisted objects are not the day's rows);
    2. **write** the merged rows as ``compacted-<h>-<n>.parquet`` in the day's prefix (``h`` = hash of
       the sorted inputs' names, sizes and row counts as listed, ``target_rows`` and the pyarrow and
       ztaudit versions: a rerun after a crash writes the same keys, and the same bytes: no creation
       time is written), each object carrying the
       day's merge manifest in its footer (:data:`~ztaudit.core.keys.FOOTER_MANIFEST`; cumulative with
       the manifests of the compacted objects among the inputs). Unlisted, they are invisible and
       claim nothing;
    3. **one overwrite commit** lists the outputs and unlists the inputs (readers see one or the other,
       and the manifest takes effect with it);
    4. the inputs are **not deleted** here: older snapshots still list them (a reader of one may be
       reading them), and a writer may have replaced one under its key since; ``maintain
       --expire-snapshots ... --remove-orphans`` deletes them once no live snapshot lists them. Until
       then the sink does not take them for the day's files (:meth:`LakeSink._object_index`).

    The commit unlists exactly the objects that were read: each input's size and row count as the
    snapshot listed them are checked against the head it commits on, and a writer that replaced one
    under its key in between, or unlisted one (another machine's compaction of the day committed first),
    makes the commit refuse (:class:`~ztaudit.core.iceberg_publish.ChangedMeanwhile`): nothing changed, the
    outputs the head does not list are deleted, run it again. A crash before 3 leaves unlisted outputs
    (rewritten by the rerun, or orphans).

    One compaction of a day at a time on this machine (a lock in the lake folder). Two machines
    compacting the same day at once: the first commit wins, the other refuses as above. When both read
    the same objects with the same settings and versions they write the same keys with the same bytes
    (same rows, same order), so the loser's writes leave the winner's listed objects as they were and it
    deletes none of them; otherwise their keys differ."""
    sink = LakeSink(lake)
    wh = sink.warehouse  # checks the prefix's claim before anything is written or deleted
    assert wh is not None
    lock = lake / "_iceberg" / f".compact-{table}-dt={day}.lock"
    with file_lock(lock, timeout=None, busy=lambda: LakeError(
            f"another `ztaudit compact` is working on {table} dt={day}", fix="wait for it to finish")):
        entries = snapshot_entries(lake, table, None if day == UNDATED else (day, day))
        inputs: list[PurePath] = sorted(loc for u in entries if (loc := wh.location(u)) is not None
                                        and table_day(lake, loc) == (table, day))
        read_as = {p: entries[wh.object_uri(p)] for p in inputs}
        if len(inputs) <= 1:
            rows = sink.read_metadata(inputs[0]).num_rows if inputs else 0
            return CompactResult(table, day, len(inputs), list(inputs), rows, True, how="nothing to merge")
        names = [p.name for p in inputs]
        # the keys name everything that decides the outputs' bytes: the inputs as read (name, bytes,
        # rows), the rows per output, the writer's versions. A rerun after a crash writes the same keys,
        # and so does a compaction on another machine that read the same objects with the same settings
        # (the same bytes); one that read a replaced input, or cuts or writes differently, other keys
        made_by = f"target_rows={target_rows} pyarrow={pa.__version__} ztaudit={_version()}"
        h = hashlib.sha256("\n".join([*(f"{p.name} {read_as[p][0]} {read_as[p][1]}" for p in inputs), made_by])
                           .encode()).hexdigest()[:12]
        earlier: list[Manifest] = []
        parts = []
        schema = TABLES[table]
        tables: list[tuple[PurePath, pa.Table]] = []
        for p in inputs:
            try:
                t = sink.read_table(p)
                m = footer_manifest(t.schema.metadata) if p.name.startswith(COMPACTED_PREFIX) else None
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {sink.display(p)}: {exc}",
                                fix="check that the S3 store is reachable (the snapshot lists this object), "
                                    "then rerun") from exc
            if m is not None:
                earlier.append(m)
            tables.append((p, t))
        old = union_manifests(earlier)
        ranges: dict[str, list[tuple[int, int]]] = {k: list(v) for k, v in (old.kafka_ranges if old else {}).items()}
        file_ranges: dict[str, list[tuple[str, int, int]]] = dict(old.file_ranges) if old else {}
        outputs_before = ({p.name for p in inputs if p.name.startswith(COMPACTED_PREFIX)}
                          | set(old.outputs if old else ()))
        for p, t in tables:
            _note_ranges(p.name, t, ranges, file_ranges, outputs_before)
            parts.append(conform(t.drop_columns([c for c in ("dt",) if c in t.column_names]), schema))
        tables.clear()
        merged = pa.concat_tables(parts).replace_schema_metadata(None)
        del parts
        time_col = PARTITION_TIME.get(table)
        if time_col and time_col in merged.column_names:
            merged = merged.sort_by([(time_col, "ascending")])
        starts = range(0, max(merged.num_rows, 1), target_rows)
        out_names = [f"{COMPACTED_PREFIX}{h}-{n:04d}.parquet" for n in range(len(starts))]
        # inputs: cumulative over the day's compactions, so every input ever merged (left in the bucket
        # until `maintain --remove-orphans`) stays out of the sink's view of the day
        # no creation time in the footer: two machines merging the same objects must write the same bytes
        # (a listed object overwritten with another size would not match its snapshot entry)
        manifest = Manifest(inputs=sorted(set(names) | set(old.inputs if old else ())), outputs=out_names,
                            kafka_ranges={k: merge_ranges(v) for k, v in ranges.items()}, file_ranges=file_ranges,
                            rows=merged.num_rows)
        meta = {FOOTER_MANIFEST: manifest.to_json().encode()}
        day_dir = sink.table_dir(table) / f"dt={day}"
        outputs = [sink.write_file(merged.slice(start, target_rows), day_dir / name, meta)
                   for name, start in zip(out_names, starts, strict=True)]
        try:
            publish(lake, added=outputs, removed=inputs, expect=read_as,
                    summary={"ztaudit.operation": "compact", "ztaudit.compacted_inputs": str(len(inputs))})
        except ChangedMeanwhile:
            # Ours unless the head lists them: a compaction on another machine that read the same objects
            # wrote and committed the same keys (the same bytes) first. The unlisted ones nothing reads.
            listed = snapshot_entries(lake, table, None if day == UNDATED else (day, day))
            for p in outputs:
                if wh.object_uri(p) in listed:
                    continue
                try:
                    sink.delete_file(p)
                except OSError:
                    pass
            raise
        result = CompactResult(table, day, len(inputs), outputs, merged.num_rows, True,
                               how="one Iceberg overwrite commit")
        log.info("compact: %s", result.summary())
        return result


def _version() -> str:
    """ztaudit's installed version (part of a compacted object's key on S3)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ztaudit")
    except PackageNotFoundError:
        return "unknown"


def _write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def manifest_summary(day_dir: Path) -> Mapping[str, Any] | None:
    """For ``ztaudit compact --show``-style output and tests."""
    m = read_manifest(day_dir)
    return None if m is None else json.loads(m.to_json())

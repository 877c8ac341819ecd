"""File ingest: paths -> chunks -> ``process()`` -> lake, and what it all came to.

:func:`ingest_paths` is the library API (``ztaudit ingest``, ``ztaudit demo``, tests and
``bench/ingest.py`` call it). Its loop reads as the pipeline does -- read a chunk, process it,
write it -- and each chunk's tables go through :class:`~ztaudit.core.sink.LakeSink` as soon as
they exist, so memory is bounded by one chunk whatever the input size.

Failure: a missing or unreadable input raises :class:`~ztaudit.core.errors.SourceError`
before anything from that input is written (inputs before it are already in the lake); a lake
that cannot be written raises :class:`~ztaudit.core.errors.SinkError`. Bad *records* never
raise: they are counted and written to ``quarantine/``, and the run goes on (``--strict`` turns a
non-empty quarantine into exit code 3 at the end, in the CLI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Final, TextIO

import numpy as np

from ztaudit.core.config import Config
from ztaudit.core.errors import SinkError, SourceError
from ztaudit.core.files import makedirs, write_bytes_atomic
from ztaudit.core.progress import ProgressLine
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.registry import NORMALIZERS
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import BatchResult, RawBatch
from ztaudit.pipeline.sources.files import read_chunks
from ztaudit.pipeline.sources.inputs import Chunk, Skipped, expand_paths, total_size

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """The conservation law's terms for one input or the whole run (``BatchResult`` docstring):
    ``records + expanded == written + quarantined + ignored``."""

    records: int = 0
    expanded: int = 0
    written: int = 0
    quarantined: int = 0
    ignored: int = 0

    def add(self, result: BatchResult) -> None:
        """Called once per processed chunk with what ``process()`` made of it."""
        self.records += result.records
        self.expanded += result.expanded
        self.written += result.written
        self.quarantined += result.quarantined
        self.ignored += result.ignored_total

    def balanced(self) -> bool:
        return self.records + self.expanded == self.written + self.quarantined + self.ignored

    def line(self) -> str:
        """``N records (+E entries in envelopes) = W written + Q quarantined + I ignored``."""
        extra = f" (+{self.expanded:,} in envelopes)" if self.expanded else ""
        check = "" if self.balanced() else "  UNBALANCED: records were lost or doubled (a bug: please report it)"
        return (f"{self.records:,} records{extra} = {self.written:,} written + {self.quarantined:,} quarantined"
                f" + {self.ignored:,} ignored{check}")


#: Inputs listed one by one in the summary; more are summed up in one line.
SUMMARY_INPUTS: Final = 20


@dataclass
class IngestStats:
    """What an ingest run did: rows per table, rejects per reason, ignored records per source and
    reason, the conservation law's terms per input and in total, speed."""

    inputs: int = 0
    records: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    #: ignored entries per "source/reason"
    ignored: Counter[str] = field(default_factory=Counter)
    total: Tally = field(default_factory=Tally)
    per_input: dict[str, Tally] = field(default_factory=dict)
    bytes_read: int = 0
    files_written: list[PurePath] = field(default_factory=list)
    elapsed: float = 0.0
    #: what the folder walk did not read, and why (an unreadable folder, a FIFO in a folder, a
    #: dangling link): said in the summary, never passed over silently (issue 11, item 8)
    skipped: list[Skipped] = field(default_factory=list)
    #: ``k8s_audit`` rows written without a cluster name (warned about in the summary)
    no_cluster: int = 0
    #: (input, earlier input of this run): first chunks sharing one key with other records
    replaced_first: list[tuple[str, str]] = field(default_factory=list)
    #: (input, earlier input of this run): the same records (a copy, or a beginning of it): stored once
    repeated_first: list[tuple[str, str]] = field(default_factory=list)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def ignored_total(self) -> int:
        return sum(self.ignored.values())

    def add(self, path: str, result: BatchResult) -> None:
        """Count one processed chunk of input ``path`` (called once per chunk, in order)."""
        self.total.add(result)
        self.per_input.setdefault(path, Tally()).add(result)
        for table_name, table in result.tables.items():
            self.rows[table_name] += table.num_rows
        self.no_cluster += result.audit_rows_without_cluster
        self.quarantined.update(str(r.reason) for r in result.rejected)
        for (source, reason), n in result.ignored.items():
            self.ignored[f"{source}/{reason}"] += n

    @property
    def events_per_s(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """The closing summary the CLI prints."""
        lines = [f"ingested {self.records:,} records from {self.inputs} input(s) in {self.elapsed:.1f} s "
                 f"({self.events_per_s:,.0f} records/s, {self.bytes_read / 1e6:,.1f} MB)"]
        for table in sorted(self.rows):
            lines.append(f"  {table:<16} {self.rows[table]:>12,} rows")
        if self.quarantined:
            lines.append(f"  {'quarantine':<16} {self.quarantined_total:>12,} records:")
            for reason, count in self.quarantined.most_common():
                lines.append(f"    {reason:<20} {count:>10,}")
        else:
            lines.append("  quarantine                  0 records")
        if self.ignored:
            lines.append(f"  {'ignored':<16} {self.ignored_total:>12,} records (valid, not for ztaudit):")
            for what, count in sorted(self.ignored.items()):
                lines.append(f"    {what:<32} {count:>10,}")
        if self.skipped:
            lines.append(f"  {'skipped':<16} {len(self.skipped):>12,} entries not read:")
            for entry in self.skipped[:SUMMARY_INPUTS]:
                lines.append(f"    {entry.path}: {entry.reason}")
            if len(self.skipped) > SUMMARY_INPUTS:
                lines.append(f"    ... {len(self.skipped) - SUMMARY_INPUTS:,} more")
        # The conservation law, per input and in total (docs/pipeline-notes.md §6).
        lines.append(f"  accounted: {self.total.line()}")
        warning = self.cluster_warning()
        shown = sorted(self.per_input.items())
        if len(shown) > 1:
            for path, tally in shown[:SUMMARY_INPUTS]:
                lines.append(f"    {path}: {tally.line()}")
            rest = shown[SUMMARY_INPUTS:]
            if rest:
                bad = sum(1 for _, t in rest if not t.balanced())
                lines.append(f"    ... {len(rest):,} more inputs, {bad:,} of them unbalanced")
        if warning:
            lines.append(warning)
        if self.replaced_first:
            lines.append(f"WARNING: {len(self.replaced_first):,} pair(s) of inputs start with the same record and "
                         "differ after it: their first chunks share one key and the lake keeps one version, so "
                         "records of the other, counted above, are not in the lake (a known limit, docs/design.md "
                         "section 3):")
            for path, other in self.replaced_first[:SUMMARY_INPUTS]:
                lines.append(f"    {other} / {path}")
        if self.repeated_first:
            lines.append(f"note: {len(self.repeated_first):,} input(s) start with the records of another input of "
                         "this run, or are its beginning (a copy, a file that grew): the rows above count those "
                         "records for each input, the lake stores them once:")
            for path, other in self.repeated_first[:SUMMARY_INPUTS]:
                lines.append(f"    {path} (as {other})")
        return "\n".join(lines)

    def cluster_warning(self) -> str:
        """A warning naming the audit rows written without a cluster and how to name it, or ``""``."""
        if not self.no_cluster:
            return ""
        return (f"WARNING: {self.no_cluster:,} k8s_audit rows have no cluster (plain audit lines do not name "
                f"their cluster): pass --cluster NAME, or lay the files out as .../cluster=NAME/... "
                f"(config ingest.cluster_from_path); ingesting the same input again with it replaces these rows")


class _Progress:
    """Ingest's progress line on stderr, only on a TTY (:class:`~ztaudit.core.progress.ProgressLine`):
    bytes read of the inputs' total with ETA, records, rows, quarantined and records/s."""

    def __init__(self, enabled: bool, total_bytes: int, stream: TextIO | None = None) -> None:
        self.line = ProgressLine.auto("ingest", quiet=not enabled, stream=stream or sys.stderr, unit="bytes")
        self.total = total_bytes
        self.start = time.monotonic()

    def update(self, stats: IngestStats) -> None:
        if not self.line.enabled:
            return
        rate = stats.records / max(time.monotonic() - self.start, 1e-6)
        self.line(stats.bytes_read, self.total or None,
                  f"{stats.records:,} records, {sum(stats.rows.values()):,} rows, "
                  f"{stats.quarantined_total:,} quarantined, {rate:,.0f} records/s")

    def close(self) -> None:
        self.line.close()


#: Where a lake remembers the chunk size its file chunks were cut with (``_state`` is the lake's own).
GRID_FILE: Final = Path("_state") / "ingest-chunk-grid.json"


def lake_chunk_grid(lake: Path, chunk_bytes: int) -> int:
    """The chunk size to cut files with for ``lake``: the one it was first built with, else
    ``chunk_bytes`` (then remembered). Called once per ingest run, before any chunk is read.

    A chunk's file key names its start, and starts sit on a grid of the chunk size
    (:mod:`ztaudit.pipeline.sources.lines`): a file re-ingested with another ``--chunk-bytes`` would
    get other keys and double its rows. So the lake's own grid wins, with a warning that says so.
    An unreadable grid file is replaced (logged): a lake without one behaves as before.
    """
    path = lake / GRID_FILE
    try:
        known = int(json.loads(path.read_text())["chunk_bytes"])
    except FileNotFoundError:
        known = 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ingest: unreadable %s (%s); writing it again", path, exc)
        known = 0
    if known > 0:
        if known != chunk_bytes:
            log.warning("ingest: this lake's file chunks were cut every %d bytes; using that instead of "
                        "%d so that re-ingested files keep their keys (and their rows are not doubled)",
                        known, chunk_bytes)
        return known
    try:
        makedirs(path.parent)
        write_bytes_atomic(path, json.dumps({"chunk_bytes": chunk_bytes}).encode())
    except (OSError, SinkError) as exc:
        log.warning("ingest: cannot remember the chunk size in %s: %s", path, exc)
    return chunk_bytes


def cluster_for_path(path: str, pattern: re.Pattern[str] | None) -> str | None:
    """The cluster a file's path names (config ``ingest.cluster_from_path``), or None.

    Kubernetes audit lines do not say which cluster wrote them (the API server does not log its
    own cluster name), so file layouts such as ``audit/cluster=prod/2026-11-01.jsonl`` carry it.
    A path match wins over ``--cluster``; an envelope that names its cluster (GKE, AKS, EKS) wins
    over both.
    """
    if pattern is None:
        return None
    m = pattern.search(path.replace("\\", "/"))
    return m.group("cluster") if m and m.group("cluster") else None


def ingest_paths(paths: Sequence[str | Path], lake: str | Path, *, source: str | None = None,
                 cluster: str | None = None, config: Config | None = None, progress: bool = False,
                 max_record_bytes: int | None = None, chunk_bytes: int | None = None) -> IngestStats:
    """Ingest files, folders, ``.gz`` files or ``-`` (stdin) into ``lake``.

    ``source`` names the source kind of every record (else detected per record); ``cluster`` is
    the default cluster name (an envelope's own wins). ``max_record_bytes``/``chunk_bytes``
    override ``config.ingest``. Raises SourceError (bad path, unknown source) or SinkError.
    """
    cfg = config or Config()
    if source is not None and source not in NORMALIZERS:
        raise SourceError(f"unknown source kind {source!r}",
                          fix=f"use one of: {', '.join(NORMALIZERS)} (or leave --source out to detect it)")
    cap = max_record_bytes or cfg.ingest.max_record_bytes
    chunk_size = chunk_bytes or cfg.ingest.chunk_bytes
    path_pattern = re.compile(cfg.ingest.cluster_from_path) if cfg.ingest.cluster_from_path else None
    fields = tuple(cfg.ingest.cluster_fields)
    inputs = expand_paths([str(p) for p in paths])
    sink = LakeSink(Path(lake), table_format=cfg.lake.format)
    chunk_size = lake_chunk_grid(Path(lake), chunk_size)
    ctx = NormalizeContext(
        cluster=cluster,
        ingested_at=datetime.now(UTC),
        proxy_hosts=dict(cfg.impersonation.proxy_hosts),
        proxy_utc_offset=cfg.correlation.proxy_utc_offset,
        idp_utc_offset=cfg.correlation.idp_utc_offset,
        system_user_patterns=tuple(cfg.identities.system_user_patterns),
        session_extra_key=cfg.correlation.session_extra_key,
    )
    stats = IngestStats(inputs=len(inputs), skipped=list(inputs.skipped))
    bar = _Progress(progress, total_size(inputs))
    started = published = time.monotonic()
    # Three stages overlap: a reader thread reads and splits chunk k+1 while DuckDB maps chunk k
    # (DuckDB, file reads, hashing, Parquet encoding and fsync release the GIL), and a writer
    # thread writes chunk k-1. One chunk waits at each hand-over, so memory stays bounded by a
    # few chunks; a SourceError or SinkError surfaces in this thread at the next hand-over.
    pending: Future[list[PurePath]] | None = None
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztaudit-sink") as writer, \
                _Prefetch(chunk for inp in inputs for chunk in read_chunks(inp, chunk_size, cap)) as chunks:
            firsts: dict[str, tuple[str, str, int, bytes]] = {}  # first chunk key -> input, digest, size, head
            for ch in chunks:
                _note_shared_first(ch, firsts, stats)
                batch_cluster = cluster_for_path(ch.origins.path, path_pattern) or cluster
                raw = RawBatch([] if ch.packed is not None else ch.records, ch.origins, source=source,
                               cluster=batch_cluster, packed=ch.packed)
                result = process(raw, ctx, max_record_bytes=cap, cluster_fields=fields)
                raw.packed = None
                # Records the reader quarantined itself (a truncated .gz's incomplete tail, a
                # document it cannot parse at all) are records of this chunk too.
                result.rejected += ch.rejected
                result.records += len(ch.rejected)
                stats.records += ch.count + len(ch.rejected)
                stats.bytes_read += ch.nbytes
                ch.release()
                stats.add(ch.origins.path, result)
                if pending is not None:
                    stats.files_written += pending.result()
                    if time.monotonic() - published > cfg.lake.publish_seconds:
                        sink.publish()  # an Iceberg lake shows rows while a long ingest runs
                        published = time.monotonic()
                pending = writer.submit(_write, sink, result, ch.file_key, ch.nbytes)
                del result, ch
                bar.update(stats)
            if pending is not None:
                stats.files_written += pending.result()
        sink.publish()
    finally:
        bar.close()
        stats.elapsed = time.monotonic() - started
    return stats


class _Prefetch:
    """Run an iterator in a background thread, one item ahead; re-raise its error here.

    Used as a context manager so that leaving early (an error in the consumer) stops the thread
    and lets it close the file it reads.
    """

    _END: Final = object()

    def __init__(self, it: Iterator[Chunk]) -> None:
        self._it = it
        self._q: queue.Queue[object] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ztaudit-reader", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
        finally:
            if isinstance(self._it, Generator):
                self._it.close()
            self._put(self._END)

    def __enter__(self) -> Iterator[Chunk]:
        self._thread.start()
        return self._iter()

    def _iter(self) -> Iterator[Chunk]:
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Chunk)
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


#: The key of an input's first chunk: ``<hex>+0``, ``+d0``, ``+L0`` (it starts at 0 of its kind).
_FIRST_CHUNK: Final = re.compile(r"\+[A-Za-z]*0$")


def _note_shared_first(ch: Chunk, firsts: dict[str, tuple[str, str, int, bytes]], stats: IngestStats) -> None:
    """Say it when chunk ``ch`` and an earlier input's first chunk of this run share one key but not
    their records. A chunk's key names its input by the input's first record
    (:func:`~ztaudit.pipeline.sources.inputs.chunk_key`, independent of the path so that a re-ingest
    under another spelling, in another order, replaces), so two inputs starting with the same record
    (a license header) give their first chunks one key, and the lake keeps one version of it: the other
    input's records of that chunk are not in the lake. No loss when one is the other's beginning (one
    file given twice, a copy that grew: the sink keeps the longer). Compared with the first input of
    the run that used the key (its first :data:`_HEAD_KEPT` bytes are kept for that). Called before the
    chunk is processed (its records are still held)."""
    if not _FIRST_CHUNK.search(ch.file_key):  # later chunks' keys hash everything before them
        return
    data = _chunk_bytes(ch)
    seen = firsts.get(ch.file_key)
    if seen is None:
        firsts[ch.file_key] = (ch.origins.path, hashlib.sha256(data).hexdigest(), len(data),
                               bytes(data[:_HEAD_KEPT]))
        return
    path, digest, size, head = seen
    if len(data) >= size:
        if hashlib.sha256(data[:size]).hexdigest() == digest:
            stats.repeated_first.append((ch.origins.path, path))
            return  # the same records, or those and more
    elif len(data) <= len(head) and head[:len(data)] == bytes(data):
        stats.repeated_first.append((ch.origins.path, path))
        return  # a beginning of the earlier one's
    stats.replaced_first.append((ch.origins.path, path))
    log.warning("ingest: %s and %s start with the same record and differ after it: the lake keeps one version of "
                "their first chunk", ch.origins.path, path)


#: How much of an input's first chunk is kept to tell whether a later, shorter input is its beginning.
_HEAD_KEPT: Final = 1 << 20


def _chunk_bytes(ch: Chunk) -> bytes | memoryview:
    """A chunk's record bytes in input order: the packed array's data (the lines as read), or the
    records joined by newlines (document inputs)."""
    if ch.packed is None:
        return b"\n".join(ch.records)
    arr = ch.packed.array
    bufs = arr.buffers()
    if not len(arr) or bufs[2] is None:
        return b""
    offs = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    return memoryview(bufs[2])[int(offs[0]):int(offs[-1])]


def _write(sink: LakeSink, result: BatchResult, file_key: str, extent: int) -> list[PurePath]:
    """Write one processed chunk as the only version of its key (runs on the writer thread).

    ``LakeSink.write_chunk`` writes its tables and its rejects, then deletes the files an earlier
    version of the same chunk left in other days or tables (a grown file's chunk, or the same
    input ingested on another UTC day: docs/design.md §3), unless the lake already holds a
    version of the key that covered more input (``extent`` bytes: an older, shorter copy of a
    grown file ingested after it). Raises ``SinkError``.
    """
    return sink.write_chunk(result.tables, result.rejected, file_key, extent=extent)

"""The streaming consumer behind ``ztaudit consume``: Kafka -> ``process()`` -> Parquet lake -> commit.

The main loop reads as a sentence, with the write on one worker thread so polling goes on::

    main:    poll -> buffer per partition -> [round N-1 done? commit it, hooks] -> cut round N -> submit
    writer:                                    normalize -> write -> quarantine -> clean (round N)

Commit ordering (the whole exactly-once argument; quix-streams ``checkpoint.py`` style)
--------------------------------------------------------------------------------------

For every flush round, and for each partition in it, strictly in this order:

1. **buffer**: ``poll()`` appends each record's raw bytes and offset to its partition's buffer.
   Nothing is committed, and ``commit()`` is never called without explicit offsets (that would
   commit what ``poll()`` returned, i.e. data that is not in Parquet yet).
2. **cut**: a partition contributes at most one *chunk* ``[first, last]`` per round. The cut is
   data-determined where possible: exactly ``flush_records`` records, or the record where the
   chunk reaches ``flush_bytes``. Wall-clock cuts (``flush_seconds``, shutdown, ``--until-idle``,
   the ``max_buffer_bytes`` memory cap) are not reproducible, so they are made idempotent by
   *boundary recovery* (below).
3. **normalize**: ``process(RawBatch(records, KafkaOrigins(topic, partition, offsets)))``.
4. **write**: each table with ``LakeSink.write(table, rows, key)`` and the rejects with
   ``write_quarantine(rejected, key)``, ``key = <topic>+<partition>+<first offset:020d>``. Each file
   is a temp file, fsynced and renamed: **the rename is the durability point**.
5. **clean**: files with the same key left by an earlier, uncommitted attempt that this chunk did
   not rewrite (another ``dt=`` day, quarantine written on another day) are deleted.
6. **commit**: ``commit({tp: last + 1})`` for the partitions flushed in this round (and still
   owned, see *Rebalances*), synchronously, retried with backoff while the broker is away.
7. **hooks**: ``on_flush(since, until, paths)`` with the event-time window just made durable.

Steps 3-5 run on the *writer thread* (one ``ThreadPoolExecutor`` worker); every other step, and
every call into the Kafka client (poll, commit, seek, assignment), stays on the main thread (the
clients are not thread-safe). At most **one round is in flight**: the main thread keeps polling
and buffering while the writer works, commits round N (steps 6-7) only after the writer returned
from it, and cuts and submits round N+1 only after that commit. So commits stay in round order and
always follow their rename. A writer exception (e.g. ``SinkError`` after its retries) is raised on
the main thread when it collects the round, as if the write had run there: nothing of that round
is committed. Memory stays bounded: the in-flight round plus the buffers stay under
``max_buffer_bytes`` (above it the main thread stops polling and waits for the writer).

Why replay never duplicates: because a partition's next chunk is cut only after the previous
chunk's commit succeeded, at most **one** chunk per partition is durable-but-uncommitted at any
time, and its key is ``<topic>+<partition>+<committed offset>``. Whoever reads the partition next
(this process after a crash, or another group member after a rebalance) starts at that committed
offset, finds those leftover files by their key (:meth:`StreamConsumer._recover`), reads the highest
offset in them and cuts its first chunk exactly there. So the replayed chunk has the same key and
the same records, ``os.replace`` overwrites each file with identical rows, leftovers it did not
rewrite are removed in step 5, and only then is the offset committed. A crash at any point between
1 and 6 therefore leaves the lake with each record exactly once after the replay; a crash after 6
replays nothing.

Rebalances: the next owner's recovery only works if our rename happened *before* it looked. So the
rebalance listener's ``on_revoke`` (kafka-python 3.x: on its IO thread; librdkafka: inside
``poll()``) waits for an in-flight write that touches a revoked partition to finish -- a wait on the
write's future, not a consumer call -- before the client gives the partitions up, and from then on
no new write of those partitions starts (the main thread drops such chunks at submit time, under
the listener's lock). Nothing is committed in the listener, and the in-flight round's revoked
partitions are not committed afterwards either: their files stay durable-but-uncommitted, and
whoever owns the partition next (maybe this process again, after a seek back to the chunk's first
offset) rewrites them. Unflushed buffers of revoked partitions are dropped; the next owner re-reads
from the committed offset.

The Kafka client is behind :class:`ztaudit.pipeline.sources.kafka.KafkaSource` (``--backend
kafka-python|confluent``); this module never imports a client library.

Limits (documented, not hidden): a *zombie* member that stalls longer than
``max.poll.interval.ms`` *inside* a write and then finishes its rename after the new owner
rewrote the same key can leave one overlapping file (plain file renames have no fencing token);
if the broker deletes (retention) a partition's uncommitted range before the replay, the leftover
file is kept as is. The natural key (``audit_id`` + ``stage``) is in every row for reports to
dedupe if either ever happens. After ``ztaudit compact`` merged a day's files, rows a replay
would write again into that day are dropped against the day's ``_compacted.json`` offset ranges
(:mod:`ztaudit.pipeline.compact`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ztaudit.core.config import Config, KafkaSettings
from ztaudit.core.errors import KafkaTransientError, SinkError
from ztaudit.core.files import safe_key
from ztaudit.core.keys import file_key, origin_offsets, read_manifest
from ztaudit.core.schema import PARTITION_TIME
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize import NormalizeContext
from ztaudit.pipeline.records import KafkaOrigins, RawBatch
from ztaudit.pipeline.sources import kafka as ksrc
from ztaudit.pipeline.sources.kafka import TP, CommitRejectedError, KafkaSource, preflight, tp_name

log = logging.getLogger(__name__)

#: A hook called after each durable flush + commit with the event-time window just written.
FlushHook = Callable[[datetime, datetime, list[Path]], None]

MiB: Final = 1024 * 1024
BACKOFF_START_S: Final = 0.5
BACKOFF_MAX_S: Final = 15.0
SINK_RETRIES: Final = 5
#: With the writer free and the buffers above this share of ``max_buffer_bytes``, the largest
#: buffer is cut early: the rest of the budget is left for polling while the writer works (at
#: 100 % the poller would stop at every round and the pipeline would run as a sequence again;
#: at 75 % a writer-bound loop still found the buffers just under it after most rounds, leaving
#: the writer idle for a poll).
MEMORY_CUT_SHARE: Final = 0.5
#: Log a line while the main thread or a rebalance waits this long for the writer.
WRITER_WAIT_LOG_S: Final = 10.0
#: Poll timeout while a round is in flight (a poll returns at once when records are there; on a
#: quiet topic this bounds how long a written round waits for its commit).
INFLIGHT_POLL_TIMEOUT_S: Final = 0.05
__all__ = ["ConsumeOptions", "Metrics", "StreamConsumer", "consume", "preflight"]


@dataclass
class ConsumeOptions:
    """What to consume and where to write it; the CLI fills it from flags and ``[kafka]``."""

    topics: Mapping[str, str | None]
    lake: Path
    group: str = "ztaudit"
    cluster: str | None = None
    flush_records: int = 100_000
    flush_bytes: int = 128 * MiB
    flush_seconds: float = 30.0
    start_from: str = "earliest"
    until_idle: float | None = None
    metrics_file: Path | None = None
    progress_seconds: float = 10.0
    max_record_bytes: int = MiB
    poll_timeout_ms: int = 500
    #: All partitions' buffers plus the round being written: above this, polling waits for the
    #: writer; above :data:`MEMORY_CUT_SHARE` of it, the largest buffer is cut early when the writer
    #: is free (bounds RSS when many partitions fill slowly; such a cut is wall-clock-like and made
    #: idempotent the same way).
    max_buffer_bytes: int = 128 * MiB
    on_flush: list[FlushHook] = field(default_factory=list)


@dataclass
class Metrics:
    """Counters for the progress line and ``--metrics-file`` (same names in both)."""

    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    messages: int = 0
    message_bytes: int = 0
    events: int = 0
    quarantined: int = 0
    files: int = 0
    flushes: int = 0
    commits: int = 0
    commit_retries: int = 0
    rebalances: int = 0
    dropped_uncommitted: int = 0
    recovered_chunks: int = 0
    compacted_rows_skipped: int = 0
    broker_errors: int = 0
    events_per_s: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    buffered: int = 0
    state: str = "starting"

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["updated_at"] = datetime.now(UTC).isoformat()
        return d


class _Buffer:
    """One partition's unflushed records (raw bytes, in offset order)."""

    __slots__ = ("boundary", "leftovers", "nbytes", "offsets", "opened_at", "values")

    def __init__(self, now: float) -> None:
        self.values: list[bytes] = []
        self.offsets: list[int] = []
        self.nbytes = 0
        self.opened_at = now
        #: last offset of an earlier uncommitted flush this buffer must end its first chunk at
        self.boundary: int | None = None
        #: files that earlier flush left under this buffer's first key
        self.leftovers: list[Path] = []


@dataclass
class _Chunk:
    tp: TP
    values: list[bytes]
    offsets: list[int]
    leftovers: list[Path]
    recovered: bool
    nbytes: int = 0

    @property
    def first(self) -> int:
        return self.offsets[0]

    @property
    def last(self) -> int:
        return self.offsets[-1]

    @property
    def where(self) -> str:
        return f"{tp_name(self.tp.topic, self.tp.partition)} offsets {self.first}..{self.last}"


@dataclass
class _Written:
    """What the writer made of one chunk (the main thread adds it to the metrics)."""

    paths: list[Path]
    window: tuple[datetime, datetime] | None
    rows: int
    quarantined: int
    compacted_rows_skipped: int


@dataclass
class _Round:
    """One flush round handed to the writer thread: at most one is in flight."""

    chunks: list[_Chunk]
    future: concurrent.futures.Future[list[_Written]]
    #: set by the writer once it returned from the round (every rename done, or it failed)
    written: threading.Event
    #: partitions revoked while the round was in flight (the listener adds them): not committed
    revoked: set[TP] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    @property
    def records(self) -> int:
        return sum(len(c.offsets) for c in self.chunks)

    @property
    def where(self) -> str:
        return ", ".join(c.where for c in self.chunks)


class _Listener:
    """Rebalance recorder and revocation fence; the main thread acts on the events after ``poll()``.

    kafka-python 3.x calls it on its IO thread, where blocking consumer calls raise; librdkafka
    calls it inside ``poll()``. It records the events (no flush, no commit, no consumer call) and
    fences revoked partitions off the writer: under :attr:`lock`, a revocation marks the partitions
    so that no write of theirs starts any more (:meth:`start`), and ``on_revoke`` returns the
    in-flight round's ``written`` event if that round writes one of them -- the source waits for it
    before it gives the partitions up, so our renames never follow the next owner's recovery
    (module docstring). Lost partitions are reported as revoked.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, list[TP]]] = []
        #: revoked since the main thread last drained the events: no new write may start for them
        self.revoked: set[TP] = set()
        #: the round the writer is working on (set and cleared by the main thread, under the lock)
        self.inflight: _Round | None = None

    def on_revoke(self, revoked: list[TP]) -> threading.Event | None:
        tps = list(revoked)
        with self.lock:
            self.events.append(("revoked", tps))
            self.revoked.update(tps)
            rnd = self.inflight
            hit = {c.tp for c in rnd.chunks} & set(tps) if rnd is not None else set()
            if rnd is not None and hit:
                rnd.revoked.update(hit)
        if rnd is None or not hit or rnd.written.is_set():
            return None
        log.info("consume: %s revoked while being written: the partitions are given up once the write is "
                 "renamed into place (it is not committed)", ", ".join(tp_name(t.topic, t.partition)
                                                                      for t in sorted(hit)))
        return rnd.written

    def on_assign(self, assigned: list[TP]) -> None:
        with self.lock:
            self.events.append(("assigned", list(assigned)))

    def drain(self) -> list[tuple[str, list[TP]]]:
        with self.lock:
            out, self.events = self.events, []
            self.revoked.clear()
        return out

    def start(self, chunks: list[_Chunk],
              submit: Callable[[list[_Chunk], threading.Event], concurrent.futures.Future[list[_Written]]],
              ) -> tuple[_Round | None, list[_Chunk]]:
        """Submit the chunks of partitions not revoked since the last drain as the in-flight round;
        returns it (None if nothing was left) and the chunks dropped for a revocation."""
        with self.lock:
            assert self.inflight is None, "a round is already in flight"
            kept = [c for c in chunks if c.tp not in self.revoked]
            dropped = [c for c in chunks if c.tp in self.revoked]
            if not kept:
                return None, dropped
            written = threading.Event()
            self.inflight = _Round(kept, submit(kept, written), written)
            return self.inflight, dropped

    def finish(self, rnd: _Round) -> set[TP]:
        """The round is no longer in flight; returns its partitions revoked meanwhile."""
        with self.lock:
            if self.inflight is rnd:
                self.inflight = None
            return set(rnd.revoked)


def context_from_config(cfg: Config, cluster: str | None) -> NormalizeContext:
    """The normalizer settings the consumer passes to every ``process()`` call."""
    return NormalizeContext(cluster=cluster, proxy_hosts=dict(cfg.impersonation.proxy_hosts),
                            proxy_utc_offset=cfg.correlation.proxy_utc_offset,
                            system_user_patterns=tuple(cfg.identities.system_user_patterns))


class StreamConsumer:
    """Consume topics into the lake (see the module docstring for the commit ordering).

    ``source_factory()`` builds the :class:`KafkaSource` (default: ``settings.backend`` through
    :func:`ztaudit.pipeline.sources.kafka.open_source`; tests may wrap it). ``run()`` returns the
    final :class:`Metrics`. :meth:`stop` is safe from a signal handler.

    Threads: everything runs on the thread that calls :meth:`run` (the Kafka client, the buffers,
    the metrics, commits and hooks) except steps 3-5 of a round (:meth:`_write_chunk`), which run
    on one writer thread; the two meet only in :class:`_Listener` (under its lock) and in the
    round's future.
    """

    def __init__(self, settings: KafkaSettings, options: ConsumeOptions, *,
                 ctx: NormalizeContext | None = None, password: str | None = None,
                 source_factory: Callable[[], KafkaSource] | None = None) -> None:
        self.settings = settings
        self.opts = options
        self.ctx = ctx or NormalizeContext(cluster=options.cluster)
        self.password = password
        self.sink = LakeSink(options.lake)
        self.metrics = Metrics()
        self._factory = source_factory
        self._source: KafkaSource | None = None
        self._listener = _Listener()
        self._buffers: dict[TP, _Buffer] = {}
        self._fresh: set[TP] = set()  # partitions whose first record must check for leftovers
        self._next: dict[TP, int] = {}  # next offset to read, per partition
        self._dropped_at: dict[TP, int] = {}  # revoked partitions' first dropped offset, until reassigned
        self._stopping = False
        self._last_record_at = time.monotonic()
        #: since when this member waits for the group to assign it partitions (subscribed or revoked,
        #: not assigned yet); None once assigned -- even an empty assignment
        self._awaiting_since: float | None = time.monotonic()
        self._last_progress = time.monotonic()
        self._events_at_progress = 0
        #: Fault injection for the crash tests: SIGKILL this process after N flush rounds were renamed
        #: into place but before their commit -- the worst moment for exactly-once.
        crash = os.environ.get("ZTAUDIT_CONSUME_KILL_AFTER_WRITES")
        self._kill_after_writes = int(crash) if crash else None
        self._rounds_written = 0
        #: the writer thread (created by run()) and the round it works on (main thread's view)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: _Round | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to flush, commit and return (signal-safe)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: flush, commit, exit 0; a second signal exits at once (130)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stopping:
                os._exit(130)
            log.warning("consume: %s received: flushing buffered records, committing, exiting",
                        signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> Metrics:
        """poll -> buffer -> [commit the written round] -> cut and submit the next round to the
        writer, until stopped or idle; then drain: wait for the writer, commit, flush the rest."""
        self._connect()
        self.metrics.state = "running"
        writer = self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                      thread_name_prefix="ztaudit-writer")
        writer.submit(_warm_up_writer)  # imports and DuckDB setup overlap the group join
        try:
            while not self._stopping:
                records = self._poll()
                rewound = self._apply_rebalance_events()
                self._buffer({tp: r for tp, r in records.items() if tp not in rewound})
                # --until-idle and nothing new for a whole poll: caught up, write what is buffered now
                # rather than after the idle wait (a wall-clock cut, made idempotent like the others)
                self._flush_due(final=False, everything=not records and self.opts.until_idle is not None)
                self._progress()
                if self._idle_done():
                    log.info("consume: idle for %.0f s with no lag: draining and exiting", self.opts.until_idle)
                    break
            self.metrics.state = "draining"
            self._apply_rebalance_events()
            self._flush_due(final=True)
        finally:
            self._abandon_round()
            self.metrics.state = "stopped"
            self._progress(force=True)
            self._close()
            writer.shutdown(wait=True)
            self._writer = None
        return self.metrics

    # --- connect --------------------------------------------------------------------------

    @property
    def source(self) -> KafkaSource:
        assert self._source is not None, "not connected"
        return self._source

    def _connect(self) -> None:
        """Build the source and subscribe (the source fails fast on bad credentials).

        An unreachable broker is retried with backoff forever (a log line each time); a broker
        that answers but refuses us raises :class:`KafkaConnectError` (exit code 5).
        """
        backoff = BACKOFF_START_S
        while not self._stopping:
            source = None
            try:
                source = self._factory() if self._factory else ksrc.open_source(
                    self.settings, group=self.opts.group, start_from=self.opts.start_from, password=self.password)
                source.subscribe(sorted(self.opts.topics), self._listener.on_revoke, self._listener.on_assign)
                self._source = source
                log.info("consume: subscribed to %s as group %s at %s (%s)", ", ".join(sorted(self.opts.topics)),
                         self.opts.group, self.settings.bootstrap_servers, source.backend)
                return
            except KafkaTransientError as exc:
                if source is not None:
                    with contextlib.suppress(Exception):
                        source.close()
                self.metrics.broker_errors += 1
                log.warning("consume: Kafka at %s unreachable (%s); retrying in %.1f s",
                            self.settings.bootstrap_servers, ksrc.redact(str(exc), self.password), backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        if self._source is None:
            raise SystemExit(0)

    def _close(self) -> None:
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
            self._source = None

    # --- poll and buffer ------------------------------------------------------------------

    def _poll(self) -> dict[TP, ksrc.Records]:
        timeout = self.opts.poll_timeout_ms / 1000
        if self._inflight is not None:  # look again soon: the round is committed once it is written
            timeout = min(timeout, INFLIGHT_POLL_TIMEOUT_S)
        try:
            return self.source.poll(timeout)
        except KafkaTransientError as exc:
            self.metrics.broker_errors += 1
            log.warning("consume: poll failed (%s); retrying", ksrc.redact(str(exc), self.password))
            time.sleep(BACKOFF_START_S)
            return {}
        finally:
            self.metrics.broker_errors += self.source.take_errors()

    def _apply_rebalance_events(self) -> set[TP]:
        """Act on what the listener recorded (during ``poll()``, or on kafka-python's IO thread);
        returns the partitions rewound.

        A round still in flight is first collected and committed (without its revoked partitions,
        :meth:`_finish_round`), so that its uncommitted chunks are known before the events are
        applied. Revoked: drop the unflushed buffer (nothing is committed for it). If the same
        rebalance gives the partition back (kafka-python keeps the *position* of a partition it
        still owns), seek back to the first dropped offset (an uncommitted chunk's first offset
        if there is one) -- else those records would be skipped, or a second chunk would become
        durable-but-uncommitted. (librdkafka restarts a re-assigned partition at its committed
        offset, which is that same offset.)
        """
        rewound: set[TP] = set()
        events = self._listener.drain()
        if events and self._inflight is not None:
            self._finish_round()
        for kind, tps in events:
            if kind == "revoked":
                for tp in tps:
                    buf = self._buffers.pop(tp, None)
                    if buf is not None and buf.offsets:
                        self.metrics.dropped_uncommitted += len(buf.offsets)
                        self._drop_from(tp, buf.offsets[0])
                        log.info("consume: %s revoked: dropped %d unflushed records from offset %d "
                                 "(uncommitted; whoever owns it next re-reads them)", tp_name(tp.topic, tp.partition),
                                 len(buf.offsets), buf.offsets[0])
                    self._next.pop(tp, None)
                    self._fresh.add(tp)
                self._awaiting_since = time.monotonic()
                continue
            self._awaiting_since = None
            self.metrics.rebalances += 1
            self._last_record_at = time.monotonic()  # new partitions: idle time starts over
            for tp in tps:
                self._fresh.add(tp)
                first = self._dropped_at.pop(tp, None)
                if first is not None:
                    try:
                        self.source.seek(tp, first)
                        rewound.add(tp)
                        log.info("consume: %s assigned again: rewound to offset %d (its dropped buffer)",
                                 tp_name(tp.topic, tp.partition), first)
                    except KafkaTransientError as exc:
                        log.warning("consume: %s: cannot rewind to offset %d: %s", tp_name(tp.topic, tp.partition),
                                    first, exc)
            self._dropped_at.clear()  # partitions that went elsewhere: the new owner starts at the commit
            log.info("consume: assigned %s", ", ".join(tp_name(t.topic, t.partition) for t in sorted(tps)) or "-")
        return rewound

    def _drop_from(self, tp: TP, first: int) -> None:
        """Records of ``tp`` from ``first`` on are neither in the lake for good nor buffered any
        more: if the partition comes back, it is re-read from there (the lowest such offset)."""
        self._dropped_at[tp] = min(first, self._dropped_at.get(tp, first))

    def _buffer(self, records: Mapping[TP, ksrc.Records]) -> None:
        if not records:
            return
        now = time.monotonic()
        self._last_record_at = now
        assigned = self.source.assignment()
        for tp, (offs, vals) in records.items():
            if not offs or tp not in assigned:
                continue
            buf = self._buffers.get(tp)
            first = offs[0]
            if buf is not None and buf.offsets and first <= buf.offsets[-1]:
                # The position went backwards (reset/seek by the client): start over from here.
                log.warning("consume: %s rewound to offset %d (buffer ended at %d): dropping the buffer",
                            tp_name(tp.topic, tp.partition), first, buf.offsets[-1])
                self._buffers.pop(tp)
                self._fresh.add(tp)
                buf = None
            if buf is None:
                buf = self._buffers[tp] = _Buffer(now)
            if tp in self._fresh and not buf.offsets:
                self._fresh.discard(tp)
                rnd = self._inflight
                if rnd is not None and any(c.tp == tp for c in rnd.chunks):
                    rnd.written.wait()  # a rewind while its chunk is written: see its files renamed first
                self._recover(tp, first, buf)
            buf.values.extend(vals)
            buf.offsets.extend(offs)
            n = sum(map(len, vals))
            buf.nbytes += n
            self.metrics.messages += len(offs)
            self.metrics.message_bytes += n
            self._next[tp] = offs[-1] + 1

    def _recover(self, tp: TP, first: int, buf: _Buffer) -> None:
        """Find files an earlier, uncommitted flush left under this partition's next key.

        Sets ``buf.boundary`` to the highest offset they hold, so the first chunk is cut exactly
        where that flush was cut and the replay rewrites the same files (module docstring).
        """
        name = f"{safe_key(file_key(tp.topic, tp.partition, first))}.parquet"
        leftovers = sorted(p for p in self.sink.lake.glob(f"*/dt=*/{name}") if p.is_file())
        if not leftovers:
            return
        boundary = -1
        for path in leftovers:
            try:
                col = pq.read_table(path, columns=["origin"]).column("origin")
            except (OSError, pa.ArrowException, KeyError) as exc:
                log.warning("consume: %s leftover %s unreadable (%s); it will be replaced",
                            tp_name(tp.topic, tp.partition), path, exc)
                continue
            offs = origin_offsets(col)
            mx = pc.max(offs).as_py()
            if mx is not None:
                boundary = max(boundary, int(mx))
        buf.leftovers = leftovers
        buf.boundary = boundary if boundary >= first else None
        self.metrics.recovered_chunks += 1
        log.info("consume: %s offset %d: %d file(s) of an uncommitted earlier flush found; the replay ends its "
                 "first file at offset %s so it rewrites them", tp_name(tp.topic, tp.partition), first,
                 len(leftovers), buf.boundary)

    # --- cut and flush --------------------------------------------------------------------

    def _cut(self, tp: TP, buf: _Buffer, now: float, final: bool) -> _Chunk | None:
        """The partition's next chunk if one is due (module docstring, step 2), else None."""
        n = len(buf.offsets)
        if n == 0:
            return None
        if buf.boundary is not None:
            if buf.offsets[-1] < buf.boundary:
                return None  # the rest of the earlier flush is still on its way (or we stop: drop)
            end = next(i for i, o in enumerate(buf.offsets) if o >= buf.boundary)
            if buf.offsets[end] > buf.boundary:
                end -= 1
            end += 1
        elif n >= self.opts.flush_records:
            end = self.opts.flush_records
        elif buf.nbytes >= self.opts.flush_bytes:
            total = 0
            end = n
            for i, v in enumerate(buf.values):
                total += len(v)
                if total >= self.opts.flush_bytes:
                    end = i + 1
                    break
        elif final or now - buf.opened_at >= self.opts.flush_seconds:
            end = n
        else:
            return None
        end = max(end, 1)
        values = buf.values[:end]
        chunk = _Chunk(tp, values, buf.offsets[:end], buf.leftovers, buf.boundary is not None, sum(map(len, values)))
        del buf.values[:end]
        del buf.offsets[:end]
        buf.nbytes -= chunk.nbytes
        buf.opened_at = now
        buf.boundary = None
        buf.leftovers = []
        return chunk

    def _flush_due(self, final: bool, everything: bool = False) -> None:
        """Commit the round the writer finished, then cut the next round and hand it to the writer.

        Not final: returns at once while the writer works, unless the buffers plus the in-flight
        round exceed ``max_buffer_bytes`` (then it waits: polling stops until the round is
        written); ``everything``: the next round takes every buffer, due or not. Final (the
        drain): waits for the in-flight round and commits it, then writes and commits rounds one
        after the other until no partition has a due chunk.
        """
        rnd = self._inflight
        if rnd is not None:
            if not final and not rnd.written.is_set() and \
                    self._buffered_bytes() + rnd.nbytes <= self.opts.max_buffer_bytes:
                return
            self._finish_round()
        while True:
            chunks = self._cut_round(final or everything)
            if not chunks:
                break
            self._submit(chunks)
            if not final:
                return
            self._finish_round()
        if final:
            for tp, buf in self._buffers.items():
                if buf.offsets:
                    log.info("consume: %s: %d records from offset %d not flushed (an earlier flush ended at %s; "
                             "left for the replay)", tp_name(tp.topic, tp.partition), len(buf.offsets),
                             buf.offsets[0], buf.boundary)

    def _buffered_bytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def _cut_round(self, final: bool) -> list[_Chunk]:
        """Each partition's due chunk (at most one per partition). Memory: with the buffers above
        :data:`MEMORY_CUT_SHARE` of ``max_buffer_bytes``, the largest one is cut whatever its size."""
        now = time.monotonic()
        chunks = []
        total = self._buffered_bytes()
        largest = max(self._buffers, key=lambda t: self._buffers[t].nbytes) if self._buffers else None
        pressed = total > self.opts.max_buffer_bytes * MEMORY_CUT_SHARE
        for tp, buf in list(self._buffers.items()):
            c = self._cut(tp, buf, now, final or (pressed and tp == largest))
            if c is not None:
                chunks.append(c)
        return chunks

    def _submit(self, chunks: list[_Chunk]) -> None:
        """Hand a round to the writer thread (steps 3-5); it becomes the in-flight round.

        Chunks of partitions revoked since the last drain of the listener (kafka-python revokes on
        its IO thread, at any time) are dropped instead: once ``on_revoke`` returned, no write of
        a revoked partition may start.
        """
        assert self._writer is not None and self._inflight is None
        writer = self._writer

        def submit(kept: list[_Chunk], written: threading.Event) -> concurrent.futures.Future[list[_Written]]:
            return writer.submit(self._write_round, kept, written)

        rnd, dropped = self._listener.start(chunks, submit)
        self._inflight = rnd
        for c in dropped:
            self.metrics.dropped_uncommitted += len(c.offsets)
            self._drop_from(c.tp, c.first)
            log.info("consume: %s revoked before its write started: not written (uncommitted; whoever owns it "
                     "next re-reads it)", c.where)

    def _write_round(self, chunks: list[_Chunk], written: threading.Event) -> list[_Written]:
        """The writer thread's part of a round: steps 3-5 for each chunk. No Kafka client call."""
        try:
            return [self._write_chunk(c) for c in chunks]
        finally:
            written.set()

    def _wait_written(self, rnd: _Round) -> None:
        """Wait for the writer to return from ``rnd`` (a log line now and then if it takes long)."""
        t0 = time.monotonic()
        while not rnd.written.wait(WRITER_WAIT_LOG_S):
            log.warning("consume: still waiting for the write of %s (%.0f s)", rnd.where, time.monotonic() - t0)

    def _finish_round(self) -> None:
        """Collect the in-flight round: wait for the writer, raise its error if it failed, else
        commit (step 6) the partitions not revoked meanwhile and run the hooks (step 7).

        A revoked partition's chunk is durable but not committed: whoever owns the partition next
        rewrites it (if that is us, :meth:`_apply_rebalance_events` seeks back to its first offset).
        """
        rnd = self._inflight
        if rnd is None:
            return
        self._inflight = None
        try:
            self._wait_written(rnd)
            results = rnd.future.result()
        finally:
            revoked = self._listener.finish(rnd)
        paths: list[Path] = []
        since: datetime | None = None
        until: datetime | None = None
        offsets: dict[TP, int] = {}
        committing: list[_Chunk] = []
        for chunk, res in zip(rnd.chunks, results, strict=True):
            self.metrics.events += res.rows
            self.metrics.quarantined += res.quarantined
            self.metrics.files += len(res.paths)
            self.metrics.compacted_rows_skipped += res.compacted_rows_skipped
            if chunk.tp in revoked:
                self._drop_from(chunk.tp, chunk.first)
                log.info("consume: %s: revoked while it was written; its files are durable but not committed "
                         "(whoever owns the partition next rewrites them)", chunk.where)
                continue
            paths.extend(res.paths)
            if res.window is not None:
                since = res.window[0] if since is None else min(since, res.window[0])
                until = res.window[1] if until is None else max(until, res.window[1])
            offsets[chunk.tp] = chunk.last + 1
            committing.append(chunk)
        self._rounds_written += 1
        if self._kill_after_writes is not None and self._rounds_written >= self._kill_after_writes:
            log.warning("consume: ZTAUDIT_CONSUME_KILL_AFTER_WRITES: SIGKILL after the rename of %s, before "
                        "its commit", rnd.where)
            os.kill(os.getpid(), signal.SIGKILL)
        committed = self._commit(offsets, committing) if offsets else False
        self.metrics.flushes += 1
        if committed and since is not None and until is not None:
            for hook in self.opts.on_flush:
                try:
                    hook(since, until, paths)
                except Exception as exc:  # a hook must not stop ingestion; the data is durable
                    log.exception("consume: on_flush hook %s failed for window %s..%s: %s",
                                  getattr(hook, "__name__", hook), since.isoformat(), until.isoformat(), exc)

    def _abandon_round(self) -> None:
        """``run()`` ends on an error with a round in flight: let its renames finish before the
        client leaves the group (never after), commit nothing; the replay rewrites it."""
        rnd = self._inflight
        if rnd is None:
            return
        self._inflight = None
        self._wait_written(rnd)
        self._listener.finish(rnd)
        exc = rnd.future.exception()
        log.warning("consume: stopping on an error: %s %s, not committed (the replay rewrites it)", rnd.where,
                    f"failed too ({exc})" if exc is not None else "written")

    def _write_chunk(self, chunk: _Chunk) -> _Written:
        """Steps 3-5 for one chunk (on the writer thread): normalize, write with retries, clean."""
        from ztaudit.pipeline.process import process

        tp = chunk.tp
        key = file_key(tp.topic, tp.partition, chunk.first)
        batch = RawBatch(chunk.values, KafkaOrigins(tp.topic, tp.partition, chunk.offsets),
                         source=self.opts.topics.get(tp.topic), cluster=self.opts.cluster)
        result = process(batch, self.ctx, max_record_bytes=self.opts.max_record_bytes)
        delay = BACKOFF_START_S
        for attempt in range(1, SINK_RETRIES + 1):
            try:
                written: list[Path] = []
                rows = 0
                skipped = 0
                window: tuple[datetime, datetime] | None = None
                for table_name, table in sorted(result.tables.items()):
                    table, n = self._drop_compacted(table_name, table, tp)
                    skipped += n
                    if table.num_rows == 0:
                        continue
                    written.extend(self.sink.write(table_name, table, key))
                    rows += table.num_rows
                    w = _time_window(table, PARTITION_TIME.get(table_name))
                    if w is not None:
                        window = w if window is None else (min(window[0], w[0]), max(window[1], w[1]))
                written.extend(self.sink.write_quarantine(result.rejected, key))
                break
            except SinkError as exc:
                if attempt == SINK_RETRIES:
                    raise
                log.warning("consume: %s: lake write failed (%s); retry %d/%d in %.1f s", chunk.where, exc,
                            attempt, SINK_RETRIES, delay)
                time.sleep(delay)
                delay *= 2
        keep = {p.resolve() for p in written}
        for stale in chunk.leftovers:
            if stale.resolve() not in keep:
                stale.unlink(missing_ok=True)
                log.info("consume: %s: removed leftover %s of an earlier uncommitted flush", chunk.where, stale)
        for r in result.rejected:
            log.warning("consume: quarantined %s: %s (%s)", r.origin, r.reason, r.detail[:200])
        log.debug("consume: %s -> %d rows, %d quarantined, %d files", chunk.where, rows, len(result.rejected),
                  len(written))
        return _Written(written, window, rows, len(result.rejected), skipped)

    def _drop_compacted(self, table_name: str, table: pa.Table, tp: TP) -> tuple[pa.Table, int]:
        """Rows a replay would write again into a day that ``compact`` already merged (its
        ``_compacted.json`` lists this partition's offset ranges) are dropped; returns the rest and
        how many were dropped."""
        time_col = PARTITION_TIME.get(table_name)
        if time_col is None or table.num_rows == 0:
            return table, 0
        w = _time_window(table, time_col)
        days = _days_between(w) if w is not None else []
        ranges_by_day = {}

        for day in days:
            manifest = read_manifest(self.sink.lake / table_name / f"dt={day}")
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
        if n:
            log.info("consume: %s: %d rows already in compacted %s day(s) %s; not written again",
                     tp_name(tp.topic, tp.partition), n, table_name, ", ".join(sorted(ranges_by_day)))
            return table.filter(pc.invert(drop)), n
        return table, 0

    def _commit(self, offsets: dict[TP, int], chunks: list[_Chunk]) -> bool:
        """Commit exactly ``offsets``; retry while the broker is away; rewind if the group moved on.

        The caller passes only partitions this member still owns as far as it knows (partitions
        revoked while their chunk was written are left out, :meth:`_finish_round`). If the
        coordinator rejects the commit anyway, the chunks' partitions are rewound to the chunks'
        first offsets (their buffers, polled meanwhile, are dropped) and nothing is committed.
        """
        where = ", ".join(f"{tp_name(tp.topic, tp.partition)}@{off}" for tp, off in sorted(offsets.items()))
        delay = BACKOFF_START_S
        while True:
            try:
                self.source.commit(offsets)
                self.metrics.commits += 1
                for tp, off in offsets.items():
                    self.metrics.committed[tp_name(tp.topic, tp.partition)] = off
                log.debug("consume: committed %s", where)
                return True
            except CommitRejectedError as exc:
                # The group rebalanced: these partitions may belong to someone else now. The files
                # are durable but uncommitted; whoever owns the partition next rewrites them.
                log.warning("consume: commit %s rejected by the group coordinator (%s); the next owner "
                            "replays from the last committed offsets", where, exc)
                for c in chunks:
                    self._buffers.pop(c.tp, None)
                    self._next.pop(c.tp, None)
                    self._fresh.add(c.tp)
                    with contextlib.suppress(KafkaTransientError):
                        self.source.seek(c.tp, c.first)
                return False
            except KafkaTransientError as exc:
                self.metrics.commit_retries += 1
                self.metrics.broker_errors += 1
                log.warning("consume: commit %s failed (%s); files are durable, retrying in %.1f s", where,
                            ksrc.redact(str(exc), self.password), delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    # --- progress, idle -------------------------------------------------------------------

    def _lag(self) -> dict[str, int]:
        out = {}
        for tp, nxt in sorted(self._next.items()):
            hw = self.source.highwater(tp)
            if hw is not None:
                out[tp_name(tp.topic, tp.partition)] = max(0, int(hw) - nxt)
        return out

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        dt = now - self._last_progress
        if not force and dt < self.opts.progress_seconds:
            return
        m = self.metrics
        if dt > 0:
            m.events_per_s = round((m.events - self._events_at_progress) / dt, 1)
        self._last_progress = now
        self._events_at_progress = m.events
        if self._source is not None:
            with contextlib.suppress(Exception):
                m.lag = self._lag()
        m.buffered = sum(len(b.offsets) for b in self._buffers.values()) + (
            self._inflight.records if self._inflight is not None else 0)
        lag = " ".join(f"{k}={v}" for k, v in m.lag.items()) or "-"
        log.info("consume: %.0f ev/s, %d events, %d messages, %d quarantined, %d files, buffered %d, lag %s",
                 m.events_per_s, m.events, m.messages, m.quarantined, m.files, m.buffered, lag)
        if self.opts.metrics_file is not None:
            _write_json_atomic(self.opts.metrics_file, m.as_dict())

    def _idle_done(self) -> bool:
        """``--until-idle``: nothing polled for that long, and the broker confirms no lag (the
        buffered records are then flushed by the final drain)."""
        if self.opts.until_idle is None or self._inflight is not None:
            return False  # (a round in flight: not idle until it is committed)
        now = time.monotonic()
        if now - self._last_record_at < self.opts.until_idle:
            return False
        if self._awaiting_since is not None and (
                now - self._awaiting_since < self.opts.until_idle + 2 * self.settings.session_timeout_ms / 1000):
            # between a revocation (or a lost session, e.g. after a broker outage) and the next
            # assignment the member owns nothing, but is not idle: the group hands it partitions soon
            return False
        assigned = sorted(self.source.assignment())
        try:
            if not assigned:
                # no partitions for until_idle since the last assignment (a group with more members than
                # partitions, or a topic that does not exist yet) -- but only if the broker answers:
                # librdkafka subscribes without one, and drops the assignment when its session times out
                # during an outage; neither is "idle"
                self.source.ping()
                return True
            ends = self.source.end_offsets(assigned)
            positions = self.source.positions(assigned)
        except KafkaTransientError as exc:
            log.info("consume: idle, but cannot confirm lag (%s); waiting", exc)
            self._last_record_at = time.monotonic()
            return False
        lag = ksrc.lag_by_partition(positions, ends)
        if any(lag.values()):
            self._last_record_at = time.monotonic()
            return False
        return True


def _warm_up_writer() -> None:
    """First task of the writer thread, while the main thread subscribes: import ``process()``,
    open this thread's DuckDB connection, and convert one timestamp to Python (pyarrow imports
    pandas for that: :func:`_time_window`). Else the first round pays ~0.5-1 s for them."""
    try:
        from ztaudit.pipeline.normalize.k8s_audit import connection
        from ztaudit.pipeline.process import process  # noqa: F401

        connection()
        pa.scalar(0, pa.timestamp("us", "UTC")).as_py()
    except Exception as exc:  # the first round will raise it where it is handled
        log.debug("consume: writer warm-up failed: %s", exc)


def _time_window(table: pa.Table, col: str | None) -> tuple[datetime, datetime] | None:
    if col is None or col not in table.column_names or table.num_rows == 0:
        return None
    mm = pc.min_max(table.column(col))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None or hi is None:
        return None
    return lo, hi


def _days_between(window: tuple[datetime, datetime]) -> list[str]:
    lo, hi = window[0].astimezone(UTC).date(), window[1].astimezone(UTC).date()
    out: list[str] = []
    d = lo
    while d <= hi and len(out) < 400:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def consume(settings: KafkaSettings, options: ConsumeOptions, *, ctx: NormalizeContext | None = None,
            password: str | None = None, signals: bool = False) -> Metrics:
    """Library entry point: run a :class:`StreamConsumer` to completion (``--until-idle`` or stop)."""
    c = StreamConsumer(settings, options, ctx=ctx, password=password)
    if signals:
        c.install_signal_handlers()
    return c.run()

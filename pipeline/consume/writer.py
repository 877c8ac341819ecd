"""The writer thread (steps 3-5 of a round), the fence between it and a rebalance, and :func:`retry`.

Steps 3-5 run on one writer thread (a one-worker ``ThreadPoolExecutor``, :class:`Writer`); every
other step, and every call into the Kafka client (poll, commit, seek, assignment), stays on the
main thread (the clients are not thread-safe). For each chunk of a round, :class:`ChunkWriter`:

3. **normalize**: ``process(RawBatch(records, KafkaOrigins(topic, partition, offsets)))``.
4. **write**: each table with ``LakeSink.write(table, rows, key)`` and the rejects with
   ``write_quarantine(rejected, key)``, ``key = <topic>+<partition>+<first offset:020d>``. Each file
   is a temp file, fsynced and renamed: **the rename is the durability point**. A failing write
   is retried (:func:`retry`, :data:`SINK_RETRIES` attempts), then raised.
5. **clean**: files with the same key left by an earlier, uncommitted attempt that this chunk did
   not rewrite (another ``dt=`` day, quarantine written on another day) are deleted.

At most **one round is in flight** (:attr:`Writer.inflight`). A writer exception (e.g. ``SinkError``
after its retries) is raised on the main thread when it collects the round (:meth:`Writer.collect`),
as if the write had run there: nothing of that round is committed.

Rebalances: the next owner's recovery only works if our rename happened *before* it looked. So the
rebalance listener's ``on_revoke`` (:class:`Fence`; kafka-python 3.x calls it on its IO thread,
librdkafka inside ``poll()``) waits for an in-flight write that touches a revoked partition to
finish -- a wait on the write's event, not a consumer call -- before the client gives the
partitions up, and from then on no new write of those partitions starts (the main thread's submit
drops such chunks, under the fence's lock). Nothing is committed in the listener, and the in-flight
round's revoked partitions are not committed afterwards either: their files stay
durable-but-uncommitted, and whoever owns the partition next (maybe this process again, after a
seek back to the chunk's first offset) rewrites them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Final, TypeVar

import pyarrow as pa

from ztaudit.core.config import DEFAULT_CLUSTER_FIELDS
from ztaudit.core.errors import SinkError
from ztaudit.core.keys import file_key
from ztaudit.core.schema import PARTITION_TIME
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.consume.buffers import Chunk
from ztaudit.pipeline.consume.recovery import Window, drop_compacted, record_digest, time_window, widen
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.records import KafkaOrigins, RawBatch
from ztaudit.pipeline.sources.kafka.base import TP, tp_name

log = logging.getLogger(__name__)

T = TypeVar("T")

#: First wait of :func:`retry`; each further wait doubles, up to :data:`BACKOFF_MAX_S`.
BACKOFF_START_S: Final = 0.5
BACKOFF_MAX_S: Final = 15.0
#: Attempts of a chunk's lake write before its ``SinkError`` ends the run (exit 4).
SINK_RETRIES: Final = 5
#: Log a line while the main thread or a rebalance waits this long for the writer.
WRITER_WAIT_LOG_S: Final = 10.0


def retry(call: Callable[[], T], *, retry_on: type[BaseException],
          on_retry: Callable[[BaseException, int, float], None], tries: int | None = None,
          until: Callable[[], bool] | None = None) -> T:
    """``call()`` until it returns, waiting with exponential backoff after each ``retry_on`` error.

    The one retry loop of the consumer: connecting (forever, until stopped), lake writes
    (:data:`SINK_RETRIES` attempts) and commits (forever: the files are durable, the commit must
    follow). Before each wait ``on_retry(error, attempt, delay_s)`` is called (to log and count).
    Raises the last error when ``tries`` attempts failed, or when ``until()`` is true after a wait;
    any other exception propagates at once.
    """
    delay = BACKOFF_START_S
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except retry_on as exc:
            if tries is not None and attempt >= tries:
                raise
            on_retry(exc, attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            if until is not None and until():
                raise


@dataclass
class Written:
    """What the writer made of one chunk (the main thread adds it to the metrics)."""

    paths: list[PurePath]
    window: Window | None
    rows: int
    quarantined: int
    compacted_rows_skipped: int
    #: the conservation law's terms for the chunk (``BatchResult``): its records (Kafka messages),
    #: entries beyond one per record, entries written as rows, and ignored entries per
    #: "source/reason"; quarantined is :attr:`quarantined`
    records: int = 0
    expanded: int = 0
    written: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    #: ``k8s_audit`` rows written without a cluster name (warned about in the log)
    no_cluster: int = 0


@dataclass
class Round:
    """One flush round handed to the writer thread: at most one is in flight."""

    chunks: list[Chunk]
    future: concurrent.futures.Future[list[Written]]
    #: set by the writer once it returned from the round (every rename done, or it failed)
    written: threading.Event
    #: partitions revoked while the round was in flight (the fence adds them): not committed
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


class Fence:
    """Rebalance recorder and revocation fence; the main thread acts on the events after ``poll()``.

    Its :meth:`on_revoke` / :meth:`on_assign` are the source's rebalance callbacks: kafka-python 3.x
    calls them on its IO thread, where blocking consumer calls raise; librdkafka inside ``poll()``.
    They record the events (no flush, no commit, no consumer call) and fence revoked partitions off
    the writer: under :attr:`lock`, a revocation marks the partitions so that no write of theirs
    starts any more (:meth:`start`), and ``on_revoke`` returns the in-flight round's ``written``
    event if that round writes one of them -- the source waits for it before it gives the
    partitions up, so our renames never follow the next owner's recovery. Lost partitions are
    reported as revoked.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, list[TP]]] = []
        #: revoked since the main thread last drained the events: no new write may start for them
        self.revoked: set[TP] = set()
        #: the round the writer is working on (set and cleared by the main thread, under the lock)
        self.inflight: Round | None = None

    def on_revoke(self, revoked: list[TP]) -> threading.Event | None:
        """Record a revocation; returns the event to wait for if a revoked partition is being written."""
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
        """Record an assignment (the main thread seeks and resets state after ``poll()``)."""
        with self.lock:
            self.events.append(("assigned", list(assigned)))

    def drain(self) -> list[tuple[str, list[TP]]]:
        """The events since the last call, in order; from now on revoked partitions may be written
        again (the main thread has dropped what it held of them)."""
        with self.lock:
            out, self.events = self.events, []
            self.revoked.clear()
        return out

    def start(self, chunks: list[Chunk],
              submit: Callable[[list[Chunk], threading.Event], concurrent.futures.Future[list[Written]]],
              ) -> tuple[Round | None, list[Chunk]]:
        """Submit the chunks of partitions not revoked since the last drain as the in-flight round;
        returns it (None if nothing was left) and the chunks dropped for a revocation."""
        with self.lock:
            assert self.inflight is None, "a round is already in flight"
            kept = [c for c in chunks if c.tp not in self.revoked]
            dropped = [c for c in chunks if c.tp in self.revoked]
            if not kept:
                return None, dropped
            written = threading.Event()
            self.inflight = Round(kept, submit(kept, written), written)
            return self.inflight, dropped

    def finish(self, rnd: Round) -> set[TP]:
        """The round is no longer in flight; returns its partitions revoked meanwhile."""
        with self.lock:
            if self.inflight is rnd:
                self.inflight = None
            return set(rnd.revoked)


class ChunkWriter:
    """Steps 3-5 for one chunk; called on the writer thread, never calls the Kafka client."""

    def __init__(self, sink: LakeSink, ctx: NormalizeContext, topics: Mapping[str, str | None], *,
                 cluster: str | None = None, max_record_bytes: int,
                 topic_clusters: Mapping[str, str] | None = None,
                 cluster_fields: Sequence[str] = DEFAULT_CLUSTER_FIELDS) -> None:
        self.sink = sink
        self.ctx = ctx
        self.topics = topics
        self.cluster = cluster
        self.max_record_bytes = max_record_bytes
        #: a record's cluster: a shipper field (``cluster_fields``), its header, the topic's entry
        #: here, then ``cluster`` (docs/shippers.md)
        self.topic_clusters = dict(topic_clusters or {})
        self.cluster_fields = tuple(cluster_fields)

    def write(self, chunk: Chunk) -> Written:
        """Normalize, write every table and the quarantine with retries, delete stale leftovers.

        Bad records never raise (they are quarantined); a lake that stays unwritable raises
        :class:`SinkError` after :data:`SINK_RETRIES` attempts (nothing of the round is committed).
        """
        from ztaudit.pipeline.process import process

        tp = chunk.tp
        key = file_key(tp.topic, tp.partition, chunk.first)
        first = record_digest(chunk.values[0]) if chunk.values else None
        batch = RawBatch(chunk.values, KafkaOrigins(tp.topic, tp.partition, chunk.offsets),
                         source=self.topics.get(tp.topic), cluster=self.topic_clusters.get(tp.topic) or self.cluster)
        result = process(batch, self.ctx, max_record_bytes=self.max_record_bytes, cluster_fields=self.cluster_fields,
                         record_clusters=chunk.clusters)

        def write_all() -> Written:
            paths: list[PurePath] = []
            rows = skipped = 0
            window: Window | None = None
            for table_name, table in sorted(result.tables.items()):
                table, n = drop_compacted(self.sink, table_name, table, tp)
                skipped += n
                if table.num_rows == 0:
                    continue
                paths.extend(self.sink.write(table_name, table, key, first_record=first))
                rows += table.num_rows
                window = widen(window, time_window(table, PARTITION_TIME.get(table_name)))
            paths.extend(self.sink.write_quarantine(result.rejected, key, first_record=first))
            return Written(paths, window, rows, result.quarantined, skipped, records=result.records,
                           expanded=result.expanded, written=result.written,
                           ignored={f"{s}/{r}": n for (s, r), n in result.ignored.items()},
                           no_cluster=result.audit_rows_without_cluster)

        def failed(exc: BaseException, attempt: int, delay: float) -> None:
            log.warning("consume: %s: lake write failed (%s); retry %d/%d in %.1f s", chunk.where, exc,
                        attempt, SINK_RETRIES, delay)

        out = retry(write_all, retry_on=SinkError, tries=SINK_RETRIES, on_retry=failed)
        keep = set(out.paths)  # one sink names a file one way: both lists come from its root
        for stale in chunk.leftovers:
            if stale not in keep:
                self.sink.remove(stale)  # an Iceberg lake: deleted once the round's publish unlisted it
                log.info("consume: %s: removed leftover %s of an earlier uncommitted flush", chunk.where, stale)
        if out.no_cluster:
            log.warning("consume: %s: %d k8s_audit rows have no cluster (plain audit lines do not name their "
                        "cluster, and neither did a shipper field, a Kafka header or the config): have the "
                        "shipper add a field named in ingest.cluster_fields (e.g. cluster), send the name in the "
                        "Kafka header kafka.cluster_header (default 'cluster'), map the topic in "
                        "kafka.topic_clusters, or pass --cluster NAME (docs/shippers.md)", chunk.where, out.no_cluster)
        for r in result.rejected:
            log.warning("consume: quarantined %s: %s (%s)", r.origin, r.reason, r.detail[:200])
        log.debug("consume: %s -> %d rows, %d quarantined, %d files", chunk.where, out.rows, out.quarantined,
                  len(out.paths))
        return out


class Writer:
    """The writer thread and the main thread's handle on the round in flight.

    Main thread only (except :attr:`fence`, which the rebalance callbacks use): :meth:`start` once
    the source subscribed, :meth:`submit` a round, :meth:`collect` it (waits, raises the writer's
    error), :meth:`abandon` it when the run ends on an error, :meth:`close` at the end.
    """

    def __init__(self, chunk_writer: ChunkWriter) -> None:
        self.chunk_writer = chunk_writer
        self.fence = Fence()
        #: the round the writer works on or finished and nobody collected yet
        self.inflight: Round | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._pool is not None

    def start(self) -> None:
        """Start the writer thread; its first task (imports, DuckDB setup) overlaps the group join."""
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztaudit-writer")
        self._pool.submit(warm_up)

    def close(self) -> None:
        """Stop the writer thread once its current task returned."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def submit(self, chunks: list[Chunk]) -> list[Chunk]:
        """Hand a round to the writer thread; it becomes :attr:`inflight` (None if nothing is left).

        Returns the chunks of partitions revoked since the last :meth:`Fence.drain` (kafka-python
        revokes on its IO thread, at any time): they are not written, since once ``on_revoke``
        returned no write of a revoked partition may start.
        """
        assert self._pool is not None and self.inflight is None
        pool = self._pool

        def submit(kept: list[Chunk], written: threading.Event) -> concurrent.futures.Future[list[Written]]:
            return pool.submit(self._write_round, kept, written)

        self.inflight, dropped = self.fence.start(chunks, submit)
        return dropped

    def _write_round(self, chunks: list[Chunk], written: threading.Event) -> list[Written]:
        """The writer thread's part of a round: steps 3-5 for each chunk. No Kafka client call."""
        try:
            return [self.chunk_writer.write(c) for c in chunks]
        finally:
            written.set()

    def wait_for(self, tp: TP) -> None:
        """Wait until the in-flight round, if it writes ``tp``, has renamed its files (before ``tp``
        looks for leftovers after a rewind: they must be the final files)."""
        rnd = self.inflight
        if rnd is not None and any(c.tp == tp for c in rnd.chunks):
            rnd.written.wait()

    def collect(self) -> tuple[Round, list[Written], set[TP]] | None:
        """Take the in-flight round (None if there is none): wait for the writer, raise its error if
        it failed, else return the round, each chunk's result and the partitions revoked meanwhile."""
        rnd = self.inflight
        if rnd is None:
            return None
        self.inflight = None
        try:
            self._wait(rnd)
            results = rnd.future.result()
        finally:
            revoked = self.fence.finish(rnd)
        return rnd, results, revoked

    def abandon(self) -> None:
        """The run ends on an error with a round in flight: let its renames finish before the
        client leaves the group (never after), commit nothing; the replay rewrites it."""
        rnd = self.inflight
        if rnd is None:
            return
        self.inflight = None
        self._wait(rnd)
        self.fence.finish(rnd)
        exc = rnd.future.exception()
        log.warning("consume: stopping on an error: %s %s, not committed (the replay rewrites it)", rnd.where,
                    f"failed too ({exc})" if exc is not None else "written")

    @staticmethod
    def _wait(rnd: Round) -> None:
        """Wait for the writer to return from ``rnd`` (a log line now and then if it takes long)."""
        t0 = time.monotonic()
        while not rnd.written.wait(WRITER_WAIT_LOG_S):
            log.warning("consume: still waiting for the write of %s (%.0f s)", rnd.where, time.monotonic() - t0)


def warm_up() -> None:
    """First task of the writer thread, while the main thread joins the group: import ``process()``,
    open this thread's DuckDB connection, and convert one timestamp to Python (pyarrow imports
    pandas for that: :func:`~.recovery.time_window`). Else the first round pays ~0.5-1 s for them.
    A failure is only logged: the first round raises it where it is handled."""
    try:
        from ztaudit.pipeline.normalize.k8s_audit import connection
        from ztaudit.pipeline.process import process  # noqa: F401

        connection()
        pa.scalar(0, pa.timestamp("us", "UTC")).as_py()
    except Exception as exc:
        log.debug("consume: writer warm-up failed: %s", exc)

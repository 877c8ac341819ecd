"""The streaming consumer's main loop behind ``ztaudit consume``: Kafka -> ``process()`` -> lake -> commit.

The loop reads as a sentence, with the write on one worker thread so polling goes on::

    main:    poll -> buffer per partition -> [round N-1 written? commit it, hooks] -> cut round N -> submit
    writer:                                    normalize -> write -> quarantine -> clean (round N)

Commit ordering (the whole exactly-once argument; quix-streams ``checkpoint.py`` style)
--------------------------------------------------------------------------------------

For every flush round, and for each partition in it, strictly in this order:

1. **buffer** (:mod:`.buffers`): ``poll()`` appends each record's raw bytes and offset to its
   partition's buffer. Nothing is committed, and ``commit()`` is never called without explicit
   offsets (that would commit what ``poll()`` returned, i.e. data that is not in Parquet yet).
2. **cut** (:class:`~.buffers.CutPolicy`): a partition contributes at most one *chunk*
   ``[first, last]`` per round, data-determined where possible; wall-clock cuts are made
   idempotent by boundary recovery (:mod:`.recovery`).
3. - 5. **normalize, write, clean** on the writer thread (:mod:`.writer`); **the rename of each
   file is the durability point**.
6. - 7. **commit, hooks** on the main thread (:mod:`.commit`): ``commit({tp: last + 1})`` for the
   partitions flushed in this round and still owned (see :mod:`.writer` on rebalances), retried
   while the broker is away; then ``on_flush(since, until, paths)`` with the window just made durable.

At most **one round is in flight**: the main thread keeps polling and buffering while the writer
works, commits round N (steps 6-7) only after the writer returned from it, and cuts and submits
round N+1 only after that commit. So commits stay in round order and always follow their rename.
Memory stays bounded: the in-flight round plus the buffers stay under ``max_buffer_bytes`` (above
it the main thread stops polling and waits for the writer). Why a crash or a rebalance at any
point neither loses nor duplicates a record: :mod:`.recovery`.

The Kafka client is behind :class:`~ztaudit.pipeline.sources.kafka.base.KafkaSource` (``--backend
kafka-python|confluent``); this package never imports a client library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import FrameType
from typing import Any, Final

from ztaudit.core.catalog_uri import mask_uri
from ztaudit.core.config import DEFAULT_CLUSTER_FIELDS, Config, KafkaSettings
from ztaudit.core.errors import KafkaTransientError
from ztaudit.core.iceberg_snapshot import last_rounds, offsets_summary
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.consume.buffers import CutPolicy, PartitionBuffer, Partitions
from ztaudit.pipeline.consume.commit import Committer, FlushHook
from ztaudit.pipeline.consume.metrics_http import MetricsServer
from ztaudit.pipeline.consume.progress import IdleWatch, Metrics, Progress, broker_diagnosis, lag_of
from ztaudit.pipeline.consume.recovery import find_leftovers
from ztaudit.pipeline.consume.writer import BACKOFF_START_S, ChunkWriter, Writer, retry
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.sources.kafka.backends import open_source
from ztaudit.pipeline.sources.kafka.base import TP, KafkaSource, Records, records_clusters, redact, tp_name

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: Poll timeout while a round is in flight (a poll returns at once when records are there; on a
#: quiet topic this bounds how long a written round waits for its commit).
INFLIGHT_POLL_TIMEOUT_S: Final = 0.05


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
    #: ``--metrics-port``: the Prometheus endpoint (:mod:`.metrics_http`); 0 = none
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    progress_seconds: float = 10.0
    max_record_bytes: int = MiB
    poll_timeout_ms: int = 500
    #: All partitions' buffers plus the round being written: above this, polling waits for the
    #: writer; above :data:`~.buffers.MEMORY_CUT_SHARE` of it, the largest buffer is cut early when
    #: the writer is free (bounds RSS when many partitions fill slowly; such a cut is wall-clock-like
    #: and made idempotent the same way).
    max_buffer_bytes: int = 128 * MiB
    on_flush: list[FlushHook] = field(default_factory=list)
    #: ``kafka.topic_clusters``: a topic's default cluster, before ``cluster`` (docs/shippers.md)
    topic_clusters: Mapping[str, str] = field(default_factory=dict)
    #: ``ingest.cluster_fields``: the shipper fields that name a record's cluster
    cluster_fields: tuple[str, ...] = DEFAULT_CLUSTER_FIELDS
    #: ``lake.format``: the format a new lake is created in (an existing lake keeps its own)
    table_format: str | None = None

    def cut_policy(self) -> CutPolicy:
        """The cut thresholds and memory budget, for the consumer built from these options."""
        return CutPolicy(self.flush_records, self.flush_bytes, self.flush_seconds, self.max_buffer_bytes)


def context_from_config(cfg: Config, cluster: str | None) -> NormalizeContext:
    """The normalizer settings the consumer passes to every ``process()`` call."""
    return NormalizeContext(cluster=cluster, proxy_hosts=dict(cfg.impersonation.proxy_hosts),
                            proxy_utc_offset=cfg.correlation.proxy_utc_offset,
                            idp_utc_offset=cfg.correlation.idp_utc_offset,
                            system_user_patterns=tuple(cfg.identities.system_user_patterns),
                            session_extra_key=cfg.correlation.session_extra_key)


class StreamConsumer:
    """Consume topics into the lake (see the module docstring for the commit ordering).

    ``source_factory()`` builds the :class:`KafkaSource` (default: ``settings.backend`` through
    :func:`~ztaudit.pipeline.sources.kafka.backends.open_source`; tests may wrap it). :meth:`run`
    returns the final :class:`~.progress.Metrics`. :meth:`stop` is safe from a signal handler.

    Threads: everything runs on the thread that calls :meth:`run` (the Kafka client, the buffers,
    the metrics, commits and hooks) except steps 3-5 of a round, which run on the writer thread
    (:attr:`writer`); the two meet only in its fence (under a lock) and in the round's future.
    """

    def __init__(self, settings: KafkaSettings, options: ConsumeOptions, *,
                 ctx: NormalizeContext | None = None, password: str | None = None,
                 source_factory: Callable[[], KafkaSource] | None = None) -> None:
        self.settings = settings
        self.opts = options
        self.password = password
        self.sink = LakeSink(options.lake, table_format=options.table_format)
        self.metrics = Metrics()
        self.policy = options.cut_policy()
        self.partitions = Partitions()
        self.writer = Writer(ChunkWriter(self.sink, ctx or NormalizeContext(cluster=options.cluster), options.topics,
                                         cluster=options.cluster, max_record_bytes=options.max_record_bytes,
                                         topic_clusters=options.topic_clusters,
                                         cluster_fields=options.cluster_fields))
        self.idle = IdleWatch(options.until_idle, settings.session_timeout_ms)
        #: partitions assigned to this member whose first records decide whether to skip ahead
        self._resume_pending: set[TP] = set()
        self.progress = Progress(options.progress_seconds, options.metrics_file)
        # the first hook marks when a commit went through, before the caller's hooks (detect) run
        self.committer = Committer(self.partitions, self.metrics, [self._committed, *options.on_flush],
                                   password=password, publish=self._publish)
        self._committed_at: float | None = None
        self.metrics_server = (MetricsServer(lambda: self.metrics, options.metrics_host, options.metrics_port)
                               if options.metrics_port else None)
        self._factory = source_factory
        self._source: KafkaSource | None = None
        self._stopping = False

    @property
    def source(self) -> KafkaSource:
        assert self._source is not None, "not connected"
        return self._source

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
        """poll -> buffer -> cut -> write -> commit -> hooks, until stopped or idle; then drain: wait
        for the writer, commit, flush the rest. An error (writer, Kafka refusal) propagates after
        the in-flight round's renames finished; nothing after the last commit is committed."""
        if self.metrics_server is not None:
            self.metrics_server.start()  # before connecting: a consumer waiting for its broker is seen
        try:
            self.metrics.state = "connecting"
            self._connect()
        except BaseException:
            if self.metrics_server is not None:
                self.metrics_server.stop()
            raise
        self.metrics.state = "running"
        self.writer.start()  # imports and DuckDB setup overlap the group join
        try:
            while not self._stopping:
                records = self._poll()
                rewound = self._apply_rebalance() | self._resume_from_lake(records)
                self._buffer({tp: r for tp, r in records.items() if tp not in rewound})
                # --until-idle and nothing new for a whole poll: caught up, write what is buffered now
                # rather than after the idle wait (a wall-clock cut, made idempotent like the others)
                self._write_due(final=False, take_all=not records and self.opts.until_idle is not None)
                self._progress()
                if self.idle.done(self.source, in_flight=self.writer.inflight is not None):
                    log.info("consume: idle for %.0f s with no lag: draining and exiting", self.opts.until_idle)
                    break
            self.metrics.state = "draining"
            self._apply_rebalance()
            self._write_due(final=True)
        finally:
            self.writer.abandon()
            self.metrics.state = "stopped"
            self._progress(force=True)
            self._close()
            self.writer.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
        return self.metrics

    def _connect(self) -> None:
        """Build the source and subscribe (the source fails fast on bad credentials).

        An unreachable broker is retried with backoff until :meth:`stop` (then ``SystemExit(0)``),
        a log line each time; a broker that answers but refuses us raises ``KafkaConnectError``
        (exit code 5).
        """
        def attempt() -> KafkaSource:
            source = self._factory() if self._factory else open_source(
                self.settings, group=self.opts.group, start_from=self.opts.start_from, password=self.password)
            try:
                source.subscribe(sorted(self.opts.topics), self.writer.fence.on_revoke, self.writer.fence.on_assign)
            except KafkaTransientError:
                with contextlib.suppress(Exception):
                    source.close()
                raise
            return source

        def failed(exc: BaseException, _attempt: int, delay: float) -> None:
            self.metrics.broker_errors += 1
            self.metrics.broker_problem = broker_diagnosis(self.settings.bootstrap_servers)
            log.warning("consume: Kafka at %s unreachable (%s; %s); retrying in %.1f s",
                        self.settings.bootstrap_servers, redact(str(exc), self.password),
                        self.metrics.broker_problem, delay)

        if self._stopping:
            raise SystemExit(0)
        try:
            self._source = retry(attempt, retry_on=KafkaTransientError, on_retry=failed, until=lambda: self._stopping)
        except KafkaTransientError:
            if not self._stopping:
                raise
            raise SystemExit(0) from None  # stopped while the broker was unreachable
        self.metrics.broker_problem = ""
        log.info("consume: subscribed to %s as group %s at %s (%s)", ", ".join(sorted(self.opts.topics)),
                 self.opts.group, self.settings.bootstrap_servers, self.source.backend)

    def _close(self) -> None:
        """Leave the group without committing (at the end of :meth:`run`); close errors are ignored."""
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
            self._source = None

    def _poll(self) -> dict[TP, Records]:
        """Step 1's poll. A failed poll is logged and counted; the loop's next turn polls again."""
        timeout = self.opts.poll_timeout_ms / 1000
        if self.writer.inflight is not None:  # look again soon: the round is committed once it is written
            timeout = min(timeout, INFLIGHT_POLL_TIMEOUT_S)
        try:
            return self.source.poll(timeout)
        except KafkaTransientError as exc:
            self.metrics.broker_errors += 1
            log.warning("consume: poll failed (%s); retrying", redact(str(exc), self.password))
            time.sleep(BACKOFF_START_S)
            return {}
        finally:
            self.metrics.broker_errors += self.source.take_errors()

    def _apply_rebalance(self) -> set[TP]:
        """Act on what the fence recorded (during ``poll()``, or on kafka-python's IO thread);
        returns the partitions rewound.

        A round still in flight is first collected and committed (without its revoked partitions),
        so that its uncommitted chunks are known before the events are applied. Revoked: drop the
        unflushed buffer (nothing is committed for it). If the same rebalance gives the partition
        back (kafka-python keeps the *position* of a partition it still owns), seek back to the
        first dropped offset (an uncommitted chunk's first offset if there is one) -- else those
        records would be skipped, or a second chunk would become durable-but-uncommitted.
        (librdkafka restarts a re-assigned partition at its committed offset, which is that same
        offset.) A partition new to this member may then skip ahead (:meth:`_resume_from_lake`).
        """
        rewound: set[TP] = set()
        events = self.writer.fence.drain()
        if events and self.writer.inflight is not None:
            self._commit_round()
        for kind, tps in events:
            if kind == "revoked":
                self.metrics.dropped_uncommitted += self.partitions.revoke(tps)
                self._resume_pending -= set(tps)
                self.idle.revoked()
                continue
            self.idle.assigned()
            self.metrics.rebalances += 1
            again = self.partitions.assign(tps)
            if self.sink.iceberg:
                self._resume_pending |= set(tps) - set(again)
            for tp, first in again.items():
                try:
                    self.source.seek(tp, first)
                    rewound.add(tp)
                    log.info("consume: %s assigned again: rewound to offset %d (its dropped buffer)",
                             tp_name(tp.topic, tp.partition), first)
                except KafkaTransientError as exc:
                    log.warning("consume: %s: cannot rewind to offset %d: %s", tp_name(tp.topic, tp.partition),
                                first, exc)
            log.info("consume: assigned %s", ", ".join(tp_name(t.topic, t.partition) for t in sorted(tps)) or "-")
        return rewound

    def _resume_from_lake(self, polled: Mapping[TP, Records]) -> set[TP]:
        """Move partitions new to this member forward to where an Iceberg lake holds them up to, when
        their first records arrive; returns the partitions moved (their records in ``polled`` come
        from before the move: dropped, and read again from the new offset only if not in the lake).

        A round's files are registered in Iceberg, with its offsets, before the offsets are committed
        to Kafka (:mod:`.commit`); a crash between the two leaves the lake ahead of the group. The
        replay that follows would be harmless (same keys, same files), but it re-reads and re-writes a
        round: skip it. Decided on the first records, not at assignment: they show where reading began
        (the group's offset, or ``auto.offset.reset``), and librdkafka ignores a seek made before a new
        partition's first fetch. Only when reading begins inside the lake's last round of the partition
        (so a re-created topic or a group moved back is read, not skipped), and never past the
        partition's end. A catalog that cannot be read now is a warning, not an error. The offset skipped
        to is committed at once: the lake holds everything before it, and without a consumed record
        librdkafka reports the committed offset as the position (the idle check would wait forever).
        A plain lake changes nothing.
        """
        moved: set[TP] = set()
        first = {tp: polled[tp][0][0] for tp in self._resume_pending if tp in polled and polled[tp][0]}
        if not first:
            return moved
        self._resume_pending -= set(first)
        try:
            rounds = last_rounds(self.sink.lake)
        except Exception as exc:  # optional: the replay it would save is harmless
            log.warning("consume: cannot read the lake's last rounds (%s): reading from the group's offsets",
                        mask_uri(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            return moved
        # only a round that began at or before where reading begins, and ended after it: the lake holds
        # what this member is about to re-read (module docstring of core.iceberg_snapshot.last_rounds)
        want = {tp: r.end for tp in first if (r := rounds.get((tp.topic, tp.partition))) is not None
                and r.start is not None and r.start <= first[tp] < r.end}
        if not want:
            return moved
        try:
            end = self.source.end_offsets(sorted(want))
        except KafkaTransientError as exc:
            log.warning("consume: cannot compare the lake's offsets with the partitions' ends now (%s): reading "
                        "from the group's offsets", exc)
            return moved
        for tp, off in sorted(want.items()):
            name = tp_name(tp.topic, tp.partition)
            if off > end.get(tp, -1):
                log.warning("consume: %s: the lake records offset %d, past the partition's end %s (topic created "
                            "again?): reading from offset %d", name, off, end.get(tp, "?"), first[tp])
                continue
            try:
                self.source.seek(tp, off)
            except KafkaTransientError as exc:
                log.warning("consume: %s: cannot skip to the lake's offset %d: %s", name, off, exc)
                continue
            moved.add(tp)
            self.metrics.resumed_from_lake += 1
            try:  # the lake holds everything before it: the group may say so too (lag, the next member)
                self.source.commit({tp: off})
                self.metrics.committed[name] = off
            except KafkaTransientError as exc:  # also a rejected commit: the next round commits past it
                log.warning("consume: %s: skipped to offset %d but could not commit it yet: %s", name, off, exc)
            log.info("consume: %s skips to offset %d: the lake's Iceberg snapshot holds everything before it "
                     "(reading began at %d)", name, off, first[tp])
        return moved

    def _buffer(self, records: Mapping[TP, Records]) -> None:
        """Step 1: append each owned partition's records to its buffer; the first record of a
        fresh partition first looks for leftovers of an earlier flush (:mod:`.recovery`)."""
        if not records:
            return
        now = time.monotonic()
        self.idle.saw_records()
        assigned = self.source.assignment()
        for tp, polled in records.items():
            offs, vals = polled[0], polled[1]
            if not offs or tp not in assigned:
                continue
            buf, fresh = self.partitions.buffer_for(tp, offs[0], now)
            if fresh:
                self.writer.wait_for(tp)  # a rewind while its chunk is written: see its files renamed first
                self._recover(tp, offs[0], buf, vals[0])
            n = self.partitions.append(tp, buf, offs, vals, records_clusters(polled))
            self.metrics.messages += len(offs)
            self.metrics.message_bytes += n

    def _recover(self, tp: TP, first: int, buf: PartitionBuffer, value: bytes) -> None:
        """Make ``buf``'s first chunk end where the leftover files at ``first`` end, if there are any
        (``value``: the record at ``first``; :class:`~.recovery.OffsetsMovedBack` if they are not its)."""
        found = find_leftovers(self.sink, tp, first, value)
        if found is not None:
            buf.leftovers, buf.boundary = found.paths, found.boundary
            self.metrics.recovered_chunks += 1

    def _write_due(self, *, final: bool, take_all: bool = False) -> None:
        """Commit the round the writer finished, then cut the next round and hand it to the writer.

        Not final: returns at once while the writer works, unless the buffers plus the in-flight
        round exceed ``max_buffer_bytes`` (then it waits: polling stops until the round is
        written); ``take_all``: the next round takes every buffer, due or not. Final (the drain):
        waits for the in-flight round and commits it, then writes and commits rounds one after
        the other until no partition has a due chunk.
        """
        rnd = self.writer.inflight
        if rnd is not None:
            if not final and not rnd.written.is_set() and not self.policy.must_wait(self.partitions.nbytes,
                                                                                    rnd.nbytes):
                return
            self._commit_round()
        while chunks := self.partitions.cut_round(self.policy, time.monotonic(), take_all=final or take_all):
            submitted = time.monotonic()
            for c in self.writer.submit(chunks):
                self.metrics.dropped_uncommitted += len(c.offsets)
                self.partitions.drop_from(c.tp, c.first)
                log.info("consume: %s revoked before its write started: not written (uncommitted; whoever owns "
                         "it next re-reads it)", c.where)
            if (rnd := self.writer.inflight) is not None:  # flush latency, measured on the writer thread
                rnd.future.add_done_callback(self._flush_timer(submitted))
            if not final:
                return
            self._commit_round()
        if final:
            self.partitions.log_unflushed()

    def _publish(self, spans: Mapping[TP, tuple[int, int]]) -> None:
        """Register the round's files in the Iceberg tables before its offsets are committed (a
        no-op on a plain lake), with each partition's span ``(first offset, next offset)``; the
        writer thread is idle then (its round was collected)."""
        self.sink.publish(offsets_summary({(tp.topic, tp.partition): nxt for tp, (_, nxt) in spans.items()},
                                          {(tp.topic, tp.partition): first for tp, (first, _) in spans.items()}))

    def _commit_round(self) -> None:
        """Collect the in-flight round -- wait for the writer; its error is raised here and nothing
        of the round is committed -- then commit it and run the hooks (:mod:`.commit`)."""
        collected = self.writer.collect()
        if collected is not None:
            started, commits, self._committed_at = time.monotonic(), self.metrics.commits, None
            self.committer.commit_round(self.source, *collected)
            if self.metrics.commits > commits:  # hooks ran after _committed marked the commit; none ran without
                self.metrics.observe_commit((self._committed_at or time.monotonic()) - started)

    def _flush_timer(self, submitted: float) -> Callable[[Any], None]:
        """A done-callback for a round's future: observes submit-to-done as the flush latency."""
        return lambda _future: self.metrics.observe_flush(time.monotonic() - submitted)

    def _committed(self, since: Any, until: Any, paths: list[PurePath]) -> None:
        """The first on_flush hook: the commit before it just went through (for its latency)."""
        self._committed_at = time.monotonic()

    def _progress(self, force: bool = False) -> None:
        """After each loop turn (a line when due) and once at the end (forced, with the final state)."""
        lag = (lambda: lag_of(self.source, self.partitions.next_offset)) if self._source is not None else None
        inflight = self.writer.inflight
        self.progress.tick(self.metrics, lag=lag, force=force, buffered=lambda: self.partitions.records + (
            inflight.records if inflight is not None else 0))


def consume(settings: KafkaSettings, options: ConsumeOptions, *, ctx: NormalizeContext | None = None,
            password: str | None = None, signals: bool = False) -> Metrics:
    """Library entry point: run a :class:`StreamConsumer` to completion (``--until-idle`` or stop).

    ``signals``: SIGTERM/SIGINT drain and return (the CLI); returns the final metrics. Raises what
    :meth:`StreamConsumer.run` raises (``SinkError`` exit 4, ``KafkaConnectError`` exit 5).
    """
    c = StreamConsumer(settings, options, ctx=ctx, password=password)
    if signals:
        c.install_signal_handlers()
    return c.run()

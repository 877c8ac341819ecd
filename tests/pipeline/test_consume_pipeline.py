"""The pipelined consume loop (write on a worker thread while polling goes on), against an
in-memory :class:`KafkaSource`: commit order, the revocation fence, writer errors, memory bound.

No broker: :class:`FakeSource` serves pre-generated audit events per partition, keeps committed
offsets in a shared :class:`FakeBroker`, and checks every commit against the lake (the committed
chunk's file must already be renamed into place). Writes are held back (:func:`slow_writes`) until
the main loop has polled while they were in flight, so that polls, commits and rebalances happen
while a round is in flight -- gated on what the loop did (:class:`LoopWatch`), not on sleeps.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support.kafka_broker import audit_events

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import SinkError
from ztaudit.core.keys import origin_offsets
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.consume import writer as writer_mod
from ztaudit.pipeline.consume.buffers import Chunk
from ztaudit.pipeline.consume.loop import ConsumeOptions, StreamConsumer
from ztaudit.pipeline.consume.writer import ChunkWriter, Fence, Writer, Written
from ztaudit.pipeline.sources.kafka.base import TP, Records, wait_before_revoking

TOPIC = "audit"
#: Longest a held write or a test waits for the loop to do what it is waiting for.
DEADLINE_S = 10.0


class LoopWatch:
    """What the main loop did, for held writes and tests to wait on (a condition, not a sleep):
    polls (counted by :meth:`FakeSource.poll`) and waits for the writer (the main thread in
    ``Writer.collect``/``Writer.wait_for``, or a revocation waiting for a rename)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.polls = 0
        self.empty_polls = 0  # polls without records since the last one with records
        self.last_records_at = time.monotonic()
        self.waiting_for_writer = 0

    def polled(self, got_records: bool) -> None:
        with self.cond:
            self.polls += 1
            if got_records:
                self.empty_polls = 0
                self.last_records_at = time.monotonic()
            else:
                self.empty_polls += 1
            self.cond.notify_all()

    def waiting(self, delta: int) -> None:
        with self.cond:
            self.waiting_for_writer += delta
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
        """True once ``predicate()`` holds (re-checked at each poll or wait), False at the deadline."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> LoopWatch:
    """A :class:`LoopWatch` that also sees the main thread wait for the writer."""
    w = LoopWatch()
    for name in ("collect", "wait_for"):
        orig = getattr(Writer, name)

        def waiting(self: Writer, *args: Any, _orig: Any = orig) -> Any:
            w.waiting(+1)
            try:
                return _orig(self, *args)
            finally:
                w.waiting(-1)

        monkeypatch.setattr(Writer, name, waiting)
    return w


class FakeBroker:
    """Partition logs and the group's committed offsets, shared by the members of a test."""

    def __init__(self, partitions: int, per_partition: int) -> None:
        self.logs = {TP(TOPIC, p): audit_events(per_partition, run=f"p{p}") for p in range(partitions)}
        self.committed: dict[TP, int] = {}
        self.lock = threading.Lock()


def _max_offset(paths: Sequence[Path]) -> int:
    """The highest Kafka offset in these lake files."""
    offsets = [o for p in paths for o in origin_offsets(pq.read_table(p, columns=["origin"]).column("origin"))
               .to_pylist() if o is not None]
    return max(offsets)


class FakeSource:
    """A :class:`KafkaSource` over a :class:`FakeBroker`.

    ``restart_at_commit``: a (re)assigned partition starts at its committed offset (librdkafka);
    else a partition kept across a rebalance keeps its position (kafka-python). ``before_poll``
    runs at the start of every poll (tests trigger rebalances there). ``watch`` is told of every
    poll and of every revocation that waits for a write.
    """

    backend = "fake"

    def __init__(self, broker: FakeBroker, lake: Path, partitions: Sequence[TP], *, batch: int = 400,
                 restart_at_commit: bool = True, watch: LoopWatch | None = None,
                 before_poll: Callable[[FakeSource], None] | None = None) -> None:
        self.broker = broker
        self.watch = watch
        self.lake = lake
        self.batch = batch
        self.restart_at_commit = restart_at_commit
        self.before_poll = before_poll
        self.to_assign: list[TP] | None = list(partitions)
        self.assigned: set[TP] = set()
        self.revoking: set[TP] = set()  # no longer fetched (kafka-python: pending revocation)
        self.pos: dict[TP, int] = {}
        self.commits: list[dict[TP, int]] = []
        self.polls = 0
        self.on_revoke: Callable[[list[TP]], threading.Event | None] | None = None
        self.on_assign: Callable[[list[TP]], None] | None = None

    # --- KafkaSource -------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], on_revoke: Any, on_assign: Any) -> None:
        assert list(topics) == [TOPIC]
        self.on_revoke, self.on_assign = on_revoke, on_assign

    def poll(self, timeout_s: float) -> dict[TP, Records]:
        self.polls += 1
        if self.before_poll is not None:
            self.before_poll(self)
        if self.to_assign is not None:
            self.assign(self.to_assign)
        out: dict[TP, Records] = {}
        for tp in sorted(self.assigned - self.revoking):
            pos = self.pos[tp]
            vals = self.broker.logs[tp][pos:pos + self.batch]
            if vals:
                out[tp] = (list(range(pos, pos + len(vals))), list(vals))
                self.pos[tp] = pos + len(vals)
        if not out:  # a real poll blocks up to its timeout when there is nothing to fetch
            time.sleep(min(timeout_s, 0.01))
        if self.watch is not None:
            self.watch.polled(bool(out))
        return out

    def take_errors(self) -> int:
        return 0

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        with self.broker.lock:
            for tp, off in offsets.items():
                # honest: only partitions this member owns, never one it has given up
                assert tp in self.assigned and tp not in self.revoking, f"commit of {tp} it does not own"
                prev = self.broker.committed.get(tp, 0)
                assert off > prev, f"{tp}: commit {off} does not move forward from {prev}"
                # the rename came first: the committed chunk's files are in place, ending at off - 1
                files = sorted(self.lake.glob(f"*/dt=*/{TOPIC}+{tp.partition}+{prev:020d}.parquet"))
                assert files, f"{tp}: commit {off} before the chunk from {prev} was renamed into place"
                assert _max_offset(files) == off - 1, f"{tp}: commit {off} but the files end elsewhere"
            self.broker.committed.update(offsets)
            self.commits.append(dict(offsets))

    def seek(self, tp: TP, offset: int) -> None:
        self.pos[tp] = offset

    def highwater(self, tp: TP) -> int | None:
        return len(self.broker.logs[tp])

    def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        return {tp: len(self.broker.logs[tp]) for tp in tps}

    def positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        return {tp: self.pos[tp] for tp in tps}

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    # --- what a rebalance does ------------------------------------------------------------

    def assign(self, tps: Sequence[TP]) -> None:
        self.to_assign = None
        for tp in tps:
            if self.restart_at_commit or tp not in self.pos:
                self.pos[tp] = self.broker.committed.get(tp, 0)
        self.assigned = set(tps)
        self.revoking = set()
        assert self.on_assign is not None
        self.on_assign(list(tps))

    def revoke(self, tps: Sequence[TP], recorded: threading.Event | None = None) -> None:
        """Like the client libraries: stop fetching them, call the listener, wait for what it
        returns, then give them up. ``recorded`` is set once the listener returned."""
        assert self.on_revoke is not None
        self.revoking |= set(tps)
        done = self.on_revoke(list(tps))
        if recorded is not None:
            recorded.set()
        if self.watch is not None:
            self.watch.waiting(+1)
        try:
            wait_before_revoking(done, list(tps))
        finally:
            if self.watch is not None:
                self.watch.waiting(-1)
        self.assigned -= set(tps)


def _files(lake: Path, partitions: Sequence[int]) -> dict[str, tuple[int, int]]:
    """The lake files of these partitions: name -> (size, mtime_ns)."""
    out = {}
    for p in partitions:
        for f in lake.glob(f"*/dt=*/{TOPIC}+{p}+*.parquet"):
            st = f.stat()
            out[str(f.relative_to(lake))] = (st.st_size, st.st_mtime_ns)
    return out


def _offsets_in_lake(lake: Path) -> Counter[tuple[int, int]]:
    """(partition, offset) -> how many rows the lake holds for it."""
    counts: Counter[tuple[int, int]] = Counter()
    for f in lake.glob("k8s_audit/dt=*/*.parquet"):
        origins = pq.read_table(f, columns=["origin"]).column("origin").to_pylist()
        for o in origins:
            _, part, off = o.rsplit("/", 2)
            counts[(int(part), int(off))] += 1
    return counts


def _consumer(source: FakeSource, lake: Path, **kw: Any) -> StreamConsumer:
    opts = ConsumeOptions(topics={TOPIC: "k8s_audit"}, lake=lake, group="g", **{
        "flush_records": 300, "flush_seconds": 3600.0, "until_idle": 0.3, "poll_timeout_ms": 20, **kw})
    return StreamConsumer(KafkaSettings(session_timeout_ms=1000), opts, source_factory=lambda: source)


@dataclass
class HeldWrites:
    """The log of held writes: ("start"/"renamed", partition, time), and how many were released
    only by the deadline (a test whose loop never polled or waited while they were held)."""

    log: list[tuple[str, TP, float]] = field(default_factory=list)
    released_by_deadline: int = 0


def _hold_writes(monkeypatch: pytest.MonkeyPatch, release: Callable[[int], Callable[[], bool]],
                 watch: LoopWatch) -> HeldWrites:
    """Hold every chunk write *before* it writes (so its rename is late) until ``release(polls at
    its start)()`` holds, re-checked whenever the loop polls or waits."""
    held = HeldWrites()
    orig = ChunkWriter.write

    def write(self: ChunkWriter, chunk: Chunk) -> Written:
        held.log.append(("start", chunk.tp, time.monotonic()))
        with watch.cond:
            polls_at_start = watch.polls
        if not watch.wait_for(release(polls_at_start)):
            held.released_by_deadline += 1
        out = orig(self, chunk)
        held.log.append(("renamed", chunk.tp, time.monotonic()))
        return out

    monkeypatch.setattr(ChunkWriter, "write", write)
    return held


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch, watch: LoopWatch) -> Iterator[HeldWrites]:
    """Each chunk write is held until the main loop polled once more since it started, or waits
    for the writer itself (then holding on would only stall the test)."""
    held = _hold_writes(monkeypatch, lambda start: lambda: watch.polls > start or watch.waiting_for_writer > 0,
                        watch)
    yield held
    assert held.released_by_deadline == 0, "a held write was released by the deadline, not by the loop"


def test_polls_while_writing_commits_in_order_after_each_rename(tmp_path: Path, watch: LoopWatch,
                                                               slow_writes: HeldWrites) -> None:
    broker = FakeBroker(partitions=3, per_partition=1500)
    lake = tmp_path / "lake"
    source = FakeSource(broker, lake, list(broker.logs), batch=100, watch=watch)
    writing = []
    orig_poll = source.poll

    def poll(timeout_s: float) -> dict[TP, Records]:
        rnd = consumer.writer.inflight
        writing.append(rnd is not None and not rnd.written.is_set())
        return orig_poll(timeout_s)

    source.poll = poll  # type: ignore[method-assign]
    consumer = _consumer(source, lake)
    m = consumer.run()

    assert m.events == 4500 and m.state == "stopped"
    # (FakeSource.commit checked each commit against the renamed files)
    assert broker.committed == {tp: 1500 for tp in broker.logs}
    assert sum(writing) >= 10, "the loop did not poll while the writer worked"
    per_tp: dict[TP, list[int]] = {}
    for c in source.commits:
        for tp, off in c.items():
            per_tp.setdefault(tp, []).append(off)
    assert all(offs == sorted(offs) and offs[0] == 300 for offs in per_tp.values())
    assert set(_offsets_in_lake(lake).values()) == {1} and len(_offsets_in_lake(lake)) == 4500
    # at most one round in flight: write starts and renames alternate
    starts_open = 0
    for k, _, _ in slow_writes.log:
        starts_open += 1 if k == "start" else -1
        assert 0 <= starts_open <= 3  # one round = at most one chunk per partition
    assert m.flushes == m.commits


def test_commit_waits_for_the_writer_even_when_it_is_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          watch: LoopWatch) -> None:
    """A write slower than --until-idle: the loop is not idle while it is in flight, and its
    commit comes after its rename. The write is held until the loop has gone without records for
    three times --until-idle (and polled again since), so the loop had every chance to exit."""
    until_idle = 0.1
    held = _hold_writes(monkeypatch, lambda _start: lambda: watch.empty_polls >= 3 and (
        time.monotonic() - watch.last_records_at > 3 * until_idle), watch)
    broker = FakeBroker(partitions=1, per_partition=300)
    lake = tmp_path / "lake"
    source = FakeSource(broker, lake, list(broker.logs), watch=watch)
    committed_at: list[float] = []
    orig_commit = source.commit

    def commit(offsets: Mapping[TP, int]) -> None:
        orig_commit(offsets)
        committed_at.append(time.monotonic())

    source.commit = commit  # type: ignore[method-assign]
    m = _consumer(source, lake, until_idle=until_idle).run()
    assert held.released_by_deadline == 0
    assert m.events == 300 and broker.committed == {TP(TOPIC, 0): 300}
    renamed = [t for k, _, t in held.log if k == "renamed"]
    assert len(renamed) == len(committed_at) == 1 and committed_at[0] > renamed[0]


@pytest.mark.parametrize("where", ["inside-poll", "io-thread"])
def test_revocation_waits_for_the_inflight_write_and_never_commits_it(tmp_path: Path, where: str, watch: LoopWatch,
                                                                      slow_writes: HeldWrites) -> None:
    """A rebalance revokes every partition while a chunk of p2 is being written and gives p0, p1
    back. The revocation returns only after that write is renamed (so the next owner of p2/p3,
    which looks for leftover files right then, sees the final files); no write or commit of p2/p3
    happens after it; the next owner rewrites the uncommitted chunk: every record exactly once.

    ``inside-poll``: librdkafka calls the listener inside ``poll()`` and restarts re-assigned
    partitions at their committed offsets. ``io-thread``: kafka-python 3.x calls it on its IO
    thread while the main loop goes on, and keeps the position of partitions it gets back.
    """
    broker = FakeBroker(partitions=4, per_partition=1200)
    lake = tmp_path / "lake"
    p = [TP(TOPIC, i) for i in range(4)]
    state: dict[str, Any] = {}

    def rebalance(src: FakeSource, recorded: threading.Event | None = None) -> None:
        src.revoke(p, recorded)
        state["given_up_at"] = time.monotonic()
        # what the next owner of p2/p3 sees when it looks for leftovers of the committed offset
        state["seen"] = _files(lake, [2, 3])
        src.to_assign = p[:2]  # (the next poll assigns p0, p1 again)

    def before_poll(src: FakeSource) -> None:
        rnd = consumer.writer.inflight
        if "started" in state or rnd is None or rnd.written.is_set() or TP(TOPIC, 2) not in {
                c.tp for c in rnd.chunks} or not broker.committed:
            return
        state["started"] = True
        if where == "inside-poll":
            rebalance(src)
        else:
            recorded = threading.Event()
            t = threading.Thread(target=rebalance, args=(src, recorded))
            t.start()
            state["thread"] = t
            # the listener has recorded the revocation and waits for the rename on "its IO
            # thread" while the main loop goes on
            assert recorded.wait(DEADLINE_S)

    source = FakeSource(broker, lake, p, batch=150, restart_at_commit=where == "inside-poll", watch=watch,
                        before_poll=before_poll)
    consumer = _consumer(source, lake)
    m = consumer.run()
    if "thread" in state:
        state["thread"].join(DEADLINE_S)
        assert not state["thread"].is_alive()
    assert "given_up_at" in state, "the test did not catch a write of p2 in flight"
    # nothing of p2/p3 was renamed after the partitions were given up
    late = [(k, tp, t) for k, tp, t in slow_writes.log if tp.partition >= 2 and t > state["given_up_at"]]
    assert not late, late
    assert _files(lake, [2, 3]) == state["seen"]
    # the in-flight chunk of p2 was not committed; p0, p1 were consumed to their ends
    assert broker.committed[TP(TOPIC, 0)] == broker.committed[TP(TOPIC, 1)] == 1200
    assert broker.committed.get(TP(TOPIC, 2), 0) < 1200
    assert m.rebalances == 2 and m.events > 0

    # the next owner of p2/p3 starts at the committed offsets and rewrites the leftovers
    nxt = FakeSource(broker, lake, p[2:], batch=150, watch=watch)
    m2 = _consumer(nxt, lake).run()
    assert m2.recovered_chunks >= 1
    assert broker.committed == {tp: 1200 for tp in p}
    counts = _offsets_in_lake(lake)
    assert len(counts) == 4800 and set(counts.values()) == {1}


def test_fence_without_a_consumer() -> None:
    """The fence itself: ``on_revoke`` (from another thread, like kafka-python's IO thread)
    hands back the in-flight write's event; waiting on it returns only after the rename; a chunk
    of a revoked partition cut afterwards is not started; the round reports what was revoked."""
    fence = Fence()
    release = threading.Event()  # the test lets the write finish
    renamed = threading.Event()
    tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def chunk(tp: TP, first: int) -> Chunk:
        return Chunk(tp, [b"{}"], [first], [], False, 2)

    def submit(kept: list[Chunk], written: threading.Event) -> Any:
        def work() -> list[Written]:
            assert release.wait(DEADLINE_S)
            renamed.set()
            written.set()
            return []

        return pool.submit(work)

    try:
        rnd, dropped = fence.start([chunk(tp0, 0), chunk(tp1, 0)], submit)
        assert rnd is not None and not dropped
        got: dict[str, Any] = {}
        handed_back = threading.Event()

        def io_thread() -> None:
            ev = fence.on_revoke([tp1])
            got["event"] = ev
            handed_back.set()
            wait_before_revoking(ev, [tp1])
            got["renamed_when_given_up"] = renamed.is_set()

        t = threading.Thread(target=io_thread)
        t.start()
        assert handed_back.wait(DEADLINE_S)
        assert t.is_alive(), "the revocation returned while its partition's write was still in flight"
        release.set()
        t.join(DEADLINE_S)
        assert not t.is_alive()
        assert got["event"] is rnd.written
        assert got["renamed_when_given_up"] is True  # fails if on_revoke does not hand back the write
        assert fence.finish(rnd) == {tp1}
        # until the main loop drained the events, no write of tp1 may start
        rnd2, dropped2 = fence.start([chunk(tp0, 1), chunk(tp1, 1)], submit)
        assert rnd2 is not None and [c.tp for c in rnd2.chunks] == [tp0] and [c.tp for c in dropped2] == [tp1]
        rnd2.future.result(DEADLINE_S)
        assert fence.finish(rnd2) == set()
        assert fence.drain() == [("revoked", [tp1])]
        # a revocation with nothing of it in flight returns nothing to wait for
        assert fence.on_revoke([tp0]) is None
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_writer_error_surfaces_on_the_main_thread_and_nothing_is_committed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    broker = FakeBroker(partitions=2, per_partition=600)
    lake = tmp_path / "lake"
    monkeypatch.setattr(writer_mod, "BACKOFF_START_S", 0.01)
    calls = []

    def broken(self: LakeSink, table_name: str, table: Any, key: str, **_: Any) -> list[Path]:
        calls.append(threading.current_thread().name)
        raise SinkError(f"disk full writing {key}")

    monkeypatch.setattr(LakeSink, "write", broken)
    source = FakeSource(broker, lake, list(broker.logs))
    consumer = _consumer(source, lake)
    with pytest.raises(SinkError, match="disk full"):
        consumer.run()
    assert calls and all(n.startswith("ztaudit-writer") for n in calls)
    assert len(calls) == writer_mod.SINK_RETRIES  # retried on the writer, then raised on the main thread
    assert source.commits == [] and broker.committed == {}
    assert not consumer.writer.running and consumer.metrics.state == "stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("ztaudit-writer")]


def test_memory_stays_bounded_while_the_writer_is_slow(tmp_path: Path, watch: LoopWatch,
                                                       slow_writes: HeldWrites) -> None:
    """Buffers plus the in-flight round stay under max_buffer_bytes (plus one poll's worth)."""
    broker = FakeBroker(partitions=4, per_partition=1500)
    lake = tmp_path / "lake"
    source = FakeSource(broker, lake, list(broker.logs), batch=50, watch=watch)
    cap = 600_000
    seen = []
    orig_poll = source.poll

    def poll(timeout_s: float) -> dict[TP, Records]:
        rnd = consumer.writer.inflight
        seen.append(consumer.partitions.nbytes + (rnd.nbytes if rnd is not None else 0))
        return orig_poll(timeout_s)

    source.poll = poll  # type: ignore[method-assign]
    consumer = _consumer(source, lake, flush_records=100_000, max_buffer_bytes=cap)
    m = consumer.run()
    one_poll = 4 * 50 * max(len(v) for log in broker.logs.values() for v in log)
    assert m.events == 6000 and broker.committed == {tp: 1500 for tp in broker.logs}
    assert max(seen) <= cap + one_poll, (max(seen), cap)
    assert max(seen) > cap // 2  # (the bound was actually approached)


def test_stop_during_a_write_drains_commits_and_returns(tmp_path: Path, watch: LoopWatch,
                                                        slow_writes: HeldWrites) -> None:
    """SIGTERM's stop() while a round is in flight: that round is committed, the rest flushed."""
    broker = FakeBroker(partitions=2, per_partition=1000)
    lake = tmp_path / "lake"

    def before_poll(src: FakeSource) -> None:
        rnd = consumer.writer.inflight
        if rnd is not None and not rnd.written.is_set():
            consumer.stop()

    source = FakeSource(broker, lake, list(broker.logs), watch=watch, before_poll=before_poll)
    consumer = _consumer(source, lake, until_idle=None)
    m = consumer.run()
    assert m.state == "stopped" and m.events == m.messages > 0
    assert sum(broker.committed.values()) == m.messages  # everything polled is in the lake and committed
    counts = _offsets_in_lake(lake)
    assert len(counts) == m.messages and set(counts.values()) == {1}

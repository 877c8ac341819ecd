"""Per-partition buffers and the cut policy: steps 1 and 2 of a round (see :mod:`.loop`).

**buffer**: after each ``poll()`` the main thread appends every record's raw bytes and offset to its
partition's :class:`PartitionBuffer` (:class:`Partitions` holds them, with the rest of the main
thread's per-partition state). Nothing is committed for a buffered record.

**cut**: before a round is handed to the writer, :class:`CutPolicy` decides which partitions give a
:class:`Chunk` (at most one per partition per round) and how many records it takes. The policy is
pure -- no clock, no Kafka, no I/O: the caller passes ``now`` -- so it is tested on its own.

The cut is data-determined where possible: exactly ``flush_records`` records, or the record where
the chunk reaches ``flush_bytes``. Wall-clock cuts (``flush_seconds``, shutdown, ``--until-idle``,
the ``max_buffer_bytes`` memory cap) are not reproducible, so they are made idempotent by *boundary
recovery*: a buffer whose first records replay an earlier, uncommitted chunk carries that chunk's
last offset as :attr:`PartitionBuffer.boundary` (found by :mod:`.recovery`), and its first cut ends
exactly there, whatever the thresholds say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Final

from ztaudit.pipeline.sources.kafka.base import TP, tp_name

log = logging.getLogger(__name__)

#: With the writer free and the buffers above this share of ``max_buffer_bytes``, the largest
#: buffer is cut early: the rest of the budget is left for polling while the writer works (at
#: 100 % the poller would stop at every round and the pipeline would run as a sequence again;
#: at 75 % a writer-bound loop still found the buffers just under it after most rounds, leaving
#: the writer idle for a poll).
MEMORY_CUT_SHARE: Final = 0.5


@dataclass
class Chunk:
    """One partition's records ``[first, last]`` of one round; written as one file per table and day."""

    tp: TP
    values: list[bytes]
    offsets: list[int]
    #: files of an earlier, uncommitted flush under this chunk's key (deleted if not rewritten)
    leftovers: list[PurePath]
    #: True when the cut ended at a recovered boundary (the chunk replays an earlier flush)
    recovered: bool
    nbytes: int = 0
    #: each record's Kafka header cluster (``kafka.cluster_header``); None when none has one
    clusters: list[str | None] | None = None

    @property
    def first(self) -> int:
        return self.offsets[0]

    @property
    def last(self) -> int:
        return self.offsets[-1]

    @property
    def where(self) -> str:
        return f"{tp_name(self.tp.topic, self.tp.partition)} offsets {self.first}..{self.last}"


class PartitionBuffer:
    """One partition's unflushed records (raw bytes, in offset order); main thread only."""

    __slots__ = ("boundary", "clusters", "leftovers", "nbytes", "offsets", "opened_at", "values")

    def __init__(self, now: float) -> None:
        self.values: list[bytes] = []
        self.offsets: list[int] = []
        self.nbytes = 0
        #: when the oldest buffered record arrived (or the last cut), for ``flush_seconds``
        self.opened_at = now
        #: last offset of an earlier uncommitted flush this buffer must end its first chunk at
        self.boundary: int | None = None
        #: files that earlier flush left under this buffer's first key
        self.leftovers: list[PurePath] = []
        #: the records' Kafka header clusters, parallel to ``values`` (None while no record had one)
        self.clusters: list[str | None] | None = None

    def append(self, offsets: list[int], values: list[bytes], clusters: list[str | None] | None = None) -> int:
        """Add one poll's records of this partition (offsets ascending) and their header clusters;
        returns their bytes."""
        n = sum(map(len, values))
        if clusters is not None and self.clusters is None:
            self.clusters = [None] * len(self.values)
        if self.clusters is not None:
            self.clusters.extend(clusters if clusters is not None else [None] * len(values))
        self.values.extend(values)
        self.offsets.extend(offsets)
        self.nbytes += n
        return n

    def take(self, tp: TP, end: int, now: float) -> Chunk:
        """Cut the first ``end`` records into a chunk; the rest starts a new wall-clock period."""
        values = self.values[:end]
        chunk = Chunk(tp, values, self.offsets[:end], self.leftovers, self.boundary is not None,
                      sum(map(len, values)), self.clusters[:end] if self.clusters is not None else None)
        if self.clusters is not None:
            del self.clusters[:end]
        del self.values[:end]
        del self.offsets[:end]
        self.nbytes -= chunk.nbytes
        self.opened_at = now
        self.boundary = None
        self.leftovers = []
        return chunk


@dataclass(frozen=True)
class CutPolicy:
    """When a partition's buffer becomes a chunk, and when polling must wait for the writer.

    Pure: every method decides from the numbers it is given. Called by the main thread each time
    it may start a round (after each poll, and repeatedly during the final drain).
    """

    flush_records: int
    flush_bytes: int
    flush_seconds: float
    #: all buffers plus the round being written stay under this (see :meth:`must_wait`)
    max_buffer_bytes: int
    memory_cut_share: float = MEMORY_CUT_SHARE

    def chunk_end(self, buf: PartitionBuffer, now: float, *, take_all: bool = False) -> int | None:
        """How many of ``buf``'s first records its next chunk takes, or None when none is due.

        A recovered boundary wins: the chunk ends exactly at it, and until the boundary's record
        was polled nothing is cut (not even when ``take_all``: the rest is left for the replay).
        Else ``flush_records``, else the record that reaches ``flush_bytes``, else everything
        when ``flush_seconds`` passed since the buffer opened or ``take_all``.
        """
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
        elif n >= self.flush_records:
            end = self.flush_records
        elif buf.nbytes >= self.flush_bytes:
            end = self._bytes_end(buf.values)
        elif take_all or now - buf.opened_at >= self.flush_seconds:
            end = n
        else:
            return None
        return max(end, 1)

    def _bytes_end(self, values: list[bytes]) -> int:
        total = 0
        for i, v in enumerate(values):
            total += len(v)
            if total >= self.flush_bytes:
                return i + 1
        return len(values)

    def plan(self, buffers: Mapping[TP, PartitionBuffer], now: float, *, take_all: bool = False) -> dict[TP, int]:
        """The next round: partition -> how many records its chunk takes (partitions in ``buffers`` order).

        ``take_all``: every buffer is due (the final drain, or ``--until-idle`` caught up). Memory:
        with all buffers together above ``memory_cut_share`` of ``max_buffer_bytes``, the largest
        one is due whatever its size or age.
        """
        total = sum(b.nbytes for b in buffers.values())
        largest = max(buffers, key=lambda t: buffers[t].nbytes) if buffers else None
        pressed = total > self.max_buffer_bytes * self.memory_cut_share
        out: dict[TP, int] = {}
        for tp, buf in buffers.items():
            end = self.chunk_end(buf, now, take_all=take_all or (pressed and tp == largest))
            if end is not None:
                out[tp] = end
        return out

    def must_wait(self, buffered_bytes: int, in_flight_bytes: int) -> bool:
        """True when polling must stop until the writer returns: buffers plus the round being
        written exceed ``max_buffer_bytes`` (this bounds the consumer's memory)."""
        return buffered_bytes + in_flight_bytes > self.max_buffer_bytes


class Partitions:
    """The main thread's per-partition state between polls: buffers, next offsets, partitions whose
    first record must look for leftovers, and where a dropped partition must be re-read from.

    Never touched by the writer thread or a rebalance callback (the loop applies the recorded
    rebalance events itself, after ``poll()``).
    """

    def __init__(self) -> None:
        self.buffers: dict[TP, PartitionBuffer] = {}
        #: next offset to read, per partition (the lag is measured from it)
        self.next_offset: dict[TP, int] = {}
        #: partitions whose next first record must check for leftovers of an earlier flush
        self.fresh: set[TP] = set()
        #: revoked partitions' first dropped offset, until they are assigned again
        self.dropped_at: dict[TP, int] = {}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    @property
    def records(self) -> int:
        return sum(len(b.offsets) for b in self.buffers.values())

    def buffer_for(self, tp: TP, first: int, now: float) -> tuple[PartitionBuffer, bool]:
        """The buffer that records of ``tp`` starting at ``first`` go to, and whether the caller
        must look for leftovers first (the partition is fresh and this is its first record).

        If the position went backwards (a reset or seek by the client), the buffer is dropped and
        the partition starts over from ``first`` (fresh again).
        """
        buf = self.buffers.get(tp)
        if buf is not None and buf.offsets and first <= buf.offsets[-1]:
            log.warning("consume: %s rewound to offset %d (buffer ended at %d): dropping the buffer",
                        tp_name(tp.topic, tp.partition), first, buf.offsets[-1])
            del self.buffers[tp]
            self.fresh.add(tp)
            buf = None
        if buf is None:
            buf = self.buffers[tp] = PartitionBuffer(now)
        check = tp in self.fresh and not buf.offsets
        if check:
            self.fresh.discard(tp)
        return buf, check

    def append(self, tp: TP, buf: PartitionBuffer, offsets: list[int], values: list[bytes],
               clusters: list[str | None] | None = None) -> int:
        """Buffer one poll's records of ``tp`` (and their header clusters); returns their bytes."""
        self.next_offset[tp] = offsets[-1] + 1
        return buf.append(offsets, values, clusters)

    def cut_round(self, policy: CutPolicy, now: float, *, take_all: bool = False) -> list[Chunk]:
        """Take the chunks :meth:`CutPolicy.plan` says are due out of their buffers."""
        return [self.buffers[tp].take(tp, end, now)
                for tp, end in policy.plan(self.buffers, now, take_all=take_all).items()]

    def drop_from(self, tp: TP, first: int) -> None:
        """Records of ``tp`` from ``first`` on are neither in the lake for good nor buffered any
        more: if the partition comes back, it is re-read from there (the lowest such offset)."""
        self.dropped_at[tp] = min(first, self.dropped_at.get(tp, first))

    def revoke(self, tps: Iterable[TP]) -> int:
        """The group took ``tps`` away: drop their unflushed buffers (nothing of them is committed;
        whoever owns them next re-reads from the committed offset). Returns the records dropped."""
        dropped = 0
        for tp in tps:
            buf = self.buffers.pop(tp, None)
            if buf is not None and buf.offsets:
                dropped += len(buf.offsets)
                self.drop_from(tp, buf.offsets[0])
                log.info("consume: %s revoked: dropped %d unflushed records from offset %d "
                         "(uncommitted; whoever owns it next re-reads them)", tp_name(tp.topic, tp.partition),
                         len(buf.offsets), buf.offsets[0])
            self.next_offset.pop(tp, None)
            self.fresh.add(tp)
        return dropped

    def assign(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The group gave us ``tps``: they look for leftovers again. Returns the offsets the ones
        that were dropped here must be re-read from; rewind points of partitions that went
        elsewhere are forgotten (their new owner starts at the committed offset)."""
        back: dict[TP, int] = {}
        for tp in tps:
            self.fresh.add(tp)
            first = self.dropped_at.pop(tp, None)
            if first is not None:
                back[tp] = first
        self.dropped_at.clear()
        return back

    def reset(self, tp: TP) -> None:
        """Forget everything buffered of ``tp`` (its commit was rejected: it is re-read from the
        rejected chunk's first offset, and looks for leftovers again)."""
        self.buffers.pop(tp, None)
        self.next_offset.pop(tp, None)
        self.fresh.add(tp)

    def log_unflushed(self) -> None:
        """After the final drain: say which records stay buffered (waiting for a boundary) and are
        left for the replay."""
        for tp, buf in self.buffers.items():
            if buf.offsets:
                log.info("consume: %s: %d records from offset %d not flushed (an earlier flush ended at %s; "
                         "left for the replay)", tp_name(tp.topic, tp.partition), len(buf.offsets),
                         buf.offsets[0], buf.boundary)

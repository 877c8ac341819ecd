"""Line inputs (JSON lines and text lines), which carry nearly all volume: read in blocks, split at
newlines by NumPy, hashed as read, packed into one Arrow array per chunk.

Chunk boundaries and keys (docs/design.md §3, issue 11 item 1) depend only on the content *before*
them, never on where the input ended, so a file that grew between two ingests gives the same
chunks up to its old end, and its old last chunk the same key as the grown chunk (a subset of
its records, the last one possibly cut short):

* **Boundaries**: with ``chunk_bytes`` = C, the chunk that starts at byte *s* ends at the end of
  the line holding byte *g* - 1, where *g* is the first multiple of C after *s* -- or at the end
  of its :data:`~.inputs.MAX_CHUNK_LINES`-th line if that comes first. A chunk is then about C
  bytes (one line more), and its end is known as soon as that line's newline is read.
* **Key**: :func:`~.inputs.chunk_key` of the file's first record and the sha256 of bytes
  ``[0, s)``, plus *s*: ``<16 hex>+<s>``.

Because the boundaries are on a grid of C, ingesting a file again with a *different*
``--chunk-bytes`` gives other chunks and keys, and the rows of the earlier ingest stay beside the
new ones: keep the same chunk size (the configured default) for files you ingest more than once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO, Any, Final

import numpy as np
import pyarrow as pa

from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.pipeline.records import LineOrigins, PackedRecords
from ztaudit.pipeline.redact import scrub_raw
from ztaudit.pipeline.sources.inputs import BOM, MAX_CHUNK_LINES, Chunk, InputFile, chunk_key

#: Bytes read at a time past a chunk's grid point while looking for the end of the line that
#: crosses it (and the copy carried into the next chunk's buffer: at most this much per chunk).
_SLACK: Final = 1 << 20
#: Newlines are searched in slices of this size, so NumPy's temporary arrays stay small (reused
#: by the allocator and in cache) instead of one 64 MiB mask per block.
_SCAN_BYTES: Final = 1 << 20
#: ASCII whitespace as ``bytes.strip`` sees it: a line of nothing else is blank, not a record.
_WHITESPACE: Final = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


class _Window:
    """The bytes read from the stream and not yet handed out: ``buf[0:filled]`` is input bytes
    ``[base, base + filled)``, in one Arrow buffer.

    Chunks are zero-copy slices of ``buf``; later reads only write past ``filled``, so a slice
    handed out is never overwritten. The buffer comes from Arrow's memory pool, which reuses the
    blocks of released chunks (a fresh bytearray would be zeroed and page-faulted in every time:
    measured 60 ms vs 12 ms per 64 MiB block).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf: pa.Buffer = pa.allocate_buffer(0)
        self.view = memoryview(self.buf).cast("B")
        self.base = 0
        self.filled = 0
        self.eof = False

    @property
    def end(self) -> int:
        """Input offset just past the last byte read."""
        return self.base + self.filled

    def array(self) -> np.ndarray[Any, np.dtype[np.uint8]]:
        return np.frombuffer(self.buf, dtype=np.uint8, count=self.filled)

    def restart(self, base: int, head: bytes) -> None:
        """Drop the window and start it again at ``base`` with ``head`` (bytes read past a skipped line)."""
        self.buf = pa.allocate_buffer(len(head))
        self.view = memoryview(self.buf).cast("B")
        self.view[:] = head
        self.base, self.filled = base, len(head)

    def fill(self, keep_from: int, upto: int) -> None:
        """Read until the window reaches input offset ``upto`` (or the input ends), keeping the
        bytes from input offset ``keep_from`` on. Moves them to a new buffer if the current one
        has no room (at most :data:`_SLACK` bytes are copied in steady state)."""
        need = upto - self.end
        if need <= 0 or self.eof:
            return
        if self.filled + need > self.buf.size:
            nkeep = self.end - keep_from
            buf = pa.allocate_buffer(nkeep + need + _SLACK)
            view = memoryview(buf).cast("B")  # Arrow exports signed bytes ("b")
            view[:nkeep] = self.view[keep_from - self.base: self.filled]
            self.buf, self.view, self.base, self.filled = buf, view, keep_from, nkeep
        while need > 0:
            got = self.stream.readinto(self.view[self.filled: self.filled + need])  # type: ignore[attr-defined]
            if not got:
                self.eof = True
                return
            self.filled += got
            need -= got


def _newlines(data: np.ndarray[Any, np.dtype[np.uint8]], start: int, limit: int
              ) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Positions of the first ``limit`` (at most) ``\\n`` bytes of ``data`` at or after ``start``."""
    parts = []
    found = 0
    for i in range(start, len(data), _SCAN_BYTES):
        part = np.flatnonzero(data[i:i + _SCAN_BYTES] == 10) + i
        parts.append(part)
        found += len(part)
        if found >= limit:
            break
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(parts)[:limit].astype(np.int64, copy=False)


def line_chunks(stream: IO[bytes], inp: InputFile, chunk_bytes: int,
                max_record_bytes: int) -> Iterator[Chunk]:
    """Split the stream into chunks of whole lines (see the module docstring for the boundaries
    and keys), one Arrow array laid over the bytes read per chunk.

    Called by :func:`.files.read_chunks` for every input that is not CSV or a JSON document.
    Never raises for bad content: blank lines are skipped (line numbers stay real), a line longer
    than the record cap is cut to ``max_record_bytes + 1`` bytes (so it is quarantined
    ``oversized``) and the rest of it skipped without being held in memory. A gzip stream that
    ends early (a :class:`GuardedStream` with ``error`` set) keeps every complete line; its
    incomplete last line is quarantined ``truncated`` in the last chunk's ``rejected``.
    """
    win = _Window(stream)
    h = hashlib.sha256()  # of input bytes [0, start)
    anchor: list[bytes] = []  # the first record, once seen
    start = 0
    line_no = 1
    while True:
        grid = (start // chunk_bytes + 1) * chunk_bytes
        win.fill(start, grid)
        prefix = h.digest()
        # Find the chunk's end: the newline at or after byte grid-1, or the line cap's newline.
        # Positions are input offsets here: the window may move to a bigger buffer meanwhile.
        parts: list[np.ndarray[Any, np.dtype[np.int64]]] = []
        count = 0
        scanned = start
        cut = -1  # input offset of the chunk's last newline
        long_line = -1  # input offset where an oversized last line starts (-1: none)
        while True:
            nl = _newlines(win.array(), scanned - win.base, MAX_CHUNK_LINES - count) + win.base
            if len(nl):
                k = int(np.searchsorted(nl, grid - 1))
                if k < len(nl):
                    nl = nl[: k + 1]
                    cut = int(nl[-1])
                elif count + len(nl) >= MAX_CHUNK_LINES:
                    cut = int(nl[-1])
                parts.append(nl)
                count += len(nl)
            if cut >= 0:
                break
            scanned = win.end
            line_at = int(parts[-1][-1]) + 1 if count else start
            if win.eof:
                break
            if win.end - line_at > max(max_record_bytes + 1, chunk_bytes):
                long_line = line_at  # a line longer than the cap crosses the grid point
                break
            win.fill(start, win.end + _SLACK)
        ends = np.concatenate(parts) - win.base if parts else np.empty(0, dtype=np.int64)
        first = start - win.base
        h.update(win.view[first: cut + 1 - win.base if cut >= 0 else win.filled])
        rejected: list[Rejected] = []
        tail_end = -1  # window index where a last line without newline ends (-1: none)
        if long_line >= 0:
            tail_end = long_line - win.base + max_record_bytes + 1
            nbytes_skipped, rest = _skip_line(win.stream, h)
            end = win.end + nbytes_skipped
        elif cut < 0:  # end of input
            end = win.end
            if win.filled > (int(ends[-1]) + 1 if len(ends) else first):
                tail_end = win.filled
            error = getattr(win.stream, "error", None)
            if error is not None:
                tail_from = int(ends[-1]) + 1 if len(ends) else first
                tail = bytes(win.view[tail_from:win.filled])
                tail_end = -1
                rejected.append(Rejected(
                    f"file:{inp.name}:{line_no + len(ends)}", Reason.TRUNCATED,
                    f"the gzip stream ends early ({type(error).__name__}: {error}); every complete line "
                    f"before it was read, {len(tail)} bytes of an incomplete last line are kept here",
                    scrub_raw(tail, parse=False), None, len(tail)))
        else:
            end = cut + 1
            # The line that crosses the grid point is cut to the cap when it is longer than a chunk
            # and the cap, whether or not its newline came within the bytes read so far: whether a
            # record is cut depends on the content only, never on how the reads fell.
            line_from = int(ends[-2]) + 1 if len(ends) > 1 else first
            if cut - win.base - line_from > max(max_record_bytes + 1, chunk_bytes):
                ends = ends[:-1]
                tail_end = line_from + max_record_bytes + 1
        chunk = _pack_lines(win.buf, first, ends, tail_end, inp, line_no, start == 0)
        chunk.nbytes = end - start
        chunk.rejected = rejected
        if chunk.count and not anchor:
            anchor.append(chunk.records[0] if chunk.packed is None else chunk.packed.record(0))
        if chunk.count or rejected:
            chunk.file_key = chunk_key(anchor[0] if anchor else None, prefix, str(start))
            yield chunk
        del chunk
        line_no += len(ends) + (1 if tail_end >= 0 else 0)
        if long_line >= 0:
            win.restart(end, rest)
        elif cut < 0:
            return
        start = end


def _skip_line(stream: IO[bytes], h: Any) -> tuple[int, bytes]:
    """Read (and hash) the rest of an oversized line through its newline without keeping it.

    Returns the bytes skipped (newline included) and what was read past the newline."""
    skipped = 0
    while True:
        more = stream.read(_SLACK)
        if not more:
            return skipped, b""
        nl = more.find(b"\n")
        if nl >= 0:
            h.update(more[: nl + 1])
            return skipped + nl + 1, more[nl + 1:]
        h.update(more)
        skipped += len(more)


def _pack_lines(buf: pa.Buffer, first: int, ends: np.ndarray[Any, np.dtype[np.int64]], tail_end: int,
                inp: InputFile, first_line: int, at_start: bool) -> Chunk:
    """A chunk of the lines in ``buf`` from index ``first``: one ending at each newline of
    ``ends``, then (``tail_end`` >= 0) one ending at ``tail_end`` without a newline.

    All NumPy: a ``large_binary`` array laid over ``buf`` whose value *i* is line *i* plus its
    newline, with ``lengths`` excluding it (:class:`PackedRecords`). Blank (whitespace-only)
    lines are not records: they are found by a vectorised test and filtered out (a copy of the
    kept bytes, only for chunks that have blank lines), and the origins keep the real line
    numbers. Memory is a few arrays of at most :data:`MAX_CHUNK_LINES` entries, whatever the
    input (a per-line Python list took 2.7 GB for 64 MiB of blank lines: issue 11, item 17).
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    n = len(ends) + (1 if tail_end >= 0 else 0)
    starts = np.empty(n, dtype=np.int64)
    stops = np.empty(n, dtype=np.int64)  # a line's end, its newline excluded
    value_ends = np.empty(n, dtype=np.int64)  # ... and included
    m = len(ends)
    if m:
        starts[1:m] = ends[:-1] + 1
        stops[:m] = ends
        value_ends[:m] = ends + 1
    if tail_end >= 0:
        starts[m] = ends[-1] + 1 if m else first
        stops[m] = value_ends[m] = tail_end
    if n:
        starts[0] = first
        if at_start and bytes(data[first:first + 3]) == BOM:
            starts[0] = min(first + 3, int(stops[0]))
    lengths = stops - starts
    # blank: empty, or whitespace-led and all whitespace (only whitespace-led lines are looked at)
    firsts = data[np.minimum(starts, len(data) - 1)] if n else np.empty(0, dtype=np.uint8)
    blank = (lengths == 0) | _WHITESPACE[firsts]
    check = np.flatnonzero(blank & (lengths > 0))
    if len(check):
        spans = np.empty(2 * len(check), dtype=np.int64)
        spans[0::2] = starts[check]
        spans[1::2] = stops[check]
        lo, hi = int(spans[0]), int(spans[-1])
        nonws = np.zeros(hi - lo + 1, dtype=bool)  # one more: reduceat needs an index past the last span
        nonws[: hi - lo] = ~_WHITESPACE[data[lo:hi]]
        hit = np.logical_or.reduceat(nonws, spans - lo)[0::2]
        blank[check[hit]] = False
    value_offsets = np.empty(n + 1, dtype=np.int64)
    value_offsets[:n] = starts
    value_offsets[n] = value_ends[-1] if n else first
    array = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(value_offsets), buf])
    if blank.any():
        keep = np.flatnonzero(~blank)
        array = array.take(pa.array(keep)) if len(keep) else array.slice(0, 0)
        lengths = lengths[keep]
        origins = LineOrigins(inp.name, lines=(keep + first_line).tolist())
    else:
        origins = LineOrigins(inp.name, first_line)
    chunk = Chunk([], origins, "", 0, packed=PackedRecords(array, lengths.astype(np.int64, copy=False)))
    chunk.lines_covered = n
    return chunk

"""Line inputs (JSON lines and text lines), which carry nearly all volume: read in blocks, split at
newlines by NumPy over the block, hashed as read (each chunk's file key is the sha256 of the content
up to its end and its byte range), packed into one Arrow array per chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO, Any, Final

import numpy as np
import pyarrow as pa

from ztaudit.pipeline.records import LineOrigins, PackedRecords
from ztaudit.pipeline.sources.inputs import BOM, Chunk, InputFile


def _make_chunk(lines: list[bytes], inp: InputFile, file_key: str, first_line: int, offset: int,
                nbytes: int) -> Chunk:
    """A chunk from whole ``lines``, one by one: the path for blocks with a blank or
    whitespace-led line or a byte-order mark, and for a last line without a newline. Blank lines
    are not records: they are skipped, and the origins keep the real line numbers."""
    if offset == 0 and lines and lines[0].startswith(BOM):
        lines[0] = lines[0][len(BOM):]
    covered = len(lines)
    if any(not ln.strip() for ln in lines):
        keep = [(first_line + i, ln) for i, ln in enumerate(lines) if ln.strip()]
        chunk = Chunk([ln for _, ln in keep], LineOrigins(inp.name, lines=[k for k, _ in keep]), file_key, nbytes)
    else:
        chunk = Chunk(lines, LineOrigins(inp.name, first_line), file_key, nbytes)
    chunk.lines_covered = covered
    return chunk


def line_chunks(stream: IO[bytes], inp: InputFile, chunk_bytes: int,
                 max_record_bytes: int) -> Iterator[Chunk]:
    """Split the stream at newlines, one block of ``chunk_bytes`` at a time, without copying lines.

    Each chunk's records are one Arrow array laid straight over the block's bytes, newline
    positions found by NumPy (:func:`_pack_lines`); only the line straddling two blocks is joined.
    File key: ``<sha256 of the input from byte 0 to the chunk's end, 16 hex>+<first>-<end>``,
    hashed as the bytes are read: it names exactly the content up to the chunk, so ingesting a
    file again (or after it grew) rewrites the same files for the same chunks.
    """
    h = hashlib.sha256()
    offset = 0
    line_no = 1
    carry = b""  # the start of a line whose newline is not read yet (never holds a newline)
    pushback = b""  # bytes read past an oversized line's end, to be split like a fresh block

    def key(end: int) -> str:
        return f"{h.copy().hexdigest()[:16]}+{offset}-{end}"

    while True:
        # One buffer per block, the carried line start copied to its front and the block read in
        # after it (readinto: no second copy to join them). The buffer comes from Arrow's memory
        # pool, which reuses the blocks of released chunks: a fresh bytearray would be zeroed
        # and page-faulted in every time (measured: 60 ms vs 12 ms per 64 MiB block).
        head = carry + pushback
        buf = pa.allocate_buffer(len(head) + chunk_bytes)
        view = memoryview(buf).cast("B")  # Arrow exports signed bytes ("b")
        view[: len(head)] = head
        got = stream.readinto(view[len(head):])  # type: ignore[attr-defined]
        total = len(head) + (got or 0)
        searched_from = len(carry)  # carry holds no newline; pushback may
        pushback = b""
        if total == 0:
            return
        if not got and total == len(carry):  # end of input: the last line had no newline
            h.update(carry)
            chunk = _make_chunk([carry], inp, key(offset + len(carry)), line_no, offset, len(carry))
            if chunk.count:
                yield chunk
            return
        ends = _newlines(np.frombuffer(buf, dtype=np.uint8, count=total), searched_from)
        if not len(ends):  # no newline in this block
            carry = bytes(view[:total])
            del view, buf
            if len(carry) <= max(chunk_bytes, max_record_bytes + 1):
                continue
            # A line longer than a chunk and the cap: keep cap+1 bytes (-> oversized), skip the rest.
            h.update(carry)
            head, skipped = carry[: max_record_bytes + 1], len(carry)
            carry = b""
            while True:
                more = stream.read(chunk_bytes)
                if not more:
                    break
                nl = more.find(b"\n")
                if nl >= 0:
                    h.update(more[: nl + 1])
                    skipped += nl + 1
                    pushback = more[nl + 1:]
                    break
                h.update(more)
                skipped += len(more)
            yield Chunk([head], LineOrigins(inp.name, line_no), key(offset + skipped), skipped)
            offset += skipped
            line_no += 1
            continue
        nbytes = int(ends[-1]) + 1  # whole lines only
        carry = bytes(view[nbytes:total])
        h.update(view[:nbytes])
        chunk = _pack_lines(buf.slice(0, nbytes), ends, inp, key(offset + nbytes), line_no, offset)
        del view, buf
        if chunk.count:
            yield chunk
        offset += nbytes
        line_no += chunk.lines_covered


#: Newlines are searched in slices of this size, so NumPy's temporary arrays stay small (reused
#: by the allocator and in cache) instead of one 64 MiB mask per block.
_SCAN_BYTES: Final = 1 << 20


def _newlines(data: np.ndarray[Any, np.dtype[np.uint8]], start: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Positions of the ``\n`` bytes of ``data`` at or after ``start``, ascending."""
    parts = [np.flatnonzero(data[i:i + _SCAN_BYTES] == 10) + i for i in range(start, len(data), _SCAN_BYTES)]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, dtype=np.int64)


def _pack_lines(data: pa.Buffer, ends: np.ndarray[Any, np.dtype[np.int64]], inp: InputFile, file_key: str,
                first_line: int, offset: int) -> Chunk:
    """A chunk of the newline-terminated lines in ``data`` (``ends``: its newline positions),
    packed without copying them.

    The common case (no blank or whitespace-led line, no byte-order mark) is all NumPy: a
    ``large_binary`` array laid over ``data`` whose value *i* is line *i* plus its newline, with
    ``lengths`` excluding it (:class:`PackedRecords`). Anything else takes :func:`_make_chunk`'s
    per-line path, which drops blank lines and keeps real line numbers.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(ends)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    firsts = buf[starts]  # a line's first byte (its newline if it is empty)
    odd = (lengths == 0) | (firsts == 32) | (firsts == 9) | (firsts == 13) | (firsts == 10)
    if odd.any() or (offset == 0 and data.slice(0, min(3, data.size)).to_pybytes() == BOM):
        lines = data.to_pybytes().split(b"\n")
        lines.pop()  # after the last newline: empty
        return _make_chunk(lines, inp, file_key, first_line, offset, len(data))
    value_offsets = np.empty(n + 1, dtype=np.int64)
    value_offsets[0] = 0
    value_offsets[1:] = ends + 1
    array = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n,
                                             [None, pa.py_buffer(value_offsets), data])
    chunk = Chunk([], LineOrigins(inp.name, first_line), file_key, len(data),
                  packed=PackedRecords(array, lengths.astype(np.int64, copy=False)))
    chunk.lines_covered = n
    return chunk

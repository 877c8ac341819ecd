"""File and stdin sources: paths in, bounded chunks of raw records out.

Called by :func:`ztaudit.pipeline.ingest.ingest_paths`. :func:`expand_paths` turns the command
line into input files (folders recursively, sorted, skipping hidden files and ``*.md``; ``-`` is
stdin) and raises :class:`~ztaudit.core.errors.SourceError` with a fix for a missing path.
:func:`read_chunks` yields :class:`Chunk` values of at most about ``chunk_bytes`` each, so memory
stays bounded whatever the input size; a bad *record* never raises here -- it is passed on for
``process()`` to quarantine.

Formats:

* **JSON lines** (the apiserver log backend) and text lines: split at newlines, in fixed-size
  chunks. A line longer than the chunk is cut to ``max_record_bytes + 1`` bytes (so it is
  quarantined ``oversized``) and the rest of it skipped without being held in memory.
* **One JSON document over many lines** (``kubectl get --raw``, pretty-printed samples, a JSON
  array): detected when the first non-blank line is not a complete JSON value; the document (up
  to :data:`DOCUMENT_MAX_BYTES`) is parsed value by value, and a top-level array is split into
  one record per element, each with the line it starts on.
* **CSV** (``*.csv``): each row becomes a JSON object keyed by the header (revocation lists).
* ``*.gz``: decompressed on the fly (also detected by magic bytes).

Deterministic file keys (DESIGN.md "Lake layout"), so ingesting the same input again replaces the
same lake files instead of adding rows: for line files ``<sha256 of the content from byte 0 to the
chunk's end, 16 hex>+<first byte>-<end byte>``, hashed while reading (a file that grew keeps the
keys of its unchanged chunks); for documents and CSV ``<sha256 of the whole file>+<range>`` (CSV:
line range). Stdin is spooled to a temporary file, which the document reader may read twice.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import pyarrow as pa

from ztaudit.core.errors import SourceError
from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.decode.values import dumps, json_failure, loads
from ztaudit.pipeline.records import LineOrigins, PackedRecords, pack_records

#: Bound on a file read as one JSON document (pretty-printed or a JSON array spanning lines).
DOCUMENT_MAX_BYTES: Final = 256 * 1024 * 1024
_PEEK: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = b"\xef\xbb\xbf"
STDIN: Final = "-"


@dataclass(frozen=True)
class InputFile:
    """One input: a file path, or stdin (``path`` None)."""

    path: Path | None
    name: str  # what origins show: the path as given (joined under a folder), or <stdin>

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else 0


class Chunk:
    """Raw records from one input, with their origins and the chunk's deterministic file key.

    The records are packed into one Arrow array (:class:`PackedRecords`) as the chunk is made,
    in the reader thread, and held only in that form: ``records`` rebuilds the list of bytes
    for callers that want it (tests, tools); ingest hands ``packed`` straight to ``process``.
    """

    __slots__ = ("_records", "file_key", "lines_covered", "nbytes", "origins", "packed")

    def __init__(self, records: list[bytes], origins: LineOrigins, file_key: str, nbytes: int,
                 packed: PackedRecords | None = None) -> None:
        self.origins = origins
        self.file_key = file_key
        self.nbytes = nbytes  # input bytes this chunk covers (for progress)
        #: input lines the chunk covers, blank ones included (the line reader's line counter)
        self.lines_covered = len(records) if packed is None else len(packed.lengths)
        self.packed: PackedRecords | None = packed
        self._records = records
        if packed is None and len(records) > 1:
            self.packed = pack_records(records)
            self._records = []

    @property
    def records(self) -> list[bytes]:
        """The records as a list of bytes (built from the packed array when packed)."""
        if self.packed is not None:
            return [self.packed.record(i) for i in range(len(self.packed.lengths))]
        return self._records

    @property
    def count(self) -> int:
        """Number of records in the chunk."""
        return len(self.packed.lengths) if self.packed is not None else len(self._records)

    def release(self) -> None:
        """Drop the chunk's data once it has been processed (bounds memory)."""
        self.packed = None
        self._records = []


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def expand_paths(paths: Sequence[str]) -> list[InputFile]:
    """The input files for ``paths``: files as given, folders walked recursively (sorted,
    hidden files/folders and ``*.md`` skipped), ``-`` for stdin. Raises SourceError for a path
    that does not exist or a folder with no files."""
    out: list[InputFile] = []
    for raw in paths:
        if raw == STDIN:
            out.append(InputFile(None, "<stdin>"))
            continue
        p = Path(raw)
        if not p.exists():
            raise SourceError(f"{raw}: no such file or directory",
                              fix="check the path (use - to read standard input)")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f, p)
                           and f.suffix.lower() != ".md")
            if not files:
                raise SourceError(f"{raw}: folder holds no input files",
                                  fix="point at a folder of log files (hidden files and *.md are skipped)")
            out.extend(InputFile(f, str(f)) for f in files)
        else:
            out.append(InputFile(p, raw))
    return out


def _sha16(fh: IO[bytes]) -> str:
    h = hashlib.sha256()
    while block := fh.read(8 * 1024 * 1024):
        h.update(block)
    digest = h.hexdigest()[:16]
    fh.seek(0)
    return digest


@dataclass
class _Opened:
    raw: IO[bytes]  # the file as stored (compressed or not), seekable
    gz: bool
    _sha: str | None = None

    @property
    def sha(self) -> str:
        """Hash of the whole stored file (16 hex), for the document and CSV readers' file keys.

        Computed on first use: the line reader, which handles nearly all volume, hashes as it
        reads instead (:func:`_line_chunks`), so big files are not read twice.
        """
        if self._sha is None:
            pos = self.raw.tell()
            self.raw.seek(0)
            self._sha = _sha16(self.raw)
            self.raw.seek(pos)
        return self._sha

    def stream(self) -> AbstractContextManager[IO[bytes]]:
        """The content from the start (decompressed); leaving the ``with`` does not close ``raw``."""
        self.raw.seek(0)
        if self.gz:
            return gzip.GzipFile(fileobj=self.raw, mode="rb")  # type: ignore[return-value]
        return nullcontext(self.raw)


def _open(inp: InputFile) -> _Opened:
    if inp.path is None:
        spool = tempfile.TemporaryFile(prefix="ztaudit-stdin-")  # closed by read_chunks
        try:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1024 * 1024)
        except OSError as exc:
            spool.close()
            raise SourceError(f"cannot read standard input: {exc}") from exc
        spool.seek(0)
        fh: IO[bytes] = spool
    else:
        try:
            fh = open(inp.path, "rb")  # closed by read_chunks
        except OSError as exc:
            raise SourceError(f"{inp.name}: cannot open: {exc.strerror or exc}",
                              fix="check the file's permissions") from exc
    magic = fh.read(2)
    fh.seek(0)
    gz = magic == _GZIP_MAGIC or (inp.path is not None and inp.path.suffix == ".gz")
    return _Opened(fh, gz)


def read_chunks(inp: InputFile, chunk_bytes: int, max_record_bytes: int) -> Iterator[Chunk]:
    """Chunks of raw records from ``inp`` (see the module docstring for formats).

    Raises SourceError only when the input cannot be opened or read at all (missing, permission,
    a corrupt gzip stream -- then the chunks already yielded stand and the error names the file).
    """
    opened = _open(inp)
    try:
        csv_like = inp.path is not None and inp.path.name.lower().removesuffix(".gz").endswith(".csv")
        try:
            if csv_like:
                yield from _csv_chunks(opened, inp, chunk_bytes)
                return
            with opened.stream() as stream:
                head = stream.read(_PEEK)
            if _looks_like_document(head):
                doc = _read_document(opened)
                if doc is not None:
                    chunks = _document_chunks(doc, inp, opened.sha, chunk_bytes)
                    if chunks is not None:
                        yield from chunks
                        return
            with opened.stream() as stream:
                yield from _line_chunks(stream, inp, chunk_bytes, max_record_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceError(f"{inp.name}: cannot read: {exc}",
                              fix="check that the file is complete (a .gz may be truncated)") from exc
    finally:
        opened.raw.close()


def _looks_like_document(head: bytes) -> bool:
    """True when the first non-blank line opens JSON but is not a complete JSON value."""
    text = head.removeprefix(_BOM)
    for line in text.split(b"\n"):
        s = line.strip()
        if not s:
            continue
        if s[:1] not in (b"{", b"["):
            return False
        if len(line) >= len(text) - 1 and len(text) >= _PEEK:
            return False  # one giant first line: line mode (it will be quarantined oversized)
        try:
            json.loads(s)
        except (ValueError, RecursionError):
            return True
        return False
    return False


def _read_document(opened: _Opened) -> str | None:
    with opened.stream() as stream:
        data = stream.read(DOCUMENT_MAX_BYTES + 1)
    if len(data) > DOCUMENT_MAX_BYTES:
        return None
    try:
        return data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _split_document(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(start offset, value, None) per top-level value -- a top-level array is split into its
    elements -- then, if parsing stops early, (offset, None, rest of the text) once."""
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    n = len(text)
    while pos < n:
        start = pos
        try:
            if text[pos] == "[":
                p = _skip_ws(text, pos + 1)
                if p < n and text[p] == "]":
                    pos = _skip_ws(text, p + 1)
                    continue
                while True:
                    start = p
                    val, end = dec.raw_decode(text, p)
                    yield p, val, None
                    p = _skip_ws(text, end)
                    if p < n and text[p] == ",":
                        p = _skip_ws(text, p + 1)
                        continue
                    if p < n and text[p] == "]":
                        pos = _skip_ws(text, p + 1)
                        break
                    raise ValueError("expected , or ] in array")
            else:
                val, end = dec.raw_decode(text, pos)
                yield pos, val, None
                pos = _skip_ws(text, end)
        except (ValueError, RecursionError):
            yield start, None, text[start:]
            return


def _document_chunks(text: str, inp: InputFile, sha: str, chunk_bytes: int) -> Iterator[Chunk] | None:
    """Records of a whole-document file, or None when its first value does not parse and the
    failure is not at the end of the input (then it is really line-oriented: line mode)."""
    parts = _split_document(text)
    first = next(parts, None)
    if first is None:
        return None
    if first[2] is not None:
        try:
            loads(first[2])
        except ValueError as exc:
            if json_failure(first[2], exc)[0] is not Reason.TRUNCATED:
                return None  # fails mid-text: a line-oriented file with a bad first line

    def gen() -> Iterator[Chunk]:
        records: list[bytes] = []
        lines: list[int] = []
        size = 0
        line = 1
        last = 0
        first_off = 0
        for start, value, rest in itertools.chain([first], parts):
            line += text.count("\n", last, start)
            last = start
            rec = rest.encode() if rest is not None else dumps(value)
            records.append(rec)
            lines.append(line)
            size += len(rec)
            if size >= chunk_bytes:
                yield Chunk(records, LineOrigins(inp.name, lines=lines), f"{sha}+d{first_off}-{start}", size)
                records, lines, size, first_off = [], [], 0, start
        if records:
            yield Chunk(records, LineOrigins(inp.name, lines=lines), f"{sha}+d{first_off}-{len(text)}", size)

    return gen()


def _make_chunk(lines: list[bytes], inp: InputFile, file_key: str, first_line: int, offset: int,
                nbytes: int) -> Chunk:
    """A chunk from whole ``lines``, one by one: the path for blocks with a blank or
    whitespace-led line or a byte-order mark, and for a last line without a newline. Blank lines
    are not records: they are skipped, and the origins keep the real line numbers."""
    if offset == 0 and lines and lines[0].startswith(_BOM):
        lines[0] = lines[0][len(_BOM):]
    covered = len(lines)
    if any(not ln.strip() for ln in lines):
        keep = [(first_line + i, ln) for i, ln in enumerate(lines) if ln.strip()]
        chunk = Chunk([ln for _, ln in keep], LineOrigins(inp.name, lines=[k for k, _ in keep]), file_key, nbytes)
    else:
        chunk = Chunk(lines, LineOrigins(inp.name, first_line), file_key, nbytes)
    chunk.lines_covered = covered
    return chunk


def _line_chunks(stream: IO[bytes], inp: InputFile, chunk_bytes: int,
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
    if odd.any() or (offset == 0 and data.slice(0, min(3, data.size)).to_pybytes() == _BOM):
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


def _csv_chunks(opened: _Opened, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """CSV rows as JSON objects keyed by the header; origin = the row's first line."""
    with opened.stream() as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        try:
            yield from _csv_rows(text, opened, inp, chunk_bytes)
        finally:
            text.detach()  # the wrapper must not close the file: read_chunks owns it


def _csv_rows(text: IO[str], opened: _Opened, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """The chunks of :func:`_csv_chunks` from the decoded text."""
    reader = csv.DictReader(text, restkey="_extra")
    records: list[bytes] = []
    lines: list[int] = []
    size = 0
    reader.fieldnames  # noqa: B018 - reads the header line, so line_num points past it
    prev = reader.line_num
    first = prev + 1
    for row in reader:
        start = prev + 1
        prev = reader.line_num
        rec = dumps({str(k): v for k, v in row.items()})
        records.append(rec)
        lines.append(start)
        size += len(rec)
        if size >= chunk_bytes:
            yield Chunk(records, LineOrigins(inp.name, lines=lines), f"{opened.sha}+L{first}-{prev}", size)
            records, lines, size, first = [], [], 0, prev + 1
    if records:
        yield Chunk(records, LineOrigins(inp.name, lines=lines), f"{opened.sha}+L{first}-{prev}", size)


def total_size(inputs: Sequence[InputFile]) -> int:
    """Bytes on disk of the file inputs (for progress; stdin counts 0)."""
    total = 0
    for i in inputs:
        try:
            total += i.size
        except OSError:
            continue
    return total


__all__ = ["STDIN", "Chunk", "InputFile", "expand_paths", "read_chunks", "total_size"]

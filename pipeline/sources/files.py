"""File and stdin sources: paths in, bounded chunks of raw records out.

Called by :func:`ztaudit.pipeline.ingest.ingest_paths`. :func:`expand_paths` turns the command
line into input files (folders recursively, sorted, skipping hidden files and ``*.md``; ``-`` is
stdin) and raises :class:`~ztaudit.pipeline.errors.SourceError` with a fix for a missing path.
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

Deterministic file keys (DESIGN.md "Lake layout"): ``<sha256 of the file content, 16 hex>+<first
byte>-<end byte>`` of the chunk (CSV: line range), so ingesting the same input again replaces the
same lake files instead of adding rows. Stdin is spooled to a temporary file to hash it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from ..decode.values import dumps, json_failure, loads
from ..errors import SourceError
from ..records import LineOrigins, PackedRecords, Reason, pack_records

#: Bound on a file read as one JSON document (pretty-printed or a JSON array spanning lines).
DOCUMENT_MAX_BYTES: Final = 256 * 1024 * 1024
_PEEK: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = b"\xef\xbb\xbf"
STDIN: Final = "-"
_MAYBE_BLANK: Final = re.compile(rb"\n[ \t\r\n]")


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

    __slots__ = ("_records", "file_key", "nbytes", "origins", "packed")

    def __init__(self, records: list[bytes], origins: LineOrigins, file_key: str, nbytes: int) -> None:
        self.origins = origins
        self.file_key = file_key
        self.nbytes = nbytes  # input bytes this chunk covers (for progress)
        self.packed: PackedRecords | None = None
        self._records = records
        if len(records) > 1:
            self.packed = pack_records(records)
            self._records = []

    @property
    def records(self) -> list[bytes]:
        """The records as a list of bytes (built from the packed array when packed)."""
        if self.packed is not None:
            return [v if isinstance(v, bytes) else b"" for v in self.packed.array.to_pylist()]
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
    sha: str
    gz: bool

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
    return _Opened(fh, _sha16(fh), gz)


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
                yield from _line_chunks(stream, inp, opened.sha, chunk_bytes, max_record_bytes)
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


def _make_chunk(lines: list[bytes], block: bytes, inp: InputFile, sha: str, first_line: int,
                offset: int, nbytes: int) -> Chunk:
    """A chunk from whole ``lines`` (most of them split out of ``block``). Blank lines are not
    records: they are skipped, and the origins keep the real line numbers."""
    if offset == 0 and lines and lines[0].startswith(_BOM):
        lines[0] = lines[0][len(_BOM):]
    # Blank or whitespace-only lines are rare; one regex pass over the block (plus the line that
    # straddled the previous block) finds out if there may be any before a per-line pass does.
    maybe_blank = (not lines[0].strip() or block[:1] in (b"\n", b"\r", b" ", b"\t")
                   or _MAYBE_BLANK.search(block) is not None)
    if maybe_blank and any(not ln.strip() for ln in lines):
        keep = [(first_line + i, ln) for i, ln in enumerate(lines) if ln.strip()]
        return Chunk([ln for _, ln in keep], LineOrigins(inp.name, lines=[k for k, _ in keep]),
                     f"{sha}+{offset}-{offset + nbytes}", nbytes)
    return Chunk(lines, LineOrigins(inp.name, first_line), f"{sha}+{offset}-{offset + nbytes}", nbytes)


def _line_chunks(stream: IO[bytes], inp: InputFile, sha: str, chunk_bytes: int,
                 max_record_bytes: int) -> Iterator[Chunk]:
    """Split the stream at newlines without copying whole chunks: each block read is split in
    place; only the line straddling two blocks is joined."""
    offset = 0
    line_no = 1
    carry = b""
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            if carry:
                chunk = _make_chunk([carry], b"", inp, sha, line_no, offset, len(carry))
                if chunk.count:
                    yield chunk
            return
        lines = block.split(b"\n")
        if len(lines) == 1:  # no newline in this block
            carry += block
            if len(carry) <= max(chunk_bytes, max_record_bytes + 1):
                continue
            # A line longer than a chunk and the cap: keep cap+1 bytes (-> oversized), skip the rest.
            head, skipped = carry[: max_record_bytes + 1], len(carry)
            carry = b""
            while True:
                more = stream.read(chunk_bytes)
                if not more:
                    break
                nl = more.find(b"\n")
                if nl >= 0:
                    skipped += nl + 1
                    carry = more[nl + 1:]
                    break
                skipped += len(more)
            yield Chunk([head], LineOrigins(inp.name, line_no), f"{sha}+{offset}-{offset + skipped}", skipped)
            offset += skipped
            line_no += 1
            continue
        nbytes = len(carry) + len(block) - len(lines[-1])
        if carry:
            lines[0] = carry + lines[0]
        carry = lines.pop()  # the part after the last newline: the start of the next line
        consumed = len(lines)
        chunk = _make_chunk(lines, block, inp, sha, line_no, offset, nbytes)
        del block
        if chunk.count:
            yield chunk
        offset += nbytes
        line_no += consumed


def _csv_chunks(opened: _Opened, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """CSV rows as JSON objects keyed by the header; origin = the row's first line."""
    with opened.stream() as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
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

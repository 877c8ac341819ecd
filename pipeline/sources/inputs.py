"""Input files: what the user named (paths, folders, ``-`` for stdin), opened once, and the chunks they
become. Shared by the readers (:mod:`.lines`, :mod:`.documents`) and :func:`.files.read_chunks`.

Also the one rule for chunk keys (:func:`chunk_key`, docs/design.md §3) that every reader follows.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from ztaudit.core.errors import SourceError
from ztaudit.core.quarantine import Rejected
from ztaudit.pipeline.records import LineOrigins, PackedRecords, pack_records

log = logging.getLogger(__name__)

DOCUMENT_MAX_BYTES: Final = 256 * 1024 * 1024
PEEK_BYTES: Final = 1024 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
BOM: Final = b"\xef\xbb\xbf"
STDIN: Final = "-"
#: At most this many input lines (blank ones included) or records per chunk, whatever their size:
#: a chunk of 64 MiB of one-byte lines would otherwise hold 32 million records, and their
#: per-record arrays and quarantine entries would take gigabytes (issue 11, item 17). 2^18 is
#: above what 64 MiB of real audit events holds (~47,000 of 1.4 KB), so it cuts only odd input.
MAX_CHUNK_LINES: Final = 1 << 18
#: Errors of a gzip stream that ends early or is corrupt (``EOFError``: cut short;
#: ``BadGzipFile``: bad header or CRC; ``zlib.error``: corrupt deflate data).
GZIP_ERRORS: Final = (EOFError, gzip.BadGzipFile, zlib.error)


def chunk_key(anchor: bytes | None, prefix_digest: bytes, start: str) -> str:
    """The deterministic file key of a chunk: ``<16 hex>+<start>``.

    The hex is ``sha256(sha256(anchor) || prefix_digest)``, where ``anchor`` is the input's
    first record and ``prefix_digest`` the sha256 of everything *before* the chunk's start (the
    bytes for line files, the records for documents and CSV); ``start`` names the start
    (a byte offset, ``d<offset>`` or ``L<line>``). Nothing from the chunk's end or from where the
    input ended goes in, so the last, partial chunk of a file that is still growing has the same
    key as that chunk of the grown file, and the sink's replace-by-key keeps one row per record
    (docs/design.md §3, issue 11 item 1).

    Why the anchor: the content before the *first* chunk is empty for every file, so without it
    every file's first chunk would share one key and replace the others'. The first record names
    the stream the way Vector's ``checksum`` file fingerprint does (a checksum of the first line;
    vector.dev/docs/reference/configuration/sources/file/#fingerprint). The price, documented in
    docs/design.md §3: two *different* inputs whose first records are identical, byte for byte,
    share their first chunk's key, and an input whose first record is not complete yet (a one-line
    file still being written) changes that key when it is.
    """
    digest = hashlib.sha256(hashlib.sha256(anchor or b"").digest() + prefix_digest).hexdigest()[:16]
    return f"{digest}+{start}"


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

    __slots__ = ("_records", "file_key", "lines_covered", "nbytes", "origins", "packed", "rejected")

    def __init__(self, records: list[bytes], origins: LineOrigins, file_key: str, nbytes: int,
                 packed: PackedRecords | None = None, rejected: list[Rejected] | None = None) -> None:
        self.origins = origins
        #: records the reader itself quarantines (a gzip stream's incomplete tail, a document over
        #: :data:`DOCUMENT_MAX_BYTES`): already scrubbed, to be written with the chunk's rejects
        self.rejected: list[Rejected] = rejected or []
        self.file_key = file_key
        #: input bytes this chunk covers, from its first record's start to its last one's end:
        #: progress, and the extent the sink compares between versions of one key
        #: (``LakeSink.write_chunk``), so never the records' stored size -- a prefix's chunk must
        #: never cover more than the same chunk of the grown input (``.documents`` module docstring)
        self.nbytes = nbytes
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


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder that :func:`expand_paths` did not read, and why (said, not silent)."""

    path: str
    reason: str


class Inputs(list[InputFile]):
    """The input files of :func:`expand_paths` (a list), and what it skipped (``skipped``)."""

    def __init__(self, files: Sequence[InputFile] = (), skipped: Sequence[Skipped] = ()) -> None:
        super().__init__(files)
        self.skipped: list[Skipped] = list(skipped)


def _walk(root: Path, skipped: list[Skipped]) -> list[Path]:
    """The regular files under ``root`` (sorted; hidden entries and ``*.md`` left out by rule).

    A folder that cannot be listed, and an entry that is not a regular file (a FIFO or socket,
    which could block the run; a dangling symbolic link), are added to ``skipped`` with the reason
    instead of being passed over silently (issue 11, item 8). ``os.walk`` reports a folder it
    cannot list through ``onerror``; ``Path.rglob`` drops it without a word.
    """
    def unreadable(exc: OSError) -> None:
        skipped.append(Skipped(str(exc.filename or root), f"cannot list folder: {exc.strerror or exc}"))

    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            f = here / name
            if name.startswith(".") or f.suffix.lower() == ".md":
                continue
            try:
                mode = f.stat().st_mode
            except OSError as exc:
                skipped.append(Skipped(str(f), f"cannot stat: {exc.strerror or exc}"
                                       + (" (dangling symbolic link)" if f.is_symlink() else "")))
                continue
            if stat.S_ISREG(mode):
                files.append(f)
            else:
                skipped.append(Skipped(str(f), "not a regular file (a FIFO, socket or device inside a "
                                               "folder is not read; name it on the command line to read it)"))
    return sorted(files)


def expand_paths(paths: Sequence[str]) -> Inputs:
    """The input files for ``paths``: files as given, folders walked recursively (sorted,
    hidden files/folders and ``*.md`` skipped), ``-`` for stdin.

    Called by ``ingest_paths`` before anything is read. Raises SourceError for a path that does
    not exist or a folder with no files. Entries of a folder that cannot be read are skipped: each
    is logged as a warning and listed in the result's ``skipped`` (for the ingest summary). A FIFO,
    a process substitution (``<(cmd)``, ``/dev/fd/N``) or a device named on the command line is
    an input like a file: :func:`open_input` reads it as a stream.
    """
    out = Inputs()
    for raw in paths:
        if raw == STDIN:
            out.append(InputFile(None, "<stdin>"))
            continue
        p = Path(raw)
        if not p.exists():
            raise SourceError(f"{raw}: no such file or directory",
                              fix="check the path (use - to read standard input)")
        if p.is_dir():
            skipped: list[Skipped] = []
            files = _walk(p, skipped)
            for s in skipped:
                log.warning("skipped %s: %s", s.path, s.reason)
            out.skipped += skipped
            if not files:
                raise SourceError(f"{raw}: folder holds no input files"
                                  + (f" ({len(skipped)} entries skipped: {skipped[0].path}: {skipped[0].reason})"
                                     if skipped else ""),
                                  fix="point at a folder of log files (hidden files and *.md are skipped)")
            out.extend(InputFile(f, str(f)) for f in files)
        else:
            out.append(InputFile(p, raw))
    return out


@dataclass
class OpenedInput:
    raw: IO[bytes]  # the file as stored (compressed or not), seekable
    gz: bool

    def stream(self) -> AbstractContextManager[IO[bytes]]:
        """The content from the start (decompressed); leaving the ``with`` does not close ``raw``.

        A ``.gz`` input comes as a :class:`GuardedStream`: a truncated or corrupt stream ends
        early instead of raising, and its ``error`` says why.
        """
        self.raw.seek(0)
        if self.gz:
            return GuardedStream(gzip.GzipFile(fileobj=self.raw, mode="rb"))  # type: ignore[return-value]
        return nullcontext(self.raw)


class GuardedStream(io.RawIOBase):
    """A decompressing stream that stops at the first gzip error instead of raising it.

    Used by :meth:`OpenedInput.stream` for ``.gz`` inputs. ``readinto`` fills its buffer from
    ``GzipFile.readinto1`` one decompressed piece at a time, so when a truncated or corrupt stream
    fails, every byte decompressed before the failure has already been returned (a plain
    ``readinto`` of a large buffer raises and loses the count of what it filled). After the
    failure the stream reads as ended and ``error`` holds the exception; the line reader keeps
    every complete line and quarantines the incomplete tail as ``truncated`` (issue 11, item 7).
    """

    def __init__(self, inner: gzip.GzipFile) -> None:
        super().__init__()
        self._inner = inner
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        got = 0
        while got < len(view) and self.error is None:
            try:
                n = self._inner.readinto1(view[got:])
            except GZIP_ERRORS as exc:
                self.error = exc
                break
            if not n:
                break
            got += n
        return got

    def close(self) -> None:
        """Close the decompressor (not the file under it, which ``read_chunks`` owns)."""
        self._inner.close()
        super().close()


def _spool(src: IO[bytes], what: str) -> IO[bytes]:
    """Copy a stream that cannot be read twice (stdin, a FIFO, ``<(cmd)``) to a temporary file,
    which the readers may then seek in (the document reader reads the start twice). The caller
    closes it; the file has no name on disk."""
    spool = tempfile.TemporaryFile(prefix="ztaudit-stdin-")  # closed by read_chunks
    try:
        shutil.copyfileobj(src, spool, 1024 * 1024)
    except OSError as exc:
        spool.close()
        raise SourceError(f"cannot read {what}: {exc.strerror or exc}") from exc
    spool.seek(0)
    return spool


def open_input(inp: InputFile) -> OpenedInput:
    """Open ``inp`` once for :func:`.files.read_chunks`, which closes ``raw``.

    Stdin, and any named input that is not a regular file (a FIFO, a process substitution such
    as ``<(zcat x.gz)`` which is ``/dev/fd/N``, a character device), is spooled to a temporary
    file first: it can be read only once and cannot seek (issue 11, item 8). Raises SourceError
    naming the input when it cannot be opened or read.
    """
    if inp.path is None:
        fh: IO[bytes] = _spool(sys.stdin.buffer, "standard input")
    else:
        try:
            fh = open(inp.path, "rb")  # closed by read_chunks
        except OSError as exc:
            raise SourceError(f"{inp.name}: cannot open: {exc.strerror or exc}",
                              fix="check the file's permissions") from exc
        try:
            regular = stat.S_ISREG(os.fstat(fh.fileno()).st_mode) and fh.seekable()
        except OSError:
            regular = False
        if not regular:
            with fh:
                fh = _spool(fh, inp.name)
    magic = fh.read(2)
    fh.seek(0)
    gz = magic == GZIP_MAGIC or (inp.path is not None and inp.path.suffix == ".gz")
    return OpenedInput(fh, gz)


def total_size(inputs: Sequence[InputFile]) -> int:
    """Bytes on disk of the file inputs (for progress; stdin counts 0)."""
    total = 0
    for i in inputs:
        try:
            total += i.size
        except OSError:
            continue
    return total

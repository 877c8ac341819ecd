"""Input files: what the user named (paths, folders, ``-`` for stdin), opened once, and the chunks they
become. Shared by the readers (:mod:`.lines`, :mod:`.documents`) and :func:`.files.read_chunks`.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from ztaudit.core.errors import SourceError
from ztaudit.pipeline.records import LineOrigins, PackedRecords, pack_records

DOCUMENT_MAX_BYTES: Final = 256 * 1024 * 1024
PEEK_BYTES: Final = 1024 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
BOM: Final = b"\xef\xbb\xbf"
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


def sha16(fh: IO[bytes]) -> str:
    h = hashlib.sha256()
    while block := fh.read(8 * 1024 * 1024):
        h.update(block)
    digest = h.hexdigest()[:16]
    fh.seek(0)
    return digest


@dataclass
class OpenedInput:
    raw: IO[bytes]  # the file as stored (compressed or not), seekable
    gz: bool
    _sha: str | None = None

    @property
    def sha(self) -> str:
        """Hash of the whole stored file (16 hex), for the document and CSV readers' file keys.

        Computed on first use: the line reader, which handles nearly all volume, hashes as it
        reads instead (:func:`line_chunks`), so big files are not read twice.
        """
        if self._sha is None:
            pos = self.raw.tell()
            self.raw.seek(0)
            self._sha = sha16(self.raw)
            self.raw.seek(pos)
        return self._sha

    def stream(self) -> AbstractContextManager[IO[bytes]]:
        """The content from the start (decompressed); leaving the ``with`` does not close ``raw``."""
        self.raw.seek(0)
        if self.gz:
            return gzip.GzipFile(fileobj=self.raw, mode="rb")  # type: ignore[return-value]
        return nullcontext(self.raw)


def open_input(inp: InputFile) -> OpenedInput:
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

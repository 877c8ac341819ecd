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

Deterministic file keys (docs/design.md "Lake layout"), so ingesting the same input again replaces the
same lake files instead of adding rows: for line files ``<sha256 of the content from byte 0 to the
chunk's end, 16 hex>+<first byte>-<end byte>``, hashed while reading (a file that grew keeps the
keys of its unchanged chunks); for documents and CSV ``<sha256 of the whole file>+<range>`` (CSV:
line range). Stdin is spooled to a temporary file, which the document reader may read twice.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

from ztaudit.core.errors import SourceError
from ztaudit.pipeline.sources.documents import csv_chunks, document_chunks, looks_like_document, read_document
from ztaudit.pipeline.sources.inputs import PEEK_BYTES, Chunk, InputFile, open_input
from ztaudit.pipeline.sources.lines import line_chunks


def read_chunks(inp: InputFile, chunk_bytes: int, max_record_bytes: int) -> Iterator[Chunk]:
    """Chunks of raw records from ``inp`` (see the module docstring for formats).

    Raises SourceError only when the input cannot be opened or read at all (missing, permission,
    a corrupt gzip stream -- then the chunks already yielded stand and the error names the file).
    """
    opened = open_input(inp)
    try:
        csv_like = inp.path is not None and inp.path.name.lower().removesuffix(".gz").endswith(".csv")
        try:
            if csv_like:
                yield from csv_chunks(opened, inp, chunk_bytes)
                return
            with opened.stream() as stream:
                head = stream.read(PEEK_BYTES)
            if looks_like_document(head):
                doc = read_document(opened)
                if doc is not None:
                    chunks = document_chunks(doc, inp, opened.sha, chunk_bytes)
                    if chunks is not None:
                        yield from chunks
                        return
            with opened.stream() as stream:
                yield from line_chunks(stream, inp, chunk_bytes, max_record_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceError(f"{inp.name}: cannot read: {exc}",
                              fix="check that the file is complete (a .gz may be truncated)") from exc
    finally:
        opened.raw.close()


__all__ = ["read_chunks"]

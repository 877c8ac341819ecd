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
  array): when the first non-blank line is a valid *beginning* of a JSON value that does not end
  on that line (decided by parsing, not by its first byte: an oauth2-proxy line starting
  ``[2024/12/12 ...]`` is a text line). The document (up to ``DOCUMENT_MAX_BYTES``, 256 MiB) is parsed
  value by value, a top-level array split into one record per element, each with the line it
  starts on; a value that does not parse is one quarantined record of its own, never split into
  lines (a pretty-printed Secret's lines carry no key for the scrubber to cut at).
* **CSV** (``*.csv``): each row becomes a JSON object keyed by the header (revocation lists).
* ``*.gz``: decompressed on the fly (also detected by magic bytes). A truncated or corrupt
  stream keeps every complete line; the incomplete tail is quarantined ``truncated`` with the
  gzip error, and the next input is read.
* Stdin, FIFOs and process substitutions (``<(cmd)``) are spooled to a temporary file first.

Deterministic file keys (docs/design.md §3), so ingesting the same input again -- or after it
grew -- replaces the same lake files instead of adding rows: ``<16 hex>+<start>``, a hash of the
input's first record and of everything *before* the chunk's start, and the start (a byte offset
for line files, ``d<offset>`` for documents, ``L<line>`` for CSV). See :func:`.inputs.chunk_key`,
and :mod:`.lines` for the chunk boundaries and what a different ``--chunk-bytes`` does.
"""

from __future__ import annotations

from collections.abc import Iterator

from ztaudit.core.errors import SourceError
from ztaudit.pipeline.sources.documents import (
    classify,
    csv_chunks,
    document_chunks,
    json_lines_head,
    read_document,
    unreadable_document,
)
from ztaudit.pipeline.sources.inputs import PEEK_BYTES, Chunk, InputFile, open_input
from ztaudit.pipeline.sources.lines import line_chunks


def read_chunks(inp: InputFile, chunk_bytes: int, max_record_bytes: int) -> Iterator[Chunk]:
    """Chunks of raw records from ``inp`` (see the module docstring for formats).

    Called by ``ingest_paths`` once per input, in its reader thread. Raises SourceError only
    when the input cannot be opened or read at all (missing, permission, an I/O error); then the
    chunks already yielded stand and the error names the file. Bad content never raises: a
    truncated ``.gz`` or a broken document ends as quarantined records in the chunks.
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
            if classify(head) == "document":
                text, why, first_bytes = read_document(opened)
                if text is None and not json_lines_head(head):
                    yield unreadable_document(first_bytes, inp, why)
                    return
                chunks = document_chunks(text, inp, chunk_bytes) if text is not None else None
                del text
                if chunks is not None:
                    yield from chunks
                    return
            with opened.stream() as stream:
                yield from line_chunks(stream, inp, chunk_bytes, max_record_bytes)
        except OSError as exc:
            raise SourceError(f"{inp.name}: cannot read: {exc.strerror or exc}",
                              fix="check that the file is readable") from exc
    finally:
        opened.raw.close()


__all__ = ["read_chunks"]

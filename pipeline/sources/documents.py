"""Whole-document inputs: one pretty-printed JSON value or array (split into records), and CSV files
(one record per row, as a JSON object keyed by the header).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterator
from typing import IO, Any

from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.decode.values import dumps, json_failure, loads
from ztaudit.pipeline.records import LineOrigins
from ztaudit.pipeline.sources.inputs import BOM, DOCUMENT_MAX_BYTES, PEEK_BYTES, Chunk, InputFile, OpenedInput


def looks_like_document(head: bytes) -> bool:
    """True when the first non-blank line opens JSON but is not a complete JSON value."""
    text = head.removeprefix(BOM)
    for line in text.split(b"\n"):
        s = line.strip()
        if not s:
            continue
        if s[:1] not in (b"{", b"["):
            return False
        if len(line) >= len(text) - 1 and len(text) >= PEEK_BYTES:
            return False  # one giant first line: line mode (it will be quarantined oversized)
        try:
            json.loads(s)
        except (ValueError, RecursionError):
            return True
        return False
    return False


def read_document(opened: OpenedInput) -> str | None:
    with opened.stream() as stream:
        data = stream.read(DOCUMENT_MAX_BYTES + 1)
    if len(data) > DOCUMENT_MAX_BYTES:
        return None
    try:
        return data.removeprefix(BOM).decode("utf-8")
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


def document_chunks(text: str, inp: InputFile, sha: str, chunk_bytes: int) -> Iterator[Chunk] | None:
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


def csv_chunks(opened: OpenedInput, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """CSV rows as JSON objects keyed by the header; origin = the row's first line."""
    with opened.stream() as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        try:
            yield from _csv_rows(text, opened, inp, chunk_bytes)
        finally:
            text.detach()  # the wrapper must not close the file: read_chunks owns it


def _csv_rows(text: IO[str], opened: OpenedInput, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """The chunks of :func:`csv_chunks` from the decoded text."""
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

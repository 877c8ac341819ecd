"""Whole-document inputs: one pretty-printed JSON value or array (split into records), and CSV files
(one record per row, as a JSON object keyed by the header).

Called by :func:`.files.read_chunks`. Chunk keys follow :func:`~.inputs.chunk_key`: the input's
first record and a sha256 over the records *before* the chunk (each length-prefixed), so a
document or CSV file that grew (``[a, b]`` -> ``[a, b, c]``, a row appended) keeps its earlier
chunks' keys and the sink's replace-by-key leaves one row per record (issue 11, item 1). A chunk
ends after the record that brings it to ``chunk_bytes`` or to
:data:`~.inputs.MAX_CHUNK_LINES` records, which depends only on the records so far.

A chunk's ``nbytes`` is the span of input it covers, from where its first record starts to where
its last one ends, in UTF-8 bytes of the text -- never the size of its records as stored. The
sink compares it between versions of one key (``LakeSink.write_chunk``: the version that covered
more is the grown one and is not replaced by an older, shorter copy), which is right only if a
prefix of the input never covers more than the grown input does. Record sizes break that: the
element a prefix cuts short is quarantined as its raw, pretty-printed text, which is longer than
the compact re-serialization of the whole element, so the cut chunk of ``[..., {"a": 1`` "covered"
more than the grown chunk holding that element and the ones after it, replaced it, and those
elements were lost (found by hypothesis: 150 events, a prefix of 37.9 % ingested after the whole
file, event 56 gone).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final, Literal

from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.pipeline.decode.values import dumps, json_failure
from ztaudit.pipeline.records import LineOrigins
from ztaudit.pipeline.redact import scrub_raw
from ztaudit.pipeline.sources.inputs import (
    BOM,
    DOCUMENT_MAX_BYTES,
    MAX_CHUNK_LINES,
    PEEK_BYTES,
    Chunk,
    InputFile,
    OpenedInput,
    chunk_key,
)

#: How many lines after a broken first line are looked at to tell a JSON-lines file (most of them
#: complete objects) from a broken pretty-printed document.
_CONFIRM_LINES: Final = 16


def _complete_line(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def classify(head: bytes) -> Literal["lines", "document"]:
    """``document`` when the input's first non-blank line begins a JSON value that goes on past
    the line; else ``lines``. Called by :func:`.files.read_chunks` on the first
    :data:`PEEK_BYTES` of an input that is not CSV.

    Decided by parsing, not by the first byte (issue 11, item 5): a line that parses completely
    is a JSON-lines record, and so is one whose parse fails *inside* it: oauth2-proxy request
    lines start with ``[2024/12/12 10:00:00]``, which is not JSON at ``/``. Only a line that is a
    valid beginning of a JSON value (the parser runs off its end: ``{``, ``[``,
    ``[{"kind": "Event",``) starts a document.
    """
    text = head.removeprefix(BOM)
    for line in text.split(b"\n"):
        s = line.strip()
        if not s:
            continue
        if s[:1] not in (b"{", b"["):
            return "lines"
        if len(line) >= len(text) - 1 and len(text) >= PEEK_BYTES:
            return "lines"  # one giant first line: line mode (it will be quarantined oversized)
        try:
            json.loads(s)
        except (ValueError, RecursionError) as exc:
            try:
                decoded = s.decode("utf-8")
            except UnicodeDecodeError:
                return "lines"
            if json_failure(decoded, exc)[0] is Reason.TRUNCATED:
                return "document"
        return "lines"
    return "lines"


def read_document(opened: OpenedInput) -> tuple[str | None, str, bytes]:
    """``(text, "", b"")``: the document's text, BOM removed; or ``(None, why, first bytes)`` when
    it cannot be one text: ``why`` is ``oversized`` (more than :data:`DOCUMENT_MAX_BYTES`) or
    ``not_utf8``."""
    with opened.stream() as stream:
        data = stream.read(DOCUMENT_MAX_BYTES + 1)
    if len(data) > DOCUMENT_MAX_BYTES:
        return None, "oversized", data[: 64 * 1024]
    try:
        return data.removeprefix(BOM).decode("utf-8"), "", b""
    except UnicodeDecodeError:
        return None, "not_utf8", data[: 64 * 1024]


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


_STRUCTURAL = re.compile(r'[][{}"]')
_IN_STRING = re.compile(r'["\\]')
_SCALAR_END = re.compile(r'[][{},\n]')


def _value_end(text: str, start: int) -> int:
    """Where the JSON value that starts at ``start`` ends, by its brackets alone (strings
    skipped), for a value the parser rejected: a stray comma inside an object does not move its
    closing brace. Anything that is not an object or array ends at the next separator, bracket or
    newline; a value that never closes runs to the end of the text. Always past ``start``; linear
    time (every ``search`` moves forward)."""
    n = len(text)
    if text[start] not in "{[":
        m = _SCALAR_END.search(text, start + 1)
        return n if m is None else m.start()
    depth = 0
    i = start
    while True:
        m = _STRUCTURAL.search(text, i)
        if m is None:
            return n
        c, j = m.group(), m.start()
        if c == '"':  # skip the string, escapes included
            k = j + 1
            while True:
                m2 = _IN_STRING.search(text, k)
                if m2 is None:
                    return n
                if m2.group() == '"':
                    break
                k = m2.start() + 2
            i = m2.end()
            continue
        depth += 1 if c in "[{" else -1
        if depth == 0:
            return j + 1
        i = j + 1


def split_document(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(start offset, value, None) per top-level value -- a top-level array is split into its
    elements -- and (start offset, None, text) for a value that does not parse.

    Also called by ``pipeline.process`` to split a quarantined array record; the document reader
    uses :func:`split_document_spans`, which says where each value ends as well.
    """
    for start, _end, value, bad in split_document_spans(text):
        yield start, value, bad


def split_document_spans(text: str) -> Iterator[tuple[int, int, Any, str | None]]:
    """(start offset, end offset, value, None) per top-level value -- a top-level array is split
    into its elements -- and (start, end, None, text) for a value that does not parse; offsets
    index ``text`` and ``end`` is past the value's last character.

    A value that does not parse is one record of its own, from its start to where its brackets
    close (:func:`_value_end`), and parsing goes on after it: it is quarantined whole, as a
    document, so the scrubber sees its keys (``"data":``) and cuts there, instead of the lines of
    a pretty-printed Secret being stored one by one without the key above them (issue 11, item 13).
    An array cut short (a file still being written) simply ends: every element before the cut
    is a record, and the cut element is one that does not parse.
    """
    dec = json.JSONDecoder()
    n = len(text)
    pos = _skip_ws(text, 0)

    def value_at(p: int) -> tuple[int, Any, str | None, int]:
        try:
            val, end = dec.raw_decode(text, p)
        except (ValueError, RecursionError):
            end = _value_end(text, p)
            return p, None, text[p:end], end
        return p, val, None, end

    while pos < n:
        if text[pos] != "[":
            start, val, bad, end = value_at(pos)
            yield start, end, val, bad
            pos = _skip_ws(text, end)
            continue
        p = _skip_ws(text, pos + 1)
        if p < n and text[p] == "]":
            pos = _skip_ws(text, p + 1)
            continue
        p_elem = p
        while p_elem < n:
            start, val, bad, end = value_at(p_elem)
            yield start, end, val, bad
            p = _skip_ws(text, end)
            while p < n and text[p] not in ",]":  # junk between elements: a record of its own
                junk_end = _value_end(text, p)
                yield p, junk_end, None, text[p:junk_end]
                p = _skip_ws(text, junk_end)
            if p < n and text[p] == ",":
                p_elem = _skip_ws(text, p + 1)
                continue
            break
        pos = _skip_ws(text, p + 1) if p < n else n


class _Chunker:
    """Cuts records into chunks with keys that a grown input keeps (the module docstring).

    Boundaries follow the records' sizes (so they, and the keys, stay what earlier lakes have);
    ``nbytes`` is the input span the chunk covers, from its first record's ``begin`` to its last
    record's ``end`` (byte positions in the input, given by the caller)."""

    def __init__(self, inp: InputFile, chunk_bytes: int, prefix: str) -> None:
        self.inp, self.chunk_bytes, self.prefix = inp, chunk_bytes, prefix
        self.h = hashlib.sha256()  # of the records before the current chunk
        self.anchor: bytes | None = None
        self.records: list[bytes] = []
        self.lines: list[int] = []
        self.size = 0
        self.start = 0
        self.begin = self.end = 0

    def add(self, rec: bytes, line: int, start: int, begin: int, end: int) -> Chunk | None:
        """Add a record that starts at ``start`` (what the key names: an offset or a line) and
        covers input bytes ``[begin, end)``; the chunk it completes, if it does."""
        if not self.records:
            self.start, self.begin = start, begin
        if self.anchor is None:
            self.anchor = rec
        self.records.append(rec)
        self.lines.append(line)
        self.size += len(rec)
        self.end = end
        if self.size >= self.chunk_bytes or len(self.records) >= MAX_CHUNK_LINES:
            return self.flush()
        return None

    def flush(self) -> Chunk | None:
        """The chunk of the records added since the last one (None if there are none)."""
        if not self.records:
            return None
        key = chunk_key(self.anchor, self.h.digest(), f"{self.prefix}{self.start}")
        for rec in self.records:
            self.h.update(len(rec).to_bytes(8, "little"))
            self.h.update(rec)
        chunk = Chunk(self.records, LineOrigins(self.inp.name, lines=self.lines), key, self.end - self.begin)
        self.records, self.lines, self.size = [], [], 0
        return chunk


class _ByteOffsets:
    """UTF-8 byte offsets of increasing character offsets into ``text``, in linear time overall
    (each stretch of a non-ASCII text is encoded once; an ASCII text's offsets are its own)."""

    def __init__(self, text: str) -> None:
        self.text, self.ascii = text, text.isascii()
        self.pos = self.byte = 0

    def at(self, pos: int) -> int:
        """The byte offset of character offset ``pos`` (never less than the last one asked)."""
        if self.ascii:
            return pos
        if pos > self.pos:
            self.byte += len(self.text[self.pos:pos].encode("utf-8", "surrogatepass"))
            self.pos = pos
        return self.byte


def document_chunks(text: str, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk] | None:
    """Records of a whole-document file (:func:`split_document`), or None when it is really a
    JSON-lines file whose first line is broken: its first value does not parse, and most of the
    next non-blank lines (up to :data:`_CONFIRM_LINES`) are complete JSON objects or arrays. Only
    then may it be read line by line: those lines carry their own keys, so the scrubber sees them.
    """
    parts = split_document_spans(text)
    first = next(parts, None)
    if first is None:
        return None
    if first[3] is not None and _json_lines_after_first(text, first[0]):
        return None

    def gen() -> Iterator[Chunk]:
        chunker = _Chunker(inp, chunk_bytes, "d")
        offsets = _ByteOffsets(text)
        line = 1
        last = 0
        for start, end, value, bad in _chain(first, parts):
            line += text.count("\n", last, start)
            last = start
            rec = bad.encode("utf-8", "surrogatepass") if bad is not None else dumps(value)
            chunk = chunker.add(rec, line, start, offsets.at(start), offsets.at(end))
            if chunk is not None:
                yield chunk
        chunk = chunker.flush()
        if chunk is not None:
            yield chunk

    return gen()


def _chain(first: tuple[int, int, Any, str | None], rest: Iterator[tuple[int, int, Any, str | None]]
           ) -> Iterator[tuple[int, int, Any, str | None]]:
    yield first
    yield from rest


#: A line that opens an object and names a member on the line itself (``{"kind": "Event", ...``):
#: a record of a JSON-lines file, whole or cut off. A pretty-printed document opens its objects on
#: a line of their own (``{``, ``"metadata": {``) and names members on the lines below.
_RECORD_START: Final = re.compile(r'\{\s*"(?:[^"\\]|\\.)*"\s*:')


def _record_line(line: str) -> Literal["complete", "cut", ""]:
    """What ``line`` (stripped) is: a complete JSON object or array, a JSON-lines record cut off
    after its first member began (an API server killed mid-write), or neither (``""``)."""
    if line[:1] not in "{[":
        return ""
    if _complete_line(line.encode("utf-8", "surrogatepass")):
        return "complete"
    return "cut" if _RECORD_START.match(line) is not None and line[-1:] not in "{[," else ""


def _json_lines_after_first(text: str, start: int) -> bool:
    """True when most of the (up to :data:`_CONFIRM_LINES`) lines after the one at ``start`` are
    JSON-lines records (:func:`_record_line`: complete, or cut off after a member began): a
    JSON-lines file whose first line is broken.

    Cut-off records count for the file, not against it: an API server in a crash loop leaves many
    cut lines in a row (a hostile test: 10 cut lines before 2,000 events made the whole file one
    quarantined "document" when only complete lines counted). The lines of a pretty-printed
    document are almost never records on their own (``{``, ``"key": value,``, ``},``), so it stays a
    document, and its lines are never stored one by one without the key above them."""
    nl = text.find("\n", start)
    if nl < 0:
        return False
    seen = records = complete = 0
    for line in text[nl + 1: nl + 1 + PEEK_BYTES].split("\n")[:-1]:
        s = line.strip()
        if not s:
            continue
        seen += 1
        kind = _record_line(s)
        records += kind != ""
        complete += kind == "complete"
        if seen >= _CONFIRM_LINES:
            break
    return complete > 0 and 2 * records > seen


def json_lines_head(head: bytes) -> bool:
    """Whether an input that :func:`classify` called a document but that cannot be read as one text
    (:func:`read_document`: over :data:`DOCUMENT_MAX_BYTES`, or not UTF-8) is a JSON-lines file
    whose first line is cut, judged on its first :data:`PEEK_BYTES` as :func:`document_chunks`
    judges a readable one. Called by :func:`.files.read_chunks` before it gives up on the input:
    read line by line, a stray Latin-1 byte or a 1 GiB log costs one quarantined line, not the file."""
    text = head.removeprefix(BOM).decode("utf-8", "replace")
    return _json_lines_after_first(text, _skip_ws(text, 0))


def unreadable_document(head: bytes, inp: InputFile, why: str) -> Chunk:
    """One chunk holding one quarantined record for a document that cannot be parsed at all
    (over :data:`DOCUMENT_MAX_BYTES`, or not UTF-8): its first bytes, cut at the first
    secret-bearing key by :func:`scrub_raw` like any unparsed record. It is never split into lines:
    the lines of a pretty-printed Secret carry no key to cut at (issue 11, item 13)."""
    reason = Reason.OVERSIZED if why == "oversized" else Reason.NOT_UTF8
    detail = (f"a JSON document over {DOCUMENT_MAX_BYTES:,} bytes is not read" if why == "oversized"
              else "a JSON document that is not UTF-8")
    rejected = [Rejected(f"file:{inp.name}:1", reason, detail, scrub_raw(head, parse=False), None, len(head))]
    return Chunk([], LineOrigins(inp.name), chunk_key(head[:4096], b"", "d0"), len(head), rejected=rejected)


def csv_chunks(opened: OpenedInput, inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """CSV rows as JSON objects keyed by the header; origin = the row's first line. Bytes that are
    not UTF-8 become U+FFFD in the rows (read with ``surrogateescape`` so that :func:`_counted`
    still counts the input's own bytes, then replaced)."""
    with opened.stream() as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            yield from _csv_rows(text, inp, chunk_bytes)
        finally:
            text.detach()  # the wrapper must not close the file: read_chunks owns it


def _csv_rows(text: IO[str], inp: InputFile, chunk_bytes: int) -> Iterator[Chunk]:
    """The chunks of :func:`csv_chunks` from the decoded text (keys: ``<16 hex>+L<first line>``;
    the anchor is the first row as a record, which holds the header and the first values)."""
    read = [0]  # input bytes of the lines the reader has taken so far (the chunks' spans)
    reader = csv.DictReader(_counted(text, read), restkey="_extra")
    chunker = _Chunker(inp, chunk_bytes, "L")
    reader.fieldnames  # noqa: B018 - reads the header line, so line_num points past it
    prev = reader.line_num
    begin = read[0]
    for row in reader:
        start = prev + 1
        prev = reader.line_num
        chunk = chunker.add(dumps({str(k): v for k, v in row.items()}), start, start, begin, read[0])
        begin = read[0]
        if chunk is not None:
            yield chunk
    chunk = chunker.flush()
    if chunk is not None:
        yield chunk


def _counted(lines: Iterable[str], read: list[int]) -> Iterator[str]:
    """``lines`` (decoded with ``surrogateescape``), adding each one's size in input bytes to
    ``read[0]`` as the CSV reader takes it, and with bytes that were not UTF-8 replaced by U+FFFD.

    The reader takes only the lines of the row it returns, so ``read[0]`` is then where that row
    ends. Counted in the input's own bytes, not in the replaced text's: a prefix cut inside a
    multi-byte character ends in U+FFFD, which is 3 bytes however few of the character's bytes
    the prefix has, and it must not seem to cover as much as the grown line."""
    for line in lines:
        if line.isascii():
            read[0] += len(line)
            yield line
        else:
            raw = line.encode("utf-8", "surrogateescape")
            read[0] += len(raw)
            yield raw.decode("utf-8", "replace")

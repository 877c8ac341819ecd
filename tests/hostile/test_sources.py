"""The file readers under hostile and growing input (issue 11, items 1, 5, 7, 8, 13, 17).

Every input is generated here (tmp_path); nothing is copied from the shared corpus.

* a chunk's key depends only on the content before it (and the file's first record), so every
  prefix of a growing file -- JSON lines, CSV, a pretty-printed JSON array -- gives keys that the
  grown file keeps, each holding a prefix of the grown chunk's records; with the sink's
  replace-by-key, re-ingesting prefixes leaves exactly one row per record;
* document vs lines is decided by parsing (an oauth2-proxy line starting ``[2024/...`` is a line);
* a broken pretty-printed document is quarantined as a document, never as keyless lines;
* a truncated ``.gz`` keeps its complete lines and quarantines the tail;
* FIFOs and ``/dev/fd/N`` are read as streams; what a folder walk skips is said;
* a file of blank lines is read in linear time and bounded memory.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.events import audit_event as event

from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.sources.files import read_chunks
from ztaudit.pipeline.sources.inputs import Chunk, InputFile, expand_paths


def chunks_of(path: Path, chunk_bytes: int, cap: int = 1 << 20) -> list[Chunk]:
    return list(read_chunks(InputFile(path, str(path)), chunk_bytes, cap))


def rows(lake: Path, table: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in LakeSink(lake).files(table):
        out.extend(pq.read_table(f).to_pylist())
    return out


# ---- item 1: keys of growing files ------------------------------------------------------------

def _jsonl(n: int, pad: list[int]) -> tuple[bytes, list[int]]:
    """JSON lines and the byte offset where each record ends (newline included)."""
    out, ends = b"", []
    for i in range(n):
        out += orjson.dumps({"n": i, "pad": "x" * pad[i % len(pad)]}) + b"\n"
        ends.append(len(out))
    return out, ends


def _csv(n: int, pad: list[int]) -> tuple[bytes, list[int]]:
    out = b"subject,revoked_at,reason\n"
    ends = []
    for i in range(n):
        out += b"user%d@example.com,2026-11-21T08:00:%02dZ,%s\n" % (i, i % 60, b"y" * pad[i % len(pad)])
        ends.append(len(out))
    return out, ends


def _array(n: int, pad: list[int]) -> tuple[bytes, list[int]]:
    """A pretty-printed JSON array (``json.dumps(indent=2)`` style), written element by element as
    a producer appending to it would; ``ends`` are where each element's text ends."""
    out, ends = b"[\n", []
    for i in range(n):
        if i:
            out += b",\n"
        out += json.dumps({"n": i, "pad": "z" * pad[i % len(pad)]}, indent=2).replace("\n", "\n  ").encode()
        ends.append(len(out))
    return out + b"\n]\n", ends


FORMATS = {"jsonl": (_jsonl, "in.jsonl"), "csv": (_csv, "in.csv"), "array": (_array, "in.json")}


def _keyed(path: Path, chunk_bytes: int) -> dict[str, list[bytes]]:
    chunks = chunks_of(path, chunk_bytes)
    keyed = {c.file_key: c.records for c in chunks}
    assert len(keyed) == len(chunks), "two chunks of one input share a key"
    return keyed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(FORMATS)), n=st.integers(2, 40),
       pad=st.lists(st.integers(0, 120), min_size=1, max_size=5),
       cuts=st.lists(st.floats(0, 1), min_size=1, max_size=4),
       chunk_bytes=st.sampled_from([16, 64, 200, 1000, 1 << 20]))
def test_every_prefix_of_a_growing_file_keeps_its_keys(tmp_path: Path, fmt: str, n: int, pad: list[int],
                                                       cuts: list[float], chunk_bytes: int) -> None:
    """For prefixes P1 < P2 < ... < whole file: every key of an earlier read is a key of every later
    one, and holds a prefix of the later chunk's records (the earlier last record may be a cut
    version of the later one: the file ended inside it). Old keys hashed the content up to the
    chunk's *end*, so the last partial chunk's key changed and its rows stayed twice (item 1).

    Prefixes shorter than the first record are left out: the first record names the file
    (:func:`ztaudit.pipeline.sources.inputs.chunk_key`), so it must be complete.
    """
    make, name = FORMATS[fmt]
    content, ends = make(n, pad)
    lo = ends[0] + (0 if fmt == "csv" else 1)  # the first record and what follows it on its line
    lengths = sorted({lo + int(c * (len(content) - lo)) for c in cuts} | {len(content)})
    path = tmp_path / name
    earlier: dict[str, list[bytes]] | None = None
    for length in lengths:
        path.write_bytes(content[:length])
        later = _keyed(path, chunk_bytes)
        if earlier is not None:
            assert set(earlier) <= set(later)
            for key, recs in earlier.items():
                got = later[key]
                assert got[: len(recs) - 1] == recs[:-1]
                assert len(got) >= len(recs)
        earlier = later


def _ingested_exactly_once(lake: Path, n: int) -> None:
    ids = Counter(r["audit_id"] for r in rows(lake, "k8s_audit"))
    assert ids == {f"id-{i:06d}": 1 for i in range(n)}


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_reingesting_prefixes_of_a_growing_log_leaves_one_row_per_event(tmp_path: Path, layout: str) -> None:
    """End to end through ``ingest_paths`` and the sink's replace-by-key (another part of item 1):
    1,000 events, ingested at several prefixes (cut inside lines too), then whole, in a row and
    again: exactly one row per event. Before: 1,000 + 1,000 -> 3,000 rows."""
    n = 600
    events = [event(i) for i in range(n)]
    if layout == "jsonl":
        content = b"".join(orjson.dumps(e) + b"\n" for e in events)
    else:
        content = json.dumps(events, indent=2).encode() + b"\n"
    path = tmp_path / "audit.log"
    lake = tmp_path / "lake"
    for frac in (0.3, 0.31, 0.55, 0.8, 1.0, 1.0):
        path.write_bytes(content[: int(len(content) * frac)])
        ingest_paths([path], lake, cluster="c1", chunk_bytes=16 * 1024)
    _ingested_exactly_once(lake, n)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["jsonl", "array"]),
       cuts=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=3), whole_at=st.integers(0, 3))
@example(layout="jsonl", cuts=[0.5], whole_at=0)  # the grown file first, a half-copy after it
# The grown file first, then a prefix cut inside element 56: the cut element, quarantined as its
# pretty-printed text, made the cut chunk's extent (then the records' stored size) larger than the
# grown chunk's, so it replaced it and event 56 was lost (test_a_prefix_never_covers_more_...).
@example(layout="array", cuts=[0.37890625], whole_at=0)
def test_prefixes_reingested_in_any_order_leave_one_row_per_event(tmp_path_factory: pytest.TempPathFactory,
                                                                  layout: str, cuts: list[float],
                                                                  whole_at: int) -> None:
    """Item 1, in any order: prefixes of a file (cut anywhere, inside lines too, in the order
    hypothesis draws them) and the whole file at a random place among them: exactly one row per
    event and no quarantine row. A shorter, older copy ingested after the grown file must not
    replace the grown file's chunk (``LakeSink.write_chunk``'s extent rule): without it the events
    past the cut are lost and the cut line stays quarantined."""
    tmp = tmp_path_factory.mktemp("order")
    n = 150
    events = [event(i) for i in range(n)]
    if layout == "jsonl":
        content = b"".join(orjson.dumps(e) + b"\n" for e in events)
    else:
        content = json.dumps(events, indent=2).encode() + b"\n"
    fracs = list(cuts)
    fracs.insert(min(whole_at, len(fracs)), 1.0)
    path, lake = tmp / "audit.log", tmp / "lake"
    for frac in fracs:
        path.write_bytes(content[: int(len(content) * frac)])
        ingest_paths([path], lake, cluster="c1", chunk_bytes=8 * 1024)
    _ingested_exactly_once(lake, n)
    assert rows(lake, "quarantine") == []


def _cut_formats() -> dict[str, tuple[str, bytes, int]]:
    """Name, content and where its first record ends, for the inputs of the extent test: non-ASCII
    values (byte and character offsets differ; a cut can fall inside a character) and, in the CSV,
    rows whose last field is empty (a row cut before that field's comma reads it as ``null``,
    longer than the whole row's ``""``)."""
    arr = json.dumps([{"n": i, "who": "z" * (i * 7 % 30) + "é→"[: i % 3]} for i in range(12)],
                     indent=2, ensure_ascii=False).encode() + b"\n"
    rows_ = [f"user{i}@example.com,2026-11-21T08:00:{i:02d}Z,{'→é' * (i % 2)}\n" for i in range(14)]
    csv_ = ("subject,revoked_at,reason\n" + "".join(rows_)).encode()
    jsonl = b"".join(orjson.dumps({"n": i, "who": "é" * (i % 3)}) + b"\n" for i in range(30))
    return {"array": ("in.json", arr, arr.index(b"}") + 1),
            "csv": ("in.csv", csv_, csv_.index(b"\n", 30) + 1),
            "jsonl": ("in.jsonl", jsonl, jsonl.index(b"\n") + 1)}


@pytest.mark.parametrize("fmt", ["array", "csv", "jsonl"])
def test_a_prefix_never_covers_more_than_the_grown_file(tmp_path: Path, fmt: str) -> None:
    """The root of the lost event (the ``array`` example above): the sink keeps the version of a
    key with the larger extent (``Chunk.nbytes``) when it holds the other's rows, so for every
    prefix of an input, cut at every byte, each chunk key it shares with the grown input must
    cover less of it than the grown chunk does -- strictly less when their records differ (a cut
    last record, fewer records), or the cut copy replaces the grown chunk and what it lacks is
    lost. The extent was the records' stored size: a document element cut short is stored as its
    pretty-printed text, longer than the whole element re-serialized, and a CSV row cut before its
    last comma holds ``null`` where the whole row holds ``""``."""
    name, content, first_end = _cut_formats()[fmt]
    path = tmp_path / name
    path.write_bytes(content)
    grown = {c.file_key: c for c in chunks_of(path, 96)}
    assert len(grown) >= 4
    # the extent is the input's bytes: an array chunk's span is its elements' text, from the first
    # one's "{" to the last one's "}" (the key's d<offset> counts characters); CSV rows cover all
    # but the header line
    if fmt == "array":
        text = content.decode()
        for key, c in grown.items():
            at = len(text[: int(key.split("+d")[1])].encode())
            span = content[at: at + c.nbytes]
            assert span[:1] == b"{" and span[-1:] == b"}" and span.count(b"{") == len(c.records)
    if fmt == "csv":
        assert sum(c.nbytes for c in grown.values()) == len(content) - content.index(b"\n") - 1
    shared = 0
    for length in range(first_end, len(content)):
        path.write_bytes(content[:length])
        for c in chunks_of(path, 96):
            g = grown.get(c.file_key)
            if g is None:
                continue
            shared += 1
            assert c.nbytes <= g.nbytes, (length, c.file_key)
            if c.records != g.records:
                assert c.nbytes < g.nbytes, (length, c.file_key, c.records[-1], g.records[-1])
    assert shared > len(content)  # most prefixes share several keys with the grown input


def test_a_revocation_list_with_a_row_appended_keeps_one_row_per_revocation(tmp_path: Path) -> None:
    """A CSV revocation list's key was the hash of the whole file: one row appended doubled every
    earlier row (item 1)."""
    path = tmp_path / "revoked.csv"
    lake = tmp_path / "lake"
    head = "subject,revoked_at,reason\n"
    lines = [f"user{i}@example.com,2026-11-21T08:{i:02d}:00Z,left\n" for i in range(30)]
    for k in (10, 11, 30):
        path.write_text(head + "".join(lines[:k]))
        ingest_paths([path], lake)
    got = Counter(r["subject_login"] for r in rows(lake, "idp_event"))
    assert got == {f"user{i}@example.com": 1 for i in range(30)}


def test_reingesting_with_another_chunk_size_keeps_one_row_per_event(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Chunk starts sit on a grid of the chunk size, so a file re-ingested with another
    ``--chunk-bytes`` got other keys and doubled (574 rows for 300 events). The lake remembers its
    grid and keeps using it, with a warning."""
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(orjson.dumps(event(i)) + b"\n" for i in range(300)))
    lake = tmp_path / "lake"
    ingest_paths([path], lake, cluster="c1", chunk_bytes=4096)
    with caplog.at_level("WARNING"):
        ingest_paths([path], lake, cluster="c1", chunk_bytes=10240)
        ingest_paths([path], lake, cluster="c1")
    _ingested_exactly_once(lake, 300)
    assert "cut every 4096 bytes" in caplog.text


def test_an_edited_revocation_list_replaces_its_older_version(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A hand-kept revocation list is edited, not only appended to: a row corrected to a shorter
    one must replace the old row. The "a longer version wins" rule (for an older prefix ingested
    after the grown file) applies only when the longer version holds every row of the shorter
    one; before, the edit was dropped and the summary still counted it as written."""
    path = tmp_path / "revoked.csv"
    lake = tmp_path / "lake"
    head = "subject,revoked_at,reason\n"
    path.write_text(head + "oscar@example.com,2026-11-21T08:00:00Z,left the company\n"
                    "dave@example.com,2026-11-25T18:00:00Z,removed from payments on-call\n")
    ingest_paths([path], lake)
    path.write_text(head + "oscar@example.com,2026-11-21T08:00:00Z,left the company\n"
                    "eve@example.com,2026-11-25T18:00:00Z,fired\n")
    with caplog.at_level("WARNING"):
        ingest_paths([path], lake)
    assert sorted(r["subject_login"] for r in rows(lake, "idp_event")) == ["eve@example.com", "oscar@example.com"]
    assert "rows differ" in caplog.text
    # ... while an older, shorter copy of the edited list changes nothing
    path.write_text(head + "oscar@example.com,2026-11-21T08:00:00Z,left the company\n")
    ingest_paths([path], lake)
    assert sorted(r["subject_login"] for r in rows(lake, "idp_event")) == ["eve@example.com", "oscar@example.com"]


def test_different_files_with_the_same_header_keep_their_rows(tmp_path: Path) -> None:
    """The anchor keeps files apart: two CSV lists with the same header (the content before their
    first chunk is the same) must not replace each other's rows."""
    lake = tmp_path / "lake"
    for name, who in (("a.csv", "ann"), ("b.csv", "bob")):
        (tmp_path / name).write_text(f"subject,revoked_at\n{who}@example.com,2026-11-21T08:00:00Z\n")
        ingest_paths([tmp_path / name], lake)
    assert sorted(r["subject_login"] for r in rows(lake, "idp_event")) == ["ann@example.com", "bob@example.com"]


# ---- item 5: document vs lines by parsing -----------------------------------------------------

def test_text_lines_that_start_with_a_bracket_are_lines(tmp_path: Path) -> None:
    """oauth2-proxy request lines start with ``[2024/12/12 ...]``: the file was read as one JSON
    document and became 2 records (a number and one invalid_json blob) for 14 lines."""
    lines = [f'[2024/12/12 10:00:{i:02d}] [oauthproxy.go:1000] 10.0.0.{i} - - alice@example.com '
             f'"GET /api/v1/namespaces/default/pods HTTP/1.1" 200 512 0.00{i}' for i in range(14)]
    path = tmp_path / "oauth2-proxy.log"
    path.write_text("\n".join(lines) + "\n")
    got = [r for c in chunks_of(path, 1 << 20) for r in c.records]
    assert got == [ln.encode() for ln in lines]


def test_a_pretty_printed_document_is_still_a_document(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps([event(1), event(2)], indent=2))
    got = [orjson.loads(r)["auditID"] for c in chunks_of(path, 1 << 20) for r in c.records]
    assert got == ["id-000001", "id-000002"]


def test_json_lines_with_a_broken_first_line_are_still_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"kind": "Event", "auditID": \n' + b"".join(orjson.dumps(event(i)) + b"\n" for i in range(5)))
    assert sum(c.count for c in chunks_of(path, 1 << 20)) == 6


# ---- item 13: a broken pretty-printed Secret is quarantined as a document ----------------------

MARKER = "ZTAUDIT-PLANTED-MARKER-7f3a"


def _lake_bytes(lake: Path) -> bytes:
    """Every file under the lake, Parquet files decoded (their pages are zstd-compressed, so a
    marker would not show in the file's bytes)."""
    out = []
    for p in lake.rglob("*"):
        if p.is_file():
            out.append(p.read_bytes())
            if p.suffix == ".parquet":
                out.append(repr(pq.read_table(p).to_pylist()).encode())
                out.append(b"".join(v for r in pq.read_table(p).to_pylist() for v in r.values()
                                    if isinstance(v, bytes)))
    return b"\n".join(out)


def test_json_lines_with_several_cut_lines_near_the_top_are_still_lines(tmp_path: Path) -> None:
    """An API server in a crash loop leaves cut-off lines: lines 1 and 3 of 1,000 cut short must
    not make the whole file one quarantined "document" (997 events lost before)."""
    lines = [orjson.dumps(event(i)) for i in range(1000)]
    lines[0], lines[2] = lines[0][:60], lines[2][:70]
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = ingest_paths([path], tmp_path / "lake", cluster="c1")
    assert stats.rows["k8s_audit"] == 998 and stats.quarantined_total == 2


@pytest.mark.parametrize("stray", [b"", b"caf\xe9 "])
def test_a_crash_loop_of_ten_cut_lines_keeps_the_events_after_it(tmp_path: Path, stray: bytes) -> None:
    """A hostile trial: 10 cut lines (a crash loop) before 2,000 events made the file one quarantined
    "document" (1 record, 2,000 events lost): only complete lines counted as JSON lines, and 9 of
    the next 16 were cut. With a Latin-1 byte further down, the whole file was one ``not_utf8``
    record. Cut records count for JSON lines now, and an unreadable document is looked at first."""
    lines = [orjson.dumps(event(i)) for i in range(2010)]
    for i in range(10):
        lines[i] = lines[i][: 60 + 7 * i]
    if stray:
        lines[1510] = lines[1510].replace(b'"alice', b'"' + stray + b"alice", 1)
        assert stray in lines[1510]
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = ingest_paths([path], tmp_path / "lake", cluster="c1")
    bad = 1 if stray else 0
    assert stats.rows["k8s_audit"] == 2000 - bad and stats.quarantined_total == 10 + bad, stats


def test_a_broken_pretty_printed_secret_does_not_leak_its_data(tmp_path: Path) -> None:
    """One stray comma in a pretty-printed Secret event: the reader fell back to one record per
    line, and ``"db-pass": "<base64>",`` lines (no ``"data":`` key to cut at) were stored verbatim
    in quarantine.raw (item 13). Now the event is one quarantined record, scrubbed as a whole."""
    b64 = base64.b64encode(MARKER.encode()).decode()
    ev = event(1, level="RequestResponse", verb="create",
               objectRef={"resource": "secrets", "namespace": "default", "name": "db", "apiVersion": "v1"},
               requestObject={"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "db"},
                              "data": {"db-pass": b64}, "stringData": {"plain": MARKER}})
    text = json.dumps(ev, indent=2)
    broken = text.replace(f'"db-pass": "{b64}"', f'"db-pass": "{b64}",')  # the stray comma
    assert broken != text
    path = tmp_path / "secret-event.json"
    path.write_text(broken + "\n" + json.dumps(event(2), indent=2) + "\n")
    lake = tmp_path / "lake"
    stats = ingest_paths([path], lake, cluster="c1")
    blob = _lake_bytes(lake)
    assert MARKER.encode() not in blob and b64.encode() not in blob
    q = rows(lake, "quarantine")
    assert [(r["origin"], r["reason"]) for r in q] == [(f"file:{path}:1", "invalid_json")]
    assert stats.rows["k8s_audit"] == 1  # the next event of the document is still read


# ---- item 7: a truncated .gz -------------------------------------------------------------------

def test_a_truncated_gz_keeps_its_complete_lines_and_the_run_goes_on(tmp_path: Path) -> None:
    """A truncated ``.gz`` was a SourceError: exit 2, 0 rows, later inputs never read (item 7)."""
    data = b"".join(orjson.dumps(event(i)) + b"\n" for i in range(400))
    whole = gzip.compress(data)
    bad = tmp_path / "a.jsonl.gz"
    bad.write_bytes(whole[: len(whole) // 2])
    readable = zlib.decompressobj(31).decompress(whole[: len(whole) // 2])
    complete = readable.count(b"\n")
    assert 0 < complete < 400
    good = tmp_path / "b.jsonl"
    good.write_bytes(orjson.dumps(event(1000)) + b"\n")
    lake = tmp_path / "lake"
    stats = ingest_paths([bad, good], lake, cluster="c1", chunk_bytes=4096)
    assert stats.rows["k8s_audit"] == complete + 1
    (q,) = rows(lake, "quarantine")
    assert q["reason"] == "truncated" and "gzip" in q["detail"] and "EOFError" in q["detail"]
    assert q["origin"] == f"file:{bad}:{complete + 1}"
    assert q["raw_size"] == len(readable) - readable.rindex(b"\n") - 1
    assert stats.records == complete + 1 + 1  # every complete line, the tail, the other file


# ---- item 8: FIFOs, /dev/fd/N, unreadable folders ----------------------------------------------

def _feed(path_or_fd: str | int, data: bytes) -> threading.Thread:
    def run() -> None:
        if isinstance(path_or_fd, int):
            with os.fdopen(path_or_fd, "wb") as w:
                w.write(data)
        else:
            with open(path_or_fd, "wb") as w:
                w.write(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_fifo_is_read_as_a_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    t = _feed(str(fifo), b"".join(orjson.dumps(event(i)) + b"\n" for i in range(7)))
    stats = ingest_paths([fifo], tmp_path / "lake", cluster="c1")
    t.join(5)
    assert stats.rows["k8s_audit"] == 7


def test_a_process_substitution_is_read_as_a_stream(tmp_path: Path) -> None:
    r, w = os.pipe()
    t = _feed(w, json.dumps([event(1), event(2)], indent=2).encode())
    try:
        stats = ingest_paths([f"/dev/fd/{r}"], tmp_path / "lake", cluster="c1")
    finally:
        os.close(r)
    t.join(5)
    assert stats.rows["k8s_audit"] == 2


def test_what_a_folder_walk_skips_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable subfolder was skipped silently, and a FIFO in a folder too (item 8). The
    tests run as root, which reads any folder, so listing one is made to fail."""
    root = tmp_path / "logs"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "x.jsonl").write_bytes(b"{}\n")
    (root / "a.jsonl").write_bytes(b"{}\n")
    os.mkfifo(root / "pipe")
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING"):
        got = expand_paths([str(root)])
    assert [i.name for i in got] == [str(root / "a.jsonl")]
    skipped = {s.path: s.reason for s in got.skipped}
    assert "Permission denied" in skipped[str(root / "locked")]
    assert "not a regular file" in skipped[str(root / "pipe")]
    assert str(root / "locked") in caplog.text and str(root / "pipe") in caplog.text
    # ... and the ingest summary says so too, with the reason
    summary = ingest_paths([root], tmp_path / "lake", cluster="c1").summary()
    assert f"{root / 'locked'}: cannot list folder: Permission denied" in summary
    assert f"{root / 'pipe'}: " in summary and "2 entries not read" in summary


# ---- item 17: blank lines ----------------------------------------------------------------------

# Peak RSS from /proc/self/status VmHWM, which belongs to this process's own address space:
# ru_maxrss survives fork and exec on Linux, so a child of a big pytest process would report the
# parent's peak.
_BLANK_PROBE = """
import re, sys, time
from ztaudit.pipeline.ingest import ingest_paths
t = time.process_time()
stats = ingest_paths([sys.argv[1]], sys.argv[2])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(stats.records, sum(stats.rows.values()), stats.quarantined_total, hwm // 1024, time.process_time() - t)
"""


@pytest.mark.parametrize("gz", [False, True])
def test_a_file_of_blank_lines_is_read_in_bounded_memory_and_linear_time(tmp_path: Path, gz: bool) -> None:
    """16 MiB of ``\\n`` (plain and ``.gz``): no records, no rows, peak RSS far below the old
    per-line lists (measured before the fix: ~1 GB for this size, 2.7 GB for 256 MiB), and the
    CPU time of 4x the input within ~6x of the smaller one's (the old path was per-line Python)."""
    def run(mib: int) -> tuple[int, int, int, int, float]:
        data = b"\n" * (mib << 20)
        path = tmp_path / (f"blank{mib}.log.gz" if gz else f"blank{mib}.log")
        path.write_bytes(gzip.compress(data, 1) if gz else data)
        out = subprocess.run([sys.executable, "-c", _BLANK_PROBE, str(path), str(tmp_path / f"lake{mib}")],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]), int(out[1]), int(out[2]), int(out[3]), float(out[4])
    small = run(4)
    records, written, quarantined, rss_mib, cpu = run(16)
    assert (records, written, quarantined) == (0, 0, 0)
    assert rss_mib < 400, f"peak RSS {rss_mib} MiB for 16 MiB of blank lines"
    assert cpu < max(6 * small[4], 1.0) + 1.0, f"{cpu:.2f} s for 16 MiB vs {small[4]:.2f} s for 4 MiB"

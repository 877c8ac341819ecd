"""The line reader (``pipeline/sources/files.py``): records, line numbers and file keys.

Records are packed straight over the bytes read (newlines included in the Arrow values, not in
``lengths``); these tests hold that to the obvious reference -- split at ``\\n``, drop blank
lines -- across block boundaries, and check the file keys (first record + hash of the content
before the chunk + its start offset: docs/design.md §3).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ztaudit.pipeline.sources.files import read_chunks
from ztaudit.pipeline.sources.inputs import Chunk, expand_paths

BOM = b"\xef\xbb\xbf"


def chunks_of(path: Path, chunk_bytes: int = 64, cap: int = 1000) -> list[Chunk]:
    return list(read_chunks(expand_paths([str(path)])[0], chunk_bytes, cap))


def records_and_lines(chunks: list[Chunk]) -> list[tuple[int, bytes]]:
    out = []
    for ch in chunks:
        recs = ch.records
        out += [(int(ch.origins.at(i).rsplit(":", 1)[1]), r) for i, r in enumerate(recs)]
    return out


def reference(content: bytes) -> list[tuple[int, bytes]]:
    lines = content.removeprefix(BOM).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]


# (a line opening with { or [ that is not complete JSON would make the file a pretty-printed
# document, and gzip magic a .gz file, read by other readers: binary lines never start so)
LINE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").lstrip(b" \t\r{[\x1f")),
    st.sampled_from([b"", b"   ", b"\r", b"\t{}", b'{"a": 1}\r', b'{"kind":"Event","auditID":"x"}']),
)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(LINE, max_size=40), trailing_newline=st.booleans(), bom=st.booleans(),
       chunk_bytes=st.sampled_from([8, 16, 64, 4096]))
def test_records_match_split_lines_across_blocks(tmp_path_factory: object, lines: list[bytes],
                                                 trailing_newline: bool, bom: bool, chunk_bytes: int) -> None:
    content = (BOM if bom else b"") + b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    path = Path(str(tmp_path_factory.mktemp("rd"))) / "in.jsonl"  # type: ignore[attr-defined]
    path.write_bytes(content)
    chunks = chunks_of(path, chunk_bytes)
    assert records_and_lines(chunks) == reference(content)
    for ch in chunks:
        if ch.packed is not None:  # lengths are the records' own sizes, never the newline
            assert [len(r) for r in ch.records] == list(ch.packed.lengths)
    # chunks cover the input in order (key = <hash>+<start>, nbytes = what the chunk covers); a gap
    # between two chunks can only be a run of blank lines (a chunk of nothing but blank lines is
    # not yielded)
    spans = [(int(ch.file_key.split("+")[1]), int(ch.file_key.split("+")[1]) + ch.nbytes) for ch in chunks]
    for a, b in itertools.pairwise(spans):
        assert a[1] <= b[0] and not content[a[1]:b[0]].strip()


def test_packed_values_carry_the_newline_records_do_not(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a":1}\r\n{"b":2}\n{"c":3}\n')
    (ch,) = chunks_of(path, 4096)
    assert ch.packed is not None
    assert ch.packed.array.to_pylist() == [b'{"a":1}\r\n', b'{"b":2}\n', b'{"c":3}\n']
    assert ch.records == [b'{"a":1}\r', b'{"b":2}', b'{"c":3}']
    assert ch.packed.record(1) == b'{"b":2}'


def test_key_is_the_first_record_and_the_hash_of_the_content_before_the_chunk(tmp_path: Path) -> None:
    # The key was the hash of the content up to the chunk's *end* (and the byte range): the last,
    # partial chunk of a growing file then changed its key and its rows were kept twice (issue 11,
    # item 1). Now nothing after the chunk's start goes in, except the file's first record, which
    # keeps different files' first chunks apart.
    content = b"".join(b'{"n": %d}\n' % i for i in range(40))
    path = tmp_path / "a.jsonl"
    path.write_bytes(content)
    for ch in chunks_of(path, 64):
        digest, start = ch.file_key.split("+")
        want = hashlib.sha256(hashlib.sha256(b'{"n": 0}').digest()
                              + hashlib.sha256(content[: int(start)]).digest()).hexdigest()[:16]
        assert digest == want


def test_a_grown_file_keeps_the_keys_of_its_chunks(tmp_path: Path) -> None:
    first = b"".join(b'{"n": %d}\n' % i for i in range(40))
    path = tmp_path / "audit.log"
    path.write_bytes(first)
    before = {c.file_key: c.records for c in chunks_of(path, 64)}
    path.write_bytes(first + b'{"n": "more"}\n' * 30)
    after = {c.file_key: c.records for c in chunks_of(path, 64)}
    for key, records in before.items():  # every key kept, the old last chunk's included
        assert after[key][: len(records)] == records
    path.write_bytes(b"X" + first[1:])  # a change in the first byte changes every key
    changed = [c.file_key for c in chunks_of(path, 64)]
    assert not set(changed) & set(before)


def test_oversized_line_is_cut_and_the_next_line_keeps_its_number(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"a":1}\n' + b"x" * 5000 + b'\n{"b":2}\n')
    got = records_and_lines(chunks_of(path, 64, cap=100))
    assert [n for n, _ in got] == [1, 2, 3]
    assert len(got[1][1]) == 101 and got[2][1] == b'{"b":2}'


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(LINE, st.binary(min_size=90, max_size=400).map(
           lambda b: b"x" + b.replace(b"\n", b"").replace(b"\r", b""))), max_size=20),
       chunk_bytes=st.sampled_from([16, 64, 128]))
def test_long_lines_are_whole_or_cut_to_the_cap_and_numbering_survives(
        tmp_path_factory: object, lines: list[bytes], chunk_bytes: int) -> None:
    cap = 100
    content = b"\n".join(lines) + b"\n"
    path = Path(str(tmp_path_factory.mktemp("rd"))) / "in.jsonl"  # type: ignore[attr-defined]
    path.write_bytes(content)
    got = records_and_lines(chunks_of(path, chunk_bytes, cap))
    want = reference(content)
    assert [n for n, _ in got] == [n for n, _ in want]
    for (_, rec), (_, line) in zip(got, want, strict=True):
        assert rec == line or (len(line) > cap and rec == line[: cap + 1])


def test_a_gzipped_csv_is_read_through_the_guarded_stream(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "revoked.csv.gz"
    path.write_bytes(gzip.compress(b"subject,revoked_at\nann@example.com,2026-11-21T08:00:00Z\n"))
    assert [r for c in chunks_of(path, 4096) for r in c.records] == [
        b'{"subject":"ann@example.com","revoked_at":"2026-11-21T08:00:00Z"}']

"""`ztaudit ingest` and `ingest_paths`: files, folders, gz, stdin, documents, idempotency, exit codes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.events import audit_event as event

from ztaudit.cli.main import cli
from ztaudit.core.errors import SourceError
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.ingest import ingest_paths

ROOT = Path(__file__).resolve().parent.parent.parent




def jsonl(path: Path, events: list[Any], extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + b"".join(x + b"\n" for x in extra))
    return path


def table_rows(lake: Path, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in LakeSink(lake).files(table):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def lake_files(lake: Path) -> list[str]:
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet"))


def test_ingest_jsonl_rows_and_partitions(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(i) for i in range(30)], [b"{broken", b""])
    stats = ingest_paths([src], lake, cluster="dev")
    assert stats.rows["k8s_audit"] == 30
    assert dict(stats.quarantined) == {"invalid_json": 1}
    rows = table_rows(lake, "k8s_audit")
    assert len(rows) == 30 and {r["cluster"] for r in rows} == {"dev"}
    assert sorted({p.split("/")[1] for p in lake_files(lake) if p.startswith("k8s_audit")}) == [
        "dt=2026-11-01", "dt=2026-11-02", "dt=2026-11-03"]
    q = table_rows(lake, "quarantine")
    assert [(r["origin"], r["reason"]) for r in q] == [(f"file:{src}:31", "invalid_json")]


def test_large_mixed_chunk_takes_the_slow_path_for_envelopes_and_bad_lines(tmp_path: Path, lake: Path) -> None:
    """A chunk big enough for the columnar fast path (packed by the reader) that also holds
    EventLists and a broken line: those records are taken out of the packed array for the slow
    path (regression: the slow path once read an array the fast path had released)."""
    lines: list[bytes] = []
    for i in range(300):
        if i % 10 == 0:
            items = [event(10_000 + 2 * i), event(10_001 + 2 * i)]
            lines.append(orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}))
        else:
            lines.append(orjson.dumps(event(i)))
    lines.insert(150, b'{"kind": "Event", "auditID": "cut-')
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    stats = ingest_paths([src], lake, cluster="dev")
    assert stats.rows["k8s_audit"] == 270 + 30 * 2
    assert sum(stats.quarantined.values()) == 1
    q = table_rows(lake, "quarantine")
    assert [r["origin"] for r in q] == [f"file:{src}:151"]
    ids = {r["audit_id"] for r in table_rows(lake, "k8s_audit")}
    assert {"id-010000", "id-010001", "id-010580", "id-010581", "id-000299"} <= ids


def test_lake_is_private_whatever_the_umask(tmp_path: Path, lake: Path) -> None:
    """README "The lake": directories 0700, files 0600 (audit logs name people), even under umask 0."""
    src = jsonl(tmp_path / "a.jsonl", [event(i) for i in range(5)], [b"{broken"])
    old = os.umask(0)
    try:
        ingest_paths([src], lake, cluster="dev")
    finally:
        os.umask(old)
    dirs = [lake, *(p for p in lake.rglob("*") if p.is_dir())]
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} >= {"dt=2026-11-01"} and any("quarantine" in str(p) for p in files)
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in dirs
            if p.stat().st_mode & 0o777 != 0o700} == {}
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files
            if p.stat().st_mode & 0o777 != 0o600} == {}


def test_ingest_twice_is_idempotent(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(i) for i in range(50)], [b'{"truncated": "ab'])
    first = ingest_paths([src], lake, chunk_bytes=2048)  # several chunks
    files1 = lake_files(lake)
    second = ingest_paths([src], lake, chunk_bytes=2048)
    assert lake_files(lake) == files1
    assert first.rows == second.rows and first.quarantined == second.quarantined
    assert len(table_rows(lake, "k8s_audit")) == 50
    assert len(table_rows(lake, "quarantine")) == 1


def test_chunking_keeps_line_numbers(tmp_path: Path, lake: Path) -> None:
    lines = [event(i) for i in range(40)]
    src = jsonl(tmp_path / "a.jsonl", lines)
    ingest_paths([src], lake, chunk_bytes=1500)
    rows = table_rows(lake, "k8s_audit")
    by_id = {r["audit_id"]: r["origin"] for r in rows}
    assert all(by_id[f"id-{i:06d}"] == f"file:{src}:{i + 1}" for i in range(40))


def test_blank_lines_are_skipped_not_quarantined(tmp_path: Path, lake: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"\n" + orjson.dumps(event(1)) + b"\r\n\r\n   \n" + orjson.dumps(event(2)) + b"\n\n")
    stats = ingest_paths([src], lake)
    assert stats.rows["k8s_audit"] == 2 and not stats.quarantined
    assert sorted(r["origin"] for r in table_rows(lake, "k8s_audit")) == [f"file:{src}:2", f"file:{src}:5"]


def test_gzip_and_folder_walk(tmp_path: Path, lake: Path) -> None:
    d = tmp_path / "logs"
    (d / "sub").mkdir(parents=True)
    with gzip.open(d / "sub" / "b.jsonl.gz", "wb") as fh:
        fh.write(b"".join(orjson.dumps(event(i)) + b"\n" for i in range(5)))
    jsonl(d / "a.log", [event(10)])
    (d / "README.md").write_text("# not a log\n")
    (d / ".hidden.jsonl").write_text("garbage\n")
    stats = ingest_paths([d], lake)
    assert stats.inputs == 2 and stats.rows["k8s_audit"] == 6 and not stats.quarantined


def test_pretty_printed_document_and_array(tmp_path: Path, lake: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(event(1), indent=2))
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([event(2), event(3), {"kind": 0}], indent=2))
    stats = ingest_paths([one, arr], lake)
    assert stats.rows["k8s_audit"] == 3
    assert dict(stats.quarantined) == {"unknown_shape": 1}
    origins = sorted(r["origin"] for r in table_rows(lake, "k8s_audit"))
    # Each array element keeps the line it starts on.
    lines = arr.read_text().splitlines()
    starts = [i + 1 for i, ln in enumerate(lines) if ln == "  {"]
    assert origins == sorted([f"file:{one}:1", f"file:{arr}:{starts[0]}", f"file:{arr}:{starts[1]}"])


def test_truncated_pretty_document_is_one_truncated_record(tmp_path: Path, lake: Path) -> None:
    doc = tmp_path / "cut.json"
    doc.write_text(json.dumps(event(1), indent=2)[:-40])
    stats = ingest_paths([doc], lake)
    assert dict(stats.quarantined) == {"truncated": 1} and not stats.rows


def test_jsonl_with_bad_first_line_stays_line_oriented(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(i) for i in range(3)])
    src.write_bytes(b'{"kind":"Event","auditID":"x\n' + src.read_bytes())
    stats = ingest_paths([src], lake)
    assert stats.rows["k8s_audit"] == 3 and dict(stats.quarantined) == {"truncated": 1}


def test_line_longer_than_chunk_is_oversized_without_holding_it(tmp_path: Path, lake: Path) -> None:
    src = tmp_path / "big.jsonl"
    src.write_bytes(orjson.dumps(event(1)) + b"\n" + b'{"x":"' + b"a" * 300_000 + b'"}\n' + orjson.dumps(event(2)))
    stats = ingest_paths([src], lake, chunk_bytes=50_000, max_record_bytes=100_000)
    assert stats.rows["k8s_audit"] == 2 and dict(stats.quarantined) == {"oversized": 1}
    q = table_rows(lake, "quarantine")
    assert q[0]["origin"] == f"file:{src}:2"
    assert sorted(r["origin"] for r in table_rows(lake, "k8s_audit")) == [f"file:{src}:1", f"file:{src}:3"]


def test_csv_rows_become_records(tmp_path: Path, lake: Path) -> None:
    src = tmp_path / "list.csv"
    src.write_text("a,b\n1,2\n3,4\n")
    stats = ingest_paths([src], lake)
    # No normalizer claims an arbitrary two-column CSV; each row is quarantined at its own line.
    total = sum(stats.rows.values()) + stats.quarantined_total
    assert total == 2
    if stats.quarantined_total:
        assert sorted(r["origin"] for r in table_rows(lake, "quarantine")) == [f"file:{src}:2", f"file:{src}:3"]


def test_missing_path_is_source_error(tmp_path: Path, lake: Path) -> None:
    with pytest.raises(SourceError) as exc:
        ingest_paths([tmp_path / "nope.jsonl"], lake)
    assert "no such file" in str(exc.value) and exc.value.fix


def test_unknown_source_kind(tmp_path: Path, lake: Path) -> None:
    with pytest.raises(SourceError):
        ingest_paths([jsonl(tmp_path / "a.jsonl", [event(1)])], lake, source="nope")


def test_source_named_k8s(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(1), {"message": "authorize check", "level": "info"}])
    stats = ingest_paths([src], lake, source="k8s_audit")
    assert stats.rows["k8s_audit"] == 1 and dict(stats.quarantined) == {"unknown_shape": 1}
    assert table_rows(lake, "quarantine")[0]["source_guess"] == "k8s_audit"


def test_cli_summary_and_strict(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(i) for i in range(3)], [b"not json"])
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", str(src), "--lake", str(lake), "--cluster", "c"])
    assert res.exit_code == 0, res.output
    assert "k8s_audit" in res.output and "invalid_json" in res.output
    quiet = runner.invoke(cli, ["ingest", str(src), "--lake", str(lake), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_cli_exit_codes_via_main(tmp_path: Path, lake: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [event(1)], [b"not json"])
    exe = [sys.executable, "-m", "ztaudit.cli.main"]
    strict = subprocess.run([*exe, "ingest", str(src), "--lake", str(lake), "--strict", "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert strict.returncode == 3, strict.stderr
    assert "quarantined" in strict.stderr
    missing = subprocess.run([*exe, "ingest", str(tmp_path / "nope"), "--lake", str(lake)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "fix:" in missing.stderr
    ok = subprocess.run([*exe, "ingest", "-", "--lake", str(lake), "--quiet", "--strict"],
                        input=orjson.dumps(event(7)).decode() + "\n", capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert any(r["origin"] == "file:<stdin>:1" for r in table_rows(lake, "k8s_audit"))


def test_corrupt_gzip_is_quarantined_not_a_source_error(tmp_path: Path, lake: Path) -> None:
    # It was a SourceError that stopped the run; a truncated .gz now keeps its complete lines and
    # quarantines its tail, and the run goes on (issue 11, item 7; tests/hostile/test_sources.py).
    good = jsonl(tmp_path / "a.jsonl", [event(1)])
    bad = tmp_path / "b.jsonl.gz"
    bad.write_bytes(gzip.compress(b"".join(orjson.dumps(event(i)) + b"\n" for i in range(50)))[:200])
    stats = ingest_paths([bad, good], lake)
    assert dict(stats.quarantined) == {"truncated": 1}
    assert len(table_rows(lake, "k8s_audit")) == 1


def test_ingest_warns_about_audit_rows_without_a_cluster(tmp_path: Path) -> None:
    src = jsonl(tmp_path / "audit.jsonl", [event(i) for i in range(3)])
    res = CliRunner().invoke(cli, ["ingest", str(src), "--lake", str(tmp_path / "lake")])
    assert res.exit_code == 0, res.output
    assert "WARNING: 3 k8s_audit rows have no cluster" in res.output
    assert "--cluster NAME" in res.output and "ingest.cluster_from_path" in res.output
    for args in (["--cluster", "prod"], []):
        path = src if args else tmp_path / "cluster=prod" / "audit.jsonl"
        if not args:
            path.parent.mkdir()
            path.write_bytes(src.read_bytes())
        res = CliRunner().invoke(cli, ["ingest", str(path), "--lake", str(tmp_path / "lake2"), *args])
        assert res.exit_code == 0 and "no cluster" not in res.output, res.output


def test_an_input_replacing_another_inputs_first_chunk_is_said_not_silent(tmp_path: Path) -> None:
    """Two inputs that start with the same record (a license header, as the corpus' two khi YAML files)
    share their first chunk's key (docs/design.md section 3): the lake kept one and the summary counted
    both, exit 0. The summary now names them, in either order of length; a copy (the same bytes, or a
    beginning of the other's) is no loss and is not reported."""
    from support.lakes import count_rows

    header = b"# Copyright 2025 Example LLC\n"
    logs = tmp_path / "logs"
    logs.mkdir()
    a = header + b"".join(orjson.dumps(event(i)) + b"\n" for i in range(5))
    (logs / "a.log").write_bytes(a + orjson.dumps(event(5)) + b"\n")
    (logs / "a2.log").write_bytes(a)  # a beginning of a.log: no loss (the sink keeps the longer)
    (logs / "a3.log").write_bytes(a + orjson.dumps(event(5)) + b"\n")  # a copy: no loss
    (logs / "b.log").write_bytes(header + b"".join(orjson.dumps(event(i)) + b"\n" for i in range(10, 17)))
    (logs / "c.log").write_bytes(header + orjson.dumps(event(20)) + b"\n")  # shorter, other records
    stats = ingest_paths([logs], tmp_path / "lake", cluster="c")
    assert [(p.rsplit("/", 1)[1], o.rsplit("/", 1)[1]) for p, o in stats.replaced_first] == \
        [("b.log", "a.log"), ("c.log", "a.log")]
    assert "2 pair(s) of inputs start with the same record" in stats.summary()
    # the copies are said too: counted for each input, stored once
    assert [(p.rsplit("/", 1)[1], o.rsplit("/", 1)[1]) for p, o in stats.repeated_first] == \
        [("a2.log", "a.log"), ("a3.log", "a.log")]
    assert "note: 2 input(s) start with the records of another input" in stats.summary()
    assert count_rows(tmp_path / "lake", "k8s_audit") < 6 + 7 + 1, "one version kept (the documented limit)"

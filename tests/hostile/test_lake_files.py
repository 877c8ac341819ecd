"""The lake's own files under hostile conditions (issue 11, items 1-4, 18, 19).

Every input is generated here (tmp_path); nothing is copied from the shared corpus.

* a chunk key names the unit of replacement: a new version of a chunk deletes the old version's
  files in every table and day (grown chunks, the same input on a later UTC day);
* readers read the lake's own files only: hidden files are skipped, foreign or damaged files are
  named in a ``LakeError`` instead of being counted or crashing every query;
* the temporary files of a killed writer are swept, and nothing else is;
* ``--out`` files are atomic and 0600;
* lake paths are literal for DuckDB (``lk[1]`` is not ``lk1``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ztaudit.core.sink as sink_module
from ztaudit.cli.main import cli, main
from ztaudit.core.errors import LakeError
from ztaudit.core.files import TEMP_GRACE_S, write_atomic
from ztaudit.core.lake import open_lake
from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.compact import compact
from ztaudit.pipeline.ingest import ingest_paths

DAY1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
KEY = "0123456789abcdef+0-4096"


def audit_rows(n: int, start: datetime = DAY1, step: timedelta = timedelta(minutes=1), tag: str = "a") -> pa.Table:
    """``n`` minimal audit rows (the sink conforms the rest of the columns to nulls)."""
    return pa.table({
        "audit_id": [f"{tag}-{i}" for i in range(n)],
        "stage": ["ResponseComplete"] * n,
        "request_received_at": pa.array([start + i * step for i in range(n)], pa.timestamp("us", "UTC")),
        "origin": [f"file:/logs/audit.log:{i + 1}" for i in range(n)],
    })


def reject(line: int) -> Rejected:
    return Rejected(origin=f"file:/logs/audit.log:{line}", reason=Reason.INVALID_JSON, detail="truncated line",
                    raw=b'{"kind":"Event","audi')


def count(lake: Path, sql: str) -> int:
    con = open_lake(lake)
    try:
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


def files_named(lake: Path, key: str) -> list[str]:
    return sorted(str(p.relative_to(lake)) for p in lake.glob(f"*/dt=*/{key}.parquet"))


# --- item 1 (sink side): a chunk key names the unit of replacement --------------------------------------


def test_a_grown_chunk_replaces_its_earlier_version_in_every_day_and_table(lake: Path) -> None:
    # First version: 3 rows on DAY1 and a truncated last line quarantined on DAY1.
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(3)}, [reject(4)], KEY, now=DAY1)
    # Second version (a later run, the file grew): a superset whose rows reach into DAY2; the line
    # that was truncated is complete now, so nothing is quarantined.
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(6, step=timedelta(hours=5))}, [], KEY, now=DAY2)
    assert files_named(lake, KEY) == [f"k8s_audit/dt=2026-03-01/{KEY}.parquet",
                                      f"k8s_audit/dt=2026-03-02/{KEY}.parquet"]
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 6
    assert count(lake, "SELECT count(DISTINCT audit_id) FROM k8s_audit") == 6
    assert count(lake, "SELECT count(*) FROM quarantine") == 0


def test_a_new_version_that_moved_to_another_table_leaves_nothing_of_the_old_one(lake: Path) -> None:
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(2, start=DAY2)}, [], KEY)
    LakeSink(lake).write_chunk({}, [reject(1), reject(2)], KEY, now=DAY1)
    assert files_named(lake, KEY) == [f"quarantine/dt=2026-03-01/{KEY}.parquet"]
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 0


def test_other_keys_and_other_tables_files_are_untouched(lake: Path) -> None:
    sink = LakeSink(lake)
    sink.write_chunk({"k8s_audit": audit_rows(2)}, [reject(3)], "other+0-10", now=DAY2)
    sink.write("findings", pa.table({"finding_id": ["f"], "first_seen": pa.array([DAY1], pa.timestamp("us", "UTC"))}),
               KEY)  # a table no chunk writes: not a place to look for chunk versions
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(1, start=DAY2, tag="b")}, [], KEY, now=DAY2)
    assert files_named(lake, "other+0-10") == ["k8s_audit/dt=2026-03-01/other+0-10.parquet",
                                               "quarantine/dt=2026-03-02/other+0-10.parquet"]
    assert f"findings/dt=2026-03-01/{KEY}.parquet" in files_named(lake, KEY)


#: One version of a chunk: (rows, hours between rows, rejects, day it is written on).
_version = st.tuples(st.integers(0, 6), st.sampled_from([1, 7, 30]), st.integers(0, 2), st.integers(0, 3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.sampled_from(["k1+0-10", "k2+0-20", "k3+10-20"]), _version),
                       min_size=1, max_size=8))
def test_any_sequence_of_chunk_versions_leaves_exactly_the_last_version_of_each_key(
        tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    lake = tmp_path_factory.mktemp("prop") / "lake"
    last: dict[str, tuple[int, int]] = {}
    for key, (rows, hours, rejects, day) in writes:
        LakeSink(lake).write_chunk(
            {"k8s_audit": audit_rows(rows, step=timedelta(hours=hours), tag=key)} if rows else {},
            [reject(100 + i) for i in range(rejects)], key, now=DAY1 + timedelta(days=day))
        last[key] = (rows, rejects)
    sink = LakeSink(lake)  # read back with pyarrow: the property runs many examples
    audit_ids = [a for f in sink.files("k8s_audit")
                 for a in pq.read_table(f, columns=["audit_id"])["audit_id"].to_pylist()]
    quarantined = sum(pq.read_metadata(f).num_rows for f in sink.files("quarantine"))
    assert len(audit_ids) == len(set(audit_ids)) == sum(r for r, _ in last.values())
    assert quarantined == sum(q for _, q in last.values())


def test_a_chunk_merged_by_compact_is_not_doubled_when_its_key_is_written_again(lake: Path) -> None:
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(3)}, [reject(4)], KEY, now=DAY1)
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(2, tag="o")}, [], "other+0-1", now=DAY1)
    assert compact(lake, "k8s_audit", "2026-03-01").inputs == 2
    assert compact(lake, "quarantine", "2026-03-01").inputs == 1
    # the same chunk again, grown: lines 1-3 are in the compacted file, 5-6 are new; its truncated
    # line 4 is quarantined again, on a later day
    grown = audit_rows(6).filter(pa.array([True, True, True, False, True, True]))
    LakeSink(lake).write_chunk({"k8s_audit": grown}, [reject(4)], KEY, now=DAY2)
    LakeSink(lake).write_chunk({"k8s_audit": grown}, [reject(4)], KEY, now=DAY2)
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE audit_id LIKE 'a-%'") == 5
    assert count(lake, "SELECT count(DISTINCT audit_id) FROM k8s_audit WHERE audit_id LIKE 'a-%'") == 5
    assert count(lake, "SELECT count(*) FROM quarantine") == 1
    # a second compaction keeps remembering what the first one merged
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(1, tag="n")}, [], "new+0-1", now=DAY1)
    compact(lake, "k8s_audit", "2026-03-01")
    LakeSink(lake).write_chunk({"k8s_audit": grown}, [], KEY, now=DAY2)
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE audit_id LIKE 'a-%'") == 5


def test_reingesting_a_file_after_compacting_its_day_keeps_one_row_per_line(tmp_path: Path, lake: Path) -> None:
    log = tmp_path / "audit.log"
    events = [{"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"id-{i}",
               "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
               "user": {"username": "alice@example.com"},
               "requestReceivedTimestamp": f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}.000000Z",
               "stageTimestamp": f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}.100000Z"} for i in range(300)]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    ingest_paths([log], lake, cluster="c", chunk_bytes=16 * 1024)
    assert len(list((lake / "k8s_audit" / "dt=2026-03-01").glob("*.parquet"))) > 2
    compact(lake, "k8s_audit", "2026-03-01")
    ingest_paths([log], lake, cluster="c", chunk_bytes=16 * 1024)
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 300
    # The same input under another name (rotated by rename) or path spelling: the chunk keys name
    # its content, and so do the compacted ranges; before, they were matched by path and doubled.
    rotated = tmp_path / "rotated" / "audit.log.1"
    rotated.parent.mkdir()
    log.rename(rotated)
    ingest_paths([rotated], lake, cluster="c", chunk_bytes=16 * 1024)
    ingest_paths([Path(os.path.relpath(rotated))], lake, cluster="c", chunk_bytes=16 * 1024)
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 300


def _crossing_midnight(n: int) -> list[dict[str, object]]:
    """Audit events whose days go A, B, A by line (a log around midnight whose events come out of
    order): lines 1-10 on 2026-03-01, 11-20 on 2026-03-02, 21-n on 2026-03-01 again."""
    out = []
    for i in range(n):
        day = "2026-03-02" if 10 <= i < 20 else "2026-03-01"
        ts = f"{day}T23:{i // 60:02d}:{i % 60:02d}.000000Z" if day == "2026-03-01" else f"{day}T00:00:{i:02d}.0Z"
        out.append({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"mid-{i}",
                    "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
                    "user": {"username": "alice@example.com"}, "requestReceivedTimestamp": ts, "stageTimestamp": ts})
    return out


def test_reingesting_after_compacting_one_day_keeps_the_lines_of_the_other_days(tmp_path: Path, lake: Path) -> None:
    """One chunk's lines fall on two days, interleaved. Compacting one day records its lines as one
    first-last range, which covers the other day's lines: re-ingesting the same file dropped those
    and deleted the other day's file as stale (found by a trial: 39 rows became 25, exit 0). A range
    now drops only rows of its own day."""
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in _crossing_midnight(30)))
    ingest_paths([log], lake, cluster="c")
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(1, tag="other")}, [], "other+0-1", now=DAY1)
    compact(lake, "k8s_audit", "2026-03-01")
    ingest_paths([log], lake, cluster="c")
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE audit_id LIKE 'mid-%'") == 30
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE dt = DATE '2026-03-02'") == 10


def test_a_line_that_was_not_a_row_when_compacted_is_written_when_it_is_one(tmp_path: Path, lake: Path) -> None:
    """A compacted day records a chunk's lines as one range per input; a line inside it that was no
    row of that table then (quarantined: broken, or a time too far ahead) and is one now (the line was
    fixed, the clock moved on) was dropped as merged and its quarantine row deleted as stale: the
    record was nowhere, exit 0 (found by a review). Only lines the compacted files hold are dropped."""
    events = [json.dumps(e) for e in _crossing_midnight(30)]
    log = tmp_path / "audit.log"
    log.write_text("\n".join([*events[:4], "{broken", *events[5:]]) + "\n")  # line 5, of the compacted day
    ingest_paths([log], lake, cluster="c")
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(1, tag="other")}, [], "other+0-1", now=DAY1)
    compact(lake, "k8s_audit", "2026-03-01")
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE audit_id LIKE 'mid-%'") == 29
    log.write_text("\n".join(events) + "\n")  # the broken line fixed: the same first record, the same key
    ingest_paths([log], lake, cluster="c")
    assert count(lake, "SELECT count(*) FROM k8s_audit WHERE audit_id LIKE 'mid-%'") == 30
    assert count(lake, "SELECT count(*) FROM quarantine") == 0


# --- item 2: the same input on a later UTC day does not duplicate its quarantine -------------------------


def test_the_sink_replaces_a_chunks_quarantine_written_on_an_earlier_day(lake: Path) -> None:
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(2)}, [reject(3), reject(4)], KEY, now=DAY1)
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(2)}, [reject(3), reject(4)], KEY, now=DAY2)
    assert count(lake, "SELECT count(*) FROM quarantine") == 2
    assert count(lake, "SELECT count(*) FROM quarantine WHERE dt = '2026-03-02'") == 2
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 2


def test_reingesting_the_same_file_on_a_later_day_keeps_one_row_per_bad_line(
        tmp_path: Path, lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "audit.log"
    good = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "x-1",
            "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
            "user": {"username": "alice@example.com"}, "requestReceivedTimestamp": "2026-03-01T10:00:00.000000Z",
            "stageTimestamp": "2026-03-01T10:00:00.100000Z"}
    log.write_text(json.dumps(good) + "\n" + "{not json\n" + "[1, 2\n")

    for day in (DAY1, DAY2):
        class Clock(datetime):
            @classmethod
            def now(cls, tz: object = None) -> Clock:  # type: ignore[override]
                return Clock.fromtimestamp(day.timestamp(), UTC)

        monkeypatch.setattr(sink_module, "datetime", Clock)
        ingest_paths([log], lake, cluster="c")
    assert count(lake, "SELECT count(*) FROM quarantine") == 2
    assert count(lake, "SELECT count(DISTINCT dt) FROM quarantine") == 1
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 1


# --- item 3: readers take the lake's own files only -----------------------------------------------------


def test_a_hidden_copy_of_a_lake_file_is_not_read(lake: Path, caplog: pytest.LogCaptureFixture) -> None:
    [path] = LakeSink(lake).write("k8s_audit", audit_rows(5), KEY)
    shutil.copy(path, path.with_name(".copy.parquet"))
    with caplog.at_level(logging.WARNING):
        assert count(lake, "SELECT count(*) FROM k8s_audit") == 5
    assert ".copy.parquet" in caplog.text
    assert LakeSink(lake).files("k8s_audit") == [path]


@pytest.mark.parametrize(("name", "content", "why"), [
    ("broken.parquet", b"this is not parquet at all", "not a Parquet file"),
    ("cut.parquet", None, "not a Parquet file"),  # a lake file cut short: its footer magic is gone
    ("a b.parquet", "copy", "not a name ztaudit writes"),
    ("evil.parquet", "symlink", "symbolic link"),
])
def test_a_foreign_file_is_named_in_a_lake_error_not_read_or_a_traceback(
        lake: Path, tmp_path: Path, name: str, content: bytes | str | None, why: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    [path] = LakeSink(lake).write("k8s_audit", audit_rows(5), KEY)
    foreign = path.with_name(name)
    if content is None:
        foreign.write_bytes(path.read_bytes()[:-10])
    elif content == "copy":
        shutil.copy(path, foreign)
    elif content == "symlink":
        elsewhere = tmp_path / "elsewhere.parquet"
        shutil.copy(path, elsewhere)
        foreign.symlink_to(elsewhere)
    else:
        assert isinstance(content, bytes)
        foreign.write_bytes(content)
    with pytest.raises(LakeError) as err:
        open_lake(lake)
    assert str(foreign) in str(err.value) and why in str(err.value) and "fix: move them out" in str(err.value)
    with pytest.raises(LakeError):
        LakeSink(lake).files("k8s_audit")
    with pytest.raises(LakeError):  # compaction does not merge it away with the day's evidence
        LakeSink(lake).write("k8s_audit", audit_rows(1, tag="z"), "second")
        compact(lake, "k8s_audit", "2026-03-01")
    assert foreign.is_symlink() or foreign.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["sql", "SELECT count(*) FROM k8s_audit", "--lake", str(lake)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(foreign) in err and "Traceback" not in err


# --- item 4: a killed writer's temporary files are swept, nothing else is ---------------------------------


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from ztaudit.core.files import write_atomic
def write(fh):
    fh.write(b"PAR1 half a file")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
write_atomic(Path(sys.argv[1]), write)
"""


def _age(path: Path) -> None:
    old = time.time() - TEMP_GRACE_S - 5
    os.utime(path, (old, old), follow_symlinks=False)


def test_the_next_run_sweeps_a_killed_writers_temporary_file_and_nothing_else(lake: Path, tmp_path: Path) -> None:
    day = lake / "k8s_audit" / "dt=2026-03-01"
    LakeSink(lake).write("k8s_audit", audit_rows(1), "first")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(day / f"{KEY}.parquet")])
    assert proc.wait() == -9
    [leftover] = day.glob(f".{KEY}.parquet.tmp-*")
    _age(leftover)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_pid = proc.pid
        outside = tmp_path / "outside.txt"
        outside.write_text("keep me")
        keep = {
            f".x.parquet.tmp-{os.getpid()}": "ours, a live writer",
            f".x.parquet.tmp-{live.pid}": "a live process",
            f".x.parquet.tmp-{dead_pid}x": "not our pattern",
            f"x.parquet.tmp-{dead_pid}": "not hidden: not our pattern",
            f".x.parquet.tmp-{dead_pid}.bak": "not our pattern",
            f".fresh.parquet.tmp-{dead_pid}": "modified just now",
        }
        for name in keep:
            (day / name).write_bytes(b"x")
            if name != f".fresh.parquet.tmp-{dead_pid}":
                _age(day / name)
        link = day / f".link.parquet.tmp-{dead_pid}"
        link.symlink_to(outside)
        _age(link)
        locked = day / f".locked.parquet.tmp-{dead_pid}"  # a writer in another PID namespace holds its lock
        locked.write_bytes(b"x")
        _age(locked)
        fd = os.open(locked, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            LakeSink(lake).write_chunk({"k8s_audit": audit_rows(2)}, [], KEY, now=DAY1)
        finally:
            os.close(fd)
        assert not leftover.exists()
        for name, why in keep.items():
            assert (day / name).exists(), why
        assert link.is_symlink() and outside.read_text() == "keep me"
        assert locked.exists()
    finally:
        live.kill()
        live.wait()


def test_a_writer_holds_the_lock_on_its_temporary_file_while_it_writes(tmp_path: Path) -> None:
    target = tmp_path / "x.parquet"

    def write(fh: BinaryIO) -> None:
        [tmp] = tmp_path.glob(".x.parquet.tmp-*")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

    write_atomic(target, write)
    assert target.exists()


# --- item 18: --out files are atomic and 0600 ------------------------------------------------------------


@pytest.mark.parametrize("command", [["sql", "SELECT 42 AS answer"], ["report", "summary"]])
def test_out_files_are_written_0600_whatever_the_umask_and_never_through_a_symlink(
        lake: Path, tmp_path: Path, command: list[str]) -> None:
    # (`catalog --out` was already renamed into place with 0600; its failure paths are tested in
    # tests/cli/test_exit_codes.py.)
    LakeSink(lake).write("k8s_audit", audit_rows(2), KEY)
    out = tmp_path / "reports" / "out.json"
    out.parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    os.symlink(victim, out)  # a planted symlink is replaced, never followed
    old = os.umask(0)
    try:
        res = CliRunner().invoke(cli, [*command, "--lake", str(lake), "--out", str(out), "--format", "json"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert not out.is_symlink() and out.stat().st_mode & 0o777 == 0o600
    json.loads(out.read_text())
    assert victim.read_text() == "untouched"
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]


# --- item 19: lake paths are literal ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lk[1]", "lk*", "lk?", "l'k[!1]"])
def test_a_lake_path_with_glob_characters_reads_only_its_own_files(tmp_path: Path, name: str) -> None:
    mine = tmp_path / name
    LakeSink(mine).write("k8s_audit", audit_rows(3, tag="mine"), KEY)
    for sibling in ("lk1", "lkx", "lk", "l'k2"):  # what `[1]`, `*`, `?` and `[!1]` would match
        LakeSink(tmp_path / sibling).write("k8s_audit", audit_rows(7, start=DAY2, tag=sibling), KEY)
    assert count(mine, "SELECT count(*) FROM k8s_audit") == 3
    assert count(mine, "SELECT count(*) FROM k8s_audit WHERE audit_id NOT LIKE 'mine-%'") == 0
    # day-partition pruning still has its hive column
    assert count(mine, "SELECT count(*) FROM k8s_audit WHERE dt = '2026-03-01'") == 3
    assert count(mine, "SELECT count(*) FROM k8s_audit WHERE dt = '2026-03-02'") == 0

    # `catalog --out` keeps the literal path, and still sees files written after it was built
    db = tmp_path / "cat.duckdb"
    res = CliRunner().invoke(cli, ["catalog", "--lake", str(mine), "--out", str(db)])
    assert res.exit_code == 0, res.output
    LakeSink(mine).write("k8s_audit", audit_rows(2, start=DAY2, tag="mine-late"), "later")
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM k8s_audit").fetchone() == (5,)
        assert con.execute("SELECT count(*) FROM k8s_audit WHERE dt = '2026-03-02'").fetchone() == (2,)
    finally:
        con.close()


def test_a_lake_path_with_a_backslash_is_a_clear_error(tmp_path: Path) -> None:
    lake = tmp_path / "a\\b"
    LakeSink(lake).write("k8s_audit", audit_rows(1), KEY)
    with pytest.raises(LakeError, match="backslash"):
        open_lake(lake)


# --- item 4, detect's own files: derived tables and temporary files -------------------------------


def test_a_scoped_key_replaces_only_its_own_table_and_drops_days_it_no_longer_has(lake: Path) -> None:
    """``detect`` writes each derived table under the key ``derived``, once per run: a day the new
    run has no rows for must lose its old file (before, it kept stale rows), and another table's
    files of the same key are not touched."""
    sink = LakeSink(lake)
    sink.write_chunk({"k8s_audit": audit_rows(4, step=timedelta(days=1))}, [], "derived", scope=("k8s_audit",))
    sink.write_chunk({"quarantine": audit_rows(0)}, [reject(1)], "derived", scope=("quarantine",))
    assert count(lake, "SELECT count(DISTINCT dt) FROM k8s_audit") == 4
    LakeSink(lake).write_chunk({"k8s_audit": audit_rows(1)}, [], "derived", scope=("k8s_audit",))
    assert count(lake, "SELECT count(*) FROM k8s_audit") == 1
    assert count(lake, "SELECT count(*) FROM quarantine") == 1


def test_detect_sweeps_a_killed_writers_temporary_files_in_findings_and_state(tmp_path: Path) -> None:
    from support.lakes import build_lake

    from ztaudit.core.config import Config
    from ztaudit.detectors.run import run_detectors

    lake = build_lake(tmp_path / "lake")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    day = next((lake / "findings").glob("dt=*"))
    left = [day / f".findings.parquet.tmp-{dead.pid}", lake / "_state" / f".reach-model.json.tmp-{dead.pid}"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
        _age(p)
    run_detectors(lake, Config())
    assert not any(p.exists() for p in left)

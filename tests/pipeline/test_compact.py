"""``ztaudit compact``: hundreds of small files of one day become a few, with exactly the same rows;
the swap is atomic, late writers are kept, an interrupted run is finished, and a consumer replay
after compaction does not reintroduce rows."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.kafka_broker import ZTAUDIT, audit_events, audit_id_counts
from support.lakes import audit_day_checksum

from ztaudit.core.sink import LakeSink
from ztaudit.pipeline import compact as compact_mod
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import KafkaOrigins, RawBatch

DAY = "2026-11-20"


def _small_files_lake(lake: Path, n_files: int = 200, per_file: int = 40) -> None:
    """``n_files`` consumer-style files (``audit+<p>+<first offset>``, 4 partitions) of one day."""
    sink = LakeSink(lake)
    per_part = n_files // 4 * per_file
    events = audit_events(per_part * 4, run="cmp")
    for part in range(4):
        res = process(RawBatch(events[part * per_part:(part + 1) * per_part],
                               KafkaOrigins("audit", part, list(range(per_part)))), NormalizeContext())
        table = res.tables["k8s_audit"]  # one event per message: row i is offset i
        for first in range(0, per_part, per_file):
            sink.write("k8s_audit", table.slice(first, per_file), f"audit+{part}+{first:020d}")


def test_compact_hundreds_of_files_keeps_exactly_the_same_rows(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _small_files_lake(lake)
    day_dir = lake / "k8s_audit" / f"dt={DAY}"
    assert len(list(day_dir.glob("*.parquet"))) == 200
    before = audit_day_checksum(lake)
    proc = subprocess.run([ZTAUDIT, "compact", "--lake", str(lake), "--source", "k8s_audit", "--date", DAY,
                           "--target-rows", "5000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = sorted(day_dir.glob("*.parquet"))
    assert len(files) == 2 and all(f.name.startswith("compacted-") for f in files)
    assert audit_day_checksum(lake) == before
    manifest = compact_mod.read_manifest(day_dir)
    assert manifest is not None and len(manifest.inputs) == 200 and manifest.rows == before[0] == 8000
    assert manifest.kafka_ranges == {f"audit+{p}": [(0, 50 * 40 - 1)] for p in range(4)}
    assert not [p for p in (lake / "k8s_audit").iterdir() if p.name.startswith(".compact-dt") and p.is_dir()]
    # compacting again (nothing new) is a no-op with the same rows
    compact_mod.compact(lake, "k8s_audit", DAY, target_rows=5000)
    assert audit_day_checksum(lake) == before


def test_file_written_during_compaction_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    _small_files_lake(lake, n_files=20)
    day_dir = lake / "k8s_audit" / f"dt={DAY}"
    late = LakeSink(lake)
    extra = process(RawBatch(audit_events(30, run="late"), KafkaOrigins("audit", 9, list(range(30)))),
                    NormalizeContext()).tables["k8s_audit"]
    real = compact_mod.rename_exchange

    def racing_exchange(a: Path, b: Path) -> bool:
        late.write("k8s_audit", extra, "audit+9+00000000000000000000")  # a consumer flush lands now
        return real(a, b)

    monkeypatch.setattr(compact_mod, "rename_exchange", racing_exchange)
    result = compact_mod.compact(lake, "k8s_audit", DAY)
    assert result.atomic
    names = sorted(p.name for p in day_dir.glob("*.parquet"))
    assert "audit+9+00000000000000000000.parquet" in names and len(names) == 2
    assert sum(audit_id_counts(lake).values()) == 20 * 40 + 30


def test_interrupted_compaction_is_finished_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    _small_files_lake(lake, n_files=12)
    before = audit_day_checksum(lake)
    calls: list[Any] = []
    real_rmtree = compact_mod.shutil.rmtree

    def crash_after_swap(path: Any, *a: Any, **kw: Any) -> None:
        calls.append(path)
        if len(calls) == 2:  # 1st: clean staging before writing; 2nd: delete the old day after the swap
            raise KeyboardInterrupt("crash after the swap")
        real_rmtree(path, *a, **kw)

    monkeypatch.setattr(compact_mod.shutil, "rmtree", crash_after_swap)
    with pytest.raises(KeyboardInterrupt):
        compact_mod.compact(lake, "k8s_audit", DAY)
    monkeypatch.setattr(compact_mod.shutil, "rmtree", real_rmtree)
    # readers already see the compacted day, exactly once; the old day is a hidden directory
    assert audit_day_checksum(lake) == before
    hidden = [p for p in (lake / "k8s_audit").iterdir() if p.name.startswith(".compact-dt") and p.is_dir()]
    assert len(hidden) == 1
    # a file that sat in the old day but was not an input (arrived after the snapshot) survives
    stray = hidden[0] / "audit+7+00000000000000000000.parquet"
    (lake / "k8s_audit" / f"dt={DAY}" / "compacted-x").write_bytes(b"")  # noise the glob ignores
    extra = process(RawBatch(audit_events(5, run="stray"), KafkaOrigins("audit", 7, list(range(5)))),
                    NormalizeContext()).tables["k8s_audit"]
    LakeSink(tmp_path / "tmp-lake").write("k8s_audit", extra, "audit+7+00000000000000000000")
    next((tmp_path / "tmp-lake").glob("k8s_audit/dt=*/*.parquet")).rename(stray)
    compact_mod.compact(lake, "k8s_audit", DAY)
    assert not [p for p in (lake / "k8s_audit").iterdir() if p.name.startswith(".compact-dt") and p.is_dir()]
    assert sum(audit_id_counts(lake).values()) == before[0] + 5


# --- A lake whose files are on S3 (issue 16): inputs from the snapshot, the manifest in the footers ----

S3_TABLE = "k8s_audit"


def _s3_lake(s3proxy: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> tuple[Path, str]:
    """A new Iceberg lake on a fresh prefix of the S3 store (this process's environment set for it)."""
    from support.s3proxy import lake_env

    env = lake_env(s3proxy, name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lake = tmp_path / "lake"
    LakeSink(lake, table_format="iceberg")
    return lake, env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]


def _published_small_files(lake: Path, n_files: int, per_file: int = 10, rounds: int = 4) -> int:
    """``n_files`` consumer-style chunks (4 partitions) of DAY, published in ``rounds`` commits; the rows."""
    sink = LakeSink(lake)
    per_part = n_files // 4 * per_file
    events = audit_events(per_part * 4, run="s3cmp")
    writes = []
    for part in range(4):
        res = process(RawBatch(events[part * per_part:(part + 1) * per_part],
                               KafkaOrigins("audit", part, list(range(per_part)))), NormalizeContext())
        table = res.tables["k8s_audit"]
        writes += [(table.slice(first, per_file), f"audit+{part}+{first:020d}")
                   for first in range(0, per_part, per_file)]
    for i, (t, key) in enumerate(writes):
        sink.write("k8s_audit", t, key)
        if (i + 1) % max(1, len(writes) // rounds) == 0:
            sink.publish()
    sink.publish()
    return per_part * 4


def _day_sum(lake: Path) -> tuple[int, str]:
    """(rows, sha256 of every row sorted) of DAY's k8s_audit through ztaudit's reader (the snapshot)."""
    import hashlib

    from ztaudit.core.lake import open_lake

    con = open_lake(lake)
    try:
        rows = con.execute(f"SELECT * EXCLUDE (dt) FROM k8s_audit WHERE dt = DATE '{DAY}' "
                           "ORDER BY origin, audit_id, stage").fetchall()
    finally:
        con.close()
    h = hashlib.sha256()
    for r in rows:
        h.update(repr(r).encode())
    return len(rows), h.hexdigest()


def _day_objects(s3proxy: Any, prefix: str) -> set[str]:
    from support.s3proxy import objects

    return {o for o in objects(s3proxy, f"{prefix}/{S3_TABLE}/dt={DAY}") if o.endswith(".parquet")}


def _listed(lake: Path) -> set[str]:
    from ztaudit.core import iceberg_snapshot

    return set(iceberg_snapshot.snapshot_files(lake, S3_TABLE, (DAY, DAY)))


@pytest.mark.s3
def test_compact_on_s3_keeps_the_rows_in_fewer_objects_and_maintain_reclaims_the_inputs(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ztaudit.core.keys import listed_manifests
    from ztaudit.pipeline.maintain import maintain

    lake, prefix = _s3_lake(s3proxy, monkeypatch, tmp_path, "compact")
    rows = _published_small_files(lake, 60)
    before = _day_sum(lake)
    inputs = _listed(lake)
    assert before[0] == rows == 600 and len(inputs) == 60 and _day_objects(s3proxy, prefix) == inputs

    result = compact_mod.compact(lake, S3_TABLE, DAY, target_rows=250)
    assert (result.inputs, len(result.outputs), result.rows) == (60, 3, 600)
    assert "one Iceberg overwrite commit" in result.summary()
    listed = _listed(lake)
    assert len(listed) == 3 and all(o.rsplit("/", 1)[1].startswith("compacted-") for o in listed)
    # The inputs stay in the bucket (older snapshots list them) until maintain finds them orphaned.
    assert _day_objects(s3proxy, prefix) == listed | inputs
    assert _day_sum(lake) == before
    assert LakeSink(lake).listing(S3_TABLE)[DAY] == {o.rsplit("/", 1)[1] for o in listed}, \
        "the sink must not take merged inputs for the day's files"
    # The manifest is in every output's footer, and counts because the snapshot lists them.
    merged = listed_manifests(lake, S3_TABLE)
    assert set(merged) == {DAY} and merged[DAY].kafka_ranges == {f"audit+{p}": [(0, 149)] for p in range(4)}
    assert len(merged[DAY].inputs) == 60 and merged[DAY].rows == 600
    assert not (lake / S3_TABLE).exists(), "nothing of the day is kept in the lake folder"

    # Newer chunks of the day are merged with the compacted objects; the manifest stays cumulative.
    sink = LakeSink(lake)
    extra = process(RawBatch(audit_events(20, run="later"), KafkaOrigins("audit", 0, list(range(150, 170)))),
                    NormalizeContext()).tables["k8s_audit"]
    sink.write("k8s_audit", extra, "audit+0+00000000000000000150")
    sink.publish()
    again = compact_mod.compact(lake, S3_TABLE, DAY)
    assert again.inputs == 4 and len(again.outputs) == 1 and _day_sum(lake)[0] == 620
    assert listed_manifests(lake, S3_TABLE)[DAY].kafka_ranges["audit+0"] == [(0, 169)]
    assert len(listed_manifests(lake, S3_TABLE)[DAY].inputs) == 64  # cumulative: every input ever merged
    assert len(LakeSink(lake).listing(S3_TABLE)[DAY]) == 1
    time.sleep(1.1)  # object times are whole seconds
    maintain(lake, expire_days=0, remove_orphans=True, orphan_grace_s=0, now=datetime.now(UTC) + timedelta(seconds=1))
    assert _day_objects(s3proxy, prefix) == _listed(lake) and len(_listed(lake)) == 1 and _day_sum(lake)[0] == 620
    # Compacting a day of one object is a no-op.
    assert compact_mod.compact(lake, S3_TABLE, DAY).inputs == 1 and _day_sum(lake)[0] == 620


@pytest.mark.s3
def test_compact_on_s3_killed_before_its_commit_changes_nothing_and_the_rerun_finishes(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ztaudit.core.keys import listed_manifests
    from ztaudit.pipeline.consume.recovery import drop_compacted
    from ztaudit.pipeline.maintain import maintain
    from ztaudit.pipeline.sources.kafka.base import TP

    lake, prefix = _s3_lake(s3proxy, monkeypatch, tmp_path, "crash")
    _published_small_files(lake, 12)
    before, inputs = _day_sum(lake), _listed(lake)

    def killed(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt("kill -9 between the writes and the commit")

    real_publish = compact_mod.publish
    monkeypatch.setattr(compact_mod, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        compact_mod.compact(lake, S3_TABLE, DAY)
    monkeypatch.setattr(compact_mod, "publish", real_publish)
    # Readers see the inputs, all of them; the written outputs are unlisted objects that claim nothing:
    # a replay of those offsets now is written again (dropping it would lose the rows if no rerun came).
    stray = _day_objects(s3proxy, prefix) - inputs
    assert _listed(lake) == inputs and _day_sum(lake) == before and len(stray) == 1
    assert listed_manifests(lake, S3_TABLE) == {}
    first_ten = audit_events(120, run="s3cmp")[:10]  # partition 0's offsets 0-9, as written above
    replay = process(RawBatch(first_ten, KafkaOrigins("audit", 0, list(range(10)))),
                     NormalizeContext()).tables["k8s_audit"]
    assert drop_compacted(LakeSink(lake), "k8s_audit", replay, TP("audit", 0))[1] == 0

    # The rerun writes the same keys and commits.
    result = compact_mod.compact(lake, S3_TABLE, DAY)
    assert result.inputs == 12 and {f"s3://{p}" for p in result.outputs} == stray == _listed(lake)
    assert _day_objects(s3proxy, prefix) == stray | inputs and _day_sum(lake) == before

    # After the commit the inputs are not deleted by compact: readers see the outputs alone, the
    # unlisted inputs are orphans that `maintain --remove-orphans` deletes once no snapshot kept lists them.
    sink = LakeSink(lake)
    for i in range(3):
        t = process(RawBatch(audit_events(5, run=f"o{i}"), KafkaOrigins("audit", 7, list(range(10 * i, 10 * i + 5)))),
                    NormalizeContext()).tables["k8s_audit"]
        sink.write("k8s_audit", t, f"audit+7+{10 * i:020d}")
    sink.publish()
    grown = _day_sum(lake)
    compact_mod.compact(lake, S3_TABLE, DAY)
    assert len(_listed(lake)) == 1 and _day_sum(lake) == grown
    assert len(_day_objects(s3proxy, prefix)) == 1 + 12 + 1 + 3  # outputs, and every input still there
    time.sleep(1.1)  # object times are whole seconds
    maintain(lake, expire_days=0, remove_orphans=True, orphan_grace_s=0, now=datetime.now(UTC) + timedelta(seconds=1))
    assert _day_objects(s3proxy, prefix) == _listed(lake) and _day_sum(lake) == grown


def _run_ztaudit(args: list[str], env: dict[str, str]) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("ZTAUDIT_", "AWS_"))}
    full.update(env)
    p = subprocess.run([ZTAUDIT, *args], capture_output=True, text=True, env=full, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Traceback" not in out, out[-4000:]
    return out


@pytest.mark.s3
def test_compact_cli_on_s3_and_reingest_or_replay_afterwards_doubles_nothing(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.s3proxy import lake_env

    from ztaudit.core.keys import listed_manifests
    from ztaudit.pipeline.consume.recovery import drop_compacted
    from ztaudit.pipeline.sources.kafka.base import TP

    env = lake_env(s3proxy, "cli")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    lake, logs = tmp_path / "lake", tmp_path / "logs"
    logs.mkdir()
    events = audit_events(60, run="files")
    for i in range(3):
        (logs / f"audit-{i}.jsonl").write_bytes(b"\n".join(events[20 * i:20 * i + 20]) + b"\n")
    _run_ztaudit(["ingest", "--lake", str(lake), str(logs)], env)
    before = _day_sum(lake)
    assert before[0] == 60 and len(_listed(lake)) == 3

    out = _run_ztaudit(["compact", "--lake", str(lake), "--source", S3_TABLE, "--date", DAY], env)
    assert "3 files -> 1 files, 60 rows (one Iceberg overwrite commit)" in out
    assert len(_listed(lake)) == 1 and len(_day_objects(s3proxy, prefix)) == 4  # the inputs wait for maintain
    assert _day_sum(lake) == before
    chunks = listed_manifests(lake, S3_TABLE)[DAY].file_ranges  # each merged chunk's input lines
    assert len(chunks) == 3 and all(r[0][1:] == (1, 20) for r in chunks.values())

    # The same input again: its chunks' records are in the compacted object already, nothing is written.
    _run_ztaudit(["ingest", "--lake", str(lake), str(logs)], env)
    assert _day_sum(lake) == before and len(_day_objects(s3proxy, prefix)) == 4
    # A shorter prefix of an input (an older copy of a log): its lines are merged already, nothing doubles
    # (the merged inputs left in the bucket are not taken for a longer version of its chunk).
    short = tmp_path / "short"
    short.mkdir()
    (short / "audit-0.jsonl").write_bytes(b"\n".join(events[:5]) + b"\n")
    _run_ztaudit(["ingest", "--lake", str(lake), str(short)], env)
    assert _day_sum(lake) == before
    # A grown input: only its new records are added.
    more = audit_events(5, start=60, run="files")
    with (logs / "audit-1.jsonl").open("ab") as fh:
        fh.write(b"\n".join(more) + b"\n")
    _run_ztaudit(["ingest", "--lake", str(lake), str(logs)], env)
    assert _day_sum(lake)[0] == 65

    # A consumer's replay into a compacted day: the offsets the footers list are dropped, the rest written.
    sink = LakeSink(lake)
    kafka = audit_events(30, run="kafka")
    for first in (0, 10):
        t = process(RawBatch(kafka[first:first + 10], KafkaOrigins("audit", 3, list(range(first, first + 10)))),
                    NormalizeContext()).tables["k8s_audit"]
        sink.write("k8s_audit", t, f"audit+3+{first:020d}")
    sink.publish()
    compact_mod.compact(lake, S3_TABLE, DAY)
    compacted = _day_sum(lake)
    assert compacted[0] == 85 and len(_listed(lake)) == 1
    replay = process(RawBatch(kafka[5:30], KafkaOrigins("audit", 3, list(range(5, 30)))),
                     NormalizeContext()).tables["k8s_audit"]
    rest, dropped = drop_compacted(sink, "k8s_audit", replay, TP("audit", 3))
    assert (dropped, rest.num_rows) == (15, 10)
    sink.write("k8s_audit", rest, "audit+3+00000000000000000005")
    sink.publish()
    assert _day_sum(lake)[0] == 95


@pytest.mark.s3
def test_compact_on_s3_refuses_when_a_writer_replaced_an_input_meanwhile(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer replaces one of the day's objects under its key (a grown chunk re-ingested, a replay) and
    publishes it after compaction read the day and before its commit: the commit would unlist the newer
    object and its extra rows would be lost. It refuses instead (nothing changed, its outputs deleted),
    and the rerun merges the day as it is now."""
    from ztaudit.core.iceberg_publish import ChangedMeanwhile

    lake, prefix = _s3_lake(s3proxy, monkeypatch, tmp_path, "race")
    rows = _published_small_files(lake, 8)
    assert _day_sum(lake)[0] == rows == 80
    # partition 0's last chunk (offsets 10-19) read again with 5 more records after it (offsets 20-24)
    events = audit_events(80, run="s3cmp")[10:20] + audit_events(5, run="grown")
    grown = process(RawBatch(events, KafkaOrigins("audit", 0, list(range(10, 25)))),
                    NormalizeContext()).tables["k8s_audit"]
    real_publish = compact_mod.publish

    def a_writer_commits_first(*args: Any, **kwargs: Any) -> Any:
        sink = LakeSink(lake)
        sink.write("k8s_audit", grown, "audit+0+00000000000000000010")  # the same key, 15 rows now
        sink.publish()
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(compact_mod, "publish", a_writer_commits_first)
    with pytest.raises(ChangedMeanwhile, match="replaced by another writer"):
        compact_mod.compact(lake, S3_TABLE, DAY)
    monkeypatch.setattr(compact_mod, "publish", real_publish)
    after = _day_sum(lake)
    assert after[0] == 85, "the writer's newer object (5 more rows) must stay listed"
    assert not [o for o in _day_objects(s3proxy, prefix) if "/compacted-" in o], "the refused outputs are deleted"
    result = compact_mod.compact(lake, S3_TABLE, DAY)
    assert result.inputs == 8 and _day_sum(lake) == after


@pytest.mark.s3
@pytest.mark.parametrize("writes_first", [False, True], ids=["same-objects", "a-chunk-added-first"])
def test_two_machines_compacting_one_day_on_s3_list_every_row_once(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_first: bool) -> None:
    """Another machine (its day lock is not ours: here a compaction run while ours waits to commit)
    compacts the same day and commits first. Ours must refuse: committing would list the rows of the
    objects it read a second time, in its outputs beside the other machine's. When both read the same
    objects they wrote the same keys: ours must not delete the other's listed outputs."""
    import contextlib

    from ztaudit.core.iceberg_publish import ChangedMeanwhile

    lake, prefix = _s3_lake(s3proxy, monkeypatch, tmp_path, "twomachines")
    rows = _published_small_files(lake, 8)
    monkeypatch.setattr(compact_mod, "file_lock", lambda *_a, **_k: contextlib.nullcontext())
    extra = process(RawBatch(audit_events(7, run="other"), KafkaOrigins("audit", 9, list(range(7)))),
                    NormalizeContext()).tables["k8s_audit"]
    real_publish = compact_mod.publish
    other: list[compact_mod.CompactResult] = []

    def another_machine_commits_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(compact_mod, "publish", real_publish)
        if writes_first:  # a consumer adds a chunk to the day, then the other machine merges all of it
            sink = LakeSink(lake)
            sink.write("k8s_audit", extra, "audit+9+00000000000000000000")
            sink.publish()
        other.append(compact_mod.compact(lake, S3_TABLE, DAY))
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(compact_mod, "publish", another_machine_commits_first)
    with pytest.raises(ChangedMeanwhile, match="no longer listed"):
        compact_mod.compact(lake, S3_TABLE, DAY)
    expected = rows + (extra.num_rows if writes_first else 0)
    listed = _listed(lake)
    assert _day_sum(lake)[0] == expected == other[0].rows, "every row listed once"
    assert listed == {f"s3://{p}" for p in other[0].outputs}, "the other machine's outputs stay listed"
    assert listed <= _day_objects(s3proxy, prefix), "and in the bucket"
    again = compact_mod.compact(lake, S3_TABLE, DAY)
    assert again.inputs == len(listed) and _day_sum(lake)[0] == expected


@pytest.mark.s3
def test_two_machines_compacting_one_day_with_other_settings_write_other_keys(
        s3proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other machine cuts the day into 10-row objects and commits before this one writes its single
    object: with the same keys, this one's write replaced the other's listed objects (other contents:
    70 rows read twice), and its refusal kept them because the head lists their names."""
    import contextlib

    from ztaudit.core.iceberg_publish import ChangedMeanwhile

    lake, prefix = _s3_lake(s3proxy, monkeypatch, tmp_path, "twosettings")
    rows = _published_small_files(lake, 8)
    monkeypatch.setattr(compact_mod, "file_lock", lambda *_a, **_k: contextlib.nullcontext())
    real_write = LakeSink.write_file
    other: list[compact_mod.CompactResult] = []
    started: list[bool] = []

    def the_other_machine_first(self: LakeSink, *args: Any, **kwargs: Any) -> Any:
        if not started:
            started.append(True)
            other.append(compact_mod.compact(lake, S3_TABLE, DAY, target_rows=10))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(LakeSink, "write_file", the_other_machine_first)
    with pytest.raises(ChangedMeanwhile, match="no longer listed"):
        compact_mod.compact(lake, S3_TABLE, DAY)
    assert len(other[0].outputs) == 8
    assert _day_sum(lake)[0] == rows, "every row listed once"
    assert _listed(lake) == {f"s3://{p}" for p in other[0].outputs} <= _day_objects(s3proxy, prefix)
    assert not [o for o in _day_objects(s3proxy, prefix) - _listed(lake) if "/compacted-" in o], \
        "the refused compaction's own outputs are deleted"

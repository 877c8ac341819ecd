"""``migrate`` and ``maintain`` (pipeline/maintain.py, issue 16 items 5 and 6): a lake written by the
previous version becomes an Iceberg lake with the same rows and findings; snapshots, orphans and old
days are removed without a reader ever meeting a missing file."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.lakes import build_sample_lake, count_rows

from ztaudit.cli.main import main
from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot
from ztaudit.core.config import Config
from ztaudit.core.errors import LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.maintain import maintain, migrate

ROOT = Path(__file__).resolve().parent.parent.parent
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _as_previous_version(lake: Path) -> int:
    """Rewrite every data file the way the previous version wrote it: no ``dt`` column (the day was
    in the folder name only), key-value metadata kept. Returns how many files it rewrote."""
    n = 0
    for table in TABLES:
        for path in (lake / table).glob("dt=*/*.parquet"):
            data = pq.read_table(path)
            if "dt" in data.column_names:
                data = data.drop_columns(["dt"])
            pq.write_table(data, path)
            n += 1
    return n


def _snapshot(lake: Path) -> tuple[dict[str, int], list[str]]:
    con = open_lake(lake)
    try:
        counts = {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
                  for t in TABLES if t not in ("detect_runs",)}
        ids = sorted(str(r[0]) for r in con.execute("SELECT finding_id FROM findings").fetchall())
    finally:
        con.close()
    return counts, ids


@pytest.fixture(scope="module")
def previous_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's sample logs ingested and detected, then rewritten as the previous version left them."""
    lake = build_sample_lake(tmp_path_factory.mktemp("prev") / "lake", ROOT / "sample_logs")
    assert _as_previous_version(lake) > 20
    return lake


def test_migrating_the_demo_lake_keeps_every_row_and_finding(previous_lake: Path, tmp_path: Path) -> None:
    before = _snapshot(previous_lake)
    assert sum(before[0].values()) > 200 and len(before[1]) > 5
    lake = tmp_path / "lake"
    shutil.copytree(previous_lake, lake)
    first = migrate(lake)
    assert first.rewritten > 20 and first.registered == first.rewritten
    assert iceberg.is_iceberg(lake)
    assert _snapshot(lake) == before
    # every file now carries its day as a DATE
    for f in iceberg_snapshot.snapshot_files(lake, "k8s_audit"):
        assert pq.read_schema(f).field("dt").type == pa.date32()
    again = migrate(lake)
    assert (again.rewritten, again.registered) == (0, 0)
    # detect over the migrated lake finds the same findings and leaves the same rows
    result = run_detectors(lake, Config())
    assert not result.errors
    assert _snapshot(lake) == before


def test_a_migration_killed_half_way_is_finished_by_the_next(previous_lake: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(previous_lake, lake)
    before = _snapshot(lake)
    # killed after rewriting some files and before the catalog existed
    for path in list((lake / "k8s_audit").glob("dt=*/*.parquet"))[:5]:
        data = pq.read_table(path)
        from ztaudit.core.files import write_parquet_atomic

        write_parquet_atomic(data, path)
    assert not iceberg.is_iceberg(lake)
    migrate(lake)
    assert _snapshot(lake) == before


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``ztaudit ARGS`` through the real entry point (exit codes mapped in cli/main.py)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def test_the_cli_migrates_and_maintain_refuses_a_plain_lake(previous_lake: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(previous_lake, lake)
    code, out = _run(["maintain", "--lake", str(lake), "--expire-snapshots", "7d"], capsys)
    assert code == 2 and "ztaudit migrate" in out
    code, out = _run(["migrate", "--lake", str(lake)], capsys)
    assert code == 0, out
    assert "files registered" in out
    code, out = _run(["maintain", "--lake", str(lake), "--expire-snapshots", "soon"], capsys)
    assert code == 2 and "time span" in out
    code, out = _run(["maintain", "--lake", str(lake), "--expire-snapshots", "7d", "--remove-orphans"], capsys)
    assert code == 0 and "0 orphan data files removed" in out


def _rows(n: int, day: int, start: int = 0) -> pa.Table:
    return pa.table({"request_id": [f"r{start + i}" for i in range(n)],
                     "decided_at": [T0 + timedelta(days=day, seconds=i) for i in range(n)]})


def test_expiring_snapshots_removes_their_metadata_and_keeps_the_current_rows(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    for i in range(6):
        sink.write("proxy_decision", _rows(2, 0, start=10 * i), f"k{i}")
        sink.publish()
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert len(tbl.snapshots()) == 6
    meta = lake / "_iceberg" / "proxy_decision" / "metadata"
    old = time.time() - 3600
    for f in meta.iterdir():
        os.utime(f, (old, old))
    n_before = len(list(meta.iterdir()))
    r = maintain(lake, expire_days=0.0, now=datetime.now(UTC) + timedelta(seconds=1))
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert len(tbl.snapshots()) == 1 and r.snapshots_expired >= 5
    assert r.metadata_files_removed > 0 and len(list(meta.iterdir())) < n_before
    assert count_rows(lake) == 12
    # every file the current metadata names is still there
    for snap in tbl.snapshots():
        assert Path(iceberg.local_path(snap.manifest_list)).exists()
        for m in snap.manifests(tbl.io):
            assert Path(iceberg.local_path(m.manifest_path)).exists()


def test_orphans_older_than_the_grace_go_and_a_running_writers_files_stay(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    sink.write("proxy_decision", _rows(3, 0), "listed")
    sink.publish()
    old_orphan = sink.write("proxy_decision", _rows(2, 0, start=50), "crashed-long-ago")[0]
    past = time.time() - 3 * 86400
    os.utime(old_orphan, (past, past))
    young = sink.write("proxy_decision", _rows(2, 0, start=90), "being-written")[0]
    r = maintain(lake, remove_orphans=True)
    assert r.orphans_removed == 1
    assert not old_orphan.exists() and young.exists()
    assert count_rows(lake) == 3


def test_retention_drops_old_days_from_the_snapshot_before_the_disk(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    for day in range(4):
        sink.write("proxy_decision", _rows(2, day, start=10 * day), f"d{day}")
    sink.publish()
    now = T0 + timedelta(days=5)
    r = maintain(lake, retention_days=3, now=now)  # keeps days >= 2026-11-22
    assert r.days_dropped == 2
    assert sorted(p.name for p in (lake / "proxy_decision").glob("dt=*")) == ["dt=2026-11-22", "dt=2026-11-23"]
    assert {Path(f).parent.name for f in iceberg_snapshot.snapshot_files(lake, "proxy_decision")} == \
        {"dt=2026-11-22", "dt=2026-11-23"}
    assert count_rows(lake) == 4


def test_maintain_refuses_a_plain_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    LakeSink(lake).write("proxy_decision", _rows(1, 0), "k")
    with pytest.raises(LakeError, match="migrate"):
        maintain(lake, expire_days=1)


def test_a_migration_killed_before_registering_leaves_a_plain_lake_that_reads_whole(
        previous_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the catalog exists but before every file is registered: no READY marker, so
    readers (and detect, which rewrites findings) read the plain folders, not empty tables."""
    lake = tmp_path / "lake"
    shutil.copytree(previous_lake, lake)
    before = _snapshot(lake)

    def killed(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt("kill -9")

    monkeypatch.setattr(iceberg_publish, "publish_all", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(lake)
    monkeypatch.undo()
    assert iceberg.catalog_file(lake).is_file() and not iceberg.is_iceberg(lake)
    assert _snapshot(lake) == before
    assert not run_detectors(lake, Config()).errors
    assert _snapshot(lake) == before, "detect over a half-migrated lake kept every finding"
    migrate(lake)
    assert iceberg.is_iceberg(lake)
    assert _snapshot(lake) == before


def test_compacting_a_day_of_an_iceberg_lake_is_one_commit_and_survives_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ztaudit.pipeline import compact as compact_mod

    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    for i in range(6):
        sink.write("proxy_decision", _rows(3, 0, start=10 * i), f"t+0+{i:020d}")
    sink.publish()
    day = (T0.date()).isoformat()
    inputs = set(iceberg_snapshot.snapshot_files(lake, "proxy_decision"))
    assert len(inputs) == 6

    def crash(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt("kill -9 before the commit")

    monkeypatch.setattr(compact_mod, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_mod.compact(lake, "proxy_decision", day)
    monkeypatch.undo()
    # the snapshot still lists the inputs, every one of them is there, the outputs are invisible
    assert set(iceberg_snapshot.snapshot_files(lake, "proxy_decision")) == inputs
    assert all(Path(f).exists() for f in inputs)
    assert count_rows(lake) == 18
    result = compact_mod.compact(lake, "proxy_decision", day)
    assert result.inputs == 6 and len(result.outputs) == 1
    listed = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert listed == [str(result.outputs[0].resolve())]
    assert count_rows(lake) == 18
    assert not any(Path(f).exists() for f in inputs)


def test_retention_keeps_findings_and_triage(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    sink.write("proxy_decision", _rows(2, 0), "old")
    finding = {"finding_id": "f1", "detector": "credential.stale", "first_seen": T0, "last_seen": T0,
               "severity": "low", "summary": "old but open"}
    sink.write("findings", pa.Table.from_pylist([finding]), "f")
    sink.publish()
    r = maintain(lake, retention_days=3, now=T0 + timedelta(days=30))
    assert r.days_dropped == 1
    con = open_lake(lake)
    try:
        assert con.execute("SELECT count(*) FROM findings").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM proxy_decision").fetchone() == (0,)
    finally:
        con.close()


def test_detect_twice_over_an_iceberg_lake_keeps_its_findings(previous_lake: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(previous_lake, lake)
    migrate(lake)
    before = _snapshot(lake)
    for _ in range(2):
        assert not run_detectors(lake, Config()).errors
        assert _snapshot(lake) == before
    listed = iceberg_snapshot.snapshot_files(lake, "findings")
    assert listed and all(Path(f).exists() for f in listed)


@pytest.mark.slow
def test_migrating_a_generated_week_keeps_every_row_and_finding(tmp_path: Path) -> None:
    """Issue 16: a generated week (every incident kind, 2 clusters), written as the previous version
    wrote it, migrated: the same row counts and the same finding ids, before and after a new detect."""
    from support.lakes import build_generated_lake

    lake, _labels = build_generated_lake(tmp_path, events=40_000, days=7)
    _as_previous_version(lake)
    before = _snapshot(lake)
    assert before[0]["k8s_audit"] > 30_000 and len(before[1]) > 20
    migrate(lake)
    assert _snapshot(lake) == before
    from ztaudit.core.config import load_config

    cfg = load_config(tmp_path / "generated" / ".ztaudit" / "ztaudit.toml", env={})
    assert not run_detectors(lake, cfg).errors
    assert _snapshot(lake) == before
    print(f"generated week: {before[0]['k8s_audit']} audit rows, {len(before[1])} findings, identical after "
          "migrate and after a detect over the Iceberg lake")


def test_a_maintain_commit_that_loses_a_race_is_computed_again_on_the_new_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer on another machine (a catalog shared on PostgreSQL; no flock reaches it) commits between
    maintain's load and its commit: Iceberg refuses the stale commit, and maintain reloads and commits
    again instead of failing (the other writer's change is kept)."""
    from pyiceberg.table import Table

    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    for day in range(4):
        sink.write("proxy_decision", _rows(2, day, start=10 * day), f"d{day}")
    sink.publish()
    real_delete = Table.delete
    raced = []

    def delete_after_a_rival_commit(self: Table, *args: object, **kwargs: object) -> None:
        if not raced:  # the rival commits first: this table object is now one version behind
            raced.append(True)
            rival = iceberg.open_catalog(lake).load_table(self.name())
            rival.transaction().set_properties({"rival.writer": "committed"}).commit_transaction()
        real_delete(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Table, "delete", delete_after_a_rival_commit)
    r = maintain(lake, retention_days=3, now=T0 + timedelta(days=5))
    assert raced and r.days_dropped == 2
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert tbl.properties.get("rival.writer") == "committed"
    assert {Path(f).parent.name for f in iceberg_snapshot.snapshot_files(lake, "proxy_decision")} == \
        {"dt=2026-11-22", "dt=2026-11-23"}
    assert count_rows(lake) == 4


def test_a_copied_lakes_old_catalog_that_cannot_be_removed_is_a_lake_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate` on a copied lake removes the copied catalog first; a folder it may not remove (files
    another user left there) is named in one line with the fix, not a PermissionError traceback."""
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    sink.write("proxy_decision", _rows(3, day=0), "k0")
    sink.publish()
    copy = tmp_path / "copy"
    shutil.copytree(lake, copy)
    iceberg.forget_catalog(copy)

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(copy / "_iceberg" / "plans"))

    monkeypatch.setattr("ztaudit.pipeline.maintain.shutil.rmtree", refuse)
    with pytest.raises(LakeError, match=r"cannot remove the old Iceberg catalog.*Permission denied.*plans"):
        migrate(copy)

"""The Iceberg layer (core/iceberg.py, iceberg_publish.py, iceberg_snapshot.py; issue 16): publishing is
exactly-once by path, readers read the snapshot only, schema evolution, concurrent writers, and a model
test of crashes between the rename and the publish."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.lakes import count_rows

from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot
from ztaudit.core.errors import LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _decisions(n: int, start: int = 0, day: int = 0) -> pa.Table:
    """``n`` proxy_decision rows with distinct request ids, on day ``day`` after 2026-11-20."""
    return pa.table({
        "request_id": [f"r{start + i}" for i in range(n)],
        "decided_at": [T0 + timedelta(days=day, seconds=i) for i in range(n)],
        "email": ["alice@example.com"] * n,
        "is_allowed": [True] * n,
    })


def _iceberg_sink(lake: Path) -> LakeSink:
    return LakeSink(lake, table_format="iceberg")


def _publish_each(sink: LakeSink, keys: range) -> None:
    """One ``proxy_decision`` file of one row per key, each published on its own (a commit each)."""
    for i in keys:
        sink.write("proxy_decision", _decisions(1, start=i), f"k{i}")
        sink.publish()


def test_a_new_lake_in_iceberg_format_has_every_table_partitioned_by_dt(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _iceberg_sink(lake)
    assert iceberg.is_iceberg(lake)
    cat = iceberg.open_catalog(lake)
    for name in ("k8s_audit", "proxy_decision", "idp_event", "findings", "quarantine", "reach", "credentials"):
        tbl = cat.load_table((iceberg.NAMESPACE, name))
        assert tbl.format_version == 2
        assert [f.name for f in tbl.spec().fields] == ["dt"]
        assert tbl.schema().find_field("dt").field_type.__class__.__name__ == "DateType"
        assert tbl.metadata.name_mapping() is not None
    # owner only, like every lake file
    assert iceberg.catalog_file(lake).stat().st_mode & 0o077 == 0
    meta = next((lake / "_iceberg" / "proxy_decision" / "metadata").iterdir())
    assert meta.stat().st_mode & 0o077 == 0


def test_files_are_invisible_until_published_and_a_replay_registers_nothing_new(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(5), "topic+0+00000000000000000000")
    assert count_rows(lake) == 0, "a durable but unpublished file must not be read"
    first = sink.publish({"ztaudit.offsets.topic.0": "5"})
    assert (first.added, first.commits) == (1, 1)
    assert count_rows(lake) == 5
    # the same round again (a replay after a crash before the Kafka commit): same name, same rows
    sink.write("proxy_decision", _decisions(5), "topic+0+00000000000000000000")
    again = sink.publish()
    assert count_rows(lake) == 5
    assert len(iceberg_snapshot.snapshot_files(lake, "proxy_decision")) == 1
    assert (again.added, again.removed) == (1, 0), "a rewritten file is registered again, not twice"
    assert iceberg_snapshot.snapshot_offsets(lake, "proxy_decision") == {("topic", 0): 5}


def test_a_rewrite_in_place_with_other_rows_replaces_the_registered_file(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(5), "k")
    sink.publish()
    sink.write("proxy_decision", _decisions(8, start=100), "k")
    sink.publish()
    con = open_lake(lake)
    ids = {r[0] for r in con.execute("SELECT request_id FROM proxy_decision").fetchall()}
    assert ids == {f"r{100 + i}" for i in range(8)}
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    files = list(tbl.scan().plan_files())
    assert len(files) == 1 and files[0].file.record_count == 8


def test_a_file_deleted_on_disk_leaves_the_snapshot_at_the_next_publish(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    a = sink.write("proxy_decision", _decisions(3), "a")
    sink.write("proxy_decision", _decisions(4, start=10), "b")
    sink.publish()
    assert count_rows(lake) == 7
    assert sink.remove(a[0])
    assert a[0].exists(), "an Iceberg lake keeps a listed file until the commit that unlists it"
    assert count_rows(lake) == 7
    r = sink.publish()
    assert r.removed == 1
    assert not a[0].exists()
    assert count_rows(lake) == 4


def test_dt_is_a_date_column_in_every_file_and_prunes_the_snapshot(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    for day in range(3):
        sink.write("proxy_decision", _decisions(2, start=10 * day, day=day), f"d{day}")
    sink.publish()
    for f in iceberg_snapshot.snapshot_files(lake, "proxy_decision"):
        col = pq.read_table(f).column("dt")
        assert col.type == pa.date32()
        assert f"dt={col[0].as_py().isoformat()}" == Path(f).parent.name
    only = iceberg_snapshot.snapshot_files(lake, "proxy_decision", ("2026-11-21", "2026-11-21"))
    assert [Path(f).parent.name for f in only] == ["dt=2026-11-21"]
    con = open_lake(lake)
    assert con.execute("SELECT typeof(dt) FROM proxy_decision LIMIT 1").fetchone() == ("DATE",)


def test_a_column_added_later_is_carried_by_schema_evolution(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake written by a version without ``idp_event.reason`` still reads after the upgrade: the
    table gains the column (Iceberg schema evolution) and old files read it as NULL."""
    from ztaudit.core import schema

    lake = tmp_path / "lake"
    full = schema.TABLES["idp_event"]
    old = pa.schema([f for f in full if f.name != "reason"], metadata=full.metadata)
    monkeypatch.setitem(schema.TABLES, "idp_event", old)
    sink = _iceberg_sink(lake)
    rows = pa.table({"subject_id": ["e1"], "occurred_at": [T0], "subject_login": ["alice"]})
    sink.write("idp_event", rows, "old")
    sink.publish()
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "idp_event"))
    assert "reason" not in {f.name for f in tbl.schema().fields}
    monkeypatch.setitem(schema.TABLES, "idp_event", full)
    sink2 = LakeSink(lake)
    sink2.write("idp_event", pa.table({"subject_id": ["e2"], "occurred_at": [T0], "reason": ["revoked"]}), "new")
    sink2.publish()
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "idp_event"))
    assert "reason" in {f.name for f in tbl.schema().fields}
    con = open_lake(lake)
    got = dict(con.execute("SELECT subject_id, reason FROM idp_event").fetchall())
    assert got == {"e1": None, "e2": "revoked"}


def _writer_process(lake: str, who: int, n: int) -> None:
    """A separate process writing ``n`` two-row files under its own keys, one publish per file: as
    many races with the other writers as possible."""
    sink = LakeSink(Path(lake))
    for i in range(n):
        sink.write("proxy_decision", _decisions(2, start=1000 * who + 10 * i), f"w{who}-{i}")
        sink.publish()


def test_two_processes_committing_to_one_table_register_every_file_exactly_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _iceberg_sink(lake)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(lake), who, 12)) for who in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    files = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert len(files) == len(set(files)) == 24
    assert count_rows(lake) == 48
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert len(tbl.snapshots()) == 24, "one snapshot per publish, none lost to a race"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "delete", "publish", "crash"]), st.integers(0, 5),
                              st.integers(0, 2)), min_size=1, max_size=25))
def test_commits_interleaved_with_crashes_converge_to_the_files_on_disk(tmp_path_factory: pytest.TempPathFactory,
                                                                        ops: list[tuple[str, int, int]]) -> None:
    """Model test: writes, deletions, publishes and crashes (a sink that dies before it publishes:
    its touched days are forgotten) in any order. Whatever was published is never a missing or a
    doubled file; the next writer that touches the same days, or ``migrate``'s full sync, makes the
    snapshot exactly the committed files on disk."""
    lake = tmp_path_factory.mktemp("lake")
    sink = _iceberg_sink(lake)
    for op, key, day in ops:
        if op == "write":
            sink.write("proxy_decision", _decisions(1 + key, start=100 * key, day=day), f"k{key}")
        elif op == "delete":
            path = sink.path_for("proxy_decision", (date(2026, 11, 20) + timedelta(days=day)).isoformat(), f"k{key}")
            if path.exists():
                sink.remove(path)
        elif op == "publish":
            sink.publish()
            listed = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
            assert len(listed) == len(set(listed))
            # never a listed file that is gone, never a file listed twice
            assert all(Path(f).exists() for f in listed)
        else:  # kill -9 before the publish: what was pending is lost with the process
            sink = LakeSink(lake)
        listed = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
        assert all(Path(f).exists() for f in listed), "a reader would meet a listed file that is gone"
    iceberg_publish.publish_all(lake, ["proxy_decision"])
    listed = sorted(iceberg_snapshot.snapshot_files(lake, "proxy_decision"))
    on_disk = sorted(str(p.resolve()) for p in lake.glob("proxy_decision/dt=*/*.parquet"))
    assert listed == on_disk


def test_a_foreign_dt_folder_is_not_quoted_into_a_filter(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(1), "a")
    sink.publish()
    weird = lake / "proxy_decision" / "dt=x') OR (1=1"
    weird.mkdir()
    pq.write_table(_decisions(1, start=5), weird / "f.parquet")
    r = iceberg_publish.publish_all(lake, ["proxy_decision"])
    assert r.added == 0
    assert count_rows(lake) == 1


def test_a_file_whose_dt_is_not_its_folders_day_is_refused_not_multiplied(tmp_path: Path) -> None:
    """A file as the previous version wrote it (no dt column) in an Iceberg lake's day folder: listing
    it under dt NULL would hide it from its day's lookups and register it again at every publish."""
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(2), "a")
    sink.publish()
    stray = lake / "proxy_decision" / "dt=2026-11-20" / "old-writer.parquet"
    pq.write_table(_decisions(3, start=50), stray)
    with pytest.raises(LakeError, match="another day than its folder"):
        iceberg_publish.publish(lake, added=[stray])
    assert count_rows(lake) == 2


def test_folder_names_that_are_not_iso_days_are_never_taken_for_one(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(5), "a")
    sink.publish()
    odd = lake / "proxy_decision" / "dt=20261120"  # date.fromisoformat accepts it on Python 3.11
    odd.mkdir()
    pq.write_table(_decisions(1, start=9), odd / "x.parquet")
    assert iceberg_publish.publish(lake, added=[odd / "x.parquet"]).commits == 0
    assert iceberg_publish.publish_all(lake, ["proxy_decision"]).removed == 0
    assert count_rows(lake) == 5


def test_a_copied_lake_is_refused_until_migrate_registers_it_where_it_is(tmp_path: Path) -> None:
    import shutil

    from ztaudit.pipeline.maintain import migrate

    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(4), "a")
    sink.publish()
    copy = tmp_path / "restored" / "lake"
    shutil.copytree(lake, copy)
    with pytest.raises(LakeError, match="copied or moved"):
        open_lake(copy)
    migrate(copy)
    assert count_rows(copy) == 4
    assert all(f.startswith(str(copy.resolve())) for f in iceberg_snapshot.snapshot_files(copy, "proxy_decision"))
    assert count_rows(lake) == 4, "the original is untouched"


def test_a_lake_path_with_space_percent_and_hash_keeps_its_metadata_inside(tmp_path: Path) -> None:
    lake = tmp_path / "odd 100% #1" / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(3), "a")
    sink.publish()
    assert count_rows(lake) == 3
    assert list((lake / "_iceberg" / "proxy_decision" / "metadata").glob("*.metadata.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd 100% #1"]


def test_commits_keep_a_bounded_number_of_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iceberg_publish, "MAX_SNAPSHOTS", 5)
    monkeypatch.setattr(iceberg_publish, "READER_GRACE_S", 0.0)  # the grace is the next test's
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    _publish_each(sink, range(60))
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert 5 <= len(tbl.snapshots()) < 5 + 10
    assert count_rows(lake) == 60
    # the manifest lists and manifests of expired snapshots go too (about 3 files per commit stay
    # without that: 60 manifest lists, 60 manifests, 20 metadata JSON files)
    metadata = list((lake / "_iceberg" / "proxy_decision" / "metadata").iterdir())
    assert len(metadata) < 90, len(metadata)


def test_an_expired_snapshots_manifests_stay_for_a_reader_until_the_grace_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers take no lock: one that planned a snapshot just before the commits expired it still
    reads its manifest list (deleted only once written longer than ``READER_GRACE_S`` ago)."""
    monkeypatch.setattr(iceberg_publish, "MAX_SNAPSHOTS", 5)
    monkeypatch.setattr(iceberg_publish, "READER_GRACE_S", 3600.0)  # however slow this machine is
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    _publish_each(sink, range(1))
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    planned = tbl.current_snapshot()
    assert planned is not None
    _publish_each(sink, range(1, 20))
    head = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert planned.snapshot_id not in {s.snapshot_id for s in head.snapshots()}, "expired (else nothing is tested)"
    assert Path(planned.manifest_list).is_file()
    assert len(list(tbl.scan().plan_files())) == 1  # the reader's plan of the expired snapshot still works


PD: Final = (iceberg.NAMESPACE, "proxy_decision")


def _history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commits: int) -> tuple[Path, LakeSink, Any]:
    """A lake whose ``proxy_decision`` took ``commits`` commits, none expired (the bound raised for
    them, to be lowered by the test): the lake, its sink and its catalog."""
    monkeypatch.setattr(iceberg_publish, "MAX_SNAPSHOTS", 1000)
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    _publish_each(sink, range(commits))
    return lake, sink, iceberg.open_catalog(lake)


def test_a_second_expiry_of_the_same_snapshots_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Two writers on a shared catalog passing the bound together expire the same snapshots: pyiceberg
    applies the second expiry on the new head and raises ValueError for the ids already gone. The
    commit before it went through, so the publish must not fail (a consumer would die between its
    Iceberg and Kafka commits). Reproduced with a table handle loaded before the first expiry."""
    lake, _, catalog = _history(tmp_path, monkeypatch, 20)
    stale = catalog.load_table(PD)
    monkeypatch.setattr(iceberg_publish, "MAX_SNAPSHOTS", 5)
    iceberg_publish._expire_beyond_bound(lake, catalog, "proxy_decision")
    assert len(catalog.load_table(PD).snapshots()) == 5

    class Racing:
        """The other writer's view: it loaded the table before the expiry above committed."""

        def load_table(self, identifier: object) -> object:
            return stale

    with pytest.raises(ValueError):  # what pyiceberg does (else this test tests nothing)
        stale.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in stale.snapshots()[:3]]).commit()
    with caplog.at_level("WARNING", logger="ztaudit.core.iceberg_publish"):
        iceberg_publish._expire_beyond_bound(lake, Racing(), "proxy_decision")  # type: ignore[arg-type]
    assert "another writer changed the snapshots meanwhile" in caplog.text
    assert len(catalog.load_table(PD).snapshots()) == 5


def test_a_tagged_snapshot_is_kept_and_does_not_block_the_expiry_of_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag (made from Spark, say) on an old snapshot: Iceberg refuses to expire it, and asking it to
    would fail every expiry after, so the history would grow for good. It is left out instead."""
    _, sink, catalog = _history(tmp_path, monkeypatch, 3)
    first = min(catalog.load_table(PD).snapshots(), key=lambda s: s.sequence_number or 0).snapshot_id
    catalog.load_table(PD).manage_snapshots().create_tag(first, "audit-2026-11").commit()
    monkeypatch.setattr(iceberg_publish, "MAX_SNAPSHOTS", 5)
    _publish_each(sink, range(3, 20))
    ids = {s.snapshot_id for s in catalog.load_table(PD).snapshots()}
    assert first in ids
    assert len(ids) < 5 + 10 + 1, "the others were expired"


def test_four_processes_publishing_at_once_all_land_exactly_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _iceberg_sink(lake)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(lake), w, 8)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    files = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert len(files) == len(set(files)) == 32
    assert count_rows(lake) == 64


def test_offsets_go_on_the_last_table_of_a_round_only(tmp_path: Path) -> None:
    """Iceberg commits one table at a time: the round's offsets ride on its last commit, so offsets
    found anywhere mean the whole round was registered (what the consumer's skip-ahead relies on)."""
    lake = tmp_path / "lake"
    sink = _iceberg_sink(lake)
    sink.write("proxy_decision", _decisions(3), "topic+0+00000000000000000000")
    sink.write("k8s_audit", pa.table({"audit_id": ["a1"], "stage": ["ResponseComplete"],
                                      "request_received_at": _decisions(1)["decided_at"]}),
               "topic+0+00000000000000000000")
    sink.publish(iceberg_snapshot.offsets_summary({("topic", 0): 4}, {("topic", 0): 0}))
    assert iceberg_snapshot.snapshot_offsets(lake, "k8s_audit") == {}
    assert iceberg_snapshot.snapshot_offsets(lake, "proxy_decision") == {("topic", 0): 4}
    assert iceberg_snapshot.last_rounds(lake) == {("topic", 0): iceberg_snapshot.LastRound(0, 4)}
    # a later round on the first table: the newest round per partition wins, whichever table holds it,
    # and a round recorded without its start (an older version's) says so
    sink.write("k8s_audit", pa.table({"audit_id": ["a2"], "stage": ["ResponseComplete"],
                                      "request_received_at": _decisions(1)["decided_at"]}),
               "topic+0+00000000000000000004")
    sink.publish(iceberg_snapshot.offsets_summary({("topic", 0): 9, ("topic", 1): 2}, {("topic", 0): 4}))
    assert iceberg_snapshot.last_rounds(lake) == {("topic", 0): iceberg_snapshot.LastRound(4, 9),
                                         ("topic", 1): iceberg_snapshot.LastRound(None, 2)}
    assert iceberg_snapshot.last_rounds(tmp_path / "plain") == {}

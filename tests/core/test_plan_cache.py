"""Remembered snapshot plans (core/plan_cache.py): an Iceberg lake opens without pyiceberg once its
snapshots were planned, and never reads a stale or foreign plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from support.lakes import count_rows

from ztaudit.core import iceberg, plan_cache
from ztaudit.core.errors import LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

#: Opens the lake in a new process; prints the row count and whether pyiceberg was imported.
_PROBE = """
import sys
from ztaudit.core.lake import open_lake
con = open_lake(sys.argv[1])
print(con.execute("SELECT count(*) FROM proxy_decision").fetchone()[0], "pyiceberg" in sys.modules)
"""


def _decisions(n: int, start: int = 0) -> pa.Table:
    return pa.table({"request_id": [f"r{start + i}" for i in range(n)],
                     "decided_at": [T0 + timedelta(seconds=start + i) for i in range(n)],
                     "email": ["alice@example.com"] * n, "is_allowed": [True] * n})


def _lake(tmp_path: Path, rows: int = 3) -> tuple[Path, LakeSink]:
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    sink.write("proxy_decision", _decisions(rows), "k0")
    sink.publish()
    return lake, sink


def _probe(lake: Path) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(lake)], capture_output=True, text=True, check=True)
    count, imported = out.stdout.split()
    return int(count), imported == "True"


def test_a_second_open_reads_the_remembered_plans_without_importing_pyiceberg(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    assert _probe(lake) == (3, True), "the first open plans with pyiceberg"
    assert _probe(lake) == (3, False), "the next one reads the plans it left"
    entry = lake / "_iceberg" / plan_cache.PLANS_DIR / "proxy_decision.json"
    assert entry.stat().st_mode & 0o077 == 0, "owner only, like every lake file"


def test_a_commit_after_the_plan_was_remembered_is_read(tmp_path: Path) -> None:
    lake, sink = _lake(tmp_path)
    assert _probe(lake)[0] == 3
    sink.write("proxy_decision", _decisions(4, start=10), "k1")
    sink.publish()
    assert _probe(lake) == (7, True), "a new metadata file: planned again"
    assert _probe(lake) == (7, False)


@pytest.mark.parametrize("entry", [b"{not json", b"[]", json.dumps({"version": 2, "files": "x"}).encode(),
                                   json.dumps({"version": 99}).encode()])
def test_a_broken_entry_is_planned_again_and_rewritten(tmp_path: Path, entry: bytes) -> None:
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    path = lake / "_iceberg" / plan_cache.PLANS_DIR / "proxy_decision.json"
    path.write_bytes(entry)
    assert count_rows(lake) == 3
    assert json.loads(path.read_bytes())["files"], "rewritten"


def test_a_plan_naming_another_metadata_file_is_not_used(tmp_path: Path) -> None:
    """An entry whose metadata file is not the catalog's current one (an older commit) is ignored,
    even when its file list would be readable."""
    lake, sink = _lake(tmp_path)
    count_rows(lake)
    path = lake / "_iceberg" / plan_cache.PLANS_DIR / "proxy_decision.json"
    old = json.loads(path.read_bytes())
    sink.write("proxy_decision", _decisions(4, start=10), "k1")
    sink.publish()
    path.write_text(json.dumps(old))
    assert count_rows(lake) == 7


def test_a_moved_lake_is_still_refused_with_the_planners_message(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    moved = tmp_path / "moved"
    shutil.copytree(lake, moved)
    iceberg._catalogs.clear()
    with pytest.raises(LakeError, match="made for another place"):
        open_lake(moved)


def test_a_lake_that_cannot_hold_the_plans_is_still_read(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    (lake / "_iceberg" / plan_cache.PLANS_DIR).write_text("not a folder")
    assert count_rows(lake) == 3
    assert count_rows(lake) == 3


def test_the_catalog_row_is_read_without_pyiceberg_and_unknown_tables_give_none(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    db = iceberg.catalog_file(lake)
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert plan_cache.current_metadata(db, iceberg.CATALOG_NAME, iceberg.NAMESPACE, "proxy_decision") \
        == tbl.metadata_location
    assert plan_cache.current_metadata(db, iceberg.CATALOG_NAME, iceberg.NAMESPACE, "nope") is None
    assert plan_cache.current_metadata(tmp_path / "missing.db", iceberg.CATALOG_NAME, iceberg.NAMESPACE,
                                       "proxy_decision") is None


def _entry(lake: Path) -> Path:
    return lake / "_iceberg" / plan_cache.PLANS_DIR / "proxy_decision.json"


def test_a_lost_metadata_file_or_manifest_still_fails_the_open(tmp_path: Path) -> None:
    """The remembered list would still name the snapshot's data files, but a table whose metadata is
    gone is broken for every writer and for Spark: the open must say so, as it did without the cache."""
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    metadata = json.loads(_entry(lake).read_bytes())["metadata"]
    manifests = [p for p in metadata if p.endswith(".avro") and not Path(p).name.startswith("snap-")]
    assert manifests, metadata
    Path(manifests[0]).unlink()
    iceberg._catalogs.clear()
    with pytest.raises(LakeError, match="planning proxy_decision: FileNotFoundError"):
        count_rows(lake)
    tbl_meta = next(p for p in metadata if p.endswith(".metadata.json"))
    Path(tbl_meta).unlink()
    with pytest.raises(LakeError):
        count_rows(lake)


def test_a_reader_that_does_not_own_the_lake_writes_nothing_into_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An administrator reading a service account's lake must leave no file the owner cannot replace
    (and ``migrate`` cannot remove) and must not be led anywhere by a link the owner made."""
    lake, _ = _lake(tmp_path)
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    assert count_rows(lake) == 3
    assert not (lake / "_iceberg" / plan_cache.PLANS_DIR).exists()


def test_a_plans_link_is_never_written_through(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "proxy_decision.json").write_text("precious")
    (lake / "_iceberg" / plan_cache.PLANS_DIR).symlink_to(elsewhere)
    assert count_rows(lake) == 3
    assert [p.name for p in elsewhere.iterdir()] == ["proxy_decision.json"]
    assert (elsewhere / "proxy_decision.json").read_text() == "precious"


def test_a_killed_writers_temporary_entry_is_removed_by_the_next(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    leftover = _entry(lake).with_name(".proxy_decision.json.tmp-999999999")
    leftover.write_text("{")
    os.utime(leftover, (0, 0))
    _entry(lake).unlink()
    count_rows(lake)
    assert not leftover.exists()


def test_an_entry_others_could_have_written_or_naming_foreign_files_is_not_trusted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without the cache only the catalog's owner decides what a reader sees: a ``plans`` folder the
    group may write, or an entry listing files outside the lake, must not decide it either."""
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    entry = json.loads(_entry(lake).read_bytes())
    for files in ([*entry["files"], *entry["files"]], ["/etc/passwd.parquet"], [f"{entry['files'][0]}.x"]):
        _entry(lake).write_text(json.dumps({**entry, "files": files}))
        assert count_rows(lake) == 3, files
    # an entry hiding every row, in a folder the group may write: ignored, and left alone
    _entry(lake).write_text(json.dumps({**entry, "files": []}))
    (lake / "_iceberg" / plan_cache.PLANS_DIR).chmod(0o770)
    with caplog.at_level("INFO", logger="ztaudit.core.plan_cache"):
        assert count_rows(lake) == 3
    assert json.loads(_entry(lake).read_bytes())["files"] == [], "not rewritten in a folder others may write"
    assert "not a folder of the lake's owner only" in caplog.text


def test_a_manifest_damaged_in_place_fails_the_open_even_at_the_same_size(tmp_path: Path) -> None:
    lake, _ = _lake(tmp_path)
    count_rows(lake)
    metadata = json.loads(_entry(lake).read_bytes())["metadata"]
    manifest = next(p for p in metadata if p.endswith(".avro") and not Path(p).name.startswith("snap-"))
    Path(manifest).write_bytes(bytes(Path(manifest).stat().st_size))
    iceberg._catalogs.clear()
    with pytest.raises(LakeError, match="planning proxy_decision"):
        count_rows(lake)


def test_nothing_is_written_for_a_lake_without_its_catalog(tmp_path: Path) -> None:
    """A reader finishing its plan while the owner's ``migrate`` removed ``_iceberg`` must not make it
    again (as root, a folder the owner could no longer write)."""
    folder = tmp_path / "lake" / "_iceberg"
    folder.mkdir(parents=True)
    plan_cache.remember(folder, folder / "catalog.db", "proxy_decision", str(folder / "m.json"), str(folder),
                        [], [])
    assert list(folder.iterdir()) == []

"""An Iceberg lake damaged, odd or unreadable: a clear error or a correct recovery, never a silent
"no events", a traceback or another lake's rows (found by a hostile new-user trial, issue 16)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from support.lakes import count_rows

from ztaudit.core import iceberg, iceberg_snapshot
from ztaudit.core.errors import LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.maintain import migrate

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
ZTAUDIT = str(Path(sys.executable).with_name("ztaudit"))


def _lake(lake: Path, n: int = 4, key: str = "a", days: int = 1) -> Path:
    """An Iceberg lake of ``n`` proxy_decision rows per day over ``days`` days, published."""
    sink = LakeSink(lake, table_format="iceberg")
    for d in range(days):
        sink.write("proxy_decision", pa.table({
            "request_id": [f"{key}{d}-{i}" for i in range(n)],
            "decided_at": [T0 + timedelta(days=d, seconds=i) for i in range(n)],
            "email": ["alice@example.com"] * n, "is_allowed": [True] * n}), f"{key}{d}")
    sink.publish()
    iceberg.forget_catalog(lake)
    return lake


def test_an_iceberg_lake_whose_path_holds_glob_characters_reads_only_its_own_files(tmp_path: Path) -> None:
    """DuckDB globs each path of ``read_parquet([...])``: the lake at ``lk[1]`` read ``lk1``'s files, and
    ``lk*`` every sibling's."""
    _lake(tmp_path / "lk1", 3, "one")
    _lake(tmp_path / "lkx", 5, "x")
    for odd in ("lk[1]", "lk*", "lk?"):
        _lake(tmp_path / odd, 2, "odd")
        assert count_rows(tmp_path / odd) == 2, odd


def test_an_emptied_catalog_is_an_error_not_an_empty_lake(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake")
    iceberg.catalog_file(lake).write_bytes(b"")
    with pytest.raises(LakeError, match="empty"):
        open_lake(lake)
    assert iceberg.catalog_file(lake).stat().st_size == 0, "a reader writes nothing into it"
    iceberg.catalog_file(lake).write_bytes(b"not a database at all, but long enough to be read as a header" * 9)
    iceberg.forget_catalog(lake)
    with pytest.raises(LakeError, match="not a SQLite database"):
        open_lake(lake)
    migrate(lake)
    assert count_rows(lake) == 4


def test_a_lost_catalog_is_an_error_and_migrate_registers_the_files_again(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake")
    iceberg.catalog_file(lake).unlink()
    with pytest.raises(LakeError, match=r"catalog .* is gone"):
        open_lake(lake)
    with pytest.raises(LakeError, match="is gone"):  # a writer would have written a plain lake
        LakeSink(lake).write("proxy_decision", pa.table({"request_id": ["z"], "decided_at": [T0]}), "z")
    # the fix the error names, as a user runs it (the lake has no _state/: made by a sink, as consume does)
    p = subprocess.run([ZTAUDIT, "migrate", "--lake", str(lake)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    iceberg.forget_catalog(lake)
    assert iceberg.is_iceberg(lake) and count_rows(lake) == 4


def test_an_unreadable_catalog_folder_is_an_error_not_a_plain_lake(tmp_path: Path) -> None:
    """Run without the capabilities that let root read anything (the tests run as root here)."""
    lake = _lake(tmp_path / "lake")
    (lake / "_iceberg").chmod(0o000)
    try:
        p = subprocess.run(["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                            "--bounding-set=-dac_override,-dac_read_search",
                            ZTAUDIT, "sql", "--lake", str(lake), "SELECT count(*) FROM proxy_decision"],
                           capture_output=True, text=True, timeout=120)
    finally:
        (lake / "_iceberg").chmod(0o700)
    assert p.returncode == 2 and "cannot read the Iceberg catalog folder" in p.stderr, p.stdout + p.stderr
    assert "Traceback" not in p.stderr


def test_a_damaged_manifest_is_rebuilt_by_migrate(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake", days=2)
    manifests = list((lake / "_iceberg" / "proxy_decision" / "metadata").glob("*-m0.avro"))
    assert manifests
    for m in manifests:
        m.unlink()
    with pytest.raises(LakeError, match="planning proxy_decision"):
        open_lake(lake)
    lock = lake / "_iceberg" / iceberg.LOCK_FILE
    inode = lock.stat().st_ino
    migrate(lake)
    assert count_rows(lake) == 8
    # a writer waiting on the lock while migrate rebuilt the catalog waits on the same file as migrate
    assert lock.stat().st_ino == inode


def test_migrate_says_how_many_listed_files_were_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = _lake(tmp_path / "lake", days=2)
    gone = sorted((lake / "proxy_decision").glob("dt=2026-11-20/*.parquet"))
    for g in gone:
        g.unlink()
    with pytest.raises(LakeError, match="gone"):
        open_lake(lake)
    with caplog.at_level("WARNING"):
        result = migrate(lake)
    assert result.unregistered == len(gone) and "gone unlisted" in result.summary()
    assert str(gone[0].resolve()) in caplog.text
    assert count_rows(lake) == 4


@pytest.mark.parametrize("damage", ["truncated", "not parquet"])
def test_a_damaged_listed_file_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    lake = _lake(tmp_path / "lake")
    f = Path(iceberg_snapshot.snapshot_files(lake, "proxy_decision")[0])
    data = f.read_bytes()
    f.write_bytes(data[:100] if damage == "truncated" else b"x" * len(data))
    with pytest.raises(LakeError, match="lists a file that cannot be read"):
        open_lake(lake)
    p = subprocess.run([ZTAUDIT, "sql", "--lake", str(lake), "SELECT 1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    shutil.rmtree(tmp_path / "lake")


def test_an_iceberg_lake_under_a_backslash_without_glob_characters_still_reads(tmp_path: Path) -> None:
    """Only paths with glob characters are escaped (DuckDB reads a backslash as a separator in a glob)."""
    lake = _lake(tmp_path / "bs\\dir" / "lake", 3)
    assert count_rows(lake) == 3


def test_a_retention_past_a_hundred_years_is_a_config_error_not_an_overflow(tmp_path: Path) -> None:
    from ztaudit.core.errors import ConfigError
    from ztaudit.pipeline.maintain import maintain

    lake = _lake(tmp_path / "lake")
    with pytest.raises(ConfigError, match="not between 1 and 36600"):
        maintain(lake, retention_days=99_999_999)
    assert count_rows(lake) == 4

"""``ztaudit compact``: hundreds of small files of one day become a few, with exactly the same rows;
the swap is atomic, late writers are kept, an interrupted run is finished, and a consumer replay
after compaction does not reintroduce rows."""

from __future__ import annotations

import subprocess
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

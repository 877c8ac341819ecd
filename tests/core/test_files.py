"""File names of lake chunks (core/files.py ``safe_key``) and the Parquet options of lake files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ztaudit.core import files
from ztaudit.core.files import LOOKUP_COLUMNS, MAX_KEY, safe_key, write_parquet_atomic
from ztaudit.core.keys import file_key


def test_a_long_topic_keeps_its_offsets_apart_in_file_names() -> None:
    """Kafka allows 249-character topic names; cutting the key at the length limit cut off the offset,
    and every chunk of the partition had one name (each replacing the last)."""
    topic = "a" * 249
    names = {off: safe_key(file_key(topic, 0, off)) for off in (0, 1000, 2000, 10**12)}
    assert len(set(names.values())) == 4
    assert all(len(n) <= MAX_KEY and n.endswith(f"+{off:020d}") for off, n in names.items())
    # distinct long topics stay apart too, and short keys are unchanged
    assert safe_key(file_key("b" + topic[1:], 0, 0)) != safe_key(file_key(topic, 0, 0))
    assert safe_key(file_key("audit", 3, 7)) == "audit+3+00000000000000000007"


def test_unsafe_and_hidden_keys() -> None:
    assert safe_key(".hidden/../x") == "_hidden_.._x"
    assert safe_key("") == "_"


def test_lake_files_carry_bloom_filters_that_let_duckdb_skip_row_groups_by_identity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup of one identity (``actor = 'system:serviceaccount:...'``) cannot skip a row group by
    min/max (every range spans it); the lake writer's bloom filters let DuckDB skip those that lack it."""
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 1000)
    # each row group spans the same min/max (its first and last rows), so min/max statistics skip none
    actors = ["system:serviceaccount:ns-0:a" if i == 0 else "system:serviceaccount:ns-9:z" if i == 999
              else f"system:serviceaccount:ns-{g}:sa-{i % 50}" for g in range(3) for i in range(1000)]
    table = pa.table({"actor": actors, "verb": ["get"] * len(actors), "audit_id": [str(i) for i in range(3000)]})
    path = write_parquet_atomic(table, tmp_path / "k8s_audit" / "dt=2026-11-01" / "a.parquet")
    con = duckdb.connect()

    def excluded(column: str, value: str) -> list[bool]:
        rows = con.execute("SELECT row_group_id, bloom_filter_excludes FROM parquet_bloom_probe(?, ?, ?) "
                           "ORDER BY row_group_id", [str(path), column, value]).fetchall()
        return [bool(r[1]) for r in rows]

    assert "actor" in LOOKUP_COLUMNS and "audit_id" not in LOOKUP_COLUMNS
    # present in the middle row group only: the two others are skipped; absent: all three
    assert excluded("actor", "system:serviceaccount:ns-1:sa-7") == [True, False, True]
    assert excluded("actor", "system:serviceaccount:ns-5:sa-7") == [True, True, True]
    # no filter on a column that is no lookup column (nothing can be excluded)
    assert excluded("verb", "delete") == [False, False, False]
    plan = con.execute("EXPLAIN ANALYZE SELECT count(*) FROM read_parquet(?) WHERE actor IN "
                       "('system:serviceaccount:ns-5:sa-7', 'system:serviceaccount:ns-6:sa-8')", [str(path)]).fetchall()
    assert "Row Groups Scanned: 0 / 3" in " ".join(plan[0][1].split())

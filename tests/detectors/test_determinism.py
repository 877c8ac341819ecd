"""``detect`` is deterministic: two runs over the same lake give the same findings, evidence included.

Evidence is capped (``detect.max_evidence``, 20 per credential finding), so which references a
finding keeps must not depend on DuckDB's thread scheduling: every detector orders them by time,
then by id, before cutting. A finding that differs between two runs over unchanged data would be
rewritten as "changed" by every run (findings_store) and re-sent by the streaming hook.

The slow test generates three days on two clusters (``ztaudit generate``, every incident kind) and
ingests them with the generator's config, then runs every detector twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from ztaudit.core.config import load_config
from ztaudit.detectors.run import run_detectors


def _table(lake: Path, table: str) -> list[tuple[Any, ...]]:
    """Every row of a derived table (all columns), in a total order."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute("SELECT * EXCLUDE (dt) FROM read_parquet(?, hive_partitioning = true) ORDER BY ALL",
                       [str(lake / table / "*" / "*.parquet")]).fetchall()


def _findings(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["finding_id"]: {k: v for k, v in r.items() if k != "detected_at"} for r in rows}


@pytest.mark.slow
def test_detect_twice_gives_identical_findings(tmp_path: Path) -> None:
    from ztaudit.cli.main import cli

    out, lake = tmp_path / "gen", tmp_path / "lake"
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "--out", str(out), "--days", "3", "--clusters", "prod,staging",
                              "--seed", "7"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["ingest", "--config", str(out / ".ztaudit" / "ztaudit.toml"), "--lake", str(lake),
                              str(out)])
    assert res.exit_code == 0, res.output
    cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})

    first = run_detectors(lake, cfg)
    assert not first.errors, first.errors
    tables = {t: _table(lake, t) for t in ("reach", "credentials")}
    second = run_detectors(lake, cfg)
    assert not second.errors, second.errors

    assert len(first.rows) >= 20 and {r["detector"] for r in first.rows} >= {
        "credential.shared", "credential.off_cluster", "credential.stale", "credential.legacy_token",
        "impersonation.proxy_bypass", "reach.anomalous", "revocation.not_enforced"}
    a, b = _findings(first.rows), _findings(second.rows)
    assert a.keys() == b.keys()
    differ = {fid: (a[fid], b[fid]) for fid in a if a[fid] != b[fid]}
    assert not differ, differ
    assert second.changed == [], [r["finding_id"] for r in second.changed]
    for table, rows in tables.items():
        assert rows and _table(lake, table) == rows, table

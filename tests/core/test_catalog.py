"""``ztaudit catalog``: a DuckDB file usable without Python (views + macros + column docs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from support.lakes import HOSTILE, build_lake

from ztaudit.cli.main import cli


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("cat") / "lake")


def catalog(*args: str) -> str:
    res = CliRunner().invoke(cli, ["catalog", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_catalog_file_opens_in_a_fresh_connection(story: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "lake.duckdb"
    catalog("--lake", str(story), "--out", str(out))
    moved = tmp_path / "elsewhere" / "copy.duckdb"
    moved.parent.mkdir()
    shutil.copy(out, moved)
    monkeypatch.chdir(moved.parent)  # absolute Parquet paths: works from any directory
    con = duckdb.connect(str(moved), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM k8s_requests WHERE actor = 'alice@example.com'").fetchone() == (15,)
        assert con.execute("SELECT count(*) FROM findings_for(?)", [HOSTILE]).fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM requests_by('bob@example.com')").fetchone() == (3,)
        assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (2,)
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert {"k8s_audit", "k8s_requests", "proxy_decision", "idp_event", "findings", "quarantine"} <= views
        macros = {r[0] for r in con.execute("SELECT function_name FROM duckdb_functions() "
                                            "WHERE function_type = 'table_macro'").fetchall()}
        assert {"requests_by", "findings_for", "decisions_for", "credential_uses"} <= macros
        doc = con.execute("SELECT description FROM ztaudit_columns WHERE view = 'k8s_audit' AND \"column\" = 'actor'")
        assert "Effective identity" in doc.fetchone()[0]
        comment = con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'k8s_audit' "
                              "AND column_name = 'actor'").fetchone()
        assert comment is not None and "Effective identity" in comment[0]
    finally:
        con.close()


def test_catalog_sees_new_files_without_rebuilding(story: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(story, lake)
    out = tmp_path / "c.duckdb"
    catalog("--lake", str(lake), "--out", str(out))

    def day_rows() -> int:
        con = duckdb.connect(str(out), read_only=True)
        try:
            return int(con.execute("SELECT count(*) FROM k8s_audit WHERE CAST(dt AS VARCHAR) = '2026-11-22'")
                       .fetchone()[0])
        finally:
            con.close()

    before = day_rows()
    day = lake / "k8s_audit" / "dt=2026-11-22"
    shutil.copy(next(day.glob("*.parquet")), day / "copy.parquet")
    assert before > 0 and day_rows() == 2 * before


def test_catalog_overwrites_atomically(story: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.duckdb"
    catalog("--lake", str(story), "--out", str(out))
    catalog("--lake", str(story), "--out", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.duckdb"]


def test_catalog_listing(story: Path) -> None:
    text = catalog("--lake", str(story))
    assert "k8s_requests" in text and "findings_for(who)" in text
    cols = json.loads(catalog("--lake", str(story), "--columns", "--format", "json"))
    actor = [c for c in cols if c["view"] == "k8s_audit" and c["column"] == "actor"]
    assert actor and "Effective identity" in actor[0]["description"]


def test_catalog_relative_lake_is_made_absolute(story: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(story.parent)
    catalog("--lake", "lake", "--out", str(tmp_path / "r.duckdb"))
    os.chdir(tmp_path)
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM findings").fetchone() == (5,)
    finally:
        con.close()


def test_lake_views_and_impersonation_report_do_not_import_pandas(story: Path) -> None:
    """Opening the lake registers the derived tables from their schemas alone, and Arrow rows are
    converted without pyarrow's pandas-backed tz handling: ~0.3 s of every report and sql run."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ztaudit.core.config import Config\n"
        "from ztaudit.reports import run_report\n"
        "from ztaudit.reports.base import ReportContext\n"
        "from ztaudit.core.lake import open_lake\n"
        "from ztaudit.reports.filters import Filters\n"
        "from ztaudit.reports.formats import render\n"
        f"con = open_lake({str(story)!r})\n"
        "assert 'reach' in {r[0] for r in con.execute('SELECT view_name FROM duckdb_views()').fetchall()}\n"
        "ctx = ReportContext(con=con, config=Config(), filters=Filters(), limit=50, lake='', options={})\n"
        "result = run_report('impersonation', ctx)\n"
        "assert result.sections[1].rows, 'matching section empty'\n"
        "render(result, 'json')\n"
        "print(sorted(m for m in ('pandas', 'sklearn', 'numpy.random') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# --- schema evolution: a lake written before a column existed (core/catalog.py) --------------

#: Columns added after lakes were written: files of an older ztaudit lack them.
NEW_COLUMNS = {"idp_event": ["reason"], "k8s_audit": ["proxy_session_id"]}


def _make_old(lake: Path, table: str, files: int | None = None) -> int:
    """Rewrite ``files`` (default all) of ``table`` as the previous version wrote them: without the
    columns of :data:`NEW_COLUMNS` (plain pyarrow Parquet, as an older sink would have left it)."""
    import pyarrow.parquet as pq

    done = 0
    for path in sorted((lake / table).glob("dt=*/*.parquet"))[:files]:
        t = pq.read_table(path)
        pq.write_table(t.drop_columns(NEW_COLUMNS[table]), path)
        done += 1
    return done


def test_lake_written_before_the_new_columns_still_reads(tmp_path: Path) -> None:
    from support.lakes import story_rows, write_rows

    from ztaudit.core.lake import open_lake
    from ztaudit.core.schema import TABLES
    from ztaudit.core.views import VIEWS

    rows = story_rows()
    rows["idp_event"] = [{"occurred_at": rows["k8s_audit"][0]["request_received_at"], "idp": "keycloak",
                          "event_type": "REFRESH_TOKEN_ERROR", "is_revocation": False, "subject_id": "u-1",
                          "outcome": "FAILURE", "reason": "User disabled", "origin": "file:kc.jsonl:1"}]
    lake = write_rows(tmp_path / "lake", rows)
    assert _make_old(lake, "k8s_audit") > 0 and _make_old(lake, "idp_event") == 1
    con = open_lake(lake)
    try:
        for table in NEW_COLUMNS:
            cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
            assert cols == [*TABLES[table].names, "dt"], table  # every column, in schema order
        assert con.execute("SELECT reason, subject_id FROM idp_event").fetchall() == [(None, "u-1")]
        n = con.execute("SELECT count(*), count(proxy_session_id) FROM k8s_audit").fetchone()
        assert n is not None and n[0] == len(rows["k8s_audit"]) and n[1] == 0
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                 "WHERE table_name IN ('idp_event', 'k8s_audit')").fetchall())
        assert types["reason"] == "VARCHAR" and types["proxy_session_id"] == "VARCHAR"
        for view in VIEWS.values():  # every derived view binds and runs over the old files
            con.execute(f'SELECT count(*) FROM "{view.name}"').fetchall()
    finally:
        con.close()
    out = tmp_path / "old.duckdb"  # ztaudit catalog --out too
    catalog("--lake", str(lake), "--out", str(out))
    cat = duckdb.connect(str(out), read_only=True)
    try:
        assert cat.execute("SELECT count(*) FROM idp_event WHERE reason IS NULL").fetchone() == (1,)
    finally:
        cat.close()


def test_lake_with_old_and_new_files_reads_the_new_values(tmp_path: Path) -> None:
    from support.lakes import story_rows, write_rows

    from ztaudit.core.lake import open_lake

    rows = story_rows()
    when = rows["k8s_audit"][0]["request_received_at"]
    event = {"occurred_at": when, "idp": "pomerium", "event_type": "deleting session", "is_revocation": True,
             "revocation_scope": "session", "subject_id": "u-1", "origin": "file:p.jsonl:1"}
    lake = write_rows(tmp_path / "lake", {"idp_event": [event]}, key="old")
    assert _make_old(lake, "idp_event") == 1
    write_rows(lake, {"idp_event": [dict(event, reason='invalid_grant "User disabled"', origin="file:p.jsonl:2")]},
               key="new")
    con = open_lake(lake)
    try:
        got = con.execute("SELECT origin, reason FROM idp_event ORDER BY origin").fetchall()
    finally:
        con.close()
    assert got == [("file:p.jsonl:1", None), ("file:p.jsonl:2", 'invalid_grant "User disabled"')]


def test_a_binder_error_with_nothing_missing_is_raised(tmp_path: Path) -> None:
    """Only columns absent from the files are filled with NULL; any other binder error (here: no
    ``dt``, the files not being hive-partitioned) still surfaces."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ztaudit.core.catalog import _create_table_view, sql_literal

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    con = duckdb.connect()
    plain = f"read_parquet({sql_literal(str(path))})"
    with pytest.raises(duckdb.BinderException, match="dt"):
        _create_table_view(con, "TEMP VIEW", "t", pa.schema([("a", pa.int64())]), plain)
    with_dt = f"(SELECT *, '2026-03-02' AS dt FROM {plain})"
    _create_table_view(con, "TEMP VIEW", "t", pa.schema([("a", pa.int64()), ("b", pa.string())]), with_dt)
    assert con.execute("SELECT a, b, dt FROM t").fetchall() == [(1, None, "2026-03-02")]

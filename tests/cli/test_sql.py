"""``ztaudit sql``: DuckDB SQL over the lake views and macros, any format, bound parameters."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.lakes import HOSTILE, build_lake

from ztaudit.cli.main import cli


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("sql") / "lake")


def sql(*args: str, ok: bool = True, stdin: str | None = None) -> str:
    res = CliRunner().invoke(cli, ["sql", *args], input=stdin)
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 2, res.output
    return res.output


def test_query_views_as_json(story: Path) -> None:
    rows = json.loads(sql("SELECT actor, count(*) AS n FROM k8s_requests GROUP BY actor ORDER BY n DESC, actor",
                          "--lake", str(story), "--format", "json"))
    assert rows[0] == {"actor": "alice@example.com", "n": 15}
    assert {r["actor"] for r in rows} >= {"bob@example.com", HOSTILE}


def test_named_parameters_bind_hostile_values(story: Path) -> None:
    out = sql("SELECT detector, actor FROM findings_for($who)", "--lake", str(story), "--param", f"who={HOSTILE}",
              "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [{"detector": "reach.anomalous", "actor": HOSTILE}]
    n = json.loads(sql("SELECT count(*) AS n FROM requests_by($who)", "--lake", str(story), "--param",
                       f"who={HOSTILE}", "--format", "json"))
    assert n == [{"n": 3}]
    still = json.loads(sql("SELECT count(*) AS n FROM findings", "--lake", str(story), "--format", "json"))
    assert still == [{"n": 5}]


def test_macros(story: Path) -> None:
    rows = json.loads(sql("SELECT count(*) AS n FROM requests_between('2026-11-21', '2026-11-22') "
                          "WHERE actor = 'alice@example.com'", "--lake", str(story), "--format", "json"))
    assert rows == [{"n": 5}]
    rows = json.loads(sql("SELECT credential_id, count(*) AS n FROM credential_uses('SECRET=ci/deployer-token') "
                          "GROUP BY ALL", "--lake", str(story), "--format", "json"))
    assert rows == [{"credential_id": "SECRET=ci/deployer-token", "n": 3}]
    rows = json.loads(sql("SELECT count(*) AS n FROM decisions_for('carol@example.com')", "--lake", str(story),
                          "--format", "json"))
    assert rows == [{"n": 2}]


def test_formats_and_stdin(story: Path) -> None:
    q = "SELECT 'a|<b>' AS v, TIMESTAMPTZ '2026-11-20 10:00:00+00' AS t"
    assert "a\\|&lt;b&gt;" in sql(q, "--lake", str(story), "--format", "markdown")
    assert "2026-11-20 10:00:00" in sql(q, "--lake", str(story))
    assert json.loads(sql("-", "--lake", str(story), "--format", "json", stdin=q)) == [
        {"v": "a|<b>", "t": "2026-11-20T10:00:00.000000Z"}]
    assert "&lt;b&gt;" in sql(q, "--lake", str(story), "--format", "html", "--out", str(story.parent / "q.html")) \
        or "&lt;b&gt;" in (story.parent / "q.html").read_text()


def test_empty_result_keeps_columns(story: Path) -> None:
    out = sql("SELECT actor, verb FROM k8s_requests WHERE false", "--lake", str(story), "--format", "csv")
    assert out.strip() == "actor,verb"


def test_bad_query_and_bad_param_exit_2(story: Path) -> None:
    assert "query failed" in sql("SELECT nope FROM findings", "--lake", str(story), ok=False)
    sql("SELECT 1", "--lake", str(story), "--param", "no-equals", ok=False)


def test_empty_lake_has_typed_empty_views(tmp_path: Path) -> None:
    (tmp_path / "lake" / "_state").mkdir(parents=True)  # a lake with no table written yet
    rows = json.loads(sql("SELECT count(*) AS n FROM findings", "--lake", str(tmp_path / "lake"), "--format", "json"))
    assert rows == [{"n": 0}]

"""Fidelity of ``detect --engine spark`` (issue 17): two lakes, migrated to Iceberg, judged by both engines.

The lakes (:data:`LAKES`): the demo lake (``sample_logs/`` ingested, as ``make demo`` does, with the RBAC
snapshot) and a generated month (``ztaudit generate --days 30`` with every kind of labelled incident and
its near-misses, ingested as its manifest says, judged with its own config). Each is migrated with
``ztaudit migrate``'s function, then ``run_detectors`` runs on DuckDB and on Spark (``local[2]``, the
lake's Iceberg catalog, :class:`~ztaudit.detectors.spark_engine.SparkEngine`). Compared, per lake:

* the derived tables ``reach`` and ``credentials`` each engine wrote: row for row (the multiset digest
  of ``tests/support/spark.py``, so the order of rows does not matter, every value does);
* the findings, per detector: the same ``finding_id``s with every field equal (``detected_at``, the
  clock, excepted); the Spark run is a child process (its own JVM, with the Iceberg jars);
* the findings Spark's run wrote through the findings store, read back as reports read them (DuckDB);
* every report's JSON (``ztaudit report NAME --format json --section all``) over the lake after DuckDB's
  run and again after Spark's run replaced the findings: byte for byte (the summary's row counting the
  lake's detect runs aside: there is one run more). The findings store keeps an
  unchanged finding's ``detected_at`` and ``first_run``, so equal bytes mean Spark wrote every finding
  with the same fields; one changed field would give it a new ``detected_at`` (and its new value).

Every detector of the registry must run on Spark and match (all 12, with at least 10 finding
something); one that cannot yet would be listed in :data:`NOT_ON_SPARK_YET` with the idiom that stops
it, and the test asserts it fails *for that reason*, so a gap cannot hide.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pytest
from support.lakes import build_sample_lake
from support.spark import arrow_digest, spark_jars

from ztaudit.core.config import Config
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.lake import open_lake
from ztaudit.detectors import registry
from ztaudit.detectors.run import RunResult, run_detectors
from ztaudit.reports import REPORTS

SAMPLES = Path(__file__).resolve().parent.parent.parent / "sample_logs"
pytestmark = [pytest.mark.spark, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:"
                                         "pytest.PytestUnraisableExceptionWarning")]

#: Detector -> the reason it fails on Spark today (a substring of its error). Empty: every detector runs
#: on Spark since the revocation statements were written portably (explicit columns for `* REPLACE`,
#: list_concat for a `||` list, the printf/strftime/string_split rules) and impersonation_rights reads
#: the RBAC snapshot through the engine seam. A detector that stops running on Spark must be listed
#: here with its reason (the test then checks it fails for that reason), never silently skipped.
NOT_ON_SPARK_YET: dict[str, str] = {}

TABLES = ("reach", "credentials")


def _snapshot(lake: Path, result: RunResult) -> dict[str, Any]:
    """What one run produced: its findings by id (without ``detected_at``) and the derived tables'
    digests (``dt`` included: the day each row was written under)."""
    con = open_lake(lake)
    try:
        tables = {t: arrow_digest(con.sql(f"SELECT * FROM {t}").to_arrow_table()) for t in TABLES}
    finally:
        con.close()
    findings = {r["finding_id"]: {k: v for k, v in r.items() if k != "detected_at"} for r in result.rows}
    return {"result": result, "tables": tables, "findings": findings}


#: The lakes judged: the demo lake, and a generated month (events, seed).
LAKES: Final = ("demo", "month")
MONTH_EVENTS: Final = 40_000
MONTH_SEED: Final = 17

_SPARK_RUN = """
import logging, pickle, sys
from pathlib import Path
from ztaudit.detectors.run import run_detectors
logging.getLogger("sqlglot").setLevel(logging.ERROR)
cfg = pickle.loads(Path(sys.argv[2]).read_bytes())
r = run_detectors(Path(sys.argv[1]), cfg, engine="spark")
Path(sys.argv[3]).write_bytes(pickle.dumps(r))
"""


def _month_lake(tmp: Path) -> tuple[Path, Config, Path]:
    """A generated month with every incident kind and its near-misses, ingested as its manifest says:
    (lake, the data set's config, that config's file)."""
    import json

    from click.testing import CliRunner
    from support.lakes import ingest_generated

    from ztaudit.cli.main import cli

    out = tmp / "generated"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "30", "--events", str(MONTH_EVENTS),
                                   "--seed", str(MONTH_SEED), "--incidents", "all"])
    assert res.exit_code == 0, res.output
    lake = tmp / "lake"
    cfg = ingest_generated(out, lake)
    labels = [json.loads(line) for line in (out / ".ztaudit" / "labels.jsonl").read_text().splitlines() if line]
    assert sum(1 for r in labels if r.get("kind") == "incident") >= 10 and len(labels) > 20, len(labels)
    return lake, cfg, out / json.loads((out / ".ztaudit" / "manifest.json").read_text())["ingest"]["config"]


def _report_json(lake: Path, config: Path | None) -> dict[str, str]:
    """Every report's ``--format json --section all`` output, by report name, through the CLI (the
    identity report for the first actor with a finding; ``--config`` when the lake has its own)."""
    from click.testing import CliRunner

    from ztaudit.cli.main import cli

    con = open_lake(lake)
    try:
        row = con.execute("SELECT min(actor) FROM findings WHERE actor IS NOT NULL").fetchone()
    finally:
        con.close()
    assert row is not None and row[0], "no finding names an actor: the identity report would show nothing"
    out = {}
    for name, spec in REPORTS.items():
        args = ["report", name, *([row[0]] if spec.needs_subject else []), "--lake", str(lake),
                "--format", "json", "--section", "all", *(["--config", str(config)] if config else [])]
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, (name, res.output)
        out[name] = res.stdout
    return out


def _spark_run(lake: Path, cfg: Config, tmp: Path) -> RunResult:
    """``run_detectors(engine="spark")`` (findings written) in a child process: PySpark keeps one JVM per
    process and its classpath is fixed when it starts, so a session an earlier test module started
    without the Iceberg jars would make this one fail; the child's JVM is this run's alone."""
    (tmp / "cfg.pickle").write_bytes(pickle.dumps(cfg))
    proc = subprocess.run([sys.executable, "-c", _SPARK_RUN, str(lake), str(tmp / "cfg.pickle"),
                           str(tmp / "run.pickle")], capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: RunResult = pickle.loads((tmp / "run.pickle").read_bytes())  # our own child wrote it
    return result


@pytest.fixture(scope="module", params=LAKES)
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ztaudit.pipeline.ingest import ingest_paths
    from ztaudit.pipeline.maintain import migrate

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    jars = spark_jars()  # skips locally / fails in CI without PySpark or the jars
    tmp = tmp_path_factory.mktemp(f"s17f-{request.param}")
    config_file: Path | None = None
    if request.param == "demo":
        lake = build_sample_lake(tmp / "lake", SAMPLES, detect=False)
        ingest_paths([SAMPLES / "rbac_snapshot"], lake, source="rbac_snapshot", cluster="demo", config=Config())
        base = Config()
    else:
        lake, base, config_file = _month_lake(tmp)
    migrate(lake)
    assert is_iceberg(lake)
    cfg = replace(base, detect=replace(base.detect, spark_jars=":".join(str(j) for j in jars)))
    t0 = time.perf_counter()
    duck = _snapshot(lake, run_detectors(lake, cfg, engine="duckdb"))
    duck["reports"] = _report_json(lake, config_file)
    t1 = time.perf_counter()
    spark = _snapshot(lake, _spark_run(lake, cfg, tmp))
    t2 = time.perf_counter()
    spark["reports"] = _report_json(lake, config_file)
    print(f"\ndetect on the {request.param} lake: duckdb {t1 - t0:.1f} s, spark {t2 - t1:.1f} s "
          "(session start included)")
    con = open_lake(lake)
    try:  # what reports read after Spark's run: the findings table of the lake
        rows = con.sql("SELECT * EXCLUDE (dt) FROM findings").to_arrow_table().to_pylist()
        stored = {r["finding_id"]: r for r in rows}
    finally:
        con.close()
    return {"duckdb": duck, "spark": spark, "stored": stored}


def test_duckdb_runs_every_detector_with_findings_to_compare(runs: dict[str, Any]) -> None:
    duck = runs["duckdb"]["result"]
    assert not duck.errors, duck.errors
    assert sum(duck.counts.values()) >= 10 and duck.tables_built["reach"] and duck.tables_built["credentials"]


@pytest.mark.parametrize("table", TABLES)
def test_derived_tables_are_the_same_row_for_row(runs: dict[str, Any], table: str) -> None:
    assert runs["spark"]["result"].tables_built[table] == runs["duckdb"]["result"].tables_built[table] > 0
    assert f"table:{table}" not in runs["spark"]["result"].errors
    assert runs["spark"]["tables"][table] == runs["duckdb"]["tables"][table]


def test_every_detector_on_spark_gives_duckdbs_findings(runs: dict[str, Any]) -> None:
    duck, spark = runs["duckdb"], runs["spark"]
    detectors = sorted(duck["result"].counts)
    compared = [d for d in detectors if d not in NOT_ON_SPARK_YET]
    assert set(detectors) == set(registry.DETECTORS) and len(compared) == len(detectors) - len(NOT_ON_SPARK_YET)
    assert len(compared) >= 12
    with_findings = 0
    for did in compared:
        assert did not in spark["result"].errors, f"{did} failed on Spark: {spark['result'].errors.get(did)}"
        want = {k: v for k, v in duck["findings"].items() if v["detector"] == did}
        got = {k: v for k, v in spark["findings"].items() if v["detector"] == did}
        assert sorted(got) == sorted(want), f"{did}: other finding ids"
        for fid, row in want.items():
            assert got[fid] == row, f"{did} {fid}: fields differ"
        with_findings += bool(want)
    assert with_findings >= 10, "too few detectors found something: the comparison proves little"


def test_the_detectors_not_on_spark_yet_fail_for_the_known_reason(runs: dict[str, Any]) -> None:
    errors = runs["spark"]["result"].errors
    assert set(errors) == set(NOT_ON_SPARK_YET), errors
    for did, why in NOT_ON_SPARK_YET.items():
        assert why in errors[did], errors[did]


def test_reports_read_the_findings_spark_wrote(runs: dict[str, Any]) -> None:
    stored = runs["stored"]
    spark = runs["spark"]["findings"]
    assert spark and set(spark) <= set(stored)
    for fid, row in spark.items():
        assert {k: stored[fid][k] for k in row} == row


def _without_detect_runs(text: str) -> str:
    """``report summary``'s JSON without its ``detect_runs`` row: the lake's record of detect runs has
    one run more (and a later time) after the second run, whichever engine ran it."""
    import json

    doc = json.loads(text)
    for name, rows in doc["sections"].items():
        doc["sections"][name] = [r for r in rows if not (isinstance(r, dict) and r.get("table") == "detect_runs")]
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_report_json_over_sparks_findings_is_byte_identical(runs: dict[str, Any], name: str) -> None:
    """Byte for byte, but for the summary's count of detect runs (:func:`_without_detect_runs`)."""
    import json

    want, got = runs["duckdb"]["reports"][name], runs["spark"]["reports"][name]
    if name != "quarantine":  # nothing is quarantined in these lakes; every other report shows rows
        assert any(json.loads(want)["sections"].values()), f"{name}: no rows: the comparison proves nothing"
    if name == "summary":
        assert '"detect_runs"' in want and want != got  # the one row that may differ does
        want, got = _without_detect_runs(want), _without_detect_runs(got)
    assert got == want, f"report {name}: the JSON differs after Spark's run"


def test_the_findings_report_json_lists_every_finding(runs: dict[str, Any]) -> None:
    import json

    listed = json.loads(runs["spark"]["reports"]["findings"])["sections"]
    primary = next(iter(listed.values()))
    assert {r["finding_id"] for r in primary} == set(runs["spark"]["findings"]) != set()

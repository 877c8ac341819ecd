"""One machine format (issue 15, item 12): a finding on the findings topic is the same object as in
``report findings --format json``; ``schema_version`` in every JSON output; the streaming hook
produces no suppressed finding; docs/fields.md is what scripts/gen-fields writes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.cases import case_files, load_case, write_case

from ztaudit.cli.main import main
from ztaudit.core.config import Config, load_config
from ztaudit.core.schema import SCHEMA_VERSION
from ztaudit.detectors.streaming import on_flush
from ztaudit.pipeline.consume.progress import Metrics, Progress
from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.formats import render_json

ROOT = Path(__file__).resolve().parent.parent.parent
SINCE = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
UNTIL = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _case_lake(lake: Path) -> None:
    for name in ("pos_human_direct", "pos_decision_without_audit"):
        write_case(load_case(next(p for p in case_files("impersonation") if p.stem == name)), lake)


def _report_json(lake: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, object]]:
    main(["report", "findings", "--lake", str(lake), "--format", "json", "-q", *extra])  # raises on failure
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_topic_messages_equal_report_json(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _case_lake(lake)
    records = on_flush(lake, SINCE, UNTIL, Config())
    assert records
    # what cli/consume.py sends: json.dumps(record, default=str, sort_keys=True)
    sent = {r["finding_id"]: json.loads(json.dumps(r, default=str, sort_keys=True)) for r in records}
    reported = {r["finding_id"]: r for r in _report_json(lake, capsys)}
    assert sent == reported
    one = next(iter(sent.values()))
    assert one["schema_version"] == SCHEMA_VERSION and isinstance(one["context"], dict)
    assert str(one["first_seen"]).endswith("Z") and len(str(one["first_seen"])) == 27
    assert one["status"] == "open" and str(one["first_run"]).startswith("consume:")


def test_streaming_does_not_produce_suppressed_findings(lake: Path, tmp_path: Path) -> None:
    _case_lake(lake)
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text('[[triage.suppress]]\ndetector = "impersonation.proxy_bypass"\nactor = "*@example.com"\n'
                   'reason = "drill"\n')
    produced = {r["detector"] for r in on_flush(lake, SINCE, UNTIL, load_config(cfg))}
    assert "impersonation.proxy_bypass" not in produced and "impersonation.unobserved" in produced
    # the finding is still stored (triage hides, never deletes)
    stored = b"".join(p.read_bytes() for p in (lake / "findings").rglob("*.parquet"))
    assert b"impersonation.proxy_bypass" in stored


def test_schema_version_in_json_reports_and_metrics_file(tmp_path: Path) -> None:
    res = ReportResult("t", "T", [Section("main", "Main", ["x"], [{"x": 1}])])
    assert json.loads(render_json(res)) == [{"schema_version": SCHEMA_VERSION, "x": 1}]
    assert json.loads(render_json(res, "all"))["schema_version"] == SCHEMA_VERSION
    path = tmp_path / "metrics.json"
    Progress(0, path).tick(Metrics(), lag=None, buffered=lambda: 0, force=True)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_docs_fields_is_generated_from_the_code(tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "gen-fields")]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, f"docs/fields.md is stale: run scripts/gen-fields\n{check.stderr}"
    text = (ROOT / "docs" / "fields.md").read_text()
    assert "`triage_until`" in text and "`first_run`" in text  # findings fields, from the code
    stale = tmp_path / "fields.md"
    stale.write_text(text.replace("`triage_until`", "`until`"))
    assert subprocess.run([*script, "--check", "--out", str(stale)], capture_output=True,
                          timeout=120).returncode == 1

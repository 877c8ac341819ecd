"""A generated month: every revocation gets the status, attribution and latencies its label says.

``ztaudit generate`` writes ``.ztaudit/revocations.jsonl``, one line per revoking IdP event with the
expected status (enforced, not_enforced, quiet, pending, not_applicable), the notice and denial
latency, the attribution of the first denial and the exposure, computed from the lines it wrote
(docs/revocation.md). The month is generated, ingested (the real ingest) and judged once per
module; the test prints the confusion matrix (``pytest -s`` shows it) and asserts the diagonal.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.lakes import ingest_generated

from ztaudit.core.lake import open_lake
from ztaudit.detectors.revocation_status import STATUSES, revocation_status
from ztaudit.reports.base import arrow_rows

pytestmark = pytest.mark.slow

#: Proxy lines have whole seconds, IdP events milliseconds: latencies agree to the second.
TOLERANCE = 1.0


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from ztaudit.cli.main import cli

    root = tmp_path_factory.mktemp("month")
    out, lake = root / "gen", root / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "30", "--events", "150000",
                                   "--clusters", "prod,staging", "--seed", "11"])
    assert res.exit_code == 0, res.output
    cfg = ingest_generated(out, lake)
    labels = [json.loads(x) for x in (out / ".ztaudit" / "revocations.jsonl").read_text().splitlines() if x.strip()]
    con = open_lake(Path(lake))
    try:
        rows = arrow_rows(revocation_status(con, cfg))
    finally:
        con.close()
    return labels, rows


def _row_for(label: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    at = _ts(label["revoked_at"])
    for r in rows:
        if r["system"] == label["system"] and r["revoked_at"] == at and label["subject"] in (
                r["identity"], r["subject"]):
            return r
    return None


def test_every_revocation_gets_its_labelled_status(month: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    labels, rows = month
    assert len(labels) >= 50
    assert {lab["expected_status"] for lab in labels} == set(STATUSES)
    matrix: Counter[tuple[str, str]] = Counter()
    wrong = []
    for lab in labels:
        row = _row_for(lab, rows)
        got = row["status"] if row else "missing"
        matrix[(lab["expected_status"], got)] += 1
        if got != lab["expected_status"]:
            wrong.append((lab, row and row["reason"]))
    cols = [*STATUSES, "missing"]
    print("\nexpected \\ got  " + " ".join(f"{c[:12]:>12}" for c in cols))
    for exp in STATUSES:
        print(f"{exp:<15} " + " ".join(f"{matrix[(exp, c)]:>12}" for c in cols))
    assert not wrong, wrong[:5]
    # one row per revocation: the proxy's session deletions that followed are notices, not rows of their own
    okta_rows = [r for r in rows if r["system"] == "okta"]
    assert len(okta_rows) == len(labels)


def test_latencies_and_attribution_match_the_labels(
        month: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    labels, rows = month
    checked = Counter[str]()
    for lab in labels:
        row = _row_for(lab, rows)
        assert row is not None, lab
        for key in ("notice_latency_seconds", "denial_latency_seconds", "exposure_seconds"):
            want, got = lab[key], row[key]
            if want is None:
                assert got is None, (key, lab, row["reason"])
            else:
                assert got is not None and abs(got - want) <= TOLERANCE, (key, want, got, lab, row["reason"])
                checked[key] += 1
        if lab["expected_status"] == "enforced":
            assert row["attribution"] == lab["attribution"], (lab, row["reason"])
        if lab.get("refused_shared_ip"):
            assert row["anonymous_refused"] > 0 and "not attributed" in row["reason"], (lab, row["reason"])
            checked["refused"] += 1
    print(f"\nlatencies checked: {dict(checked)}")
    assert checked["notice_latency_seconds"] >= 10 and checked["denial_latency_seconds"] >= 5
    assert checked["refused"] >= 2

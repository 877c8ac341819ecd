"""``ztaudit findings ack|suppress|expire|list`` (issue 15, item 11): decisions stored in the lake as
data, ids by unique prefix, statuses respected by the findings report, ``--new``, config rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ztaudit.cli.main import main
from ztaudit.detectors.findings_store import write_findings

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DET = "impersonation.proxy_bypass"


def finding(fid: str, actor: str, *, last_seen: datetime = T0, detector: str = DET,
            namespace: str | None = None, detected_at: datetime | None = None) -> dict[str, Any]:
    """A findings-table row as a detector returns it (detectors/base.py ``Finding.row``)."""
    return {"finding_id": fid, "detector": detector, "severity": "high", "actor": actor, "credential_id": None,
            "cluster": "prod", "namespace": namespace, "first_seen": T0, "last_seen": last_seen,
            "summary": f"{actor} reached the API server directly", "evidence": [f"k8s_audit:prod/{fid}"],
            "score": 1.0, "context": json.dumps({"requests": 1}), "detected_at": detected_at or datetime.now(UTC)}


def store(lake: Path, *rows: dict[str, Any]) -> None:
    """One ``detect`` run that produced ``rows`` (the real findings store, which records the run)."""
    write_findings(lake, list(rows), detectors=sorted({r["detector"] for r in rows}) or [DET])


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``ztaudit ARGS`` through the entry point (errors become exit codes there)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def listed(capsys: pytest.CaptureFixture[str], lake: Path, *extra: str) -> dict[str, str]:
    """finding_id -> status of ``findings list --format json``."""
    code, out, err = run(capsys, "findings", "list", "--lake", str(lake), "--format", "json", "-q", *extra)
    assert code == 0, err
    return {r["finding_id"]: r["status"] for r in json.loads(out)}


@pytest.fixture
def two(lake: Path) -> Path:
    store(lake, finding("abcd1111aaaa", "alice@example.com"), finding("abcd2222bbbb", "bob@example.com"),
          finding("ffee3333cccc", "carol@example.com"))
    return lake


def test_ack_by_unique_prefix_is_stored_with_who_when_why(two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "findings", "ack", "abcd1", "--reason", "SEC-1: on it", "--by", "pat",
                         "--lake", str(two))
    assert code == 0, err
    assert "abcd1111aaaa: acked" in out and "pat" in out
    rows = duckdb.connect().execute("SELECT finding_id, action, reason, triaged_by, triaged_at FROM read_parquet(?)",
                                    [str(two / "triage" / "*" / "*.parquet")]).fetchall()
    assert [r[:4] for r in rows] == [("abcd1111aaaa", "ack", "SEC-1: on it", "pat")]
    assert listed(capsys, two) == {"abcd1111aaaa": "acked", "abcd2222bbbb": "open", "ffee3333cccc": "open"}


def test_ambiguous_short_and_unknown_ids_exit_2(two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "findings", "ack", "abcd", "--reason", "x", "--lake", str(two))
    assert code == 2 and "ambiguous" in err and "abcd1111aaaa" in err and "abcd2222bbbb" in err
    code, _, err = run(capsys, "findings", "ack", "ab", "--reason", "x", "--lake", str(two))
    assert code == 2 and "too short" in err
    code, _, err = run(capsys, "findings", "suppress", "ffee3334", "--reason", "x", "--lake", str(two))
    assert code == 2 and "no finding" in err and "Traceback" not in err
    assert not (two / "triage").exists()  # nothing was written


def test_suppressed_is_hidden_by_default_and_listed_on_request(two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "findings", "suppress", "ffee", "--reason", "drill", "--lake", str(two))[0] == 0
    assert listed(capsys, two) == {"abcd1111aaaa": "open", "abcd2222bbbb": "open"}
    assert listed(capsys, two, "--status", "suppressed") == {"ffee3333cccc": "suppressed"}
    assert set(listed(capsys, two, "--status", "all")) == {"abcd1111aaaa", "abcd2222bbbb", "ffee3333cccc"}
    code, out, _ = run(capsys, "findings", "list", "--lake", str(two))
    assert code == 0 and "1 suppressed finding not shown" in out
    # expire ends it: open again
    assert run(capsys, "findings", "expire", "ffee", "--reason", "drill over", "--lake", str(two))[0] == 0
    assert listed(capsys, two)["ffee3333cccc"] == "open"
    code, _, err = run(capsys, "findings", "list", "--lake", str(two), "--status", "supressed")
    assert code == 2 and "did you mean" in err and "suppressed" in err


def test_suppression_that_recurs_after_its_expiry_comes_back(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store(lake, finding("abcd1111aaaa", "alice@example.com", last_seen=T0))
    until = (T0 + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run(capsys, "findings", "suppress", "abcd", "--reason", "known", "--until", until,
               "--lake", str(lake))[0] == 0
    assert listed(capsys, lake, "--status", "all") == {"abcd1111aaaa": "suppressed"}  # no recurrence: stays
    # detect sees the same finding again, two days later: past the suppression's end
    store(lake, finding("abcd1111aaaa", "alice@example.com", last_seen=T0 + timedelta(days=2)))
    assert listed(capsys, lake) == {"abcd1111aaaa": "open"}


def test_ack_until_in_the_past_is_refused(two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "findings", "ack", "ffee", "--reason", "x", "--until", "2020-01-01", "--lake", str(two))
    assert code == 2 and "in the past" in err


def test_config_rule_suppresses_by_detector_and_actor_glob(two: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text('[[triage.suppress]]\ndetector = "impersonation.*"\nactor = "b*@example.com"\n'
                   'reason = "bob is the break-glass account"\n')
    assert listed(capsys, two, "--config", str(cfg)) == {"abcd1111aaaa": "open", "ffee3333cccc": "open"}
    code, out, _ = run(capsys, "findings", "list", "--lake", str(two), "--config", str(cfg), "--status",
                       "suppressed", "--format", "json", "-q")
    (row,) = json.loads(out)
    assert row["triaged_by"] == "config triage.suppress[0]" and row["triage_reason"].startswith("bob is")
    # a rule whose detector names nothing says so (a typo would suppress nothing, silently)
    cfg.write_text('[[triage.suppress]]\ndetector = "impersonation.proxy_bypas"\nactor = "*"\nreason = "x"\n')
    code, out, _ = run(capsys, "findings", "list", "--lake", str(two), "--config", str(cfg))
    assert code == 0 and "matches no detector" in out and "did you mean 'impersonation.proxy_bypass'" in out


def test_new_means_first_produced_since_the_last_detect_run(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t1 = datetime.now(UTC) - timedelta(hours=2)
    store(lake, finding("abcd1111aaaa", "alice@example.com", detected_at=t1))
    assert listed(capsys, lake, "--new") == {"abcd1111aaaa": "open"}  # the first run: all new
    t2 = t1 + timedelta(hours=1)
    store(lake, finding("abcd1111aaaa", "alice@example.com", detected_at=t2),
          finding("ffee3333cccc", "carol@example.com", detected_at=t2))
    assert listed(capsys, lake, "--new") == {"ffee3333cccc": "open"}
    # a run that finds nothing new: nothing is new (not the previous run's new ones)
    t3 = t2 + timedelta(minutes=30)
    store(lake, finding("abcd1111aaaa", "alice@example.com", detected_at=t3),
          finding("ffee3333cccc", "carol@example.com", detected_at=t3))
    assert listed(capsys, lake, "--new") == {}
    first = duckdb.connect().execute(
        "SELECT finding_id, first_run FROM read_parquet(?) ORDER BY 1",
        [str(lake / "findings" / "*" / "*.parquet")]).fetchall()
    iso = "%Y-%m-%dT%H:%M:%S.%fZ"
    assert first == [("abcd1111aaaa", f"detect:{t1.strftime(iso)}"), ("ffee3333cccc", f"detect:{t2.strftime(iso)}")]


def test_the_reason_is_scrubbed_of_secrets(two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    assert run(capsys, "findings", "ack", "ffee", "--reason", f"replayed token {jwt}", "--lake", str(two))[0] == 0
    assert not any(jwt.encode() in p.read_bytes() for p in (two / "triage").rglob("*.parquet"))

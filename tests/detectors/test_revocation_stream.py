"""revocation.stream_survived beyond its case files, and the revocation report's stream exposure.

The named cases under tests/cases/revocation/stream_survived/ run in the generic revocation case test
(tests/detectors/test_revocation.py, which also checks each case's revocation statuses). Here: the
finding id is one per stream and stable across runs and windows, a detector window reports only the
streams still open in it, a stream's end arriving later turns a still-open finding into an ended one
with the same id, and ``ztaudit report revocation`` shows the exposure in every format, keeps the
status ``enforced`` for new requests and says in the verdict that a stream outlived the revocation. The
slow test judges a generated month: exactly its labelled "watch across the revocation" cases are found.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.cases import case_files, detect, load_case, write_case, write_rows
from support.lakes import ingest_generated

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.detectors.revocation_stream import severity
from ztaudit.reports.revocation import STREAM_COLUMNS

CASES = {p.stem: p for p in case_files("revocation") if p.parent.name == "stream_survived"}
DETECTOR = "revocation.stream_survived"


def _write(lake: Path, *names: str) -> None:
    for name in names:
        write_case(load_case(CASES[name]), lake)


def _report(lake: Path, *args: str) -> str:
    res = CliRunner().invoke(cli, ["report", "revocation", "--lake", str(lake), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_case_files_of_both_kinds() -> None:
    kinds = {name.split("_")[0] for name in CASES}
    assert kinds == {"pos", "neg"} and len(CASES) >= 10
    assert all(load_case(p).detector == DETECTOR for p in CASES.values())


def test_one_stable_finding_per_stream(lake: Path) -> None:
    _write(lake, "pos_followed_log_and_list_with_watch_param")
    first = detect(lake, DETECTOR, Config())
    again = detect(lake, DETECTOR, Config())
    assert len(first) == 2 and len({f.finding_id for f in first}) == 2
    assert [f.finding_id for f in first] == [f.finding_id for f in again]
    assert [f.row(datetime.now(UTC))["evidence"][0] for f in first] == ["k8s_audit:prod/l-1", "k8s_audit:prod/l-2"]


def test_window_reports_streams_still_open_in_it(lake: Path) -> None:
    # the watch ended 2026-11-20 10:30; a window from 10:31 does not report it, one from 10:29 does
    _write(lake, "pos_two_revocations_one_stream")
    late = detect(lake, DETECTOR, Config(), since=datetime(2026, 11, 20, 10, 31, tzinfo=UTC))
    early = detect(lake, DETECTOR, Config(), since=datetime(2026, 11, 20, 10, 29, tzinfo=UTC))
    assert late == [] and [f.actor for f in early] == ["hugo@example.com"]
    assert early[0].finding_id == detect(lake, DETECTOR, Config())[0].finding_id


def test_still_open_then_its_end_arrives(lake: Path) -> None:
    _write(lake, "pos_portforward_still_open_at_end_of_logs")
    (open_,) = detect(lake, DETECTOR, Config())
    assert open_.context["still_open"] is True and open_.context["ended_at"] is None
    end = {"audit_id": "pf-1", "cluster": "prod", "stage": "ResponseComplete",
           "request_received_at": datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
           "stage_at": datetime(2026, 11, 20, 11, 20, tzinfo=UTC), "verb": "get", "resource": "pods",
           "subresource": "portforward", "namespace": "web", "name": "db-0",
           "request_uri": "/api/v1/namespaces/web/pods/db-0/portforward?ports=5432",
           "user_name": "system:serviceaccount:pomerium:pomerium-authorize",
           "impersonated_user": "fred@example.com", "actor": "fred@example.com", "response_code": 101,
           "decision": "allow", "origin": "file:late.jsonl:1"}
    write_rows([end], lake, "late")
    (ended,) = detect(lake, DETECTOR, Config())
    assert ended.finding_id == open_.finding_id
    assert ended.context["still_open"] is False and ended.context["open_after_revocation"] == 4800.0
    assert [s["stage"] for s in ended.context["stages"]] == ["ResponseStarted", "ResponseComplete"]
    assert "stayed open 80.0 min after the revocation" in ended.summary


def test_stage_delivered_twice_is_listed_once(lake: Path) -> None:
    _write(lake, "pos_exec_outlives_okta_deactivate")
    case = load_case(CASES["pos_exec_outlives_okta_deactivate"])
    dup = [dict(r, origin="kafka:audit/0/7") for r in case.rows()["k8s_audit"] if r["audit_id"] == "x-1"]
    write_rows(dup, lake, "redelivered")
    (f,) = detect(lake, DETECTOR, Config())
    assert [s["stage"] for s in f.context["stages"]] == ["ResponseStarted", "ResponseComplete"]
    assert f.evidence.count("k8s_audit:prod/x-1") == 1


def test_severity() -> None:
    assert [str(severity(k, "pods")) for k in ("exec", "attach", "portforward", "proxy", "watch", "logs")] == [
        "high", "high", "high", "high", "medium", "medium"]
    assert str(severity("watch", "secrets")) == "high"


# ---- the revocation report ---------------------------------------------------------------------


def test_report_shows_the_exposure_in_every_format(lake: Path) -> None:
    # dan: enforced for new requests (refused with identity 30 s after), his watch open 1030 s after;
    # erin: quiet, her exec open 40 min after; ivy: her watch closed within the grace period
    _write(lake, "pos_watch_outlives_keycloak_disable", "pos_exec_outlives_okta_deactivate",
           "neg_stream_closed_within_grace")
    rows = json.loads(_report(lake, "--format", "json"))
    by = {r["subject"]: r for r in rows}
    assert by["dan@example.com"]["status"] == "enforced"  # new requests were refused
    assert by["dan@example.com"]["reason"].endswith(
        "; but 1 stream(s) opened before it stayed open past the grace period (watch), the longest 17.2 min after "
        "it (revocation.stream_survived)")
    assert by["erin@example.com"]["reason"].endswith("(exec), the longest 40.0 min after it "
                                                     "(revocation.stream_survived)")
    assert "stream" not in by["ivy@example.com"]["reason"]
    assert "streams" not in by["dan@example.com"]  # the primary section's keys are unchanged

    streams = json.loads(_report(lake, "--format", "json", "--section", "streams"))
    assert [list(s) for s in streams] == [["schema_version", *STREAM_COLUMNS]] * 2
    got = {s["identity"]: s for s in streams}
    assert set(got) == {"dan@example.com", "erin@example.com"}
    dan = got["dan@example.com"]
    assert (dan["status"], dan["streams"], dan["still_open"], dan["longest_stream_seconds"]) == (
        "enforced", 1, 0, 1030.0)
    assert dan["longest_stream"] == "watch" and dan["stream_refs"] == ["k8s_audit:prod/w-1"]
    assert got["erin@example.com"]["longest_stream_seconds"] == 2400.0

    table = _report(lake, "--format", "table")
    verdict = " ".join(table[: table.index("== ")].split())  # the terminal wraps long lines
    assert ("Open streams: 2 revocation(s) outlived by a stream opened before them (1 of them enforced for new "
            "requests, 1 counted above as meeting the objective), the longest open 40.0 min after its "
            "revocation") in verdict
    assert "Streams that outlived a revocation" in table and "1030" in table
    md = _report(lake, "--format", "markdown")
    assert md.index("**Open streams: 2 revocation(s)") < md.index("## ")
    assert "| dan@example.com |" in md[md.index("Streams that outlived"):]
    html = _report(lake, "--format", "html", "--out", "-")
    assert "Open streams: 2 revocation(s)" in html and "Streams that outlived a revocation" in html
    got_csv = list(csv.DictReader(io.StringIO(_report(lake, "--format", "csv", "--section", "streams"))))
    assert sorted((r["identity"], r["streams"], r["longest_stream"]) for r in got_csv) == [
        ("dan@example.com", "1", "watch"), ("erin@example.com", "1", "exec")]


def test_report_still_open_and_no_streams(lake: Path, tmp_path: Path) -> None:
    _write(lake, "pos_portforward_still_open_at_end_of_logs")
    (row,) = json.loads(_report(lake, "--format", "json", "--section", "streams"))
    assert (row["still_open"], row["longest_stream"]) == (1, "portforward (still open)")
    (rev,) = json.loads(_report(lake, "--format", "json"))
    assert "1 still open at the end of the logs), the longest at least 60.0 min after it" in rev["reason"]
    # --until before the stream's revocation + grace: nothing shows it open past the grace period yet
    assert json.loads(_report(lake, "--format", "json", "--section", "streams", "--until",
                              "2026-11-20T10:10:00Z")) == []
    other = tmp_path / "other"
    _write(other, "neg_stream_closed_within_grace")
    text = " ".join(_report(other, "--format", "table").split())
    assert "Open streams: no watch, exec, attach, port-forward, proxy or followed log" in text


# ---- a generated month ---------------------------------------------------------------------------


@pytest.mark.slow
def test_generated_month_finds_exactly_the_watches_across_a_revocation(tmp_path: Path) -> None:
    """The generator's "watch" revocations (a watch opened 3 min before T0, ended 25 min after it) are the
    only streams that outlive a revocation in its month; background watches and exec sessions are not."""
    out, lake = tmp_path / "gen", tmp_path / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "30", "--events", "150000",
                                   "--clusters", "prod,staging", "--seed", "11"])
    assert res.exit_code == 0, res.output
    cfg = ingest_generated(out, lake)
    labels = [json.loads(x) for x in (out / ".ztaudit" / "revocations.jsonl").read_text().splitlines() if x.strip()]
    want = sorted((lab["subject"], datetime.fromisoformat(lab["revoked_at"].replace("Z", "+00:00")))
                  for lab in labels if lab["note"].startswith("a watch opened"))
    found = detect(lake, DETECTOR, cfg)
    assert len(want) >= 2
    assert sorted((f.actor, f.context["revoked_at"]) for f in found) == want
    assert all(f.context["stream"] == "watch" and 1400 < f.context["open_after_revocation"] < 1600 for f in found)

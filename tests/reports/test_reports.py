"""``ztaudit report``: every report over the hand-made story lake, the sample logs and a generated lake.

Content is asserted (who, how many, which status), not just exit codes. Filters are bound
parameters: a quote-laden identity must work and return exactly its rows.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.lakes import HOSTILE, build_generated_lake, build_lake, build_sample_lake, story_rows

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.reports import REPORTS
from ztaudit.reports import credentials as credentials_mod
from ztaudit.reports import revocation as revocation_mod
from ztaudit.reports.base import Progress, ReportContext
from ztaudit.reports.filters import Filters

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE_LOGS = ROOT / "sample_logs"
FORMATS = ("table", "json", "csv", "markdown", "html")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("story") / "lake")


DETECT_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample logs ingested and detected. If detect itself breaks, the format matrix still runs
    over the ingested lake and ``test_sample_logs_story`` fails with detect's error."""
    lake = tmp_path_factory.mktemp("sample") / "lake"
    try:
        return build_sample_lake(lake, SAMPLE_LOGS)
    except Exception as exc:
        DETECT_ERRORS.append(f"{type(exc).__name__}: {exc}")
        return lake


def run(*args: str, ok: bool = True) -> Any:
    res = CliRunner().invoke(cli, ["report", *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def jrun(*args: str) -> Any:
    return json.loads(run(*args, "--format", "json").stdout)


def ctx_for(lake: Path, **filters: Any) -> ReportContext:
    return ReportContext(con=open_lake(lake), config=Config(), filters=Filters(**filters))


# --- registry and options -------------------------------------------------------------------------

def test_list_names_every_report_with_a_description() -> None:
    out = run("--list").stdout
    assert set(REPORTS) == {"summary", "findings", "impersonation", "revocation", "reach", "credentials",
                            "identity", "quarantine"}
    for name, spec in REPORTS.items():
        assert any(line.startswith(name) and spec.description[:30] in line for line in out.splitlines())


def test_unknown_report_and_missing_identity_are_usage_errors(story: Path) -> None:
    assert run("nope", "--lake", str(story), ok=False).exit_code == 2
    res = run("identity", "--lake", str(story), ok=False)
    assert res.exit_code == 2 and "needs an identity" in res.output


def test_missing_lake_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    from ztaudit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "summary", "--lake", str(tmp_path / "absent")])
    assert exc.value.code == 2


def test_bad_since_exits_2(story: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ztaudit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "summary", "--lake", str(story), "--since", "yesterday-ish"])
    assert exc.value.code == 2
    assert "--since" in capsys.readouterr().err


# --- summary ------------------------------------------------------------------------------------------

def test_summary_counts_rows_per_table_and_cluster(story: Path) -> None:
    rows = jrun("summary", "--lake", str(story))
    got = {(r["table"], r["cluster"]): r for r in rows}
    expected = story_rows()
    k8s_prod = sum(1 for r in expected["k8s_audit"] if r["cluster"] == "prod")
    assert got[("k8s_audit", "prod")]["rows"] == k8s_prod
    assert got[("k8s_audit", "staging")]["rows"] == 6
    assert got[("k8s_audit", "prod")]["days"] == 3
    assert got[("idp_event", None)]["rows"] == 3
    assert got[("findings", "prod")]["rows"] == 5
    assert got[("k8s_audit", "prod")]["first_at"] == "2026-11-20T09:00:00.000000Z"
    sections = json.loads(run("summary", "--lake", str(story), "--format", "json", "--section", "all").stdout)
    assert {q["reason"]: q["records"] for q in sections["sections"]["quarantine"]} == {"invalid_json": 1,
                                                                                      "missing_field": 1}


def test_summary_time_filter_prunes_and_is_exact(story: Path) -> None:
    rows = jrun("summary", "--lake", str(story), "--since", "2026-11-21T00:00:00Z", "--until", "2026-11-22")
    got = {(r["table"], r["cluster"]): r["rows"] for r in rows}
    day2 = sum(1 for r in story_rows()["k8s_audit"]
               if r["cluster"] == "prod" and r["request_received_at"].date().isoformat() == "2026-11-21")
    assert got[("k8s_audit", "prod")] == day2


# --- findings -----------------------------------------------------------------------------------------

REQUIRED = {"finding_id", "detector", "severity", "actor", "credential_id", "cluster", "first_seen", "last_seen",
            "summary", "evidence"}


def test_findings_json_is_a_list_of_documented_objects(story: Path) -> None:
    rows = jrun("findings", "--lake", str(story))
    assert isinstance(rows, list) and len(rows) == 5
    for r in rows:
        assert REQUIRED <= set(r)
        assert r["first_seen"].endswith("Z") and datetime.fromisoformat(r["first_seen"]).tzinfo is not None
        assert isinstance(r["evidence"], list)
        assert isinstance(r["context"], dict)
    assert [r["severity"] for r in rows] == ["critical", "high", "medium", "medium", "low"]


def test_findings_filters(story: Path) -> None:
    assert {r["detector"] for r in jrun("findings", "--lake", str(story), "--detector", "credential")} == {
        "credential.legacy_token", "credential.shared"}
    assert {r["actor"] for r in jrun("findings", "--lake", str(story), "--severity", "high")} == {
        "carol@example.com", "bob@example.com"}
    # overlap semantics: a finding is in range when [first_seen, last_seen] meets [since, until)
    rows = jrun("findings", "--lake", str(story), "--since", "2026-11-21T12:10:00Z", "--until", "2026-11-21T13:00Z")
    assert "carol@example.com" in {r["actor"] for r in rows}
    assert jrun("findings", "--lake", str(story), "--cluster", "staging") == []


def test_hostile_identity_is_bound_not_formatted(story: Path) -> None:
    rows = jrun("findings", "--lake", str(story), "--actor", HOSTILE)
    assert [r["actor"] for r in rows] == [HOSTILE]
    timeline = jrun("identity", HOSTILE, "--lake", str(story))
    assert {e["source"] for e in timeline} == {"k8s_audit", "proxy_decision"}
    assert len(timeline) == 6
    # nothing was dropped or injected: every finding is still there
    assert len(jrun("findings", "--lake", str(story))) == 5
    assert jrun("findings", "--lake", str(story), "--actor", "o'brien") == []


# --- impersonation ------------------------------------------------------------------------------------

def test_impersonation_paths(story: Path) -> None:
    rows = jrun("impersonation", "--lake", str(story))
    by = {(r["cluster"], r["actor"]): r for r in rows}
    bob = by[("prod", "bob@example.com")]
    assert bob["status"] == "proxy_bypass" and bob["direct"] == 3 and bob["via_approved_proxy"] == 0
    alice = by[("prod", "alice@example.com")]
    assert alice["status"] == "ok" and alice["via_approved_proxy"] == 12 and alice["impersonators"] == [
        "system:serviceaccount:pomerium:pomerium-authorize"]
    assert rows[0]["status"] == "proxy_bypass"  # problems first
    allsec = json.loads(run("impersonation", "--lake", str(story), "--format", "json", "--section", "all").stdout)
    assert [f["actor"] for f in allsec["sections"]["findings"]] == ["bob@example.com"]


# --- revocation -----------------------------------------------------------------------------------------

def _subject(r: dict[str, Any]) -> Any:
    return r.get("subject", r.get("subject_login"))


def test_revocation_statuses_and_latency(story: Path) -> None:
    rows = jrun("revocation", "--lake", str(story))
    by = {_subject(r): r for r in rows}
    assert by["carol@example.com"]["status"] == "not_enforced"
    assert by["dave@example.com"]["status"] == "enforced"
    lat = json.loads(run("revocation", "--lake", str(story), "--format", "json", "--section", "latency").stdout)
    assert lat[0]["revocations"] == 2 and lat[0]["not_enforced"] == 1 and lat[0]["enforced"] == 1


def test_revocation_sql_fallback(story: Path) -> None:
    rows = {r["subject_login"]: r for r in revocation_mod._fallback(ctx_for(story))}
    carol, dave = rows["carol@example.com"], rows["dave@example.com"]
    assert carol["status"] == "not_enforced" and carol["latency_seconds"] == 1800.0
    assert carol["allowed_after_grace"] == 2  # one proxy decision and one audit request
    assert dave["status"] == "enforced" and dave["latency_seconds"] == 0.0
    summary = revocation_mod.latency_summary(list(rows.values()))
    assert summary["p50_seconds"] == 900.0 and summary["max_seconds"] == 1800.0


def test_percentile() -> None:
    assert revocation_mod.percentile([], 50) is None
    assert revocation_mod.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert revocation_mod.percentile([5.0], 99) == 5.0


# --- reach ------------------------------------------------------------------------------------------------

def test_reach_blast_radius_and_flags(story: Path) -> None:
    rows = jrun("reach", "--lake", str(story))
    by = {r["actor"]: r for r in rows}
    if "blast_radius" in rows[0]:  # SQL fallback shape (detectors.reach.reach_report not in this build)
        assert by["alice@example.com"]["blast_radius"] == 3
        assert by["alice@example.com"]["clusters"] == 2
        assert by[HOSTILE]["flagged"] is True and rows[0]["actor"] == HOSTILE
        assert by[HOSTILE]["secrets"] == 1
    top1 = jrun("reach", "--lake", str(story), "--limit", "1")
    assert len(top1) == 1
    assert [r["actor"] for r in jrun("reach", "--lake", str(story), "--actor", "bob@example.com")] == [
        "bob@example.com"]


# --- credentials ------------------------------------------------------------------------------------------

def test_credentials_sections(story: Path) -> None:
    allsec = json.loads(run("credentials", "--lake", str(story), "--format", "json", "--section", "all").stdout)
    s = allsec["sections"]
    assert [r["credential_id"] for r in s["legacy"]] == ["SECRET=ci/deployer-token"]
    assert [r["credential_id"] for r in s["shared"]] == ["JTI=11111111-aaaa"]
    assert {r["credential_id"] for r in s["inventory"]} >= {"SECRET=ci/deployer-token", "JTI=11111111-aaaa"}


def test_credentials_sql_fallback(story: Path) -> None:
    rows = {r["credential_id"]: r for r in credentials_mod._fallback(ctx_for(story))}
    jti = rows["JTI=11111111-aaaa"]
    assert jti["shared"] is True and jti["shared_windows"] == 3 and jti["source_ips"] == 2
    assert jti["stale"] is True  # used over 48 h: past the 48 h JTI maximum age
    legacy = rows["SECRET=ci/deployer-token"]
    assert legacy["legacy"] is True and legacy["shared"] is False and legacy["stale"] is False
    assert legacy["actors"] == ["system:serviceaccount:ci:deployer"]


# --- identity ----------------------------------------------------------------------------------------------

def test_identity_sections(story: Path) -> None:
    allsec = json.loads(run("identity", "alice@example.com", "--lake", str(story), "--format", "json",
                            "--section", "all").stdout)["sections"]
    over = allsec["overview"][0]
    assert over["requests"] == 15 and over["proxy_decisions"] == 12 and over["idp_events"] == 1
    assert over["clusters"] == ["prod", "staging"]
    times = [e["at"] for e in allsec["timeline"]]
    assert times == sorted(times) and len(times) == 28
    assert {(r["cluster"], r["namespace"]) for r in allsec["reach"]} == {("prod", "default"), ("prod", "web"),
                                                                          ("staging", "default")}
    limited = jrun("identity", "alice@example.com", "--lake", str(story), "--limit", "5")
    assert [e["at"] for e in limited] == times[-5:]


# --- quarantine ----------------------------------------------------------------------------------------------

def test_quarantine(story: Path) -> None:
    rows = jrun("quarantine", "--lake", str(story))
    assert {(r["origin"], r["reason"]) for r in rows} == {("file:bad.jsonl:3", "invalid_json"),
                                                          ("file:bad.jsonl:7", "missing_field")}
    assert {r["raw_preview"] for r in rows} == {"not json\n", '{"kind":"Event"}'}


# --- every report, every format, over the sample logs ------------------------------------------------------

def _args(name: str) -> list[str]:
    return [name, "alice@example.com"] if REPORTS[name].needs_subject else [name]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_every_format_on_sample_logs(sample_lake: Path, tmp_path: Path, name: str, fmt: str) -> None:
    out = tmp_path / f"r.{fmt}"
    res = run(*_args(name), "--lake", str(sample_lake), "--format", fmt, "--out", str(out), "--quiet")
    assert res.stderr == ""
    text = out.read_text()
    if fmt == "json":
        assert isinstance(json.loads(text), list)
    elif fmt == "csv":
        header = next(csv.reader(io.StringIO(text)))
        assert header and all(header)
    elif fmt == "markdown":
        assert text.startswith("# ")
    elif fmt == "html":
        assert "Content-Security-Policy" in text and "<script" not in text.lower()
    else:
        assert all(len(line) <= 100 for line in text.splitlines()), name


def test_sample_logs_story(sample_lake: Path) -> None:
    assert not DETECT_ERRORS, f"detect failed on the sample logs: {DETECT_ERRORS}"
    summary = {r["table"] for r in jrun("summary", "--lake", str(sample_lake))}
    assert {"k8s_audit", "proxy_decision", "idp_event", "findings"} <= summary
    findings = jrun("findings", "--lake", str(sample_lake))
    assert findings and all(REQUIRED <= set(f) for f in findings)
    pairs = {(f["detector"], f["actor"]) for f in findings}
    assert ("revocation.not_enforced", "carol@example.com") in pairs
    assert ("impersonation.proxy_bypass", "bob@example.com") in pairs
    rev = {_subject(r): r["status"] for r in jrun("revocation", "--lake", str(sample_lake))}
    assert rev["carol@example.com"] == "not_enforced"
    quarantine = jrun("quarantine", "--lake", str(sample_lake))
    assert quarantine and all(r["origin"].startswith("file:") for r in quarantine)


def test_table_output_goes_to_stdout_without_progress(story: Path) -> None:
    res = run("summary", "--lake", str(story))
    assert res.stdout.startswith("Lake summary") and res.stderr == ""


def test_progress_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        with Progress.auto(stream, quiet=False).step("counting"):
            pass
    assert "counting" in tty.getvalue() and pipe.getvalue() == ""
    quiet = Tty()
    with Progress.auto(quiet, quiet=True).step("x"):
        pass
    assert quiet.getvalue() == ""


# --- generated incidents -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generated_incidents(tmp_path_factory: pytest.TempPathFactory) -> None:
    lake, labels_path = build_generated_lake(tmp_path_factory.mktemp("gen"))
    labels = [json.loads(line) for line in labels_path.read_text().splitlines() if line.strip()]
    incident_detectors = {lab["detector"] for lab in labels if lab.get("kind") == "incident"}
    findings = jrun("findings", "--lake", str(lake))
    con = open_lake(lake)
    stored = con.execute("SELECT count(DISTINCT finding_id) FROM findings").fetchone()
    assert stored is not None and len(findings) == stored[0]
    found = {f["detector"] for f in findings}
    assert found & incident_detectors, (found, incident_detectors)
    for det in sorted(found):
        only = jrun("findings", "--lake", str(lake), "--detector", det)
        assert only and {f["detector"] for f in only} == {det}
    summary = {(r["table"], r["cluster"]) for r in jrun("summary", "--lake", str(lake))}
    assert {("k8s_audit", "prod"), ("k8s_audit", "staging")} <= summary
    reach = jrun("reach", "--lake", str(lake), "--limit", "10")
    assert 0 < len(reach) <= 10
    now = datetime.now(UTC)
    assert all(datetime.fromisoformat(f["last_seen"]) <= now for f in findings)


def test_credentials_from_the_derived_table(story: Path, tmp_path: Path) -> None:
    """With detect's ``credentials`` table present the report aggregates it (the fast path)."""
    import shutil

    from ztaudit.core.sink import LakeSink
    from ztaudit.detectors.credentials import inventory

    lake = tmp_path / "lake"
    shutil.copytree(story, lake)
    con = open_lake(lake)
    LakeSink(lake).write("credentials", inventory(con, None, None), "test")
    con.close()
    allsec = json.loads(run("credentials", "--lake", str(lake), "--format", "json", "--section", "all").stdout)
    s = allsec["sections"]
    assert [r["credential_id"] for r in s["legacy"]] == ["SECRET=ci/deployer-token"]
    assert [r["credential_id"] for r in s["shared"]] == ["JTI=11111111-aaaa"]  # from the credential.shared finding
    assert s["legacy"][0]["days_used"] == 3 and s["legacy"][0]["requests"] == 3
    assert s["totals"][0]["legacy"] == 1 and s["totals"][0]["credentials"] == len(s["inventory"])
    assert s["inventory"][0]["legacy"] or s["inventory"][0]["stale"] or s["inventory"][0]["shared"]
    one = jrun("credentials", "--lake", str(lake), "--limit", "1")
    assert len(one) == 1
    held = jrun("credentials", "--lake", str(lake), "--actor", "system:serviceaccount:ci:deployer")
    assert [r["credential_id"] for r in held] == ["SECRET=ci/deployer-token"]


def test_html_defaults_to_a_file(story: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["report", "findings", "--lake", str(story), "--format", "html"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "ztaudit-findings.html").read_text()
    assert res.stdout == "" and "wrote ztaudit-findings.html" in res.stderr
    assert page.startswith("<!DOCTYPE html>") and "carol@example.com" in page
    assert "<h2>Charts</h2>" in page and "<svg" in page


def test_section_only_for_machine_formats(story: Path) -> None:
    assert run("summary", "--lake", str(story), "--section", "quarantine", ok=False).exit_code == 2
    assert run("summary", "--lake", str(story), "--format", "json", "--section", "nope", ok=False).exit_code == 2

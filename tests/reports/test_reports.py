"""``ztaudit report``: every report over the hand-made story lake, the sample logs and a generated lake.

Content is asserted (who, how many, which status), not just exit codes. Filters are bound
parameters: a quote-laden identity must work and return exactly its rows. Each report has one
code path (the detector function or detect's derived table it shows), so every assertion here
runs unconditionally.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.lakes import (
    HOSTILE,
    T0,
    build_generated_lake,
    build_lake,
    build_sample_lake,
    finding,
    story_rows,
    write_rows,
)

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.names import UnknownName
from ztaudit.reports import REPORTS, run_report
from ztaudit.reports.base import Progress, ReportContext, ReportResult
from ztaudit.reports.cells import display, esc
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import csv_cell, md_cell, render_json
from ztaudit.reports.revocation import latency_summary, percentile

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


def _unversioned(rows: Any) -> Any:
    """Rows without their leading ``schema_version`` (checked: first key, value 1 = core.schema.SCHEMA_VERSION)."""
    out = []
    for r in rows:
        assert next(iter(r)) == "schema_version" and r["schema_version"] == 1, r
        out.append({k: v for k, v in r.items() if k != "schema_version"})
    return out


def jrun(*args: str) -> Any:
    return _unversioned(json.loads(run(*args, "--format", "json").stdout))


def jsections(*args: str) -> dict[str, Any]:
    doc = json.loads(run(*args, "--format", "json", "--section", "all").stdout)
    assert doc.get("schema_version") == 1, list(doc)
    doc["sections"] = {k: _unversioned(v) for k, v in doc["sections"].items()}
    return doc  # type: ignore[no-any-return]


# --- registry and options -------------------------------------------------------------------------

def test_list_names_every_report_with_a_description() -> None:
    out = run("--list").stdout
    assert set(REPORTS) == {"summary", "findings", "impersonation", "revocation", "reach", "credentials",
                            "identity", "quarantine", "nhi"}
    for name, spec in REPORTS.items():
        assert any(line.startswith(name) and spec.description[:30] in line for line in out.splitlines())


def test_unknown_report_and_missing_identity_are_usage_errors(story: Path) -> None:
    with pytest.raises(UnknownName, match="unknown report 'nope'"):  # exit 2 (tests/cli/test_names.py)
        run("nope", "--lake", str(story), ok=False)
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
    with pytest.raises(UnknownName, match="no identity \"o'brien\" in the lake"):  # a typo, not an empty answer
        jrun("findings", "--lake", str(story), "--actor", "o'brien")


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
    allsec = jsections("impersonation", "--lake", str(story))
    assert [f["actor"] for f in allsec["sections"]["findings"]] == ["bob@example.com"]
    assert allsec["notes"] == []


MATCH_COLUMNS = ["cluster", "actor", "matched_tier_a", "matched_tier_b", "matched_tier_c", "unmatched_proxy",
                 "unmatched_audit", "pending", "match_rate", "first_seen", "last_seen"]


def test_impersonation_matching_is_the_detectors_summary(story: Path) -> None:
    """The matching section is detectors.correlate.impersonation_summary, narrowed by the filters."""
    matching = jsections("impersonation", "--lake", str(story))["sections"]["matching"]
    by = {(r["cluster"], r["actor"]): r for r in matching}
    assert all(list(r) == MATCH_COLUMNS for r in matching)
    # the story's proxy has no route host configured, so no decision pairs with an audit event
    alice = by[("prod", "alice@example.com")]
    assert (alice["unmatched_proxy"], alice["unmatched_audit"], alice["match_rate"]) == (12, 12, 0.0)
    assert by[("prod", "dave@example.com")]["unmatched_proxy"] == 1
    only = jsections("impersonation", "--lake", str(story), "--actor", "carol@example.com", "--cluster", "prod")
    assert [(r["cluster"], r["actor"]) for r in only["sections"]["matching"]] == [("prod", "carol@example.com")]
    empty = run("impersonation", "--lake", str(story), "--until", "2026-01-01", "--format", "csv", "--section",
                "matching").stdout
    assert empty.strip() == ",".join(MATCH_COLUMNS)  # the detector's columns even without a row


# --- revocation -----------------------------------------------------------------------------------------

#: README "Primary-section fields" of ``revocation`` (detectors.revocation_status.STATUS_COLUMNS), then
#: ``allowed_after_grace`` (the same references as ``violations``).
REVOCATION_FIELDS = [
    "kind", "subject", "identity", "subject_id", "session_id", "cluster", "clusters", "source", "system",
    "event_type", "revoked_at", "revoked_by", "inferred_from", "restored_at", "bridge", "status", "reason",
    "notice_at", "notice_event", "first_denied_at", "attribution", "anonymous_refused", "last_allowed_before",
    "first_allowed_after", "last_allowed_after", "allowed_after_grace_proxy", "allowed_after_grace_api",
    "first_allowed_after_grace", "last_allowed_after_grace", "notice_latency_seconds", "denial_latency_seconds",
    "exposure_seconds", "objective_met", "evidence", "duplicates", "notices", "denials", "violations",
    "allowed_after_grace"]


def test_revocation_statuses_and_latency(story: Path) -> None:
    rows = jrun("revocation", "--lake", str(story))
    assert [list(r) for r in rows] == [REVOCATION_FIELDS] * 2
    by = {r["subject"]: r for r in rows}
    carol, dave = by["carol@example.com"], by["dave@example.com"]
    # carol: allowed 30 min after the revocation at the proxy and the API, past the 15 min grace
    assert carol["status"] == "not_enforced" and carol["exposure_seconds"] == 1800.0
    assert (carol["allowed_after_grace_proxy"], carol["allowed_after_grace_api"]) == (1, 1)
    assert sorted(v.split(":")[0] for v in carol["violations"]) == ["k8s_audit", "proxy_decision"]
    assert carol["allowed_after_grace"] == carol["violations"]
    assert carol["reason"].startswith("1 allowed proxy decision(s) and 1 allowed API request(s) more than 900 s")
    assert carol["objective_met"] is False
    # dave: only denied afterwards, first denial 2 min after the revocation
    assert dave["status"] == "enforced" and dave["denial_latency_seconds"] == 120.0 and dave["violations"] == []
    assert dave["attribution"] == "exact" and dave["objective_met"] is True
    lat = _unversioned(json.loads(run("revocation", "--lake", str(story), "--format", "json", "--section",
                                      "latency").stdout))
    assert lat[0] == {"group": "all", "revocations": 2, "enforced": 1, "not_enforced": 1, "quiet": 0, "pending": 0,
                      "not_applicable": 0, "judged": 2, "notice_p50_seconds": None, "notice_p95_seconds": None,
                      "denial_p50_seconds": 120.0, "denial_p95_seconds": 120.0, "exposure_max_seconds": 1800.0,
                      "objective_met": 1, "objective_share": 0.5}
    assert [g["group"] for g in lat][1:] == sorted({f"system:{r['system']}" for r in rows}) + [
        f"cluster:{c}" for c in sorted({c for r in rows for c in r["clusters"]})]


def test_revocation_report_leads_with_the_verdict(story: Path) -> None:
    text = run("revocation", "--lake", str(story), "--format", "table").stdout.splitlines()
    first_table = next(i for i, line in enumerate(text) if line.startswith("== "))
    verdict = "\n".join(text[:first_table])
    assert "2 revocation(s): 2 judged" in verdict
    assert "Enforced: 1 of 2 (50 %)" in verdict and "Not enforced: 1 of 2 (50 %)" in verdict
    assert "met by 1 of 2 (50 %)" in verdict
    md = run("revocation", "--lake", str(story), "--format", "markdown").stdout
    assert md.index("**Enforced: 1 of 2") < md.index("## ")
    html = run("revocation", "--lake", str(story), "--format", "html", "--out", "-").stdout
    assert html.index('<ul class="verdict">') < html.index("<h2")
    assert '<td class="st-not_enforced">not_enforced</td>' in html


def test_revocation_filters(story: Path) -> None:
    assert [r["subject"] for r in jrun("revocation", "--lake", str(story), "--actor", "uid-dave")] == [
        "dave@example.com"]
    assert jrun("revocation", "--lake", str(story), "--since", "2026-11-22") == []
    # IdP revocations name no cluster of their own: --cluster keeps those whose subject was seen there
    rows = jrun("revocation", "--lake", str(story), "--cluster", "prod")
    assert rows and all("prod" in r["clusters"] for r in rows)


def test_percentile_and_latency_summary() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    rows = [{"status": "enforced", "notice_latency_seconds": 60.0, "denial_latency_seconds": 0.0,
             "objective_met": True},
            {"status": "enforced", "notice_latency_seconds": 1200.0, "objective_met": False},
            {"status": "not_enforced", "exposure_seconds": 1800.0, "objective_met": False},
            {"status": "quiet"}, {"status": "pending"}, {"status": "not_applicable"}]
    got = latency_summary(rows)
    assert (got["revocations"], got["judged"], got["enforced"], got["quiet"], got["pending"]) == (6, 4, 2, 1, 1)
    assert (got["notice_p50_seconds"], got["denial_p50_seconds"]) == (630.0, 0.0)
    assert (got["objective_met"], got["objective_share"], got["exposure_max_seconds"]) == (1, 0.25, 1800.0)


# --- reach ------------------------------------------------------------------------------------------------

#: README "Primary-section fields" of ``reach`` (from detect's ``reach`` table).
REACH_FIELDS = ["actor", "actor_kind", "cluster", "peer_group", "windows", "first_window", "last_window", "requests",
                "clusters",
                "max_namespaces", "max_resources", "max_secret_namespaces", "max_foreign_secret_namespaces",
                "new_namespaces", "exec_count", "forbidden_requests", "growth", "flagged"]
#: detectors.rbac.GRANTED_VS_USED, the ``--granted`` columns.
GRANTED_FIELDS = ["cluster", "identity", "identity_kind", "row_type", "via", "binding", "role", "scope_namespace",
                  "verbs", "api_groups", "resources", "resource_names", "can_impersonate", "used_requests",
                  "used_permissions", "never_used", "suggestion"]


def test_reach_blast_radius_and_flags(story: Path) -> None:
    rows = jrun("reach", "--lake", str(story))
    assert all(list(r) == REACH_FIELDS for r in rows)
    # flagged (a reach.* finding) first, then most secret namespaces, most namespaces, name
    assert [r["actor"] for r in rows] == [HOSTILE, "alice@example.com", "bob@example.com", "carol@example.com",
                                          "system:serviceaccount:apps:web", "system:serviceaccount:ci:deployer"]
    by = {r["actor"]: r for r in rows}
    assert [r["actor"] for r in rows if r["flagged"]] == [HOSTILE]
    assert by[HOSTILE]["max_secret_namespaces"] == 1 and by[HOSTILE]["requests"] == 3
    alice = by["alice@example.com"]  # daily windows: prod default + web and staging default each day
    assert (alice["windows"], alice["requests"], alice["clusters"], alice["max_namespaces"]) == (3, 15, 2, 2)
    assert (alice["first_window"], alice["last_window"]) == ("2026-11-20T00:00:00.000000Z",
                                                             "2026-11-22T00:00:00.000000Z")
    assert alice["max_secret_namespaces"] == 0 and alice["growth"] == 1.0
    assert (by["carol@example.com"]["windows"], by["carol@example.com"]["requests"]) == (1, 2)
    assert by["system:serviceaccount:apps:web"]["actor_kind"] == "service_account"
    # per-cluster identities name their cluster; a person's row spans every cluster
    assert by["system:serviceaccount:apps:web"]["cluster"] == "prod" and alice["cluster"] is None
    top1 = jrun("reach", "--lake", str(story), "--limit", "1")
    assert [r["actor"] for r in top1] == [HOSTILE]
    assert [r["actor"] for r in jrun("reach", "--lake", str(story), "--actor", "bob@example.com")] == [
        "bob@example.com"]
    day = {r["actor"]: r for r in jrun("reach", "--lake", str(story), "--since", "2026-11-21", "--until",
                                       "2026-11-22")}
    assert (day["alice@example.com"]["windows"], day["alice@example.com"]["requests"]) == (1, 5)


def test_reach_puts_flagged_identities_first(story: Path, tmp_path: Path) -> None:
    """A reach.* finding moves an identity above every unflagged one, whatever its reach."""
    lake = tmp_path / "lake"
    shutil.copytree(story, lake)
    write_rows(lake, {"findings": [finding("reach.anomalous", "low", "bob@example.com", T0, T0, "bob grew")]},
               key="extra")
    rows = jrun("reach", "--lake", str(lake))
    assert [(r["actor"], r["flagged"]) for r in rows[:3]] == [(HOSTILE, True), ("bob@example.com", True),
                                                              ("alice@example.com", False)]
    assert [r["flagged"] for r in rows] == [True, True, False, False, False, False]


def test_reach_flags_a_per_cluster_identity_only_on_the_cluster_of_its_finding(story: Path, tmp_path: Path) -> None:
    """A service account is one identity per cluster: a reach finding on staging does not flag its
    prod row (before, every cluster's row said flagged=yes)."""
    lake = tmp_path / "lake"
    shutil.copytree(story, lake)
    sa = "system:serviceaccount:apps:web"
    write_rows(lake, {"findings": [finding("reach.anomalous", "low", sa, T0, T0, "grew", cluster="staging")]},
               key="extra")
    assert [(r["cluster"], r["flagged"]) for r in jrun("reach", "--lake", str(lake)) if r["actor"] == sa] == [
        ("prod", False)]
    write_rows(lake, {"findings": [finding("reach.anomalous", "low", sa, T0, T0, "grew", cluster="prod")]},
               key="extra")
    assert [(r["cluster"], r["flagged"]) for r in jrun("reach", "--lake", str(lake)) if r["actor"] == sa] == [
        ("prod", True)]


def test_reach_granted_is_the_rbac_comparison(sample_lake: Path) -> None:
    allsec = jsections("reach", "--granted", "--lake", str(sample_lake), "--actor", "alice@example.com")
    rows = allsec["sections"]["reach"]
    assert rows and all(list(r) == GRANTED_FIELDS for r in rows)
    assert {r["identity"] for r in rows} == {"alice@example.com"}  # --actor matches the identity column
    assert {r["row_type"] for r in rows} <= {"granted", "used_not_granted"}
    assert sum(r["used_requests"] or 0 for r in rows) > 0


def test_derived_table_reports_say_when_detect_has_not_run(tmp_path: Path) -> None:
    """Without detect's reach and credentials tables the reports are empty and say why (one path, no
    silent recomputation with other columns)."""
    lake = build_lake(tmp_path / "lake", derived=False)
    reach = jsections("reach", "--lake", str(lake))
    assert reach["sections"]["reach"] == [] and "ztaudit detect" in reach["notes"][0]
    creds = jsections("credentials", "--lake", str(lake))
    assert creds["sections"]["inventory"] == [] and "ztaudit detect" in creds["notes"][0]
    assert creds["sections"]["totals"] == [{"credentials": 0, "stale": 0, "legacy": 0, "shared": 0}]
    header = run("credentials", "--lake", str(lake), "--format", "csv").stdout
    assert header.strip() == ",".join(CREDENTIAL_FIELDS)


# --- credentials ------------------------------------------------------------------------------------------

#: README "Primary-section fields" of ``credentials`` (from detect's ``credentials`` table).
CREDENTIAL_FIELDS = ["credential_key", "credential_id", "credential_kind", "holder", "holder_kind", "issued_at",
                     "issued_by", "first_seen", "last_seen", "days_used", "requests", "stale_token_requests",
                     "clusters", "source_ips", "user_agents", "age_hours", "past_max_age", "legacy", "stale",
                     "shared", "findings"]


def test_credentials_sections(story: Path) -> None:
    s = jsections("credentials", "--lake", str(story))["sections"]
    assert all(list(r) == CREDENTIAL_FIELDS for r in s["inventory"])
    assert [r["credential_id"] for r in s["legacy"]] == ["SECRET=ci/deployer-token"]
    assert [r["credential_id"] for r in s["shared"]] == ["JTI=11111111-aaaa"]  # from the credential.shared finding
    assert [r["credential_id"] for r in s["stale"]] == ["JTI=11111111-aaaa"]
    inv = {r["credential_key"]: r for r in s["inventory"]}
    jti = inv["JTI=11111111-aaaa"]
    # used from day 1 10:20 to day 3 10:20:30: past the 48 h maximum age of a JTI token
    assert jti["past_max_age"] is True and jti["age_hours"] > 48 and jti["stale"] is True
    assert jti["source_ips"] == ["10.1.0.4", "10.9.9.9"] and jti["requests"] == 6 and jti["days_used"] == 3
    assert jti["findings"] == ["credential.shared"] and jti["holder"] == "system:serviceaccount:apps:web"
    legacy = inv["SECRET=ci/deployer-token"]
    assert legacy["legacy"] is True and legacy["shared"] is False and legacy["stale"] is False
    assert legacy["holder"] == "system:serviceaccount:ci:deployer" and legacy["credential_kind"] == "legacy_secret"
    assert (legacy["days_used"], legacy["requests"]) == (3, 3)
    # requests without a credential id are inventoried per holder (the proxy for everyone it impersonates)
    assert inv["USER=bob@example.com"]["credential_id"] is None
    assert inv["TOKEN?=system:serviceaccount:pomerium:pomerium-authorize"]["requests"] == 20
    assert s["totals"] == [{"credentials": 4, "stale": 1, "legacy": 1, "shared": 1}]
    assert [bool(r["legacy"] or r["stale"] or r["shared"]) for r in s["inventory"]] == [True, True, False, False]


def test_credentials_filters(story: Path) -> None:
    one = jrun("credentials", "--lake", str(story), "--limit", "1")
    assert [r["credential_id"] for r in one] == ["SECRET=ci/deployer-token"]
    held = jrun("credentials", "--lake", str(story), "--actor", "system:serviceaccount:ci:deployer")
    assert [r["credential_id"] for r in held] == ["SECRET=ci/deployer-token"]
    assert jrun("credentials", "--lake", str(story), "--cluster", "staging") != []  # the proxy's key was used there
    assert jrun("credentials", "--lake", str(story), "--until", "2026-01-01") == []
    # a use on the day --since falls in counts with that whole day
    late = {r["credential_key"]: r for r in jrun("credentials", "--lake", str(story), "--since",
                                                  "2026-11-22T23:00:00Z")}
    assert late["JTI=11111111-aaaa"]["days_used"] == 1


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
    # alice works through the proxy: the credential is the proxy's, so she holds none
    assert allsec["credentials"] == [] and over["credentials"] == 0


def test_identity_credentials_are_the_ones_it_holds(story: Path) -> None:
    allsec = jsections("identity", "system:serviceaccount:apps:web", "--lake", str(story))["sections"]
    assert [(r["credential_id"], r["shared"], r["stale"]) for r in allsec["credentials"]] == [
        ("JTI=11111111-aaaa", True, True)]
    assert all(list(r) == CREDENTIAL_FIELDS for r in allsec["credentials"])
    assert allsec["overview"][0]["credentials"] == 1 and allsec["overview"][0]["requests"] == 6


# --- quarantine ----------------------------------------------------------------------------------------------

def test_quarantine(story: Path) -> None:
    rows = jrun("quarantine", "--lake", str(story))
    assert {(r["origin"], r["reason"]) for r in rows} == {("file:bad.jsonl:3", "invalid_json"),
                                                          ("file:bad.jsonl:7", "missing_field")}
    assert {r["raw_preview"] for r in rows} == {"not json\n", '{"kind":"Event"}'}


# --- every report, every format, over the sample logs ------------------------------------------------------

def _args(name: str) -> list[str]:
    return [name, "alice@example.com"] if REPORTS[name].needs_subject else [name]


def _in_process(lake: Path, name: str) -> ReportResult:
    """The report as ``ztaudit report`` builds it (the expected content of every format)."""
    con = open_lake(lake)
    try:
        opts = {"subject": "alice@example.com"} if REPORTS[name].needs_subject else {}
        return run_report(name, ReportContext(con=con, config=Config(), filters=Filters(), options=opts,
                                              want_charts=True))
    finally:
        con.close()


def _html_section_rows(page: str, name: str) -> int:
    m = re.search(rf'<section id="s-{re.escape(name)}">(.*?)</section>', page, re.S)
    assert m, name
    return m.group(1).count("<tr>") - 1 if "<table>" in m.group(1) else 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_every_format_on_sample_logs(sample_lake: Path, tmp_path: Path, name: str, fmt: str) -> None:
    """Each format shows every section of the report with all its rows, and the primary rows' values."""
    out = tmp_path / f"r.{fmt}"
    res = run(*_args(name), "--lake", str(sample_lake), "--format", fmt, "--out", str(out), "--quiet")
    assert res.stderr == ""
    text = out.read_text()
    expected = _in_process(sample_lake, name)
    primary = expected.primary
    assert primary.rows, f"{name}: the sample logs give its primary section rows"
    first = primary.rows[0]
    key = primary.shown_columns()[0]
    if fmt == "json":
        assert json.loads(text) == json.loads(render_json(expected))
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert rows == [primary.columns, *([csv_cell(r.get(c), c) for c in primary.columns] for r in primary.rows)]
    elif fmt == "markdown":
        assert text.startswith(f"# {md_cell(expected.title)}")
        for sec in expected.sections:
            assert f"## {md_cell(sec.title)}" in text
        body = text.split(f"## {md_cell(primary.title)}", 1)[1].split("\n## ", 1)[0]
        assert sum(line.startswith("| ") for line in body.splitlines()) == len(primary.rows) + 1
        assert f"| {md_cell(first.get(key))} |" in body
    elif fmt == "html":
        assert "Content-Security-Policy" in text and "<script" not in text.lower()
        for sec in expected.sections:
            assert _html_section_rows(text, sec.name) == len(sec.for_display().rows[:2000]), sec.name
        assert esc(display(first.get(key))) in text
        assert text.count("<svg") == len(expected.charts)
    else:
        assert all(len(line) <= 100 for line in text.splitlines()), name
        for sec in expected.sections:
            n = len(sec.rows)
            assert f"== {sec.title} ({n} row{'s' if n != 1 else ''})" in text, sec.title
        # long identities are cut in the middle to fit (system:serviceaccount:…:ci-deployer): its first
        # and last characters are on one line
        v = display(first.get(key))
        assert any(v[:4] in line and v[-4:] in line for line in text.splitlines()), v


def test_sample_logs_story(sample_lake: Path) -> None:
    assert not DETECT_ERRORS, f"detect failed on the sample logs: {DETECT_ERRORS}"
    summary = {r["table"] for r in jrun("summary", "--lake", str(sample_lake))}
    assert {"k8s_audit", "proxy_decision", "idp_event", "findings"} <= summary
    findings = jrun("findings", "--lake", str(sample_lake))
    assert findings and all(REQUIRED <= set(f) for f in findings)
    pairs = {(f["detector"], f["actor"]) for f in findings}
    assert ("revocation.not_enforced", "carol@example.com") in pairs
    assert ("impersonation.proxy_bypass", "bob@example.com") in pairs
    rev = {r["subject"]: r["status"] for r in jrun("revocation", "--lake", str(sample_lake))}
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


def test_report_modules_import_one_way() -> None:
    """No import cycle inside the report package (formats -> html -> svg -> cells, reports -> charts)."""
    pkg = Path(__file__).resolve().parents[2] / "reports"
    graph: dict[str, set[str]] = {}
    for path in pkg.glob("*.py"):
        mod = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ztaudit.reports"):
                sub = node.module.removeprefix("ztaudit.reports").lstrip(".")
                deps |= {sub} if sub else {a.name for a in node.names}
        graph[mod] = deps - {mod}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for d in graph.get(start, set()):
            if d == goal or (d not in seen and reaches(d, goal, seen | {d})):
                return True
        return False

    cycles = [m for m in graph if m != "__init__" and reaches(m, m, set())]
    assert cycles == [], cycles
    assert "formats" not in graph["html"] and "html" not in graph["svg"]


@pytest.mark.parametrize("name", ["reach", "credentials"])
def test_empty_derived_report_says_why(sample_lake: Path, tmp_path: Path, name: str) -> None:
    """Before detect the note says to run it; after detect, an empty range says the filters matched nothing."""
    undetected = build_sample_lake(tmp_path / "lake", SAMPLE_LOGS, detect=False)
    res = CliRunner().invoke(cli, ["report", name, "--lake", str(undetected), "--format", "table"])
    assert res.exit_code == 0, res.output
    assert "run `ztaudit detect`" in res.output + res.stderr
    res = CliRunner().invoke(cli, ["report", name, "--lake", str(sample_lake), "--format", "table",
                                   "--since", "2099-01-01"])
    assert res.exit_code == 0, res.output
    assert "run `ztaudit detect`" not in res.output + res.stderr and "in range" in res.output + res.stderr


def test_impersonation_paths_span_is_the_requests_counted(tmp_path: Path) -> None:
    # two completed direct requests, then a third still in flight (RequestReceived only): the row
    # counts two requests and its last_seen is the second one's, not the uncounted third's
    rows = [{"audit_id": f"k{i}", "cluster": "prod", "stage": stage, "request_received_at": at, "stage_at": at,
             "verb": "get", "request_uri": "/api/v1/pods", "user_name": "kube:admin", "actor": "kube:admin",
             "actor_kind": "human", "response_code": code, "origin": f"t:{i}"}
            for i, (stage, at, code) in enumerate([
                ("ResponseComplete", datetime(2026, 11, 20, 10, 0, tzinfo=UTC), 200),
                ("ResponseComplete", datetime(2026, 11, 20, 10, 5, tzinfo=UTC), 200),
                ("RequestReceived", datetime(2026, 11, 20, 10, 9, tzinfo=UTC), None)])]
    lake = write_rows(tmp_path / "lake", {"k8s_audit": rows})
    (row,) = jrun("impersonation", "--lake", str(lake))
    assert (row["actor"], row["requests"], row["direct"], row["status"]) == ("kube:admin", 2, 2, "proxy_bypass")
    assert row["last_seen"] == "2026-11-20T10:05:00.000000Z"

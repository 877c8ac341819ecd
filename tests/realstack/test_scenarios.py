"""Scenarios acted out on the real stack (kube-apiserver, Pomerium, Keycloak), judged by ztaudit.

Each scenario is a step of :func:`acted` that does what a person or a machine would do, with its own
identity so its findings cannot be confused with another's; the module then ingests what the real
systems wrote (the API server's audit log, Pomerium's log, Keycloak's JSON log), runs ``detect``
and every test checks the findings a scenario must yield and must not yield. The whole set of
findings must be exactly the expected one: a finding nobody expected is a false alarm.

What each scenario did and what ztaudit found is printed at the end of the run (terminal summary).
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.realstack import SUMMARIES, Stack

pytestmark = pytest.mark.realstack

ZTAUDIT = str(Path(sys.executable).parent / "ztaudit")
CLUSTER = "realstack"
POMERIUM_SA = "system:serviceaccount:pomerium:pomerium-authorize"
#: The scenarios' configuration, as a user of this stack would write it. The audit log's
#: sourceIPs of loopback clients carry 192.0.2.2: envoy appends the host's own address to
#: X-Forwarded-For (real-stack.md §4), so that is the "cluster network" of this machine.
CONFIG = """
[impersonation]
# The harness's own admin certificate (system:masters) reaches the API server directly: declared, so
# each use is still reported, at severity low.
break_glass = ["realstack-admin"]
[credentials]
cluster_networks = { "*" = ["127.0.0.0/8", "::1/128", "10.0.0.0/24", "192.0.2.0/24"] }
[revocation]
# Pomerium v0.30 with a 60 s access-token lifespan deletes the session within ~10 s but keeps
# allowing its cached session for up to ~60 s (measured here): two minutes covers it.
grace_seconds = 120
"""
GRACE = 120
#: The same with a maximum token age of one minute, for the stale-credential scenario.
CONFIG_MAX_AGE = CONFIG + """
[credentials.max_age_hours]
jti = 0.0166
x509 = 9600.0
legacy_secret = 8760.0
"""


@dataclass
class Acted:
    """What the scenarios did (times, identities) and the lake that judged it."""

    lake: Path
    notes: dict[str, list[str]] = field(default_factory=dict)
    times: dict[str, datetime] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    aged_findings: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, scenario: str, text: str) -> None:
        self.notes.setdefault(scenario, []).append(text)

    def found(self, detector: str, actor: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["detector"] == detector and (actor is None or f["actor"] == actor)]


def _now() -> datetime:
    return datetime.now(UTC)


def _api_get(stack: Stack, path: str, token: str, headers: dict[str, str] | None = None) -> int:
    ctx = ssl.create_default_context(cafile=stack.info["ca"])
    req = urllib.request.Request(stack.info["apiserver"] + path, headers={"Authorization": f"Bearer {token}",
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def _judge(stack: Stack, lake: Path, config: Path) -> list[dict[str, Any]]:
    """Ingest what the real systems wrote, run every detector, return the findings."""
    logs = [stack.info["audit_log"], stack.info["pomerium"]["log"], stack.info["keycloak"]["json_log"]]
    # --strict: exit 3 if anything was quarantined. Every line the real systems wrote is either an
    # event or a server line counted as ignored.
    _run(ZTAUDIT, "ingest", "--lake", str(lake), "--cluster", CLUSTER, "--config", str(config), "--strict", "-q",
         *logs)
    _run(ZTAUDIT, "detect", "--lake", str(lake), "--config", str(config), "-q")
    return _findings(lake)


def _findings(lake: Path) -> list[dict[str, Any]]:
    con = duckdb.connect()
    rows = con.execute(
        "SELECT detector, severity, actor, credential_id, summary, evidence, context FROM read_parquet(?, "
        "hive_partitioning = true)", [str(lake / "findings" / "**" / "*.parquet")]).fetchall()
    cols = ("detector", "severity", "actor", "credential_id", "summary", "evidence", "context")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _report(lake: Path, config: Path, name: str) -> dict[str, Any]:
    p = _run(ZTAUDIT, "report", name, "--lake", str(lake), "--config", str(config), "--format", "json",
             "--section", "all")
    return dict(json.loads(p.stdout))


@pytest.fixture(scope="module")
def acted(realstack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acted]:
    s = realstack
    work = tmp_path_factory.mktemp("realstack-scenarios")
    a = Acted(lake=work / "lake")
    # Tokens minted up front: the stale-credential scenario uses one of them minutes later.
    builder_token = s.sa_token("ci", "builder")
    late_token = s.sa_token("ci", "builder")

    # Revocation first (it takes the longest): bob is disabled in Keycloak while a watch he opened
    # keeps streaming; the other scenarios run while the grace period passes.
    bob = s.user_kubeconfig("bob")
    s.kubectl("get", "pods", "-n", "dev", kubeconfig=bob)
    watch = subprocess.Popen(["kubectl", f"--kubeconfig={bob}", "get", "configmaps", "-n", "dev", "-w"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    a.times["disabled"] = _now()
    a.ids["bob"] = s.keycloak_set_enabled("bob", False)
    denied_at = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        p = s.kubectl("get", "pods", "-n", "dev", kubeconfig=bob, check=False)
        if p.returncode != 0:
            assert "logged in" in p.stderr or "Unauthorized" in p.stderr, p.stderr
            denied_at = _now()
            break
        time.sleep(2)
    assert denied_at, "Pomerium kept allowing bob for 3 minutes after he was disabled"
    a.times["denied"] = denied_at

    # 1. Brokered kubectl through Pomerium: no finding, every decision matched.
    alice = s.user_kubeconfig("alice")
    for args in (("get", "pods", "-n", "dev"), ("get", "configmaps", "-n", "dev"), ("auth", "whoami")):
        s.kubectl(*args, kubeconfig=alice)
    p = s.kubectl("get", "secrets", "-n", "ops", kubeconfig=alice, check=False)
    assert "forbidden" in p.stderr, p.stderr
    a.note("brokered", "alice@example.com logged in through Pomerium (Keycloak form), ran 3 kubectl "
           "commands in dev and one that RBAC forbids (secrets in ops)")

    # 2. A person reaching the API server directly with a credential of their own.
    dave = s.kubeconfig("dave-direct", server=s.info["apiserver"], token=s.info["direct_user"]["token"])
    s.kubectl("get", "pods", "-n", "dev", kubeconfig=dave)
    a.note("proxy_bypass", "dave@example.com used a static token straight against the API server")

    # 3. Pomerium's own service-account token used directly with --as (no proxy decision behind it).
    pom_token = Path(s.info["pomerium"]["sa_token_file"]).read_text().strip()
    pom_direct = s.kubeconfig("pomerium-direct", server=s.info["apiserver"], token=pom_token)
    s.kubectl("get", "pods", "-n", "dev", "--as=erin@example.com", "--as-group=dev", kubeconfig=pom_direct)
    a.note("unbrokered", "Pomerium's service-account token used with kubectl --as=erin@example.com")

    # 4. Another service account with impersonation rights using them.
    bot = s.kubeconfig("deploy-bot", server=s.info["apiserver"], token=s.sa_token("ci", "deploy-bot"))
    s.kubectl("get", "pods", "-n", "dev", "--as=alice@example.com", "--as-group=dev", kubeconfig=bot)
    a.note("unapproved_impersonator", "system:serviceaccount:ci:deploy-bot impersonated alice@example.com")

    # 5. A route that skips impersonation: the proxy's token as a plain header.
    carol = s.user_kubeconfig("carol", raw_route=True)
    p = s.kubectl("get", "pods", "-n", "ops", kubeconfig=carol, check=False)
    a.note("unobserved", "carol@example.com used the misconfigured route (no impersonation); kubectl said: "
           + (p.stderr.strip().splitlines() or ["ok"])[-1][:120])

    # 6. A legacy service-account token secret in use (filled in by kube-controller-manager).
    deadline = time.monotonic() + 60
    legacy = ""
    while not legacy and time.monotonic() < deadline:
        out = s.kubectl("-n", "ci", "get", "secret", "legacy-bot-token", "-o", "jsonpath={.data.token}").stdout
        legacy = base64.b64decode(out).decode() if out else ""
        time.sleep(0.5)
    assert legacy, "kube-controller-manager did not fill the legacy token secret"
    assert _api_get(s, "/api/v1/namespaces/ci/pods", legacy) == 200
    a.note("legacy_token", "system:serviceaccount:ci:legacy-bot listed pods with its legacy token secret")

    # 7. A service-account token used from outside the cluster's networks (X-Forwarded-For).
    assert _api_get(s, "/api/v1/namespaces/ci/pods", builder_token, {"X-Forwarded-For": "203.0.113.7"}) == 200
    a.note("off_cluster", "system:serviceaccount:ci:builder listed pods with X-Forwarded-For 203.0.113.7")

    # The grace period passes; a change is streamed to bob's watch after his requests are refused.
    s.kubectl("-n", "dev", "create", "configmap", "after-disable", "--from-literal=k=v")
    left = GRACE + 8 - (_now() - a.times["disabled"]).total_seconds()
    if left > 0:
        time.sleep(left)
    watch.terminate()
    out, _ = watch.communicate(timeout=10)
    streamed = "still received the config map created after" if "after-disable" in out else "received nothing"
    a.note("revocation", f"bob disabled in Keycloak at {a.times['disabled']:%H:%M:%S}; kubectl refused from "
           f"{denied_at:%H:%M:%S} ({(denied_at - a.times['disabled']).total_seconds():.0f} s later); the watch "
           f"he opened before {streamed} and was closed by the client at {_now():%H:%M:%S}")

    # 8. A credential past its maximum age: minted at the start, used now (judged with a 1-minute max).
    assert _api_get(s, "/api/v1/namespaces/ci/configmaps", late_token) == 200
    a.note("max_age", "a ci:builder token minted at the start was used again minutes later (max age 1 min)")

    # Let the API server flush its audit batch and Pomerium/Keycloak their logs; then a later
    # request on both planes, so the judged window closes after the grace period.
    s.kubectl("get", "pods", "-n", "dev", kubeconfig=alice)
    time.sleep(3)
    config = work / "ztaudit.toml"
    config.write_text(CONFIG)
    a.findings = _judge(s, a.lake, config)
    a.reports = {name: _report(a.lake, config, name) for name in ("revocation", "impersonation")}
    # The stale-credential scenario: a copy of the lake judged with a one-minute maximum age.
    aged = work / "lake-max-age"
    shutil.copytree(a.lake, aged)
    (work / "max-age.toml").write_text(CONFIG_MAX_AGE)
    _run(ZTAUDIT, "detect", "--lake", str(aged), "--config", str(work / "max-age.toml"), "--detector",
         "credential.stale", "-q")
    a.aged_findings = _findings(aged)
    yield a
    SUMMARIES.append(_summary(a))


def _summary(a: Acted) -> str:
    lines = ["real-stack scenarios:"]
    for name, notes in a.notes.items():
        lines += [f"  [{name}] {n}" for n in notes]
    lines.append("ztaudit found:")
    for f in sorted(a.findings, key=lambda f: (f["detector"], f["actor"] or "")):
        lines.append(f"  {f['detector']:40} {f['severity']:7} {f['actor']}: {str(f['summary'])[:110]}")
    return "\n".join(lines)


EXPECTED = {
    ("impersonation.proxy_bypass", "dave@example.com"),
    ("impersonation.proxy_bypass", "realstack-admin"),  # break-glass, severity low
    ("impersonation.unbrokered", "erin@example.com"),
    ("impersonation.unapproved_impersonator", "system:serviceaccount:ci:deploy-bot"),
    ("impersonation.unobserved", "carol@example.com"),  # her allowed decisions, no impersonated request
    ("impersonation.unobserved", POMERIUM_SA),  # the proxy's own identity, not impersonating
    ("credential.legacy_token", "system:serviceaccount:ci:legacy-bot"),
    ("credential.off_cluster", "system:serviceaccount:ci:builder"),
    ("revocation.stream_survived", "bob@example.com"),
}


def _pairs(a: Acted) -> set[tuple[str, str]]:
    return {(f["detector"], f["actor"]) for f in a.findings}


@pytest.mark.parametrize("detector,actor", sorted(EXPECTED))
def test_scenario_yields_its_finding(acted: Acted, detector: str, actor: str) -> None:
    got = acted.found(detector, actor)
    assert got, f"{detector} for {actor} missing; found: {sorted(_pairs(acted))}"
    for f in got:
        assert f["evidence"], f"{detector} for {actor} has no evidence"
        assert len(set(f["evidence"])) == len(f["evidence"]), f"{detector} lists evidence twice: {f['evidence']}"


def test_no_finding_beyond_the_expected(acted: Acted) -> None:
    extra = _pairs(acted) - EXPECTED
    assert not extra, f"unexpected findings: {sorted(extra)}"


def test_break_glass_use_is_low(acted: Acted) -> None:
    assert {f["severity"] for f in acted.found("impersonation.proxy_bypass", "realstack-admin")} == {"low"}


def test_brokered_decisions_all_matched(acted: Acted) -> None:
    rows = [r for r in acted.reports["impersonation"]["sections"]["matching"] if r["actor"] == "alice@example.com"]
    assert len(rows) == 1, rows
    assert rows[0]["unmatched_proxy"] == 0 and rows[0]["unmatched_audit"] == 0, rows[0]
    assert rows[0]["matched_tier_c"] >= 4, rows[0]
    assert not [f for f in acted.findings if f["actor"] == "alice@example.com"
                and f["detector"] != "impersonation.unapproved_impersonator"]


def test_revocation_enforced_with_real_latencies(acted: Acted) -> None:
    rows = [r for r in acted.reports["revocation"]["sections"]["revocations"] if r["identity"] == "bob@example.com"]
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["status"] == "enforced", r
    assert r["notice_latency_seconds"] is not None and 0 <= r["notice_latency_seconds"] < GRACE, r
    assert not acted.found("revocation.not_enforced")


def test_stream_outlived_the_revocation(acted: Acted) -> None:
    (f,) = acted.found("revocation.stream_survived", "bob@example.com")
    assert "watch" in f["summary"]


def test_token_past_its_max_age(acted: Acted) -> None:
    stale = [f for f in acted.aged_findings if f["detector"] == "credential.stale"
             and f["actor"] == "system:serviceaccount:ci:builder"]
    assert stale, f"no credential.stale for ci:builder: {[(f['detector'], f['actor']) for f in acted.aged_findings]}"


def test_keycloak_console_log_reads_as_its_json_log(acted: Acted, realstack: Stack, tmp_path: Path) -> None:
    """Keycloak wrote the same events to its console (text) and its JSON file log: both give the same
    idp_event rows (type, subject, session, reason, time to the millisecond).

    Keycloak keeps logging while the two logs are read one after the other (a session refresh of the
    running stack, say): only events older than a cutoff taken before the first read are compared, so
    an event written between the two reads is not taken for a difference (seen once in CI)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=2)  # both logs are flushed past it by the reads
    rows = {}
    for name, path in (("json", realstack.info["keycloak"]["json_log"]),
                       ("console", realstack.info["keycloak"]["console_log"])):
        lake = tmp_path / name
        _run(ZTAUDIT, "ingest", "--lake", str(lake), "--source", "idp_event", "-q", path)
        con = duckdb.connect()
        rows[name] = con.execute(
            "SELECT event_type, subject_id, session_id, reason, is_revocation, date_trunc('millisecond', occurred_at) "
            "FROM read_parquet(?, hive_partitioning = true) WHERE occurred_at <= ? ORDER BY ALL",
            [str(lake / "idp_event" / "**" / "*.parquet"), cutoff]).fetchall()
    assert rows["json"], "no Keycloak event read from the JSON log"
    assert rows["console"] == rows["json"]

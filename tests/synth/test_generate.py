"""``ztaudit generate``: determinism, record shapes, proxy/audit pairing, labels, CLI, ingest."""

from __future__ import annotations

import collections
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ztaudit.cli.main import cli, main
from ztaudit.synth.engine import GenerateOptions, generate
from ztaudit.synth.incident_context import ALL_KINDS

POMERIUM_SA = "system:serviceaccount:pomerium:pomerium-authorize"
VERB_METHOD = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
               "delete": "DELETE"}
CLUSTERS = ("prod", "staging")


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _lines(folder: Path) -> list[str]:
    out: list[str] = []
    for f in sorted(folder.glob("*.jsonl")):
        out.extend(f.read_text(encoding="utf-8").splitlines())
    return out


def _all_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven days, two clusters, small scale, every incident kind."""
    out = tmp_path_factory.mktemp("gen") / "week"
    generate(GenerateOptions(out=out, days=7, scale=0.02, seed=11, clusters=CLUSTERS))
    return out


@pytest.fixture(scope="module")
def audit(week: Path) -> dict[str, list[dict[str, Any]]]:
    return {c: [json.loads(line) for line in _lines_for(week, c)] for c in CLUSTERS}


def _lines_for(d: Path, cluster: str) -> list[str]:
    out: list[str] = []
    for f in sorted((d / "k8s_audit").glob(f"{cluster}-*.jsonl")):
        out.extend(f.read_text(encoding="utf-8").splitlines())
    return out


@pytest.fixture(scope="module")
def proxy(week: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(week / "proxy_decision")]


@pytest.fixture(scope="module")
def labels(week: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (week / ".ztaudit" / "labels.jsonl").read_text().splitlines()]


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        generate(GenerateOptions(out=out, days=2, scale=0.02, seed=seed, clusters=("x", "y")))
    ba, bb, bc = _all_bytes(a), _all_bytes(b), _all_bytes(c)
    assert ba.keys() == bb.keys() and ba == bb
    assert ba[".ztaudit/labels.jsonl"] and ba != bc


def test_layout_and_manifest(week: Path) -> None:
    manifest = json.loads((week / ".ztaudit" / "manifest.json").read_text())
    assert manifest["seed"] == 11
    assert [c["name"] for c in manifest["clusters"]] == list(CLUSTERS)
    names = {p.name for p in (week / "k8s_audit").iterdir()}
    assert names == {f"{c}-2026-11-{d:02d}.jsonl" for c in CLUSTERS for d in range(2, 9)}
    assert {p.name for p in (week / "proxy_decision").iterdir()} == {f"pomerium-2026-11-{d:02d}.jsonl"
                                                                     for d in range(2, 9)}
    idp = {p.name for p in (week / "idp_event").iterdir()}
    assert any(n.startswith("okta-") for n in idp) and any(n.startswith("pomerium-identity-") for n in idp)
    for rel, n in manifest["counts"]["by_file"].items():
        assert len((week / rel).read_text().splitlines()) == n
    assert (week / ".ztaudit" / "ztaudit.toml").read_text().count("example.com") == len(CLUSTERS)


# --- record shapes -------------------------------------------------------------------------


def test_audit_events_are_complete_and_realistically_sized(week: Path,
                                                           audit: dict[str, list[dict[str, Any]]]) -> None:
    sizes = [len(line) + 1 for c in CLUSTERS for line in _lines_for(week, c)]
    assert 1000 <= sum(sizes) / len(sizes) <= 2000
    for cluster, events in audit.items():
        last = ""
        for e in events:
            assert e["kind"] == "Event" and e["apiVersion"] == "audit.k8s.io/v1"
            assert e["level"] in ("Metadata", "Request", "RequestResponse")
            assert e["stage"] in ("RequestReceived", "ResponseStarted", "ResponseComplete")
            for key in ("auditID", "requestURI", "verb", "user", "sourceIPs", "userAgent",
                        "requestReceivedTimestamp", "stageTimestamp"):
                assert key in e, (cluster, key, e)
            assert e["user"]["username"] and isinstance(e["user"]["groups"], list)
            assert all(isinstance(v, list) for v in e["user"].get("extra", {}).values())
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["stageTimestamp"])
            assert e["stageTimestamp"] >= e["requestReceivedTimestamp"]
            assert e["stageTimestamp"] >= last  # the file is in stage-time order
            last = e["stageTimestamp"]
            if e["stage"] == "RequestReceived":
                assert "responseStatus" not in e and "annotations" not in e
            else:
                assert "code" in e["responseStatus"]


def test_identity_shapes(audit: dict[str, list[dict[str, Any]]]) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    for e in audit["prod"]:
        u = e["user"]
        cred = u.get("extra", {}).get("authentication.kubernetes.io/credential-id", [""])[0]
        if u["username"].startswith("system:node:"):
            assert cred.startswith("X509SHA256=") and len(cred) == len("X509SHA256=") + 64
            kinds["node"] += 1
        elif u["username"].startswith("system:serviceaccount:") and "legacy-token" not in str(e.get("annotations")):
            ns = u["username"].split(":")[2]
            assert u["groups"][:2] == ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
            if u["username"] != "system:serviceaccount:pomerium:pomerium-authorize" or "impersonatedUser" in e:
                assert cred.startswith("JTI="), e
            kinds["sa"] += 1
        if e["verb"] == "create" and e.get("objectRef", {}).get("subresource") == "token":
            assert e["annotations"]["authentication.kubernetes.io/issued-credential-id"].startswith("JTI=")
            kinds["tokenrequest"] += 1
        if e["verb"] == "watch" and e["stage"] == "RequestReceived":
            kinds["watch"] += 1
        if "impersonatedUser" in e and e["user"]["username"] == POMERIUM_SA:
            assert e["impersonatedUser"]["groups"][-1] == "system:authenticated"
            assert e["impersonatedUser"]["username"].endswith("@example.com")
            kinds["impersonated"] += 1
    assert min(kinds.values()) > 0 and len(kinds) == 5, kinds


def test_pomerium_lines(proxy: list[dict[str, Any]]) -> None:
    checks = [p for p in proxy if p["message"] == "authorize check"]
    assert checks and all(p["service"] == "authorize" for p in checks)
    for p in proxy:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-05:00", p["time"]), p["time"]
    for p in checks:
        assert "?" not in p["path"] and p["host"].startswith("k8s-")
        assert p["request-id"] == p["check-request-id"]
        assert ("allow-why-true" in p) != ("allow-why-false" in p)
        if p["allow"]:
            assert p["user"].startswith("00u") and p["session-id"] and p["email"].endswith("@example.com")
        elif p["allow-why-false"] == ["user-unauthenticated"]:
            assert p["user"] == "" and "session-id" not in p


def _match(audit: dict[str, list[dict[str, Any]]], proxy: list[dict[str, Any]]
           ) -> tuple[list[float], collections.Counter[str], collections.Counter[str]]:
    """Pair impersonated audit requests with allowed proxy lines (multiset, audit after proxy ≤ 3 s)."""
    pending: dict[tuple[str, ...], list[float]] = collections.defaultdict(list)
    for p in proxy:
        if p["message"] == "authorize check" and p["allow"]:
            cluster = p["host"].split(".")[0].removeprefix("k8s-")
            pending[(cluster, p["method"], p["path"], p["email"])].append(_ts(p["time"]))
    deltas: list[float] = []
    unbrokered: collections.Counter[str] = collections.Counter()
    for cluster, events in audit.items():
        reqs = sorted((_ts(e["requestReceivedTimestamp"]), e) for e in events
                      if "impersonatedUser" in e and e["user"]["username"] == POMERIUM_SA
                      and e["stage"] == ("RequestReceived" if e["verb"] == "watch" else "ResponseComplete"))
        for t, e in reqs:
            key = (cluster, VERB_METHOD[e["verb"]], e["requestURI"].split("?")[0], e["impersonatedUser"]["username"])
            cands = pending[key]
            hit = next((i for i, tp in enumerate(sorted(cands)) if -0.5 <= t - tp <= 3.0), None)
            if hit is None:
                unbrokered[e["impersonatedUser"]["username"]] += 1
                continue
            tp = sorted(cands)[hit]
            cands.remove(tp)
            deltas.append(t - tp)
    unobserved = collections.Counter(k[3] for k, v in pending.items() for _ in v)
    return deltas, unbrokered, unobserved


def test_impersonated_events_match_proxy_decisions_within_skew(audit: dict[str, list[dict[str, Any]]],
                                                               proxy: list[dict[str, Any]],
                                                               labels: list[dict[str, Any]]) -> None:
    deltas, unbrokered, unobserved = _match(audit, proxy)
    assert len(deltas) > 100
    assert 0 <= min(deltas) and max(deltas) < 3.0
    assert sum(1 for d in deltas if d > 2.55) >= 3  # the labelled edge-of-window near-misses
    incident = {(lab["detector"], lab["actor"]) for lab in labels if lab["kind"] == "incident"}
    assert unbrokered and all(("impersonation.unbrokered", a) in incident for a in unbrokered)
    assert unobserved and all(("impersonation.unobserved", a) in incident for a in unobserved)


# --- labels --------------------------------------------------------------------------------


def test_every_kind_has_three_incidents_and_near_misses_exist(labels: list[dict[str, Any]]) -> None:
    per = collections.Counter(lab["detector"] for lab in labels if lab["kind"] == "incident")
    assert set(per) == ALL_KINDS
    assert min(per.values()) >= 3, per
    assert sum(1 for lab in labels if lab["kind"] == "near_miss") >= 15
    for lab in labels:
        assert set(lab) == {"detector", "actor", "first_seen", "last_seen", "cluster", "kind", "note"}
        assert lab["first_seen"] <= lab["last_seen"] and lab["cluster"] in CLUSTERS


def test_labelled_actors_have_events_in_their_window(week: Path, labels: list[dict[str, Any]]) -> None:
    stamps: dict[str, list[float]] = collections.defaultdict(list)
    for c in CLUSTERS:
        for line in _lines_for(week, c):
            e = json.loads(line)
            t = _ts(e["requestReceivedTimestamp"])
            stamps[e["user"]["username"]].append(t)
            if "impersonatedUser" in e:
                stamps[e["impersonatedUser"]["username"]].append(t)
    for line in _lines(week / "proxy_decision"):
        p = json.loads(line)
        if p.get("email"):
            stamps[p["email"]].append(_ts(p["time"]))
    for lab in labels:
        if lab["detector"] == "impersonation.unapproved_right":
            continue  # its evidence is the RBAC snapshot (a right never used has no events): test_rbac_snapshot.py
        lo, hi = _ts(lab["first_seen"]) - 1, _ts(lab["last_seen"]) + 1
        assert any(lo <= t <= hi for t in stamps[lab["actor"]]), lab


def test_revoked_people_are_quiet_outside_labelled_windows(week: Path, audit: dict[str, list[dict[str, Any]]],
                                                          proxy: list[dict[str, Any]],
                                                          labels: list[dict[str, Any]]) -> None:
    """After a revocation and until its restoration, a person's allowed uses past the grace period
    lie in a labelled incident window (identity revocations; for a session clear: its old sessions)."""
    revs = [json.loads(x) for x in (week / ".ztaudit" / "revocations.jsonl").read_text().splitlines()]
    assert len(revs) >= 12
    windows = collections.defaultdict(list)
    for lab in labels:
        if lab["detector"] == "revocation.not_enforced" and lab["kind"] == "incident":
            windows[lab["actor"]].append((_ts(lab["first_seen"]) - 1, _ts(lab["last_seen"]) + 1))
    seen: list[tuple[str, float, str]] = [(p["email"], _ts(p["time"]), p["session-id"]) for p in proxy
                                          if p.get("email") and p["allow"]]
    seen += [(e["impersonatedUser"]["username"], _ts(e["requestReceivedTimestamp"]), "")
             for events in audit.values() for e in events if "impersonatedUser" in e]
    for r in revs:
        t0 = _ts(r["revoked_at"])
        stop = _ts(r["restored_at"]) if r["restored_at"] else float("inf")
        old = {s for who, t, s in seen if who == r["subject"] and t < t0 and s}
        for who, t, sess in seen:
            if who != r["subject"] or not t0 + 900 < t < stop:
                continue
            if r["kind"] == "session" and sess not in old:
                continue  # a new login after the session clear is legitimate
            assert r["expected_status"] == "not_enforced", (r, t)
            assert any(lo <= t <= hi for lo, hi in windows[who]), (who, t)


def test_no_incidents(tmp_path: Path) -> None:
    generate(GenerateOptions(out=tmp_path, days=2, scale=0.02, seed=3, clusters=("a", "b"), incidents=frozenset()))
    assert (tmp_path / ".ztaudit" / "labels.jsonl").read_text() == ""
    text = "".join(_lines(tmp_path / "k8s_audit"))
    assert "legacy-token" not in text and "198.51.100." not in text and "203.0.113." not in text


def test_events_option_is_approximate(tmp_path: Path) -> None:
    res = generate(GenerateOptions(out=tmp_path, days=1, seed=2, clusters=("a",), events=40_000,
                                   incidents=frozenset()))
    n = res.manifest["counts"]["by_kind"]["k8s_audit"]
    assert 0.7 * 40_000 <= n <= 1.3 * 40_000, n


# --- CLI -----------------------------------------------------------------------------------


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "1", "--scale", "0.02", "--seed", "4",
                                      "--clusters", "east,west", "--start", "2026-11-05",
                                      "--incidents", "impersonation.proxy_bypass,credential.legacy_token"])
    assert result.exit_code == 0, result.output
    assert "audit events" in result.output
    assert (out / "k8s_audit" / "east-2026-11-05.jsonl").is_file()
    detectors = {json.loads(line)["detector"] for line in (out / ".ztaudit" / "labels.jsonl").read_text().splitlines()}
    assert detectors == {"impersonation.proxy_bypass", "credential.legacy_token"}


def test_cli_rejects_unknown_incident_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(tmp_path), "--incidents", "nope.kind"])
    assert exc.value.code == 2
    assert "unknown incident kind" in capsys.readouterr().err


# --- ingest --------------------------------------------------------------------------------


def test_generated_data_ingests_without_quarantine(tmp_path: Path) -> None:
    from ztaudit.core.config import load_config
    from ztaudit.pipeline import ingest

    out = tmp_path / "gen"
    generate(GenerateOptions(out=out, days=1, scale=0.02, seed=9, clusters=("prod", "dev")))
    cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})
    lake = tmp_path / "lake"
    total = collections.Counter[str]()
    stats = ingest.ingest_paths([out / "proxy_decision", out / "idp_event"], lake, config=cfg)
    assert not stats.quarantined, stats.quarantined
    total.update(stats.rows)
    for c in ("prod", "dev"):
        stats = ingest.ingest_paths(sorted((out / "k8s_audit").glob(f"{c}-*.jsonl")), lake, cluster=c, config=cfg)
        assert not stats.quarantined, stats.quarantined
        total.update(stats.rows)
    manifest = json.loads((out / ".ztaudit" / "manifest.json").read_text())
    assert total["k8s_audit"] == manifest["counts"]["by_kind"]["k8s_audit"]
    assert total["proxy_decision"] == manifest["counts"]["by_kind"]["proxy_decision"]
    assert total["idp_event"] == manifest["counts"]["by_kind"]["idp_event"]

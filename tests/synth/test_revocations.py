"""``ztaudit generate``: the revocations it emits, their expected status (``revocations.jsonl``), and
that every label agrees with the lines written (notice lines, denials, allowed uses, restorations).
"""

from __future__ import annotations

import collections
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ztaudit.synth.engine import GenerateOptions, generate

STATUSES = {"enforced", "not_enforced", "quiet", "not_applicable", "pending"}
KEYS = {"system", "event_type", "subject", "subject_id", "revoked_at", "kind", "expected_status",
        "notice_latency_seconds", "denial_latency_seconds", "attribution", "refused_shared_ip", "exposure_seconds",
        "cluster", "restored_at", "note"}
REVOKING = {"user.lifecycle.deactivate", "user.lifecycle.suspend", "user.session.clear"}


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _read(folder: Path, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(folder.glob(f"{prefix}-*.jsonl")) for line in f.read_text().splitlines()]


class Data:
    def __init__(self, out: Path) -> None:
        meta = out / ".ztaudit"
        self.revs = [json.loads(x) for x in (meta / "revocations.jsonl").read_text().splitlines()]
        self.labels = [json.loads(x) for x in (meta / "labels.jsonl").read_text().splitlines()]
        self.manifest = json.loads((meta / "manifest.json").read_text())
        self.okta = _read(out / "idp_event", "okta")
        self.ident = _read(out / "idp_event", "pomerium-identity")
        self.proxy = [p for p in _read(out / "proxy_decision", "pomerium") if p["message"] == "authorize check"]
        self.audit = [e for f in sorted((out / "k8s_audit").glob("*.jsonl")) for e in map(json.loads,
                      f.read_text().splitlines()) if "impersonatedUser" in e]
        self.latest = max([_ts(p["time"]) for p in self.proxy] + [_ts(e["stageTimestamp"]) for e in self.audit]
                          + [_ts(o["published"]) for o in self.okta] + [_ts(i["time"]) for i in self.ident])


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Data:
    out = tmp_path_factory.mktemp("rev") / "month"
    generate(GenerateOptions(out=out, days=30, seed=3, clusters=("prod", "staging"), events=150_000))
    return Data(out)


def test_many_revocations_of_every_status(month: Data) -> None:
    revs = month.revs
    assert len(revs) >= 50
    status = collections.Counter(r["expected_status"] for r in revs)
    assert set(status) == STATUSES, status
    assert status["not_enforced"] >= 3 and status["pending"] >= 1
    assert status["enforced"] >= 0.35 * len(revs) and status["quiet"] >= 0.1 * len(revs)
    assert status["not_applicable"] >= 0.08 * len(revs)
    assert sum(r["refused_shared_ip"] for r in revs) >= 2
    assert {r["event_type"] for r in revs} == REVOKING
    assert {r["kind"] for r in revs} == {"identity", "session"}
    # spread over days and clusters; people revoked several times
    assert len({r["revoked_at"][:10] for r in revs}) >= 20
    assert {r["cluster"] for r in revs if r["cluster"]} == {"prod", "staging"}
    assert max(collections.Counter(r["subject"] for r in revs).values()) >= 4
    assert month.manifest["counts"]["revocations"] == dict(sorted(status.items()))
    for r in revs:
        assert set(r) == KEYS and r["system"] == "okta" and r["subject"] == r["subject"].lower()
        assert (r["kind"] == "session") == (r["event_type"] == "user.session.clear")
        assert r["attribution"] in (None, "exact", "client_ip")
        assert (r["attribution"] is None) == (r["denial_latency_seconds"] is None)


def test_each_row_is_an_okta_event_and_restorations_are_emitted(month: Data) -> None:
    events = {(o["eventType"], o["target"][0]["id"], o["published"]) for o in month.okta if o["target"]}
    assert sum(1 for e in events if e[0] in REVOKING) == len(month.revs)
    for r in month.revs:
        assert (r["event_type"], r["subject_id"], r["revoked_at"]) in events
        if r["restored_at"]:
            assert ("user.lifecycle.unsuspend", r["subject_id"], r["restored_at"]) in events
            assert r["event_type"] != "user.lifecycle.deactivate" and r["restored_at"] > r["revoked_at"]


def test_notice_lines_match_the_labels_and_are_mostly_duplicated(month: Data) -> None:
    by_user: dict[str, list[tuple[float, dict[str, Any]]]] = collections.defaultdict(list)
    for i in month.ident:
        if i.get("user-id"):
            assert i["level"] == "error" and i["message"].endswith("deleting session") and "invalid" in i["error"]
            by_user[i["user-id"]].append((_ts(i["time"]), i))
    noticed = dup = 0
    for r in month.revs:
        t0 = _ts(r["revoked_at"])
        stop = min(_ts(r["restored_at"]) if r["restored_at"] else float("inf"), t0 + 86400)
        lines = sorted((t, i) for t, i in by_user[r["subject_id"]] if t0 - 1 < t < stop)
        if r["notice_latency_seconds"] is None:
            assert not lines, r
            continue
        assert r["expected_status"] in ("enforced", "not_enforced"), r
        t, first = lines[0]
        # the latency is the whole second the line shows minus T0 (ms)
        assert abs(t - t0 - r["notice_latency_seconds"]) < 1e-3 and t >= t0
        noticed += 1
        twice = [i for i in month.ident if i["session-id"] == first["session-id"] and i is not first
                 and 0 <= _ts(i["time"]) - t <= 2]
        dup += bool(twice)
    assert noticed >= 20 and dup >= 0.6 * noticed, (noticed, dup)
    assert any(r["notice_latency_seconds"] is not None and r["denial_latency_seconds"] is None
               for r in month.revs if r["expected_status"] == "enforced")  # noticed, never tried again


def test_denials_and_uses_agree_with_the_lines(month: Data) -> None:
    for r in month.revs:
        t0 = _ts(r["revoked_at"])
        stop = _ts(r["restored_at"]) if r["restored_at"] else float("inf")
        mine = [p for p in month.proxy if p["user"] == r["subject_id"] or p["email"].lower() == r["subject"]]
        old = {p["session-id"] for p in mine if _ts(p["time"]) + 1 <= t0}
        judged = mine if r["kind"] == "identity" else [p for p in month.proxy if p.get("session-id") in old]
        late = [p for p in judged if p["allow"] and t0 + 900 < _ts(p["time"]) < stop]
        api_late = [e for e in month.audit if e["impersonatedUser"]["username"] == r["subject"]
                    and t0 + 900 < _ts(e["requestReceivedTimestamp"]) < stop] if r["kind"] == "identity" else []
        assert bool(late or api_late) == (r["expected_status"] == "not_enforced"), r
        if r["expected_status"] == "not_applicable":
            assert not mine and not any(e["impersonatedUser"]["username"] == r["subject"] for e in month.audit)
        if r["expected_status"] == "pending":
            assert t0 + 900 > month.latest
        if r["attribution"] == "client_ip":
            ip = max((p for p in mine if p["allow"] and _ts(p["time"]) + 1 <= t0), key=lambda p: _ts(p["time"]))["ip"]
            t = t0 + r["denial_latency_seconds"]
            assert any(p["ip"] == ip and not p["allow"] and p["user"] == "" and "session-id" not in p
                       and abs(_ts(p["time"]) - t) < 1e-3 for p in month.proxy), r
        if r["refused_shared_ip"]:
            ip = max((p for p in mine if p["allow"] and _ts(p["time"]) + 1 <= t0), key=lambda p: _ts(p["time"]))["ip"]
            assert any(p["ip"] == ip and p["allow"] and p["email"] != r["subject"] and t0 < _ts(p["time"]) < stop
                       for p in month.proxy), r
    # labels.jsonl: an incident for each not_enforced revocation, near-misses for the others
    incidents = [lab for lab in month.labels if lab["detector"] == "revocation.not_enforced"
                 and lab["kind"] == "incident"]
    ne = [r for r in month.revs if r["expected_status"] == "not_enforced"]
    assert len(incidents) == len(ne)
    for r in ne:
        assert any(lab["actor"] == r["subject"] and r["revoked_at"] < lab["first_seen"] for lab in incidents)


def test_a_week_and_a_few_days(tmp_path: Path) -> None:
    for days, least in ((7, 12), (3, 4)):
        out = tmp_path / str(days)
        generate(GenerateOptions(out=out, days=days, scale=0.02, seed=5, clusters=("prod", "staging")))
        revs = [json.loads(x) for x in (out / ".ztaudit" / "revocations.jsonl").read_text().splitlines()]
        assert len(revs) >= least, (days, len(revs))
        assert sum(r["expected_status"] == "not_enforced" for r in revs) >= 3


def test_no_revocations_without_the_kind(tmp_path: Path) -> None:
    generate(GenerateOptions(out=tmp_path, days=2, scale=0.02, seed=3, clusters=("a",),
                             incidents=frozenset({"credential.legacy_token"})))
    assert (tmp_path / ".ztaudit" / "revocations.jsonl").read_text() == ""

"""Impersonation detectors: named positive and negative cases, plus the two public corpus samples.

Each case under tests/cases/impersonation/<detector>/ is a small event file (see caselib); a
positive case must yield exactly the findings listed, a negative case none. The corpus tests
ingest real audit events through the real ingest when it is available in this checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cases.impersonation.caselib import case_files, load_case

from ztaudit.core.config import Config, replace
from ztaudit.core.lake import open_lake
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext

CASES = case_files("impersonation")


def run_one(lake: Path, detector: str, cfg: Config) -> list[Any]:
    con = open_lake(lake, must_exist=False)
    try:
        return registry.get(detector).run(DetectContext(con=con, config=cfg, lake=str(lake)))
    finally:
        con.close()


def check(findings: list[Any], expected: list[dict[str, Any]]) -> None:
    got = [(f.actor, str(f.severity), f.cluster, len(f.evidence)) for f in findings]
    assert len(findings) == len(expected), f"expected {expected}, got {got}"
    for exp in expected:
        match = [f for f in findings if f.actor == exp["actor"]]
        assert match, f"no finding for {exp['actor']}; got {got}"
        f = match[0]
        if "severity" in exp:
            assert str(f.severity) == exp["severity"]
        if "cluster" in exp:
            assert f.cluster == exp["cluster"]
        if "evidence" in exp:
            assert set(exp["evidence"]) <= set(f.evidence)
        if "evidence_count" in exp:
            assert len(f.evidence) == exp["evidence_count"], f.evidence
        assert f.summary and f.first_seen is not None and f.last_seen is not None
        assert f.first_seen <= f.last_seen


def test_cases_exist_for_every_detector() -> None:
    names = {p.parent.name for p in CASES}
    assert names == {"proxy_bypass", "unobserved", "unbrokered", "unapproved_impersonator"}
    for name in names:
        kinds = {p.name.split("_")[0] for p in CASES if p.parent.name == name}
        assert kinds == {"pos", "neg"}, name


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_case(case: Path, lake: Path) -> None:
    expect, cfg = load_case(case, lake)
    check(run_one(lake, expect["detector"], cfg), expect["findings"])


def test_summary_counts_matched_and_unmatched(lake: Path) -> None:
    case = next(p for p in CASES if p.name == "neg_matched_skew_and_repeats.jsonl")
    _, cfg = load_case(case, lake)
    from ztaudit.detectors.correlate import impersonation_summary

    con = open_lake(lake, must_exist=False)
    rows = {r["actor"]: r for r in impersonation_summary(con, cfg).to_pylist()}
    assert rows["alice@example.com"]["matched_tier_c"] == 4
    assert rows["alice@example.com"]["unmatched_proxy"] == 0
    assert rows["alice@example.com"]["match_rate"] == 1.0
    # the analyst view agrees with the detector path
    sides = con.execute("SELECT side, count(*) FROM proxy_audit_match GROUP BY side ORDER BY side").fetchall()
    assert sides == [("both", 4)]


def test_view_shows_tier_a_and_unmatched(lake: Path) -> None:
    case = next(p for p in CASES if p.name == "neg_matched_tier_a_and_c.jsonl")
    _, cfg = load_case(case, lake)
    from ztaudit.detectors.correlate import install_config

    con = open_lake(lake, must_exist=False)
    install_config(con, cfg)
    rows = con.execute("SELECT tier, actor, side FROM proxy_audit_match ORDER BY actor").fetchall()
    assert rows == [("A", "alice@example.com", "both"), ("C", "bob@example.com", "both")]


def _ingest_corpus(path: Path, lake: Path) -> None:
    from ztaudit.pipeline import ingest
    ingest.ingest_paths([path], lake, source="k8s_audit", cluster="corpus")


@pytest.mark.parametrize("rel,impersonator", [
    ("k8s-audit/audit2rbac/demo.log", "system:admin"),
    ("proxy/kubernetes-audit/pinniped-impersonation-proxy-list-pods.audit.json",
     "system:serviceaccount:pinniped-concierge:pinniped-concierge-impersonation-proxy"),
])
def test_corpus_unapproved_impersonator(corpus: Path, lake: Path, rel: str, impersonator: str) -> None:
    _ingest_corpus(corpus / rel, lake)
    det = "impersonation.unapproved_impersonator"
    found = run_one(lake, det, Config())
    assert [f.actor for f in found] == [impersonator]
    assert all(e.startswith("k8s_audit:corpus/") for e in found[0].evidence)
    approved = replace(Config(), "impersonation",
                       approved_impersonators={"corpus": [impersonator]})
    assert run_one(lake, det, approved) == []

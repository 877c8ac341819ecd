"""Impersonation detectors: named positive and negative cases, plus the two public corpus samples.

Each case under tests/cases/impersonation/<detector>/ is a small event file (format and loader:
tests/support/cases.py); a positive case must yield exactly the findings listed, a negative case none. The corpus tests
ingest real audit events through the real ingest when it is available in this checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cases import case_files, check_findings, detect, load_case, run_case, write_case

from ztaudit.core.config import Config, replace
from ztaudit.core.lake import open_lake

CASES = case_files("impersonation")


def test_cases_exist_for_every_detector() -> None:
    names = {p.parent.name for p in CASES}
    assert names == {"proxy_bypass", "unobserved", "unbrokered", "unapproved_impersonator", "unapproved_right"}
    for name in names:
        kinds = {p.name.split("_")[0] for p in CASES if p.parent.name == name}
        assert kinds == {"pos", "neg"}, name


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_case(case: Path, lake: Path) -> None:
    c = load_case(case)
    check_findings(run_case(c, lake), c.findings)


def test_summary_counts_matched_and_unmatched(lake: Path) -> None:
    case = load_case(next(p for p in CASES if p.name == "neg_matched_skew_and_repeats.jsonl"))
    write_case(case, lake)
    from ztaudit.detectors.correlate import impersonation_summary

    con = open_lake(lake, must_exist=False)
    rows = {r["actor"]: r for r in impersonation_summary(con, case.config).to_pylist()}
    assert rows["alice@example.com"]["matched_tier_c"] == 4
    assert rows["alice@example.com"]["unmatched_proxy"] == 0
    assert rows["alice@example.com"]["match_rate"] == 1.0
    # the analyst view agrees with the detector path
    sides = con.execute("SELECT side, count(*) FROM proxy_audit_match GROUP BY side ORDER BY side").fetchall()
    assert sides == [("both", 4)]


def test_view_shows_tier_a_and_unmatched(lake: Path) -> None:
    case = load_case(next(p for p in CASES if p.name == "neg_matched_tier_a_and_c.jsonl"))
    write_case(case, lake)
    from ztaudit.detectors.correlate import install_config

    con = open_lake(lake, must_exist=False)
    install_config(con, case.config)
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
    found = detect(lake, det, Config())
    assert [f.actor for f in found] == [impersonator]
    assert all(e.startswith("k8s_audit:corpus/") for e in found[0].evidence)
    approved = replace(Config(), "impersonation",
                       approved_impersonators={"corpus": [impersonator]})
    assert detect(lake, det, approved) == []

"""impersonation.unapproved_right: the case files, the rule evaluation behind them, and the registry."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from support.cases import CASES, check_findings, detect, load_case, run_case

from ztaudit.core.config import load_config
from ztaudit.core.window import Window
from ztaudit.detectors import registry
from ztaudit.detectors.engine import as_engine
from ztaudit.detectors.impersonation_rights import (
    _uses,
    impersonation_rights,
    impersonation_targets,
    impersonators_of,
)
from ztaudit.detectors.rbac import Rule

FILES = sorted((CASES / "impersonation" / "unapproved_right").glob("*.jsonl"))


def test_registered_with_positive_and_negative_cases() -> None:
    assert "impersonation.unapproved_right" in registry.DETECTORS
    assert {p.name.split("_")[0] for p in FILES} == {"pos", "neg"}


@pytest.mark.parametrize("case", FILES, ids=[p.stem for p in FILES])
def test_case(case: Path, lake: Path) -> None:
    c = load_case(case)
    check_findings(run_case(c, lake), c.findings)


def test_approval_is_per_cluster(lake: Path) -> None:
    """The used CI right stops being a finding once the CI account is approved for cluster c1 only."""
    c = load_case(CASES / "impersonation" / "unapproved_right" / "pos_used_high.jsonl")
    run_case(c, lake)
    cfg = load_config(os.devnull, env={}, overrides={"impersonation": {"approved_impersonators": {
        "c1": ["system:serviceaccount:ci:deployer"]}}})
    got = detect(lake, "impersonation.unapproved_right", cfg)
    assert [f.actor for f in got] == ["breakglass-ops"]
    other = load_config(os.devnull, env={}, overrides={"impersonation": {"approved_impersonators": {
        "c2": ["system:serviceaccount:ci:deployer"]}}})
    assert len(detect(lake, "impersonation.unapproved_right", other)) == 2


@pytest.mark.parametrize(("rule", "targets"), [
    (Rule(("impersonate",), ("",), ("users", "groups"), (), (), None), ["users", "groups"]),
    (Rule(("*",), ("*",), ("*",), (), (), None), ["users", "groups", "serviceaccounts", "uids", "userextras"]),
    (Rule(("*",), ("",), ("*",), (), (), None), ["users", "groups", "serviceaccounts"]),
    (Rule(("impersonate",), ("authentication.k8s.io",), ("uids", "userextras/scopes"), (), (), None),
     ["uids", "userextras"]),
    (Rule(("impersonate",), ("authentication.k8s.io",), ("userextras",), (), (), None), []),  # needs /<key>
    (Rule(("impersonate",), ("",), ("uids",), (), (), None), []),  # uids live in authentication.k8s.io
    (Rule(("*",), ("apps",), ("*",), (), (), None), []),
    (Rule(("get", "list"), ("",), ("users", "serviceaccounts"), (), (), None), []),
    (Rule(("impersonate",), ("",), ("users", "serviceaccounts"), (), (), "shop"), ["serviceaccounts"]),
    (Rule(("impersonate",), ("",), ("users",), ("alice",), (), None), ["users"]),
])
def test_targets(rule: Rule, targets: list[str]) -> None:
    assert impersonation_targets(rule) == targets


def _grant(subject: str, kind: str, resources: list[str], ns: str | None = None,
           names: list[str] | None = None) -> dict[str, object]:
    return {"cluster": "c1", "subject_kind": kind, "subject": subject, "binding_kind": "RoleBinding" if ns else
            "ClusterRoleBinding", "binding_name": "b", "binding_namespace": ns, "role_kind": "ClusterRole",
            "role_name": "r", "role_found": True, "rule_index": 0, "verbs": ["impersonate"], "api_groups": [""],
            "resources": resources, "resource_names": names or [], "non_resource_urls": [], "scope_namespace": ns}


def test_impersonators_of_a_service_account() -> None:
    rights = impersonation_rights([
        _grant("oncall", "Group", ["serviceaccounts"], ns="shop"),
        _grant("system:serviceaccount:x:y", "ServiceAccount", ["serviceaccounts"], names=["cart"]),
        _grant("system:serviceaccount:x:z", "ServiceAccount", ["serviceaccounts"], names=["other"]),
        _grant("system:masters", "Group", ["*"]),
        _grant("node-debugger", "User", ["users"]),
    ])
    assert impersonators_of(rights, "c1", "system:serviceaccount:shop:cart") == [
        "Group oncall", "ServiceAccount system:serviceaccount:x:y"]
    assert impersonators_of(rights, "c1", "system:serviceaccount:blog:cart") == [
        "ServiceAccount system:serviceaccount:x:y"]
    assert impersonators_of(rights, "c1", "system:node:n1") == ["User node-debugger"]
    assert impersonators_of(rights, "c2", "system:node:n1") == []


def test_the_impersonated_names_kept_are_the_first_by_name_whatever_the_row_order() -> None:
    """An impersonator that impersonated more people than the finding lists keeps the first 20 by name,
    whatever order the engine meets the requests in (an unordered list's first 20 differed between
    DuckDB and Spark, and between two DuckDB runs on several threads)."""
    names = [f"user-{i:02d}" for i in range(30)]
    for order in (names, names[::-1], names[15:] + names[:15]):
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("k8s_requests", pa.table({
            "cluster": ["c1"] * 30, "impersonator": ["system:serviceaccount:proxy:pomerium"] * 30,
            "user_groups": [["system:authenticated"]] * 30,
            "request_received_at": pa.array([1_795_000_000_000_000 + i for i in range(30)], pa.timestamp("us", "UTC")),
            "audit_id": [f"a{i:02d}" for i in range(30)], "impersonated_user": order,
            "dt": pa.array([date(2026, 11, 17)] * 30, pa.date32())}))
        (row,) = _uses(as_engine(con), Window(), cap=5)
        assert row["targets"] == names[:20]
        con.close()

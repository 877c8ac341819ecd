"""report nhi: visibility figures, grants vs use, impersonators, right-sizing with its replay check, every format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cases import row, write_rows
from support.rbac import rbac_item as _item

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.rbac import Rule, Use, covers
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.registry import get
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext, ReportResult
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import FORMATS, render
from ztaudit.reports.rightsize import suggest, verify

T = datetime(2026, 3, 2, 10, tzinfo=UTC)
APP = "system:serviceaccount:shop:app"
IDLE = "system:serviceaccount:shop:idle"
STRAY = "system:serviceaccount:blog:stray"
OLD = "system:serviceaccount:ci:old"
NODE = "system:node:n1"


#: The metadata the bootstrap policy puts on its roles and bindings (``_item(..., **DEFAULT)``).
DEFAULT: dict[str, Any] = {"labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                           "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}


SNAPSHOT = {"apiVersion": "v1", "kind": "List", "items": [
    _item("Role", "app", "shop", rules=[
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "delete"]}]),
    _item("RoleBinding", "app", "shop", roleRef={"kind": "Role", "name": "app"},
          subjects=[{"kind": "ServiceAccount", "name": "app"}, {"kind": "ServiceAccount", "name": "idle"}]),
    _item("ClusterRole", "ci", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
    _item("ClusterRoleBinding", "ci", roleRef={"kind": "ClusterRole", "name": "ci"},
          subjects=[{"kind": "ServiceAccount", "name": "old", "namespace": "ci"}]),
    _item("ClusterRole", "sa-impersonator", rules=[
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"], "resourceNames": ["app"]}]),
    _item("RoleBinding", "oncall", "shop", roleRef={"kind": "ClusterRole", "name": "sa-impersonator"},
          subjects=[{"kind": "Group", "name": "oncall"}]),
    # a default of the API server's bootstrap policy, labelled as it labels them
    _item("ClusterRole", "system:discovery", rules=[{"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}],
          **DEFAULT),
    _item("ClusterRoleBinding", "system:discovery", roleRef={"kind": "ClusterRole", "name": "system:discovery"},
          subjects=[{"kind": "Group", "name": "system:authenticated"}], **DEFAULT),
]}


@pytest.fixture
def nhi_lake(lake: Path) -> Path:
    norm = get("rbac_snapshot")
    table, rejected = norm.to_table(norm.unwrap(SNAPSHOT) or [], ["file:rbac.json:1"],
                                    NormalizeContext(cluster="c1", ingested_at=T))
    assert not rejected
    LakeSink(lake).write("rbac_snapshot", table, "snap")
    rows = []
    for d in range(3):
        t = T + timedelta(days=d)
        rows += [row(t, APP, "get", "configmaps", "shop", name="app-config", credential_id=f"JTI=a{d}", cluster="c1"),
                 row(t + timedelta(minutes=1), APP, "watch", "configmaps", "shop", credential_id=f"JTI=a{d}",
                     cluster="c1"),
                 row(t + timedelta(minutes=2), APP, "get", "secrets", "shop", name="db", credential_id=f"JTI=a{d}",
                     cluster="c1"),
                 row(t + timedelta(minutes=3), APP, "delete", "secrets", "blog", name="x", response_code=403,
                     decision="forbid", cluster="c1"),
                 row(t, STRAY, "list", "pods", "blog", credential_id="JTI=s", cluster="c1"),
                 row(t, OLD, "get", "deployments", "shop", api_group="apps", name="web",
                     credential_id="SECRET=ci/old-token", cluster="c1"),
                 row(t, NODE, "update", "leases", "kube-node-lease", api_group="coordination.k8s.io", name="n1",
                     credential_id="X509SHA256=ab", cluster="c1")]
    rows.append(row(T, APP, "get", None, None, request_uri="/api/v1?timeout=32s", cluster="c1"))
    write_rows(rows, lake)
    return lake


def _run(lake: Path, fmt: str | None = None, **filters: Any) -> ReportResult:
    con = open_lake(lake, must_exist=False)
    try:
        return run_report("nhi", ReportContext(con=con, config=Config(), filters=Filters(**filters)))
    finally:
        con.close()


def test_inventory_and_visibility(nhi_lake: Path) -> None:
    res = _run(nhi_lake)
    rows = {r["identity"]: r for r in res.primary.rows}
    assert set(rows) == {APP, IDLE, STRAY, OLD, NODE}
    assert {k: r["status"] for k, r in rows.items()} == {
        APP: "active", IDLE: "unused", STRAY: "unknown", OLD: "legacy_only", NODE: "active"}
    assert rows[NODE]["in_snapshot"] == "node_authorizer" and rows[NODE]["kind"] == "node"
    assert rows[NODE]["over_privileged"] is None
    app = rows[APP]
    assert app["requests"] == 13 and app["requests_per_day"] == pytest.approx(13 / 3, abs=0.1)  # denied too
    assert app["credentials"] == ["jti x3, longest 0.0 h"]
    assert app["secret_namespaces"] == 1  # the denied read in blog is a request, not a secret namespace used
    assert "app: get,list,watch configmaps in shop" in app["granted"]
    # a Kubernetes default (bootstrap labels on binding and role): listed, not charged to the account
    assert "system:authenticated system:discovery: get nonResourceURLs /api,/api/* (default)" in app["group_grants"]
    admin = "ServiceAccount system:serviceaccount:ci:old"  # cluster-admin-equivalent: may impersonate anyone
    assert app["impersonable_by"] == ["Group oncall", admin] and rows[IDLE]["impersonable_by"] == [admin]
    # used: get/watch configmaps, get secrets, GET /api/v1; unused: list configmaps, delete secrets
    assert sorted(app["unused_grants"]) == ["delete secrets in shop", "list configmaps in shop"]
    assert app["over_privileged"] and rows[IDLE]["over_privileged"] and rows[OLD]["over_privileged"]
    assert rows[OLD]["unused_grants"][0].startswith("* */* (wildcard")
    vis = res.section("visibility").rows[0]
    assert (vis["unused"], vis["unknown"], vis["legacy_only"], vis["with_grants"], vis["over_privileged"]) == (
        1, 1, 1, 3, 3)
    assert res.verdict[0].startswith("5 non-human identities (4 service accounts, 1 nodes): 1 granted but never seen")
    assert res.verdict[1] == ("3 of 3 service accounts with RBAC grants hold permissions they did not use in 3 days "
                              "(100 %)")


def test_used_exactly_as_granted_is_not_over_privileged(lake: Path) -> None:
    snap = {**SNAPSHOT, "items": [
        _item("Role", "app", "shop", rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]),
        _item("RoleBinding", "app", "shop", roleRef={"kind": "Role", "name": "app"},
              subjects=[{"kind": "ServiceAccount", "name": "app"}])]}
    norm = get("rbac_snapshot")
    table, _ = norm.to_table(norm.unwrap(snap) or [], ["file:r:1"], NormalizeContext(cluster="c1", ingested_at=T))
    LakeSink(lake).write("rbac_snapshot", table, "snap")
    write_rows([row(T, APP, "get", "configmaps", "shop", name="c", cluster="c1")], lake)
    res = _run(lake)
    assert res.primary.rows[0]["unused_grants"] == [] and not res.primary.rows[0]["over_privileged"]
    assert res.verdict[1].startswith("0 of 1 service accounts")


def _rules(text: str) -> list[Rule]:
    out = []
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] in ("Role", "ClusterRole"):
            for r in doc["rules"]:
                out.append(Rule(tuple(r["verbs"]), tuple(r.get("apiGroups", [])), tuple(r.get("resources", [])),
                                tuple(r.get("resourceNames", [])), tuple(r.get("nonResourceURLs", [])),
                                doc["metadata"].get("namespace")))
    return out


def test_rightsize_suggestion_is_printed_yaml_that_replays(nhi_lake: Path) -> None:
    res = _run(nhi_lake)
    sizing = {r["identity"]: r for r in res.section("rightsize").rows}
    app = sizing[APP]
    assert app["replayed_requests"] == app["allowed_by_suggestion"] == 10 and app["requests"] == 10
    # it reads a secret: printed, replay-checked, but for a person to review
    assert app["status"] == "review" and not app["verified"] and app["review"] == ["secret read: get secrets in shop"]
    rules = _rules(app["suggestion"])
    # no resourceNames: a few days of names say nothing about tomorrow's
    assert Rule(("get", "watch"), ("",), ("configmaps",), (), (), "shop") in rules
    assert Rule(("get",), ("",), ("secrets",), (), (), "shop") in rules
    assert Rule(("get",), (), (), (), ("/api/v1",), None) in rules
    assert not any(covers(r, Use("delete", "", "secrets", None, "shop", "db", None, 1)) for r in rules)
    assert not any(covers(r, Use("list", "", "configmaps", None, "shop", None, None, 1)) for r in rules)
    docs = [d for d in yaml.safe_load_all(app["suggestion"]) if d]
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app", "namespace": "shop"}]
    assert NODE not in sizing and IDLE not in sizing  # nodes: Node authorizer; idle: nothing to build from


@pytest.mark.parametrize(("uses", "ok"), [
    ([Use("get", "", "pods", None, "a", "p", None, 2), Use("list", "", "pods", None, "a", None, None, 1)], True),
    ([Use("get", "apps", "deployments", "scale", "a", "d", None, 1),
      Use("get", "", "pods", "log", None, None, None, 1)], True),
    ([Use("get", "", "pods", None, "a", f"p{i}", None, 1) for i in range(30)], True),  # never names
    ([Use("get", "", "pods", None, "a", "p", None, 1), Use("delete", "", "configmaps", None, "a", "c", None, 1),
      Use("post", "", None, None, None, None, "/apis", 1)], True),
])
def test_suggest_then_verify(uses: list[Use], ok: bool) -> None:
    rules = suggest(uses)
    assert verify(rules, uses).ok is ok
    # merging get on pods and delete on configmaps into one rule would grant get configmaps: not done
    assert all(not (set(r.verbs) > {"get"} and len(r.resources) > 1) for r in rules)


def test_verify_rejects_a_broader_or_narrower_suggestion() -> None:
    uses = [Use("get", "", "pods", None, "a", "p", None, 3), Use("list", "", "configmaps", None, "a", None, None, 1)]
    broad = [Rule(("get", "list"), ("",), ("pods", "configmaps"), (), (), "a")]
    check = verify(broad, uses)
    assert check.allowed == 4 and not check.ok and set(check.never_used) == {"list pods in a", "get configmaps in a"}
    narrow = [Rule(("get",), ("",), ("pods",), (), (), "a")]
    assert verify(narrow, uses).allowed == 3 and not verify(narrow, uses).ok
    assert not verify([Rule(("*",), ("",), ("pods", "configmaps"), (), (), "a")], uses).ok


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format(nhi_lake: Path, fmt: str) -> None:
    res = _run(nhi_lake)
    text = render(res, fmt)
    if fmt == "json":
        rows = json.loads(text)
        assert [k for k in rows[0] if k != "schema_version"] == res.primary.columns and len(rows) == 5
    elif fmt == "csv":
        assert text.splitlines()[0].split(",")[:3] == ["cluster", "identity", "kind"]
    else:
        assert "granted but never seen" in text and STRAY in text
    if fmt == "html":
        assert "<script" not in text


def test_without_snapshot(lake: Path) -> None:
    write_rows([row(T, APP, "get", "configmaps", "shop", cluster="c1")], lake)
    res = _run(lake)
    assert [r["status"] for r in res.primary.rows] == ["active"]
    assert res.primary.rows[0]["in_snapshot"] == "no snapshot"
    # nothing says what it was granted: not known, rather than "not over-privileged"
    assert res.primary.rows[0]["over_privileged"] is None
    assert any("no RBAC snapshot" in n for n in res.notes)

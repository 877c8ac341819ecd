"""report nhi decides status, over-privilege and default grants per account in SQL (flags over its
uses, grants' pairs matched against them) and builds ``Use`` lists only for the rows shown: the JSON
must be the one the full Python path gives when it works out every account (``_needs_python`` always
true), on a lake of RBAC edge cases (wildcards, ``*/sub``, ``pods/*``, resourceNames, non-resource URLs
with ``*``, a URL role bound in a namespace, group grants, Kubernetes' defaults, impersonation with and
without ``system:masters``, evidence of open findings, invalid names, refused requests) and on a
generated week."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cases import row, write_rows
from support.rbac import rbac_item as _item

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.registry import get
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import render_json

nhi_module = importlib.import_module("ztaudit.reports.nhi")  # the package's ``nhi`` is the function

T = datetime(2026, 3, 2, 10, tzinfo=UTC)
SA = "system:serviceaccount:"
READ = ["get", "list", "watch"]


def _bind(name: str, role_kind: str, role: str, subject: dict[str, str], ns: str | None = None) -> dict[str, Any]:
    kind = "RoleBinding" if ns else "ClusterRoleBinding"
    return _item(kind, name, ns, roleRef={"kind": role_kind, "name": role}, subjects=[subject])


def _default(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as the API server's bootstrap policy creates it (labelled, reconciled)."""
    item["metadata"].update(labels={"kubernetes.io/bootstrapping": "rbac-defaults"},
                            annotations={"rbac.authorization.kubernetes.io/autoupdate": "true"})
    return item


def _sa(ns: str, name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": ns}


SNAPSHOT = [
    _item("ClusterRole", "admin-all", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
    _bind("wild", "ClusterRole", "admin-all", _sa("e", "wild-verb")),
    _item("Role", "logs", "e", rules=[{"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]},
                                       {"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]},
                                       {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
    _bind("logs", "Role", "logs", _sa("e", "sub"), "e"),
    _item("Role", "tls", "e", rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                      "resourceNames": ["tls", "other"]}]),
    _bind("tls", "Role", "tls", _sa("e", "names"), "e"),
    _item("ClusterRole", "urls", rules=[{"nonResourceURLs": ["/healthz", "/api/*", "/metrics"], "verbs": ["get"]},
                                        {"nonResourceURLs": ["*"], "verbs": ["post"]}]),
    _bind("urls", "ClusterRole", "urls", _sa("e", "url")),
    _bind("urls-in-ns", "ClusterRole", "urls", _sa("e", "url-ns"), "e"),
    _item("Role", "pods", "e", rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]),
    _bind("members", "Role", "pods", {"kind": "Group", "name": "system:serviceaccounts:e"}, "e"),
    _default(_item("ClusterRole", "system:discovery",
                   rules=[{"nonResourceURLs": ["/api", "/version"], "verbs": ["get"]}])),
    _default(_bind("system:discovery", "ClusterRole", "system:discovery",
                   {"kind": "Group", "name": "system:authenticated"})),
    _item("ClusterRole", "imp", rules=[{"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"],
                                        "verbs": ["impersonate"]}]),
    _bind("imp-a", "ClusterRole", "imp", _sa("proxy", "gw")),
    _bind("imp-b", "ClusterRole", "imp", _sa("proxy", "gw2")),
    _item("ClusterRole", "rbac", rules=[{"apiGroups": ["rbac.authorization.k8s.io"],
                                         "resources": ["rolebindings", "roles"], "verbs": ["create", "get"]}]),
    _bind("rbac", "ClusterRole", "rbac", _sa("e", "rbac-writer")),
    _item("Role", "exact", "e", rules=[{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": READ}]),
    _bind("exact", "Role", "exact", _sa("e", "exact"), "e"),
    _bind("never-seen", "Role", "exact", _sa("e", "never-seen"), "e"),
    _bind("bad-name", "Role", "exact", _sa("e", "Bad_Name"), "e"),
    _item("ClusterRole", "nodes-read", rules=[{"apiGroups": [""], "resources": ["nodes"], "verbs": READ}]),
    _bind("nodes-read", "ClusterRole", "nodes-read", _sa("e", "cluster-scoped")),
    # one grant each, used exactly as the matcher allows (not over-privileged) or not at all
    _item("Role", "any-log", "m", rules=[{"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}]),
    _bind("any-log", "Role", "any-log", _sa("m", "sublog"), "m"),
    _item("ClusterRole", "url-star", rules=[{"nonResourceURLs": ["/api/*"], "verbs": ["get"]},
                                            {"nonResourceURLs": ["*"], "verbs": ["post"]}]),
    _bind("url-star", "ClusterRole", "url-star", _sa("m", "urlstar")),
    _item("ClusterRole", "healthz", rules=[{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
    _bind("healthz", "ClusterRole", "healthz", _sa("m", "urlns"), "m"),
    _item("Role", "secret-a", "m", rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                           "resourceNames": ["a"]}]),
    _bind("secret-a", "Role", "secret-a", _sa("m", "named-ok"), "m"),
    _bind("secret-a2", "Role", "secret-a", _sa("m", "named-other"), "m"),
]


def _uses(lake: Path) -> None:
    def at(i: int) -> datetime:
        return T + timedelta(minutes=i)

    rows = [
        row(at(1), f"{SA}e:wild-verb", "*", "pods", "e"),
        row(at(2), f"{SA}e:wild-verb", "get", "pods", "e"),
        row(at(3), f"{SA}e:wild-url", "get", None, None, request_uri="/logs/*"),
        row(at(4), f"{SA}e:wild-group", "get", "pods", "e", api_group="*"),
        row(at(5), f"{SA}e:sub", "get", "pods", "e", subresource="log", name="web-1"),
        row(at(6), f"{SA}e:sub", "get", "deployments", "e", subresource="log", api_group="apps"),
        row(at(7), f"{SA}e:sub", "create", "pods", "e", subresource="exec"),
        row(at(8), f"{SA}e:sub", "list", "pods", "e", subresource=""),
        row(at(9), f"{SA}e:names", "get", "secrets", "e", name="tls"),
        row(at(10), f"{SA}e:names", "get", "secrets", "e", name="nope", response_code=403, decision="forbid"),
        row(at(11), f"{SA}e:url", "get", None, None, request_uri="/healthz?verbose"),
        row(at(12), f"{SA}e:url", "get", None, None, request_uri="/api/v1"),
        row(at(13), f"{SA}e:url", "post", None, None, request_uri="/anything"),
        row(at(14), f"{SA}e:url-ns", "get", None, None, request_uri="/healthz"),
        row(at(15), f"{SA}e:url-ns", "get", None, None, request_uri="/version"),
        row(at(16), f"{SA}e:exact", "get", "deployments", "e", api_group="apps"),
        row(at(17), f"{SA}e:exact", "list", "deployments", "e", api_group="apps"),
        row(at(18), f"{SA}e:exact", "watch", "deployments", "e", api_group="apps"),
        row(at(19), f"{SA}e:exact", "list", "pods", "e"),
        row(at(20), f"{SA}e:rbac-writer", "create", "rolebindings", "e", api_group="rbac.authorization.k8s.io"),
        row(at(21), f"{SA}e:cluster-scoped", "list", "nodes", None),
        row(at(22), f"{SA}e:evidence-only", "list", "secrets", "e"),
        row(at(23), f"{SA}e:some-evidence", "list", "pods", "e"),
        row(at(24), f"{SA}e:some-evidence", "delete", "pods", "e"),
        row(at(25), f"{SA}e:Bad_Name", "get", "deployments", "e", api_group="apps"),
        row(at(26), f"{SA}e:named-impersonate", "impersonate", "users", None),
        row(at(27), "system:node:n1", "get", "nodes", None),
        row(at(31), f"{SA}m:sublog", "get", "pods", "m", subresource="log"),
        row(at(32), f"{SA}m:urlstar", "get", None, None, request_uri="/api/v1/pods"),
        row(at(33), f"{SA}m:urlstar", "post", None, None, request_uri="/x"),
        row(at(34), f"{SA}m:urlns", "get", None, None, request_uri="/healthz"),
        row(at(35), f"{SA}m:named-ok", "get", "secrets", "m", name="a"),
        row(at(36), f"{SA}m:named-other", "get", "secrets", "m", name="b"),
        # the proxy: people, a group, a service account; and one impersonating system:masters
        row(at(28), "bob@example.com", "get", "pods", "web", impersonator=f"{SA}proxy:gw",
            impersonated_user="bob@example.com", impersonated_groups=["dev", "system:authenticated"]),
        row(at(29), f"{SA}web:app", "get", "pods", "web", impersonator=f"{SA}proxy:gw",
            impersonated_user=f"{SA}web:app", impersonated_groups=None),
        row(at(30), "eve@example.com", "get", "pods", "web", impersonator=f"{SA}proxy:gw2",
            impersonated_user="eve@example.com", impersonated_groups=["system:masters"]),
    ]
    write_rows([{**r, "cluster": "c1"} for r in rows], lake)
    ids = {r["actor"] + str(r["request_received_at"]): f"k8s_audit:c1/{r['audit_id']}" for r in rows}
    for fid, actor, minutes in (("f-only", f"{SA}e:evidence-only", [22]), ("f-some", f"{SA}e:some-evidence", [24])):
        evidence = [ids[actor + str(at(m))] for m in minutes]
        write_rows([{"finding_id": fid, "detector": "reach.anomalous", "severity": "high", "actor": actor,
                     "cluster": "c1", "first_seen": T, "last_seen": T + timedelta(hours=1), "summary": "s",
                     "evidence": evidence, "detected_at": T + timedelta(days=1)}], lake, key=fid, table="findings")


@pytest.fixture(scope="module")
def edge_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("nhi-sql") / "lake"
    norm = get("rbac_snapshot")
    table, rejected = norm.to_table(norm.unwrap({"apiVersion": "v1", "kind": "List", "items": SNAPSHOT}) or [],
                                    ["file:snap.json:1"], NormalizeContext(cluster="c1", ingested_at=T))
    assert not rejected
    LakeSink(lake).write("rbac_snapshot", table, "snap")
    _uses(lake)
    return lake


def _json(lake: Path, limit: int, filters: Filters | None = None) -> Any:
    con = open_lake(lake)
    try:
        result = run_report("nhi", ReportContext(con=con, config=Config(), filters=filters or Filters(), limit=limit))
        return json.loads(render_json(result, "all"))
    finally:
        con.close()


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record what ``_needs_python`` answers (the accounts the SQL figures decide say False)."""
    seen: list[tuple[str, bool]] = []
    real: Callable[..., bool] = nhi_module._needs_python

    def spy(identity: str, flags: Any) -> bool:
        seen.append((identity, real(identity, flags)))
        return seen[-1][1]

    monkeypatch.setattr(nhi_module, "_needs_python", spy)
    return seen


@pytest.mark.parametrize("limit", [1, 4, 1000])
def test_sql_figures_give_the_full_python_paths_json(edge_lake: Path, limit: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        decided = _spy(m)
        fast = _json(edge_lake, limit)
    in_python = {i for i, p in decided if p}
    # only impersonation of system:masters or of no name needs the full path
    assert in_python == {f"{SA}proxy:gw2", f"{SA}e:named-impersonate"}
    assert len(decided) > 15
    monkeypatch.setattr(nhi_module, "_needs_python", lambda identity, flags: True)
    assert fast == _json(edge_lake, limit)


def test_edge_cases_as_the_rbac_matcher_says(edge_lake: Path) -> None:
    """The figures themselves, so that both paths being wrong the same way fails too."""
    res = _json(edge_lake, 1000)
    rows = {r["identity"]: r for r in res["sections"]["identities"]}
    sizing = {r["identity"]: r for r in res["sections"]["rightsize"]}
    status = {k.removeprefix(SA): v["status"] for k, v in sizing.items()}
    assert status == {
        "e:wild-verb": "withheld", "e:wild-url": "withheld", "e:wild-group": "withheld", "e:sub": "verified",
        "e:names": "review", "e:url": "verified", "e:url-ns": "verified", "e:exact": "verified",
        "e:rbac-writer": "review", "e:cluster-scoped": "verified", "e:evidence-only": "withheld",
        "e:some-evidence": "review", "e:Bad_Name": "withheld", "e:named-impersonate": "withheld",
        "proxy:gw": "review", "proxy:gw2": "review", "web:app": "verified", "m:sublog": "verified",
        "m:urlstar": "verified", "m:urlns": "verified", "m:named-ok": "review", "m:named-other": "review"}
    unused = {k.removeprefix(SA): v["unused_grants"] for k, v in rows.items() if v["kind"] == "service_account"}
    assert unused["e:sub"] == ["get pods/* in e"]  # */log used by pods/log and deployments/log; exec used
    # the group grant (list pods in e) is every e account's: used by e:sub (subresource "") and e:exact
    assert unused["e:names"] == ["get secrets other in e", "list pods in e"]
    assert unused["e:url"] == ["get /metrics", "list pods in e"]  # /api/* by /api/v1, * by /anything
    # a URL role bound in a namespace grants nothing the matcher lets it use
    assert unused["e:url-ns"] == ["get /healthz in e", "get /api/* in e", "get /metrics in e", "post * in e",
                                  "list pods in e"]
    assert unused["e:exact"] == [] and not rows[f"{SA}e:exact"]["over_privileged"]
    assert unused["e:never-seen"] == ["get apps/deployments in e", "list apps/deployments in e",
                                      "watch apps/deployments in e", "list pods in e"]
    assert unused["proxy:gw"] == []  # users, groups and serviceaccounts impersonated
    assert unused["proxy:gw2"] == ["impersonate serviceaccounts"]
    assert rows[f"{SA}e:wild-verb"]["unused_grants"][0].startswith("* */* (wildcard")
    over = {k.removeprefix(SA): v["over_privileged"] for k, v in rows.items() if k.startswith(f"{SA}m:")}
    assert over == {"m:sublog": False, "m:urlstar": False, "m:urlns": True, "m:named-ok": False,
                    "m:named-other": True}

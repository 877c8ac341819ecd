"""``report nhi`` in ``ztaudit demo``: the sample logs' RBAC snapshot (``sample_logs/rbac_snapshot/``)
gives the demo its inventory, right-sizing and impersonation rights, in every format.

The snapshot's story (docs/nhi.md, "Try it"): ``ci/ci-deployer`` holds cluster-admin and ``edit``
but only deploys (and, once, goes on a secret hunt); ``monitoring/grafana`` is granted but never
seen; ``kube-oidc/kube-oidc-proxy`` is a retired proxy that may still impersonate anyone; Pomerium's
service account is the approved impersonator and is seen only through the people it impersonates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ztaudit.cli.main import cli
from ztaudit.core.lake import open_lake
from ztaudit.reports.formats import FORMATS

SA = "system:serviceaccount:"
POMERIUM = f"{SA}pomerium:pomerium-authorize"
CI = f"{SA}ci:ci-deployer"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    lake = tmp_path_factory.mktemp("nhi-demo") / "demo-lake"
    res = CliRunner().invoke(cli, ["demo", "--lake", str(lake), "-q"])
    assert res.exit_code == 0, res.output
    return lake, res.stdout


def _report(lake: Path, fmt: str = "json", *extra: str) -> Any:
    res = CliRunner().invoke(cli, ["report", "nhi", "--lake", str(lake), "--format", fmt, "--quiet", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout) if fmt == "json" else res.stdout


def test_demo_prints_report_nhi(demo: tuple[Path, str]) -> None:
    _, out = demo
    assert "Non-human identities: inventory, visibility and right-sizing" in out
    assert "9 of 13 service accounts with RBAC grants hold permissions they did not use in 7 days (69 %)" in out
    assert all(len(line) <= 100 for line in out.splitlines())


def test_demo_inventory_and_visibility(demo: tuple[Path, str]) -> None:
    lake, _ = demo
    rows = {r["identity"]: r for r in _report(lake, "json", "--section", "identities")}
    vis = _report(lake, "json", "--section", "visibility")[0]
    assert (vis["unused"], vis["unknown"], vis["legacy_only"], vis["with_grants"], vis["nodes"]) == (2, 0, 1, 13, 2)
    assert {k for k, r in rows.items() if r["status"] == "unused"} == {f"{SA}monitoring:grafana",
                                                                        f"{SA}kube-oidc:kube-oidc-proxy"}
    # the approved impersonator is seen through the requests it made for people, not "unused"
    assert rows[POMERIUM]["status"] == "active" and rows[POMERIUM]["requests"] == 46
    assert rows[POMERIUM]["unused_grants"] == ["impersonate serviceaccounts",
                                               "create authorization.k8s.io/selfsubjectaccessreviews"]
    assert rows[f"{SA}legacy:report-exporter"]["status"] == "legacy_only"
    exact = {f"{SA}shop:cart", f"{SA}web:web", f"{SA}batch:report-runner", f"{SA}legacy:report-exporter"}
    assert {k for k, r in rows.items() if r["kind"] == "service_account" and not r["over_privileged"]} == exact
    assert rows[CI]["unused_grants"][0] == "* */* (wildcard, ClusterRole cluster-admin)"
    assert f"ServiceAccount {SA}kube-oidc:kube-oidc-proxy" in rows[f"{SA}shop:cart"]["impersonable_by"]


def test_demo_rightsizing_is_replay_checked(demo: tuple[Path, str]) -> None:
    lake, _ = demo
    sizing = {r["identity"]: r for r in _report(lake, "json", "--section", "rightsize")}
    assert all(r["replayed_requests"] == r["allowed_by_suggestion"] for r in sizing.values())
    ci = sizing[CI]
    assert ci["requests"] == 39 and ci["unused_pairs"] > 200
    # the 02:14 secret hunt and the cluster-admin binding are the evidence of open findings: left out,
    # so the suggestion is what the deployer does every day, and a person reviews it
    assert ci["left_out_requests"] == 15 and len(ci["left_out_findings"]) == 2 and ci["status"] == "review"
    roles = [d for d in yaml.safe_load_all(ci["suggestion"]) if d and d["kind"] in ("Role", "ClusterRole")]
    assert [(d["kind"], d["metadata"]["namespace"], d["rules"]) for d in roles] == [
        ("Role", "shop", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}])]
    for word in ("secrets", "clusterrolebindings", "cluster-admin", '"*"', "resourceNames"):
        assert word not in ci["suggestion"], word
    assert 'name: "ztaudit-rightsized-ci-ci-deployer"' in ci["suggestion"]
    # the approved proxy: impersonation of exactly the people and groups it impersonated, for review
    pomerium = sizing[POMERIUM]
    assert pomerium["status"] == "review" and pomerium["review"] == ["impersonate groups", "impersonate users"]
    assert ('resources: ["users"]\n  verbs: ["impersonate"]\n  resourceNames: ["alice@example.com"'
            in pomerium["suggestion"])
    assert "serviceaccounts" not in pomerium["suggestion"].split("subjects:")[0]
    assert {r["status"] for r in sizing.values()} == {"verified", "review", "withheld"}


def test_demo_unapproved_rights(demo: tuple[Path, str]) -> None:
    lake, _ = demo
    con = open_lake(lake)
    try:
        found = dict(con.execute("SELECT actor, severity FROM findings WHERE detector = "
                                 "'impersonation.unapproved_right'").fetchall())
    finally:
        con.close()
    # ci-deployer (cluster-admin, edit), the retired proxy, and two groups bound to the built-in admin role;
    # not Pomerium (approved) and not system:masters (authorized before RBAC)
    assert found == {CI: "medium", f"{SA}kube-oidc:kube-oidc-proxy": "medium", "okta:platform-team": "medium",
                     "oidc:payments-admins": "medium"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_nhi_in_every_format(demo: tuple[Path, str], fmt: str, tmp_path: Path) -> None:
    lake, _ = demo
    out = tmp_path / f"nhi.{fmt}"
    res = CliRunner().invoke(cli, ["report", "nhi", "--lake", str(lake), "--format", fmt, "--out", str(out),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    if fmt == "json":
        assert {r["identity"] for r in json.loads(text)} >= {POMERIUM, CI}
    assert "dc-proxy" in text, fmt  # the table cuts long identities in the middle
    assert "grafana" in text, fmt

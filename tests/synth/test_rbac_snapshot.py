"""``ztaudit generate``'s RBAC snapshot: what ``kubectl get ... -o json`` prints, consistent with the
generated traffic (every allowed service-account request is granted), with its truth and labels.

The right-sizing and detector checks over it (replay, over-privilege = truth, unapproved rights =
labels) are in tests/reports/test_rightsize_generated.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ztaudit.core.config import load_config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.rbac import granted_vs_used
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.registry import get
from ztaudit.synth.engine import GenerateOptions, generate
from ztaudit.synth.incident_context import ALL_KINDS

CLUSTERS = ("prod", "staging")
RIGHTS = "impersonation.unapproved_right"
POMERIUM = "system:serviceaccount:pomerium:pomerium-authorize"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rbac") / "gen"
    generate(GenerateOptions(out=out, days=3, scale=0.02, seed=7, clusters=CLUSTERS))
    return out


def test_one_kubectl_list_per_cluster(gen: Path) -> None:
    manifest = json.loads((gen / ".ztaudit" / "manifest.json").read_text())
    assert manifest["ingest"]["rbac_snapshot"] == {c: f"rbac_snapshot/{c}.json" for c in CLUSTERS}
    for c in CLUSTERS:
        doc = json.loads((gen / "rbac_snapshot" / f"{c}.json").read_text())
        assert doc["kind"] == "List" and doc["apiVersion"] == "v1"
        kinds = [it["kind"] for it in doc["items"]]
        assert kinds == sorted(kinds, key=["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].index)
        assert get("rbac_snapshot").unwrap(doc) is not None  # the normalizer claims it
        names = [(it["kind"], it["metadata"].get("namespace"), it["metadata"]["name"]) for it in doc["items"]]
        assert len(names) == len(set(names))
        bound = {(s["namespace"], s["name"]) for it in doc["items"] if it["kind"].endswith("Binding")
                 for s in it["subjects"]}
        assert ("pomerium", "pomerium-authorize") in bound


def test_snapshot_grants_every_allowed_request_and_truth_matches(gen: Path, tmp_path: Path) -> None:
    cfg = load_config(gen / ".ztaudit" / "ztaudit.toml", env={})
    lake = tmp_path / "lake"
    stats = ingest_paths([gen], lake, config=cfg)  # the cluster of each snapshot comes from its file name
    assert not stats.quarantined
    con = open_lake(lake)
    try:
        clusters = {r[0] for r in con.execute("SELECT DISTINCT cluster FROM rbac_grant").fetchall()}
        gvu = granted_vs_used(con, None, None).to_pylist()
    finally:
        con.close()
    assert clusters == set(CLUSTERS)
    manifest = json.loads((gen / ".ztaudit" / "manifest.json").read_text())
    truth = {(t["cluster"], t["identity"]): t for t in manifest["rbac"]}
    in_snapshot = {k for k, t in truth.items() if t["in_snapshot"]}
    # every allowed request of a service account in the snapshot is granted by it
    ungranted = [(r["cluster"], r["identity"], r["used_permissions"]) for r in gvu
                 if r["row_type"] == "used_not_granted" and (r["cluster"], r["identity"]) in in_snapshot]
    assert not ungranted, ungranted[:5]
    # every service account that made an allowed request is in the truth
    users = {(r["cluster"], r["identity"]) for r in gvu if r["identity_kind"] == "service_account"
             and r["row_type"] == "used_not_granted"}
    assert users <= set(truth)
    over = [t for t in truth.values() if t["over_privileged"]]
    assert 0 < len(over) < len(truth)
    assert not truth[("prod", POMERIUM)]["over_privileged"]


def test_labels_name_every_unapproved_right(gen: Path) -> None:
    labels = [lab for lab in _jsonl(gen / ".ztaudit" / "labels.jsonl") if lab["detector"] == RIGHTS]
    truth = json.loads((gen / ".ztaudit" / "manifest.json").read_text())["rbac"]
    assert {(lab["cluster"], lab["actor"]) for lab in labels} == {
        (t["cluster"], t["identity"]) for t in truth if t["impersonation_right"]}
    assert all(lab["kind"] == "incident" for lab in labels)
    actors = {lab["actor"] for lab in labels}
    assert {"system:serviceaccount:ci:deployer", "system:serviceaccount:kube-oidc:kube-oidc-proxy"} <= actors
    assert POMERIUM not in actors  # the approved impersonator


def test_without_the_kind_nothing_is_planted(tmp_path: Path) -> None:
    kinds = ALL_KINDS - {RIGHTS, "impersonation.unapproved_impersonator"}
    generate(GenerateOptions(out=tmp_path, days=2, scale=0.02, seed=7, clusters=CLUSTERS, incidents=kinds))
    assert not [lab for lab in _jsonl(tmp_path / ".ztaudit" / "labels.jsonl") if lab["detector"] == RIGHTS]
    text = "".join((tmp_path / "rbac_snapshot" / f"{c}.json").read_text() for c in CLUSTERS)
    assert "kube-oidc-proxy" not in text and '"impersonate"' in text  # only Pomerium's own right
    truth = json.loads((tmp_path / ".ztaudit" / "manifest.json").read_text())["rbac"]
    assert not [t for t in truth if t["impersonation_right"]]
    assert all(t["extras"] != ["ClusterRole edit"] for t in truth)

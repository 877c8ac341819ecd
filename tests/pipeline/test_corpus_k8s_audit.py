"""Conformance against the real public corpus (../shared/corpus/k8s-audit, corpus/proxy/kubernetes-audit).

Every data file is read in place (never copied). Test-harness wrappers that are *not* the
apiserver's format are undone here, in the test, not in the normalizer:

* SEKOIA intake-format tests: the real record is the string ``input.message``;
* Google KHI samples are GKE LogEntries rendered as YAML;
* Panther's extraction rewrote ``/`` in ``user.extra`` keys to ``_slash_`` and timestamps to
  ``YYYY-MM-DD HH:MM:SS.ffffff`` -- both are undone;
* elastic/integrations test inputs are the shipped forms as-is (raw Events, a GKE LogEntry, AKS
  records with ``properties.log`` as object and as string), so they go through unchanged.

Every other file goes through the real file reader (``sources.files.read_chunks``), which also
covers the pretty-printed ``kube-audit-log-tool/single-event.json``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import yaml

from ztaudit.core.quarantine import Rejected
from ztaudit.core.schema import K8S_AUDIT
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch
from ztaudit.pipeline.sources.files import read_chunks
from ztaudit.pipeline.sources.inputs import InputFile

CTX = NormalizeContext(cluster="corpus")

#: The only quarantine outcomes allowed, per file, each with why it is right.
EXPECTED_REJECTS: dict[str, dict[str, int]] = {
    # Falco's security-audit fixture: the 11 bytes {"kind": 0}. Not an Event, EventList or any
    # envelope: unknown_shape is the honest reason (it is valid JSON, so not invalid_json).
    "k8s-audit/falco-trace-files/fal_01_003.json": {"unknown_shape": 1},
}

_PANTHER_TS = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?)$")


def _undo_panther(rec: dict[str, Any]) -> dict[str, Any]:
    extra = rec.get("user", {}).get("extra")
    if isinstance(extra, dict):
        # Panther also flattened the dots of the key prefix: authentication_kubernetes_io_slash_pod-name.
        rec["user"]["extra"] = {k.replace("authentication_kubernetes_io_slash_", "authentication.kubernetes.io/")
                                .replace("_slash_", "/"): v for k, v in extra.items()}
    for key in ("requestReceivedTimestamp", "stageTimestamp"):
        m = _PANTHER_TS.match(str(rec.get(key, "")))
        if m:
            rec[key] = f"{m.group(1)}T{m.group(2)}Z"
    return rec


def _batches(path: Path, rel: str) -> list[RawBatch]:
    """The records of one corpus file, test-harness wrappers undone."""
    if rel.startswith("k8s-audit/khi/"):
        doc = yaml.safe_load(path.read_text())
        return [RawBatch([orjson.dumps(doc)], LineOrigins(str(path)))]
    if "sekoia-intake-formats" in rel:
        doc = orjson.loads(path.read_bytes())
        return [RawBatch([doc["input"]["message"].encode()], LineOrigins(str(path)))]
    if rel.startswith("k8s-audit/panther-analysis/"):
        lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
        return [RawBatch([orjson.dumps(_undo_panther(orjson.loads(ln))) for ln in lines], LineOrigins(str(path)))]
    return [RawBatch(c.records, c.origins) for c in read_chunks(InputFile(path, str(path)), 1 << 20, 1 << 20)]


def _data_files(corpus: Path) -> list[tuple[str, Path]]:
    roots = [corpus / "k8s-audit", corpus / "proxy" / "kubernetes-audit"]
    out = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix != ".md":
                out.append((str(p.relative_to(corpus)), p))
    return out


@pytest.fixture(scope="module")
def normalized(corpus: Path) -> dict[str, tuple[pa.Table, list[Rejected]]]:
    out: dict[str, tuple[pa.Table, list[Rejected]]] = {}
    for rel, path in _data_files(corpus):
        tables, rejects = [], []
        for batch in _batches(path, rel):
            res = process(batch, CTX)
            assert set(res.tables) <= {"k8s_audit"}, (rel, set(res.tables))
            if "k8s_audit" in res.tables:
                tables.append(res.tables["k8s_audit"])
            rejects.extend(res.rejected)
        out[rel] = (pa.concat_tables(tables) if tables else K8S_AUDIT.empty_table(), rejects)
    return out


def test_every_record_normalizes_or_is_quarantined_for_a_listed_reason(
        normalized: dict[str, tuple[pa.Table, list[Rejected]]]) -> None:
    assert len(normalized) >= 30
    for rel, (table, rejects) in normalized.items():
        got = dict(Counter(str(r.reason) for r in rejects))
        assert got == EXPECTED_REJECTS.get(rel, {}), (rel, [(r.origin, r.reason, r.detail) for r in rejects])
        if rel not in EXPECTED_REJECTS:
            assert table.num_rows >= 1, rel
        assert table.schema == K8S_AUDIT
        # Every row has the request key and its partition time. (stage_at may be null: Panther's
        # hand-written tests, lines 1, 2 and 16, have no stageTimestamp.)
        for row in table.select(["audit_id", "request_received_at"]).to_pylist():
            assert row["audit_id"] and row["request_received_at"], (rel, row)


def test_record_counts_match_sources_md(normalized: dict[str, tuple[pa.Table, list[Rejected]]]) -> None:
    # SOURCES.md: 97 records in k8s-audit/ = 96 audit records + 1 malformed fixture.
    rows = sum(t.num_rows for rel, (t, _) in normalized.items() if rel.startswith("k8s-audit/"))
    rejects = sum(len(r) for rel, (_, r) in normalized.items() if rel.startswith("k8s-audit/"))
    assert (rows, rejects) == (96, 1)


def test_falco_malformed_fixture_is_quarantined(normalized: dict[str, tuple[pa.Table, list[Rejected]]]) -> None:
    table, rejects = normalized["k8s-audit/falco-trace-files/fal_01_003.json"]
    assert table.num_rows == 0 and [str(r.reason) for r in rejects] == ["unknown_shape"]
    assert rejects[0].raw == b'{"kind":0}'


def test_audit2rbac_impersonation(normalized: dict[str, tuple[pa.Table, list[Rejected]]], corpus: Path) -> None:
    raw = [orjson.loads(ln) for ln in (corpus / "k8s-audit/audit2rbac/demo.log").read_bytes().splitlines() if ln]
    impersonated = {r["auditID"]: r["impersonatedUser"]["username"] for r in raw if r.get("impersonatedUser")}
    assert len(impersonated) == 37
    rows = normalized["k8s-audit/audit2rbac/demo.log"][0].to_pylist()
    assert len(rows) == 37
    for row in rows:
        assert row["impersonator"] == "system:admin"
        assert row["impersonated_user"] == impersonated[row["audit_id"]]
        assert row["actor"] == row["impersonated_user"]
    sa = [r for r in rows if r["actor"] == "system:serviceaccount:ns1:sa1"]
    assert len(sa) == 5 and all((r["sa_namespace"], r["sa_name"], r["actor_kind"]) == ("ns1", "sa1", "service_account")
                                for r in sa)
    # v1beta1-era records: only `timestamp`, used for both times.
    assert all(r["request_received_at"] == r["stage_at"] for r in rows)


def test_every_jti_lands_in_a_credential_column(normalized: dict[str, tuple[pa.Table, list[Rejected]]],
                                                corpus: Path) -> None:
    jtis: set[str] = set()
    for rel, path in _data_files(corpus):
        jtis |= set(re.findall(r"JTI=[0-9a-f-]{36}", path.read_text(errors="replace")))
    assert len(jtis) == 3
    cred = {v for t, _ in normalized.values() for v in t.column("credential_id").to_pylist() if v}
    issued = {v for t, _ in normalized.values() for v in t.column("issued_credential_id").to_pylist() if v}
    # Token *uses* (user.extra credential-id) land in credential_id; the one TokenRequest in the
    # corpus (Panther line 13, kubelet 1.32) names the JTI it issued in issued_credential_id.
    assert jtis <= cred | issued
    assert "JTI=2e6389af-b8bc-4c26-92d2-714fbe9cb4fa" in issued
    assert {"JTI=17ab4926-813f-4ffe-9173-f288d07c1b31", "JTI=581d10f3-b521-480f-aa42-bcd6a70df8ea"} <= cred


def test_cloud_envelopes(normalized: dict[str, tuple[pa.Table, list[Rejected]]]) -> None:
    gke = normalized["k8s-audit/elastic-integrations/gcp-audit/test-k8s-nonmatching-resourcename.log"][0].to_pylist()[0]
    assert (gke["cluster"], gke["audit_id"], gke["response_code"], gke["verb"]) == (
        "example-cluster", "k8s-nonmatch-0001", 403, "get")
    assert gke["actor_kind"] == "anonymous" and gke["request_uri"] == "/HNAP1" and gke["resource"] is None
    khi = normalized["k8s-audit/khi/container_recorder_test_1_2.yaml"][0].to_pylist()[0]
    assert (khi["verb"], khi["resource"], khi["subresource"], khi["namespace"], khi["api_group"]) == (
        "patch", "pods", "status", "1-2-deployment-update", "")
    assert khi["actor_kind"] == "node" and khi["node_name"] == "gke-sample-cluster-default-abcdefgh-abcd"
    assert khi["cluster"] == "sample-cluster" and khi["response_code"] == 200
    aks = normalized["k8s-audit/elastic-integrations/kubernetes-audit_logs/test-kube-audit.log"][0].to_pylist()[0]
    assert aks["cluster"] == "TEST-CLUSTER"  # last managedClusters segment of resourceId
    mixed = normalized["k8s-audit/elastic-integrations/kubernetes-audit_logs/test-audit.log"][0]
    assert sorted(mixed.column("cluster").to_pylist()) == ["TEST-AKS", "corpus", "corpus", "corpus", "test-cluster"]


def test_panther_eks_semantics(normalized: dict[str, tuple[pa.Table, list[Rejected]]]) -> None:
    rows = normalized["k8s-audit/panther-analysis/eks-audit-test-logs.extracted.jsonl"][0].to_pylist()
    assert len(rows) == 16
    coredns = [r for r in rows if r["actor"] == "system:serviceaccount:kube-system:coredns"]
    assert coredns and all(r["pod_name"] and r["credential_kind"] == "none" for r in coredns)
    assert any(r["decision"] == "forbid" and r["actor_kind"] == "anonymous" for r in rows)

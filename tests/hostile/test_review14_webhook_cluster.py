"""Review of issue 14, defect 1: ``ztaudit serve`` lets one cluster's caller write another cluster's rows.

docs/serve.md promises "a ``cluster`` field inside the posted JSON is never read (one cluster's token
cannot write another cluster's rows)", and :class:`~ztaudit.pipeline.sources.webhook_writer.PostWriter`
passes ``cluster_fields=()`` for that. But the body is processed as a ``k8s_audit`` record, whose
normalizer also opens the cloud envelopes (EKS CloudWatch subscription, AKS diagnostic records, GKE
LogEntry), and an envelope's own cluster wins over the batch's. So a caller authenticated for
``tenant-a`` (a token line ``TOKEN,tenant-a``, or mTLS with ``--cluster tenant-a``) posts an EKS
envelope whose ``logGroup`` names ``prod`` and gets rows with ``cluster = 'prod'``: forged audit
events in another cluster (false findings there, and noise in its reports).

These tests use the real write step in process (no mocks) and are the regression tests once fixed
(expected: every row of a post has the authenticated caller's cluster, or the envelope is
quarantined).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.sources.webhook_writer import PostWriter

EVENT: dict[str, Any] = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "forged-1",
    "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/pay/secrets", "verb": "list",
    "user": {"username": "system:serviceaccount:kube-system:default"}, "sourceIPs": ["10.0.0.1"],
    "objectRef": {"resource": "secrets", "namespace": "pay", "apiVersion": "v1"},
    "responseStatus": {"code": 200},
    "requestReceivedTimestamp": "2026-11-01T10:00:00.000001Z", "stageTimestamp": "2026-11-01T10:00:00.000002Z",
}

EKS: dict[str, Any] = {"logGroup": "/aws/eks/prod/cluster", "logStream": "kube-apiserver-audit-1",
                       "messageType": "DATA_MESSAGE",
                       "logEvents": [{"id": "1", "timestamp": 1, "message": json.dumps(EVENT)}]}
AKS: dict[str, Any] = {"category": "kube-audit", "time": "2026-11-01T10:00:00Z",
                       "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/G/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
                                     "MANAGEDCLUSTERS/prod",
                       "properties": {"log": json.dumps(EVENT)}}

BODIES = {"eks_subscription": EKS, "aks_record": AKS, "aks_event_hub_batch": {"records": [AKS]}}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_a_post_cannot_write_rows_of_another_cluster(tmp_path: Path, name: str) -> None:
    writer = PostWriter(LakeSink(tmp_path / "lake"), NormalizeContext(cluster=None), 1 << 24)
    res = writer.write(json.dumps(BODIES[name]).encode(), "127.0.0.1", "tenant-a")
    table = res.result.tables.get("k8s_audit")
    clusters = set(table.column("cluster").to_pylist()) if table is not None else set()
    assert clusters <= {"tenant-a"}, f"a tenant-a caller wrote rows of {clusters - {'tenant-a'}}"


def test_the_plain_event_list_keeps_the_callers_cluster(tmp_path: Path) -> None:
    """Control: the ordinary EventList is written under the caller's cluster (this passes today)."""
    writer = PostWriter(LakeSink(tmp_path / "lake"), NormalizeContext(cluster=None), 1 << 24)
    body = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [EVENT]}
    res = writer.write(json.dumps(body).encode(), "127.0.0.1", "tenant-a")
    assert res.result.tables["k8s_audit"].column("cluster").to_pylist() == ["tenant-a"]

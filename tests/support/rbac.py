"""RBAC snapshot objects for tests: :func:`rbac_item` builds one Kubernetes RBAC object as ``kubectl get
-o json`` prints it, :func:`write_snapshot` ingests a list of them into a lake as ``ztaudit ingest
--source rbac_snapshot`` would (normalizer ``rbac_snapshot``, written with :class:`LakeSink`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.registry import get


def rbac_item(kind: str, name: str, ns: str | None = None, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """One ``rbac.authorization.k8s.io/v1`` object (``Role``, ``ClusterRoleBinding``...) named ``name``
    in namespace ``ns``; ``fields`` are its top-level fields (``rules``, ``roleRef``, ``subjects``)."""
    md: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {})}
    md.update({k: v for k, v in (("labels", labels), ("annotations", annotations)) if v})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": md, **fields}


def write_snapshot(lake: Path, items: list[dict[str, Any]], at: datetime, cluster: str | None = "c1",
                   key: str = "snap") -> None:
    """Ingest ``items`` (a ``kubectl get ... -o json`` List) as an RBAC snapshot of ``cluster`` taken at ``at``."""
    norm = get("rbac_snapshot")
    table, rejected = norm.to_table(norm.unwrap({"apiVersion": "v1", "kind": "List", "items": items}) or [],
                                    [f"file:{key}.json:1"], NormalizeContext(cluster=cluster, ingested_at=at))
    assert not rejected, rejected
    LakeSink(lake).write("rbac_snapshot", table, key)

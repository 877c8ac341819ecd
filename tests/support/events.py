"""Kubernetes audit Events for the file-ingest tests (tests/pipeline/test_ingest.py,
tests/hostile/test_sources.py): one builder, so both read the same shape."""

from __future__ import annotations

from typing import Any


def audit_event(i: int, **over: Any) -> dict[str, Any]:
    """A minimal ResponseComplete audit.k8s.io/v1 Event with a unique ``auditID`` (``id-<i:06d>``)
    and time, spread over three days (2026-11-01 .. 03); ``over`` replaces top-level fields."""
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"id-{i:06d}",
        "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
        "user": {"username": "alice@example.com", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"], "objectRef": {"resource": "pods", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": f"2026-11-{1 + i % 3:02d}T10:00:00.{i % 1000000:06d}Z",
        "stageTimestamp": f"2026-11-{1 + i % 3:02d}T10:00:00.{i % 1000000:06d}Z",
    }
    ev.update(over)
    return ev

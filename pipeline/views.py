"""Derived DuckDB views over the base tables (registered into ``catalog.DERIVED_VIEWS``)."""

from __future__ import annotations

from .catalog import register_view

# One row per request (Kubernetes audit semantics, k8s-audit-schema.md §9): a request is keyed by
# (cluster, audit_id, request_received_at) because clients can choose Audit-ID; the most complete
# stage wins: ResponseComplete > Panic > ResponseStarted > RequestReceived.
register_view(
    "k8s_requests",
    "One row per Kubernetes API request (most complete stage of each (cluster, audit_id, "
    "request_received_at)).",
    """
    SELECT * EXCLUDE (stage_rank) FROM (
        SELECT *, CASE stage WHEN 'ResponseComplete' THEN 4 WHEN 'Panic' THEN 3
                             WHEN 'ResponseStarted' THEN 2 ELSE 1 END AS stage_rank
        FROM k8s_audit
    )
    QUALIFY row_number() OVER (
        PARTITION BY cluster, audit_id, request_received_at
        ORDER BY stage_rank DESC, stage_at DESC, origin
    ) = 1
    """,
)

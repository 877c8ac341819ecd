-- One row per Kubernetes API request. A request is keyed by (cluster, audit_id,
-- request_received_at) because clients can choose Audit-ID; its stages share requestReceivedTimestamp
-- (docs/kubernetes-audit.md §9, docs/kubernetes-audit.md). The most complete stage wins:
-- ResponseComplete > Panic > ResponseStarted > RequestReceived (stage_rank, a macro of core.lake).
-- NULLS LAST is spelled out: a session's default_null_order must not change which stage speaks.
-- A hostile client that reuses one Audit-ID and receipt time for two requests makes them one key:
-- one of them is kept, as for any duplicate key (docs/kubernetes-audit.md §9).
SELECT * FROM k8s_audit
QUALIFY row_number() OVER (
    PARTITION BY cluster, audit_id, request_received_at
    ORDER BY stage_rank(stage) DESC, stage_at DESC NULLS LAST, origin NULLS LAST
) = 1

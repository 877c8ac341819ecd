"""Reach features: the one DuckDB pass over the requests that gives each actor-window its counts.

Holds the feature names (:data:`COUNT_FEATURES`, :data:`SHARE_FEATURES`), the window arithmetic
(:func:`window_seconds`, :func:`floor_to`) and :data:`FEATURES_SQL`, the per-(actor, scope, window)
aggregation over the de-duplicated requests. What the features mean and how they are judged:
:mod:`ztaudit.detectors.reach`. Called by :mod:`ztaudit.detectors.reach_scoring`
(:func:`~ztaudit.detectors.reach_scoring.compute_reach` runs :data:`FEATURES_SQL`, then adds history
and peer baselines) and by :mod:`ztaudit.detectors.reach` (window bounds of findings).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from ztaudit.core.config import Config
from ztaudit.core.window import Window

#: Count-like features, in table order (the model also sees their excess over history/peers).
COUNT_FEATURES: Final = (
    "requests", "namespaces", "resources", "verbs", "api_groups", "clusters",
    "secret_reads", "secret_namespaces", "secret_cluster_lists", "foreign_secret_namespaces",
    "exec_count", "new_namespaces", "forbidden_requests", "source_ips", "user_agents", "credentials",
)
SHARE_FEATURES: Final = ("write_share", "delete_share", "forbidden_share")


def window_seconds(config: Config) -> int:
    """Seconds per reach window (config ``reach.window``)."""
    return 3600 if config.reach.window == "hour" else 86400


def floor_to(ts: datetime, seconds: int) -> datetime:
    """The start of the ``seconds``-long window (aligned to the Unix epoch, UTC) holding ``ts``."""
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def _requests_ctes(columns: tuple[str, ...]) -> str:
    """CTEs ending in ``req``: the ``k8s_requests`` view's rows with request_received_at in [$lo, $hi)
    (day partitions outside it skipped: :meth:`Window.sql`), only ``columns`` (names from this module,
    never from data).

    Same rows as the view (core/views/k8s_requests.sql), computed without sorting every row: the view's window
    function over all stages of all requests carries every column through a partitioned sort, which
    was most of the cost at millions of events. Requests are keyed the same way (cluster, audit_id,
    request_received_at; the time bound is on a key column, so bounding before de-duplicating is the
    same as after). A key seen once (most requests: one stage logged) is its own row; only keys seen
    more than once go through the view's row_number with the view's order (ResponseComplete > Panic >
    ResponseStarted > RequestReceived, then latest stage_at, then origin). Keys are found by a 64-bit
    hash of the key: rows of one key share the hash, and a collision only sends a single-stage request
    through the (exact) slow path.
    """
    key = ("cluster", "audit_id", "request_received_at", "stage", "stage_at", "origin")
    span_cols = ", ".join(dict.fromkeys((*columns, *key)))
    cols = ", ".join(columns)
    return f"""
span AS NOT MATERIALIZED (
    SELECT {span_cols}, hash(cluster, audit_id, request_received_at) AS key_hash
    FROM k8s_audit
    WHERE {Window.sql("request_received_at")}
),
multi AS (SELECT key_hash FROM span GROUP BY key_hash HAVING count(*) > 1),
req AS (
    SELECT {cols} FROM span WHERE key_hash NOT IN (SELECT key_hash FROM multi)
    UNION ALL
    SELECT {cols} FROM span WHERE key_hash IN (SELECT key_hash FROM multi)
    QUALIFY row_number() OVER (
        PARTITION BY cluster, audit_id, request_received_at
        ORDER BY stage_rank(stage) DESC, stage_at DESC, origin
    ) = 1
)"""


# One pass over the requests (``req``, see :func:`_requests_ctes`). Every log value stays inside SQL
# (no string building from data); the only parameters are the time bounds (:meth:`Window.params`), the
# window length and the baseline length.
FEATURES_SQL = "WITH " + _requests_ctes((
    "actor", "actor_kind", "cluster", "namespace", "resource", "subresource", "verb", "api_group",
    "source_ip", "user_agent", "credential_id", "sa_namespace", "sa_name", "node_name", "response_code",
    "decision", "impersonated_groups", "user_groups", "request_received_at")) + f""",
base AS MATERIALIZED (
    SELECT actor, actor_kind, cluster, namespace, resource, subresource, verb, api_group,
           source_ip, user_agent, credential_id, sa_namespace, sa_name, node_name,
           (response_code = 403 OR decision = 'forbid') AS denied,
           (resource = 'secrets' AND subresource IS NULL AND verb IN ('get', 'list', 'watch')) AS secret_read,
           CASE WHEN actor_kind = 'human' THEN array_to_string(list_sort(list_filter(
                coalesce(impersonated_groups, user_groups), lambda g: NOT starts_with(g, 'system:'))), ',')
           END AS groups_key,
           -- machine identities are per cluster (an SA or node of another cluster is another
           -- identity with its own UID and credentials); people are one identity everywhere
           CASE WHEN actor_kind IN ('service_account', 'node', 'system') THEN cluster END AS scope,
           to_timestamp(floor(epoch(request_received_at) / $w) * $w) AS w
    FROM req
    WHERE actor IS NOT NULL
),
home AS (  -- namespaces of the pods on each node (pod-bound tokens; kubelet TokenRequests)
    SELECT DISTINCT cluster, node_name, sa_namespace AS ns, w FROM base
    WHERE actor_kind = 'service_account' AND node_name IS NOT NULL AND sa_namespace IS NOT NULL
    UNION
    SELECT DISTINCT cluster, node_name, namespace AS ns, w FROM base
    WHERE actor_kind = 'node' AND resource = 'serviceaccounts' AND subresource = 'token'
      AND namespace IS NOT NULL
),
-- Service accounts the control plane mints tokens for, for itself: kube-controller-manager with
-- --use-service-account-credentials runs each controller as its own service account in kube-system and
-- gets its tokens by TokenRequests made with its own identity, renewed at 80 % of their hour
-- (clientbuilder.NewDynamicClientBuilder(..., metav1.NamespaceSystem) in
-- cmd/kube-controller-manager/app/controllermanager.go; tokenSourceImpl.Token in
-- staging/src/k8s.io/controller-manager/pkg/clientbuilder/client_builder_dynamic.go; docs/detection-background.md
-- §2.4). Their requests are the controller manager's own, split by controller: judged as control plane.
-- The issuer is the authenticated TokenRequest caller, which a workload cannot claim.
-- Read from the stage rows (a few TokenRequests), so object names never travel through ``base``; only a
-- completed, successful one counts.
minted AS (
    SELECT DISTINCT cluster, name AS sa_name FROM k8s_audit
    WHERE {Window.sql("request_received_at")}
      AND resource = 'serviceaccounts' AND subresource = 'token' AND verb = 'create' AND namespace = 'kube-system'
      AND actor_kind = 'system' AND name IS NOT NULL AND response_code BETWEEN 200 AND 299
),
workload AS (  -- service-account rows that are not the control plane's own
    SELECT * FROM base b WHERE actor_kind = 'service_account' AND NOT (coalesce(sa_namespace, '') = 'kube-system'
        AND EXISTS (SELECT 1 FROM minted m WHERE m.cluster = b.cluster AND m.sa_name = b.sa_name))
),
foreign_exec AS (  -- exec/attach/port-forward into pods of namespaces other than the service account's own
    SELECT actor, scope, w, count(DISTINCT coalesce(namespace, '*')) AS foreign_exec_namespaces FROM workload
    WHERE subresource IN ('exec', 'attach', 'portforward') AND namespace IS DISTINCT FROM sa_namespace
    GROUP BY actor, scope, w
),
sec AS (
    SELECT actor, scope, w, actor_kind, cluster, node_name, sa_namespace, namespace FROM base
    WHERE secret_read AND actor_kind <> 'service_account'
    UNION ALL
    SELECT actor, scope, w, actor_kind, cluster, node_name, sa_namespace, namespace FROM workload WHERE secret_read
),
foreign_sec AS (
    SELECT s.actor, s.scope, s.w, count(DISTINCT coalesce(s.namespace, '*')) AS foreign_secret_namespaces
    FROM sec s
    WHERE (s.actor_kind = 'service_account' AND (s.namespace IS NULL OR s.namespace <> s.sa_namespace))
       OR (s.actor_kind = 'node' AND (s.namespace IS NULL OR NOT EXISTS (
              SELECT 1 FROM home h
              WHERE h.cluster = s.cluster AND h.node_name = s.node_name AND h.ns = s.namespace
                AND h.w BETWEEN s.w - to_seconds($w) AND s.w)))
    GROUP BY s.actor, s.scope, s.w
),
sec_ns AS (
    SELECT actor, scope, w,
           list(DISTINCT coalesce(namespace, '*') ORDER BY coalesce(namespace, '*'))[1:50] AS lst
    FROM base WHERE secret_read GROUP BY actor, scope, w
),
ans AS (SELECT DISTINCT actor, scope, namespace, w FROM base WHERE namespace IS NOT NULL),
first_w AS (SELECT actor, scope, min(w) AS first_w FROM base GROUP BY actor, scope),
ans_prev AS (
    SELECT actor, scope, namespace, w, lag(w) OVER (PARTITION BY actor, scope, namespace ORDER BY w) AS prev
    FROM ans
),
new_ns AS (
    SELECT a.actor, a.scope, a.w, count(*) AS new_namespaces,
           list(a.namespace ORDER BY a.namespace)[1:50] AS lst
    FROM ans_prev a JOIN first_w f ON f.actor = a.actor AND f.scope IS NOT DISTINCT FROM a.scope
    WHERE a.w > f.first_w AND (a.prev IS NULL OR a.w - a.prev > to_days($baseline_days))
    GROUP BY a.actor, a.scope, a.w
),
agg AS (
    SELECT actor, scope, w,
           -- actor_kind and sa_* are functions of the actor name: any value is the value
           any_value(actor_kind) AS actor_kind, coalesce(scope, mode(cluster ORDER BY cluster)) AS cluster,
           any_value(sa_namespace) AS sa_namespace, any_value(sa_name) AS sa_name,
           max(groups_key) AS groups_key,
           count(*) AS requests,
           count(DISTINCT namespace) AS namespaces,
           count(DISTINCT resource || coalesce('/' || subresource, '')) AS resources,
           count(DISTINCT verb) AS verbs,
           count(DISTINCT api_group) AS api_groups,
           count(DISTINCT cluster) AS clusters,
           count(*) FILTER (WHERE secret_read) AS secret_reads,
           count(DISTINCT coalesce(namespace, '*')) FILTER (WHERE secret_read) AS secret_namespaces,
           count(*) FILTER (WHERE secret_read AND namespace IS NULL AND verb IN ('list', 'watch'))
               AS secret_cluster_lists,
           count(*) FILTER (WHERE subresource IN ('exec', 'attach', 'portforward')) AS exec_count,
           count(*) FILTER (WHERE denied) AS forbidden_requests,
           count(DISTINCT source_ip) AS source_ips,
           count(DISTINCT user_agent) AS user_agents,
           count(DISTINCT credential_id) AS credentials,
           avg(CASE WHEN verb IN ('create', 'update', 'patch') THEN 1.0 ELSE 0.0 END) AS write_share,
           avg(CASE WHEN verb IN ('delete', 'deletecollection') THEN 1.0 ELSE 0.0 END) AS delete_share,
           avg(CASE WHEN denied THEN 1.0 ELSE 0.0 END) AS forbidden_share
    FROM base GROUP BY actor, scope, w
)
SELECT a.*, coalesce(f.foreign_secret_namespaces, 0) AS foreign_secret_namespaces,
       coalesce(n.new_namespaces, 0) AS new_namespaces,
       coalesce(s.lst, []) AS secret_namespace_list, coalesce(n.lst, []) AS new_namespace_list,
       coalesce(x.foreign_exec_namespaces, 0) AS foreign_exec_namespaces,
       (a.actor_kind = 'service_account' AND coalesce(a.sa_namespace, '') = 'kube-system'
        AND m.sa_name IS NOT NULL) AS control_plane
FROM agg a
LEFT JOIN minted m ON m.cluster = a.cluster AND m.sa_name = a.sa_name
LEFT JOIN foreign_exec x ON x.actor = a.actor AND x.scope IS NOT DISTINCT FROM a.scope AND x.w = a.w
LEFT JOIN foreign_sec f ON f.actor = a.actor AND f.scope IS NOT DISTINCT FROM a.scope AND f.w = a.w
LEFT JOIN new_ns n ON n.actor = a.actor AND n.scope IS NOT DISTINCT FROM a.scope AND n.w = a.w
LEFT JOIN sec_ns s ON s.actor = a.actor AND s.scope IS NOT DISTINCT FROM a.scope AND s.w = a.w
"""

"""Schemas of the derived lake tables (``reach``, ``credentials``), registered at import.

Imported by the catalog (:func:`ztaudit.pipeline.reports.db.load_table_providers`) so that every
connection over the lake has a typed view of these tables, and by the detector modules that build
them (:mod:`.reach`, :mod:`.credentials`). Kept apart from those modules so that opening the lake
for a report or ``ztaudit sql`` does not import pandas, NumPy and scikit-learn (~0.3 s per run).
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
from ztaudit.pipeline.normalize import rbac_snapshot  # noqa: F401  (registers rbac_snapshot / rbac_grant)
from ztaudit.pipeline.schema import STR_LIST, TS, Column, _schema, register_table

REACH: Final = _schema(
    "reach",
    "Identity reach per effective actor and window (reach.window), with peer group and history size.",
    [
        Column("window_start", TS, "Start of the window (UTC)."),
        Column("window_end", TS, "End of the window (exclusive)."),
        Column("window", pa.string(), "hour | day."),
        Column("actor", pa.string(), "Effective identity (impersonated user if any)."),
        Column("actor_kind", pa.string(), "human | service_account | node | system | anonymous."),
        Column("cluster", pa.string(), "Cluster with most of the actor's requests in the window (the cluster "
               "itself for service accounts, nodes and control-plane identities, which are per cluster)."),
        Column("peer_group", pa.string(), "Peer group the actor is compared with (see reach.py)."),
        Column("peers", pa.int64(), "Other actors of the peer group active in the window."),
        Column("history_windows", pa.int64(), "Actor's earlier windows within reach.baseline_days."),
        *[Column(f, pa.int64(), d) for f, d in (
            ("requests", "Requests."),
            ("namespaces", "Distinct namespaces touched."),
            ("resources", "Distinct resource[/subresource] types."),
            ("verbs", "Distinct verbs."),
            ("api_groups", "Distinct API groups."),
            ("clusters", "Distinct clusters."),
            ("secret_reads", "get/list/watch requests on secrets."),
            ("secret_namespaces", "Distinct namespaces where secrets were read ('cluster-wide' counts as one)."),
            ("secret_cluster_lists", "list/watch of secrets across all namespaces."),
            ("foreign_secret_namespaces", "Namespaces where secrets were read outside the SA's namespace or "
             "outside the namespaces of the node's pods."),
            ("exec_count", "exec/attach/portforward requests."),
            ("new_namespaces", "Namespaces not touched in the actor's history (0 without history)."),
            ("forbidden_requests", "Requests denied (403 or decision forbid)."),
            ("source_ips", "Distinct source IPs."),
            ("user_agents", "Distinct user agents."),
            ("credentials", "Distinct credential ids."),
        )],
        Column("write_share", pa.float64(), "Share of create/update/patch requests."),
        Column("delete_share", pa.float64(), "Share of delete/deletecollection requests."),
        Column("forbidden_share", pa.float64(), "Share of denied requests."),
        Column("secret_namespace_list", STR_LIST, "Namespaces where secrets were read (first 50)."),
        Column("new_namespace_list", STR_LIST, "Namespaces new to the actor (first 50)."),
    ],
)
register_table("reach", REACH, "window_start")

CREDENTIALS: Final = _schema(
    "credentials",
    "Credential inventory: one row per credential and UTC day of use.",
    [
        Column("day", TS, "UTC day of use (partition)."),
        Column("credential_key", pa.string(), "credential-id, or a fallback key (USER=, TOKEN?=; see "
               "detectors/credentials.py)."),
        Column("credential_id", pa.string(), "credential-id as logged (null for fallback keys)."),
        Column("key_kind", pa.string(), "id | fallback."),
        Column("credential_kind", pa.string(), "jti | x509 | legacy_secret | none."),
        Column("holder", pa.string(), "Authenticated user holding the credential (user.username)."),
        Column("holder_kind", pa.string(), "human | service_account | node | system | other."),
        Column("issued_at", TS, "When the TokenRequest that minted it was logged (issued-credential-id)."),
        Column("issued_by", pa.string(), "Who made that TokenRequest (kubelet for pod tokens)."),
        Column("first_seen", TS, "First use that day."),
        Column("last_seen", TS, "Last use that day."),
        Column("requests", pa.int64(), "Requests that day."),
        Column("denied", pa.int64(), "Requests denied (403/forbid) that day."),
        Column("stale_token_requests", pa.int64(), "Requests with the authentication.k8s.io/stale-token "
               "annotation."),
        Column("clusters", STR_LIST, "Clusters it was used on."),
        Column("source_ips", STR_LIST, "Peer IPs it was used from (first 50)."),
        Column("user_agents", STR_LIST, "User agents (first 50)."),
        Column("pods", STR_LIST, "Bound pod names (first 50)."),
        Column("nodes", STR_LIST, "Bound node names (first 50)."),
        Column("namespaces", pa.int64(), "Distinct namespaces touched."),
        Column("secret_reads", pa.int64(), "get/list/watch on secrets."),
    ],
)
register_table("credentials", CREDENTIALS, "day")


def registered() -> list[str]:
    """Names of the derived tables this module registered (for callers that only need the import)."""
    return ["reach", "credentials"]

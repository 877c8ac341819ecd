"""Schemas of the tables that are not read from a source as is: ``reach`` and ``credentials`` (built by
``ztaudit detect``) and ``rbac_grant`` rows (from an ingested RBAC snapshot, stored under the
``rbac_snapshot`` source id and exposed as the ``rbac_grant`` view).

Listed in :data:`ztaudit.core.schema.TABLES` with the source tables; kept in their own module so
that one module stays short.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from ztaudit.core.columns import STR_LIST, TS, Column, table_schema

REACH: Final = table_schema(
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
            ("secret_namespaces", "Distinct namespaces where secrets were requested, allowed or not "
             "('cluster-wide' counts as one)."),
            ("secret_cluster_lists", "list/watch of secrets across all namespaces."),
            ("foreign_secret_namespaces", "Namespaces where secrets were requested outside the SA's namespace or "
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
        Column("secret_namespace_list", STR_LIST, "Namespaces where secrets were requested (first 50)."),
        Column("new_namespace_list", STR_LIST, "Namespaces new to the actor (first 50)."),
    ],
)

CREDENTIALS: Final = table_schema(
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

RBAC_GRANT: Final = table_schema(
    "rbac_grant",
    "RBAC grants from an RBAC snapshot: one row per subject × rule × binding.",
    [
        Column("snapshot_at", TS, "When the snapshot was ingested (the List carries no time)."),
        Column("cluster", pa.string(), "Cluster (--cluster or envelope)."),
        Column("subject_kind", pa.string(), "User | Group | ServiceAccount."),
        Column("subject_name", pa.string(), "subjects[].name."),
        Column("subject_namespace", pa.string(), "subjects[].namespace (ServiceAccount)."),
        Column("subject", pa.string(), "Name as the audit log spells it: system:serviceaccount:NS:NAME, "
               "user name or group name."),
        Column("binding_kind", pa.string(), "RoleBinding | ClusterRoleBinding."),
        Column("binding_name", pa.string(), "Binding name."),
        Column("binding_namespace", pa.string(), "Binding namespace (RoleBinding)."),
        Column("role_kind", pa.string(), "Role | ClusterRole (roleRef.kind)."),
        Column("role_name", pa.string(), "roleRef.name."),
        Column("role_found", pa.bool_(), "False when the referenced role is not in the snapshot."),
        Column("rule_index", pa.int32(), "Index of the rule in the role (null when role_found is false)."),
        Column("verbs", STR_LIST, "rules[].verbs."),
        Column("api_groups", STR_LIST, "rules[].apiGroups ('' = core)."),
        Column("resources", STR_LIST, "rules[].resources (may be resource/subresource or *)."),
        Column("resource_names", STR_LIST, "rules[].resourceNames (empty = any)."),
        Column("non_resource_urls", STR_LIST, "rules[].nonResourceURLs."),
        Column("scope_namespace", pa.string(), "Namespace the grant applies in; null = cluster-wide."),
        Column("can_impersonate", pa.bool_(), "The rule grants impersonate on users/groups/serviceaccounts/"
               "userextras/uids."),
        Column("bootstrap", pa.bool_(), "A grant of Kubernetes' default policy as shipped to a group every "
               "service account is in (system:discovery, system:basic-user, system:public-info-viewer, "
               "system:service-account-issuer-discovery): default binding, subject and rule, bootstrap labels "
               "on binding and role; null in rows ingested before ztaudit kept it."),
        Column("origin", pa.string(), "Where the snapshot came from (file:<path>:<line>, kafka:...)."),
        Column("ingested_at", TS, "When ztaudit wrote the row (UTC)."),
    ],
)

"""The lake's tables, declared once: every base and derived table in one literal :data:`TABLES`.

The source ids (``k8s_audit``, ``proxy_decision``, ``idp_event``, ``rbac_snapshot``) are also the
lake folder names, the ``source`` values and the normalizer registry keys (docs/design.md, "Source
kinds"). The derived tables (``reach``, ``credentials``) are built by ``ztaudit detect``; their
columns live in :mod:`ztaudit.core.derived_tables`. ``ztaudit catalog --columns`` prints them all.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from ztaudit.core.columns import STR_LIST, STR_MAP, TS, Column, table_schema
from ztaudit.core.derived_tables import CREDENTIALS, RBAC_GRANT, REACH

# Columns every source table ends with: where the row came from and when ztaudit saw it.
_ORIGIN = [
    Column("origin", pa.string(),
           "Where the record came from: 'file:<path>:<line>' or 'kafka:<topic>/<partition>/<offset>'."),
    Column("ingested_at", TS, "When ztaudit wrote the row (UTC)."),
]

K8S_AUDIT: Final = table_schema(
    "k8s_audit",
    "Kubernetes API-server audit events (audit.k8s.io/v1 Event), one row per stage.",
    [
        Column("audit_id", pa.string(), "auditID: shared by all stages of one request; clients can set it."),
        Column("cluster", pa.string(), "Cluster name from the envelope (GKE/AKS/EKS) or --cluster."),
        Column("stage", pa.string(), "RequestReceived | ResponseStarted | ResponseComplete | Panic."),
        Column("level", pa.string(), "Audit level of the policy rule: Metadata | Request | RequestResponse."),
        Column("request_received_at", TS, "requestReceivedTimestamp: same on every stage of a request."),
        Column("stage_at", TS, "stageTimestamp: when this stage was reached."),
        Column("verb", pa.string(), "Kubernetes request verb (get, list, watch, create, ...; lower-case HTTP "
               "method for non-resource URLs)."),
        Column("request_uri", pa.string(), "requestURI with query; tokens in the query are masked."),
        Column("user_name", pa.string(), "user.username: the authenticated identity (the impersonator when "
               "impersonating)."),
        Column("user_uid", pa.string(), "user.uid (service-account UID for SA tokens)."),
        Column("user_groups", STR_LIST, "user.groups."),
        Column("credential_id", pa.string(), "user.extra authentication.kubernetes.io/credential-id "
               "(JTI=... or X509SHA256=...), or SECRET=<ns>/<name> for legacy secret tokens."),
        Column("credential_kind", pa.string(), "jti | x509 | legacy_secret | none."),
        Column("is_legacy_token", pa.bool_(), "True when authentication.k8s.io/legacy-token* annotations show a "
               "legacy secret-based service-account token."),
        Column("issued_credential_id", pa.string(), "annotation authentication.kubernetes.io/issued-credential-id "
               "on TokenRequest (serviceaccounts/token create) records."),
        Column("sa_namespace", pa.string(), "Namespace parsed from system:serviceaccount:NS:NAME (effective actor)."),
        Column("sa_name", pa.string(), "Name parsed from system:serviceaccount:NS:NAME (effective actor)."),
        Column("pod_name", pa.string(), "user.extra authentication.kubernetes.io/pod-name (bound SA token)."),
        Column("node_name", pa.string(), "user.extra authentication.kubernetes.io/node-name, or the node of "
               "system:node:NAME."),
        Column("impersonator", pa.string(), "user.username when impersonatedUser is present, else null."),
        Column("impersonated_user", pa.string(), "impersonatedUser.username."),
        Column("impersonated_groups", STR_LIST, "impersonatedUser.groups."),
        Column("actor", pa.string(), "Effective identity: impersonated user if any, else user.username."),
        Column("actor_kind", pa.string(), "human | service_account | node | system | anonymous."),
        Column("source_ip", pa.string(), "Last sourceIPs entry: the peer the API server saw (the others can "
               "be set by the client)."),
        Column("source_ips", STR_LIST, "sourceIPs as logged (X-Forwarded-For first, peer last)."),
        Column("user_agent", pa.string(), "userAgent (client supplied, untrusted)."),
        Column("resource", pa.string(), "objectRef.resource."),
        Column("subresource", pa.string(), "objectRef.subresource (exec, attach, portforward, log, token, ...)."),
        Column("namespace", pa.string(), "objectRef.namespace."),
        Column("name", pa.string(), "objectRef.name."),
        Column("api_group", pa.string(), "objectRef.apiGroup ('' for core)."),
        Column("api_version", pa.string(), "objectRef.apiVersion."),
        Column("response_code", pa.int32(), "responseStatus.code (HTTP status); null at RequestReceived."),
        Column("decision", pa.string(), "annotation authorization.k8s.io/decision: allow | forbid."),
        Column("authz_reason", pa.string(), "annotation authorization.k8s.io/reason (which binding allowed it)."),
        Column("annotations", STR_MAP, "All audit annotations (GKE: LogEntry labels)."),
        Column("proxy_session_id", pa.string(), "Proxy session id from the audit event's "
               "user.extra[<correlation.session_extra_key>] (tier B); null when not configured or absent."),
        *_ORIGIN,
    ],
)

PROXY_DECISION: Final = table_schema(
    "proxy_decision",
    "Identity-aware proxy decisions (Pomerium authorize check / access log, Teleport kube.request, "
    "oauth2-proxy request lines).",
    [
        Column("decided_at", TS, "When the proxy decided (UTC; Pomerium logs seconds with a local offset)."),
        Column("proxy", pa.string(), "pomerium | teleport | oauth2-proxy."),
        Column("request_id", pa.string(), "Proxy request id (Pomerium request-id, Teleport uid, oauth2-proxy "
               "RequestID)."),
        Column("check_request_id", pa.string(), "Pomerium check-request-id: the Envoy x-request-id of the user's "
               "request (equals the access log request-id)."),
        Column("session_id", pa.string(), "Proxy session id; absent after the session was revoked."),
        Column("user_id", pa.string(), "IdP subject (Pomerium 'user', Okta 00u..., Keycloak UUID)."),
        Column("email", pa.string(), "User email as the proxy knows it; the impersonated user in Kubernetes."),
        Column("service_account_id", pa.string(), "Proxy service-account id for bearer-token clients."),
        Column("method", pa.string(), "HTTP method, upper case."),
        Column("host", pa.string(), "Host of the user's request (the proxy route's from-host)."),
        Column("path", pa.string(), "Path without query."),
        Column("query", pa.string(), "Query string when logged; tokens masked."),
        Column("route_id", pa.string(), "Proxy route id."),
        Column("client_ip", pa.string(), "Downstream client IP as the proxy saw it."),
        Column("is_allowed", pa.bool_(), "Pomerium: allow and not deny. Access lines: response code < 400."),
        Column("allow_reasons", STR_LIST, "Reasons the allow rules gave (allow-why-true/false)."),
        Column("deny_reasons", STR_LIST, "Reasons the deny rules gave (deny-why-true/false)."),
        Column("cluster", pa.string(), "Kubernetes cluster behind the route (config proxy host map, Teleport "
               "kubernetes_cluster, or --cluster)."),
        Column("user_agent", pa.string(), "Client user agent when logged."),
        Column("response_code", pa.int32(), "HTTP status when logged (access lines)."),
        Column("record_type", pa.string(), "authorize | access | kube.request | request."),
        *_ORIGIN,
    ],
)

IDP_EVENT: Final = table_schema(
    "idp_event",
    "Identity-provider lifecycle and revocation events (Okta, Entra, Google Workspace, Keycloak, "
    "Pomerium identity_manager, plain revocation lists).",
    [
        Column("occurred_at", TS, "When the IdP recorded the event (UTC)."),
        Column("idp", pa.string(), "okta | entra | google_workspace | keycloak | pomerium | teleport | list."),
        Column("event_type", pa.string(), "The IdP's own event type (e.g. user.lifecycle.deactivate)."),
        Column("is_revocation", pa.bool_(), "True when the event revokes an identity, session, token or grant."),
        Column("subject_id", pa.string(), "Immutable id of the affected identity (Okta 00u..., Entra object id, "
               "Keycloak UUID, Pomerium user id)."),
        Column("subject_login", pa.string(), "Login / email / UPN of the affected identity."),
        Column("session_id", pa.string(), "Affected session when the event names one."),
        Column("actor", pa.string(), "Who performed the change (admin, automation)."),
        Column("outcome", pa.string(), "Outcome when the IdP logs one (SUCCESS, FAILURE, ...)."),
        Column("revocation_scope", pa.string(), "identity | session | token | grant: what the revocation cuts."),
        Column("reason", pa.string(), "The IdP's or proxy's stated reason or error, when logged (Keycloak "
               "`reason`/`error`, Pomerium `error`, Okta outcome.reason, Entra resultReason)."),
        *_ORIGIN,
    ],
)

QUARANTINE: Final = table_schema(
    "quarantine",
    "Rejected records: nothing is dropped silently.",
    [
        Column("quarantined_at", TS, "When the record was rejected (UTC)."),
        Column("origin", pa.string(), "file:<path>:<line> or kafka:<topic>/<partition>/<offset>."),
        Column("source_guess", pa.string(), "Source kind the record was read as, or guessed (may be null)."),
        Column("reason", pa.string(), "Named reason: invalid_json | not_utf8 | oversized | unknown_shape | "
               "wrong_type | truncated | empty | missing_field | bad_timestamp."),
        Column("detail", pa.string(), "Human-readable detail (parser message, offending field)."),
        Column("raw_size", pa.int64(), "Size of the raw record in bytes."),
        Column("raw", pa.binary(), "Raw bytes, capped, with secret bodies and tokens scrubbed."),
        Column("raw_truncated", pa.bool_(), "True when raw was cut at the cap."),
    ],
)

FINDINGS: Final = table_schema(
    "findings",
    "Detector findings; finding_id is a stable hash of detector and key, so re-running replaces.",
    [
        Column("finding_id", pa.string(), "Stable hash of detector id and the finding's key."),
        Column("detector", pa.string(), "Detector id (impersonation.proxy_bypass, credential.stale, ...)."),
        Column("severity", pa.string(), "info | low | medium | high | critical."),
        Column("actor", pa.string(), "Effective identity the finding is about."),
        Column("credential_id", pa.string(), "Credential involved, when known."),
        Column("cluster", pa.string(), "Cluster, when known."),
        Column("namespace", pa.string(), "Namespace, when one applies."),
        Column("first_seen", TS, "Earliest event behind the finding."),
        Column("last_seen", TS, "Latest event behind the finding."),
        Column("summary", pa.string(), "What happened and what to do, in one or two sentences."),
        Column("evidence", STR_LIST, "References to the events that prove it (table:key)."),
        Column("score", pa.float64(), "Higher is more anomalous / more certain; detector-specific scale."),
        Column("context", pa.string(), "JSON object with detector-specific details (features, ranges, ...)."),
        Column("detected_at", TS, "When detect produced it."),
        Column("first_detected_at", TS, "When a run first produced this finding_id (kept when later runs "
               "produce it again); `report findings --new` compares it with the last detect run."),
        Column("first_run", pa.string(), "The run that first produced it: 'detect:<start>' (ztaudit detect) "
               "or 'consume:<start>' (the consumer's streaming detect)."),
    ],
)

TRIAGE: Final = table_schema(
    "triage",
    "Triage decisions on findings (ztaudit findings ack|suppress|expire), append-only: a finding's "
    "current decision is its latest row (docs/triage.md).",
    [
        Column("triaged_at", TS, "When the decision was recorded (UTC)."),
        Column("finding_id", pa.string(), "The finding decided on (findings.finding_id)."),
        Column("action", pa.string(), "ack | suppress | expire (expire ends the finding's ack or suppression)."),
        Column("reason", pa.string(), "Why, in the triager's words (required)."),
        Column("until", TS, "When the ack or suppression ends; occurrences after it bring the finding back. "
               "Null = no end."),
        Column("triaged_by", pa.string(), "Who decided: --by, else $ZTAUDIT_ACTOR, else the OS user."),
    ],
)

DETECT_RUNS: Final = table_schema(
    "detect_runs",
    "One row per `ztaudit detect` run that wrote findings: what `report findings --new` counts from.",
    [
        Column("run_id", pa.string(), "'detect:<started_at>', as in findings.first_run."),
        Column("started_at", TS, "When the run began judging (the detected_at of the findings it wrote)."),
        Column("finished_at", TS, "When its findings were durable."),
        Column("detectors", STR_LIST, "Detector ids whose findings the run wrote."),
        Column("findings", pa.int64(), "Findings the run produced."),
        Column("new_findings", pa.int64(), "Of those, finding ids no earlier run had produced."),
    ],
)

#: Version of every machine-readable output (report JSON, findings on Kafka, the consumer's metrics
#: file): raised when a field is renamed, removed or changes type; adding a field keeps it.
SCHEMA_VERSION: Final = 1

TABLES: Final[dict[str, pa.Schema]] = {
    "k8s_audit": K8S_AUDIT,
    "proxy_decision": PROXY_DECISION,
    "idp_event": IDP_EVENT,
    "quarantine": QUARANTINE,
    "findings": FINDINGS,
    "triage": TRIAGE,
    "detect_runs": DETECT_RUNS,
    "rbac_snapshot": RBAC_GRANT,
    "reach": REACH,
    "credentials": CREDENTIALS,
}

#: The source kinds a normalizer exists for (the rest of TABLES are derived tables).
SOURCE_KINDS: Final = ("k8s_audit", "proxy_decision", "idp_event")

#: Tables that grow by many small files (one per input chunk or Kafka flush), so ``ztaudit compact``
#: merges their days. The derived tables are rewritten whole per day by ``detect``, and RBAC
#: snapshots are one file per snapshot, so there is nothing to merge.
COMPACTABLE_TABLES: Final = (*SOURCE_KINDS, "quarantine", "findings")

#: Column holding the event time that decides the ``dt=`` partition of each table.
PARTITION_TIME: Final[dict[str, str]] = {
    "k8s_audit": "request_received_at",
    "proxy_decision": "decided_at",
    "idp_event": "occurred_at",
    "quarantine": "quarantined_at",
    "findings": "first_seen",
    "triage": "triaged_at",
    "detect_runs": "started_at",
    "rbac_snapshot": "snapshot_at",
    "reach": "window_start",
    "credentials": "day",
}

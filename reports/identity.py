"""``report identity ACTOR``: everything about one identity — timeline, reach, credentials, findings.

``ACTOR`` matches the audit ``actor`` (effective identity), the proxy ``email`` or ``user_id``,
and the IdP ``subject_login``, ``subject_id`` or acting ``actor``; it is always a bound parameter.

JSON/CSV fields of the primary section ``timeline`` (newest ``--limit`` events, oldest first):
``at`` (ISO-8601 UTC), ``source`` (k8s_audit | proxy_decision | idp_event), ``cluster``,
``action`` (verb, HTTP method or IdP event type), ``target`` (namespace/resource/name[/sub], host
and path, or the IdP subject), ``outcome`` (HTTP code and decision, allowed/denied, IdP outcome),
``via`` (impersonator, proxy or IdP), ``source_ip``, ``user_agent``, ``ref`` (event reference).
Other sections: ``overview`` (one row of counts; ``credentials`` counts every credential the
identity holds in range), ``reach`` (per cluster and namespace), ``credentials`` (the credentials
the identity holds, i.e. authenticated with, from the ``credentials`` table ``ztaudit detect``
builds; fields and flags as in ``report credentials``, flagged first, ``--limit`` rows; a person
working through the proxy authenticates as the proxy, so holds none), ``findings`` (as in
``report findings``).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from ztaudit.reports.base import Chart, ReportContext, ReportResult, Section, Series, fetch
from ztaudit.reports.charts import reach_over_time
from ztaudit.reports.credentials import CRED_COLUMNS, CRED_DISPLAY, credential_inventory
from ztaudit.reports.findings import FINDING_COLUMNS, FINDING_DISPLAY, query_findings

TIMELINE_COLUMNS = ["at", "source", "cluster", "action", "target", "outcome", "via", "source_ip", "user_agent",
                    "ref"]
#: The audit columns the identity report reads (copying only these keeps the one scan cheap: the
#: identity's rows are spread over every row group, so each column read is a full decode).
AUDIT_COLUMNS = ["audit_id", "cluster", "stage", "stage_at", "request_received_at", "verb", "namespace", "resource",
                 "name", "subresource", "response_code", "decision", "impersonator", "source_ip", "user_agent",
                 "actor", "actor_kind"]
OVERVIEW_COLUMNS = ["actor", "actor_kinds", "clusters", "first_seen", "last_seen", "requests", "denied_requests",
                    "proxy_decisions", "proxy_denied", "idp_events", "revocations", "credentials", "findings"]


def identity(ctx: ReportContext) -> ReportResult:
    """One identity's timeline, reach, credentials and findings (``ztaudit report identity ACTOR``).

    Raises ``ValueError`` when no identity is given (the CLI checks first and exits 2); SQL errors
    propagate, and the temporary table of the identity's audit rows is dropped either way.
    """
    actor = ctx.options.get("subject") or ctx.filters.actor
    if not actor:
        raise ValueError("report identity needs an identity: ztaudit report identity alice@example.com")
    f = dataclasses.replace(ctx.filters, actor=str(actor))
    sub = dataclasses.replace(ctx, filters=f)
    kw, kp = f.where(time_col="request_received_at", actor_cols=("actor",))
    pw, pp = f.where(time_col="decided_at", actor_cols=("email", "user_id"))
    iw, ip = f.where(time_col="occurred_at", cluster_col=None, actor_cols=("subject_login", "subject_id", "actor"))
    # One scan of the audit log for this identity; every later query reads the small temp table.
    rows_table = f"_zt_ident_{uuid.uuid4().hex[:10]}"
    with ctx.progress.step("reading the identity's audit events"):
        ctx.con.execute(f"CREATE TEMP TABLE {rows_table} AS SELECT {', '.join(AUDIT_COLUMNS)} FROM k8s_audit "
                        f"WHERE {kw}", kp)
    try:
        return _identity(ctx, sub, str(actor), rows_table, (pw, pp), (iw, ip))
    finally:
        ctx.con.execute(f"DROP TABLE IF EXISTS {rows_table}")


def _identity(ctx: ReportContext, sub: ReportContext, actor: str, k8s: str, proxy_q: tuple[str, list[Any]],
              idp_q: tuple[str, list[Any]]) -> ReportResult:
    """The identity report over ``k8s`` (a temp table of the identity's audit rows)."""
    pw, pp = proxy_q
    iw, ip = idp_q
    with ctx.progress.step("building timeline"):
        timeline = fetch(ctx.con, f"""
        SELECT * FROM (
            SELECT * FROM (
                SELECT request_received_at AS "at", 'k8s_audit' AS source, cluster, verb AS action,
                       concat_ws('/', namespace, resource, name, subresource) AS target,
                       concat_ws(' ', CAST(response_code AS VARCHAR), decision) AS outcome,
                       impersonator AS via, source_ip, user_agent, 'k8s_audit:' || audit_id AS ref
                FROM {k8s}
                QUALIFY row_number() OVER (PARTITION BY cluster, audit_id, request_received_at
                    ORDER BY stage_rank(stage) DESC, stage_at DESC) = 1
            )
            UNION ALL
            SELECT decided_at, 'proxy_decision', cluster, method, concat(host, path),
                   CASE WHEN is_allowed THEN 'allowed' WHEN NOT is_allowed THEN 'denied' END
                       || coalesce(' ' || CAST(response_code AS VARCHAR), ''),
                   proxy, client_ip, user_agent, 'proxy_decision:' || coalesce(request_id, origin)
            FROM proxy_decision WHERE {pw}
            UNION ALL
            SELECT occurred_at, 'idp_event', NULL, event_type, coalesce(subject_login, subject_id),
                   concat_ws(' ', outcome, CASE WHEN is_revocation THEN 'revocation' END), idp, NULL, NULL,
                   'idp_event:' || origin
            FROM idp_event WHERE {iw}
        ) ORDER BY "at" DESC NULLS LAST, ref LIMIT ?""", [*pp, *ip, ctx.limit])
    timeline.reverse()
    with ctx.progress.step("measuring reach"):
        reach = fetch(ctx.con, f"""
            SELECT cluster, namespace, list_sort(list(DISTINCT resource) FILTER (WHERE resource IS NOT NULL))
                       AS resources,
                   list_sort(list(DISTINCT verb)) AS verbs,
                   count(DISTINCT (audit_id, request_received_at)) AS requests,
                   count(DISTINCT name) FILTER (WHERE resource = 'secrets') AS secrets,
                   min(request_received_at) AS first_seen, max(request_received_at) AS last_seen
            FROM {k8s} GROUP BY ALL ORDER BY requests DESC, cluster, namespace NULLS FIRST
            LIMIT 200""")
        over = fetch(ctx.con, f"""
            SELECT list_sort(list(DISTINCT actor_kind)) AS actor_kinds,
                   list_sort(list(DISTINCT cluster) FILTER (WHERE cluster IS NOT NULL)) AS clusters,
                   min(request_received_at) AS first_seen, max(request_received_at) AS last_seen,
                   count(DISTINCT (cluster, audit_id, request_received_at)) AS requests,
                   count(DISTINCT (cluster, audit_id, request_received_at))
                       FILTER (WHERE response_code >= 400 OR decision = 'forbid') AS denied_requests
            FROM {k8s}""")[0]
        px = fetch(ctx.con, f"""SELECT count(*) AS n, count(*) FILTER (WHERE NOT is_allowed) AS denied,
                                       min(decided_at) AS first_seen, max(decided_at) AS last_seen
                                FROM proxy_decision WHERE {pw}""", pp)[0]
        idp = fetch(ctx.con, f"""SELECT count(*) AS n, count(*) FILTER (WHERE is_revocation) AS revocations,
                                        min(occurred_at) AS first_seen, max(occurred_at) AS last_seen
                                 FROM idp_event WHERE {iw}""", ip)[0]
    with ctx.progress.step("credentials and findings"):
        creds = credential_inventory(sub)
        found = query_findings(sub, actor=str(actor))
    times = [t for t in (over["first_seen"], px["first_seen"], idp["first_seen"]) if t is not None]
    lasts = [t for t in (over["last_seen"], px["last_seen"], idp["last_seen"]) if t is not None]
    overview: dict[str, Any] = {
        "actor": actor, "actor_kinds": over["actor_kinds"] or [], "clusters": over["clusters"] or [],
        "first_seen": min(times) if times else None, "last_seen": max(lasts) if lasts else None,
        "requests": over["requests"], "denied_requests": over["denied_requests"],
        "proxy_decisions": px["n"], "proxy_denied": px["denied"], "idp_events": idp["n"],
        "revocations": idp["revocations"], "credentials": creds.totals["credentials"], "findings": len(found),
    }
    result = ReportResult("identity", f"Identity: {actor}", [
        Section("timeline", f"Timeline (newest {ctx.limit} events, oldest first)", TIMELINE_COLUMNS, timeline,
                display=["at", "source", "cluster", "action", "target", "outcome", "via"]),
        Section("overview", "Overview", OVERVIEW_COLUMNS, [overview], vertical=True),
        Section("reach", "Reach by cluster and namespace",
                ["cluster", "namespace", "resources", "verbs", "requests", "secrets", "first_seen", "last_seen"],
                reach, display=["cluster", "namespace", "requests", "secrets", "verbs", "resources"]),
        Section("credentials", "Credentials held (flagged first)", CRED_COLUMNS, creds.rows, display=CRED_DISPLAY),
        Section("findings", "Findings", FINDING_COLUMNS, found, display=FINDING_DISPLAY, detail="summary"),
    ])
    result.params["identity"] = actor
    if not times:
        result.notes.append("no events for this identity in range (identities are matched exactly, "
                            "case-sensitive)")
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            days = fetch(ctx.con, f"""
                SELECT 'k8s_audit' AS source, strftime(date_trunc('day', request_received_at), '%Y-%m-%d') AS day,
                       count(DISTINCT (cluster, audit_id, request_received_at)) AS n FROM {k8s}
                GROUP BY ALL
                UNION ALL SELECT 'proxy_decision', strftime(date_trunc('day', decided_at), '%Y-%m-%d'), count(*)
                FROM proxy_decision WHERE {pw} GROUP BY ALL ORDER BY day""", pp)
            by: dict[str, list[tuple[str, float]]] = {}
            for r in days:
                by.setdefault(str(r["source"]), []).append((str(r["day"]), float(r["n"])))
            result.charts.append(Chart("activity", "Activity per day (UTC)", "bar",
                                       [Series(k, v) for k, v in by.items()], y_label="events"))
            result.charts.append(reach_over_time(sub, [str(actor)]))
    return result

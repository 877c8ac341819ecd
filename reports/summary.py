"""``report summary``: what the lake holds, per table and cluster, its time span and quarantine."""

from __future__ import annotations

from typing import Any

from ztaudit.core.schema import PARTITION_TIME, TABLES
from ztaudit.reports.base import ReportContext, ReportResult, Section, fetch
from ztaudit.reports.charts import (
    events_per_day,
    findings_over_time,
    flagged_actors,
    latency_chart,
    reach_over_time,
    revocation_times,
)
from ztaudit.reports.revocation import revocation_rows

#: The column that names "who" in each table, for a distinct-identities count.
ACTOR_COLUMN = {"k8s_audit": "actor", "proxy_decision": "email", "idp_event": "subject_login",
                "findings": "actor"}

SOURCE_COLUMNS = ["table", "cluster", "rows", "days", "first_at", "last_at", "identities"]


def summary(ctx: ReportContext) -> ReportResult:
    """Rows, days, time span and distinct identities per lake table and cluster; quarantine and findings
    (``ztaudit report summary``, and the first report of ``ztaudit demo``). SQL errors propagate."""
    rows: list[dict[str, Any]] = []
    for table, schema in TABLES.items():
        if table == "quarantine":
            continue
        tcol = PARTITION_TIME[table]
        has_cluster = "cluster" in schema.names
        where, params = ctx.filters.where(time_col=tcol, cluster_col="cluster" if has_cluster else None,
                                          actor_cols=(ACTOR_COLUMN[table],) if table in ACTOR_COLUMN else ())
        actor = ACTOR_COLUMN.get(table)
        cluster_expr = "cluster" if has_cluster else "CAST(NULL AS VARCHAR)"
        ident = f"approx_count_distinct({actor})" if actor else "CAST(NULL AS BIGINT)"
        with ctx.progress.step(f"summarising {table}"):
            rows += fetch(ctx.con, f"""
                SELECT ? AS "table", {cluster_expr} AS cluster, count(*) AS rows,
                       count(DISTINCT dt) AS days, min({tcol}) AS first_at, max({tcol}) AS last_at,
                       {ident} AS identities
                FROM "{table}" WHERE {where} GROUP BY ALL HAVING count(*) > 0
                ORDER BY cluster NULLS FIRST""", [table, *params])
    sources = Section("sources", "Lake contents by table and cluster", SOURCE_COLUMNS, rows,
                      description="rows = stored rows (audit: one per stage); identities is approximate "
                                  "(HyperLogLog).")
    qwhere, qparams = ctx.filters.where(time_col="quarantined_at", cluster_col=None)
    with ctx.progress.step("summarising quarantine"):
        quarantine = fetch(ctx.con, f"""
            SELECT source_guess, reason, count(*) AS records, sum(raw_size) AS bytes,
                   min(quarantined_at) AS first_at, max(quarantined_at) AS last_at
            FROM quarantine WHERE {qwhere} GROUP BY ALL ORDER BY records DESC, reason, source_guess""", qparams)
    fwhere, fparams = ctx.filters.where(time_col="first_seen", actor_cols=("actor",), dt=False)
    with ctx.progress.step("summarising findings"):
        findings = fetch(ctx.con, f"""
            SELECT detector, severity, count(DISTINCT finding_id) AS findings,
                   count(DISTINCT actor) AS identities, max(last_seen) AS last_seen
            FROM findings WHERE {fwhere} GROUP BY detector, severity
            ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2
                     WHEN 'low' THEN 3 ELSE 4 END, findings DESC, detector""", fparams)
    result = ReportResult("summary", "Lake summary", [
        sources,
        Section("quarantine", "Quarantined records by source and reason",
                ["source_guess", "reason", "records", "bytes", "first_at", "last_at"], quarantine),
        Section("findings", "Findings by detector and severity",
                ["detector", "severity", "findings", "identities", "last_seen"], findings),
    ])
    if not rows:
        result.notes.append("the lake holds no events in this range; ingest logs with `ztaudit ingest`")
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            result.charts.append(events_per_day(ctx))
            result.charts.append(findings_over_time(ctx))
            rev = revocation_rows(ctx)
            result.charts.append(latency_chart(revocation_times(rev), ctx.config.revocation.grace_seconds))
            result.charts.append(reach_over_time(ctx, flagged_actors(ctx)))
    return result

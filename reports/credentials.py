"""``report credentials``: credential inventory, and the stale, legacy and shared ones.

Uses ``ztaudit.detectors.credentials.credentials_report(con, config, since, until)`` when it exists;
otherwise a SQL fallback over ``k8s_audit`` (credential ids come from ``user.extra``
``authentication.kubernetes.io/credential-id`` or legacy secret annotations):

* ``age_hours`` = last use - (issue time from a TokenRequest record, else first use);
* ``stale`` = age above ``credentials.max_age_hours`` for its kind, or a gap between uses longer
  than ``credentials.dormancy_days`` (``max_gap_hours``);
* ``legacy`` = legacy secret-based service-account token;
* ``shared`` = used from more than one source IP within ``credentials.shared_window_seconds``
  (``shared_windows`` counts such windows).

When ``detect`` has built the derived ``credentials`` table (one row per credential and day), the
report aggregates that table in DuckDB (fast at any lake size): sections ``inventory`` (flagged
first, then most recently used, ``--limit`` rows), ``stale``, ``legacy``, ``shared`` and
``totals``; fields ``credential_key``, ``credential_id``, ``credential_kind``, ``holder``,
``holder_kind``, ``issued_at``, ``issued_by``, ``first_seen``, ``last_seen``, ``days_used``,
``requests``, ``stale_token_requests``, ``clusters``, ``source_ips``, ``user_agents``,
``age_hours``, ``past_max_age``, ``legacy``, ``stale``, ``shared``, ``findings``.

Without the table but with the detector module, the inventory rows are its report's columns (``credential_key``,
``credential_id``, ``credential_kind``, ``holder``, ``holder_kind``, ``issued_at``, ``issued_by``,
``first_seen``, ``last_seen``, ``days_used``, ``requests``, ``stale_token_requests``, ``clusters``,
``source_ips``, ``user_agents``, ``age_hours``, ``past_max_age``) plus ``legacy``, ``stale``,
``shared`` (from kind, age and ``credential.*`` findings) and ``findings`` (those detector ids).

Fallback JSON/CSV fields (primary section ``inventory``): ``credential_id``, ``credential_kind``, ``actors``
(list), ``clusters`` (list), ``issued_at``, ``first_used``, ``last_used``, ``age_hours``,
``max_gap_hours``, ``requests`` (approximate), ``source_ips``, ``user_agents``, ``legacy``,
``stale``, ``shared``, ``shared_windows``. Sections ``stale``, ``legacy`` and ``shared`` are
subsets with the same fields.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

from ztaudit.core.catalog import has_files as _has_files
from ztaudit.detectors.credentials import credentials_report
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.formats import rows_of

CRED_COLUMNS = ["credential_id", "credential_kind", "actors", "clusters", "issued_at", "first_used", "last_used",
                "age_hours", "max_gap_hours", "requests", "source_ips", "user_agents", "legacy", "stale", "shared",
                "shared_windows"]
CRED_DISPLAY = ["credential_id", "credential_kind", "actors", "last_used", "age_hours", "source_ips", "legacy",
                "stale", "shared"]
EXTERNAL = "ztaudit.detectors.credentials:credentials_report"
EXTERNAL_DISPLAY = ["credential_id", "credential_kind", "holder", "last_seen", "age_hours", "requests", "legacy",
                    "stale", "shared"]


def _fallback(ctx: ReportContext, source: str | None = None) -> list[Row]:
    """Credential inventory straight from audit rows (``source``: a temp table of already-filtered
    rows, as the identity report passes; default the ``k8s_audit`` view with the filters)."""
    cfg = ctx.config.credentials
    if source is None:
        where, params = ctx.filters.where(time_col="request_received_at", actor_cols=("actor",))
    else:
        where, params = "TRUE", []
    max_age = cfg.max_age_hours
    sql = f"""
    WITH u AS (
        SELECT credential_id, credential_kind, is_legacy_token, actor, cluster, source_ip, user_agent,
               audit_id, request_received_at AS used_at
        FROM {source or "k8s_audit"} WHERE {where} AND credential_id IS NOT NULL AND credential_id <> ''
    ),
    issued AS (
        SELECT issued_credential_id AS credential_id, min(request_received_at) AS issued_at FROM k8s_audit
        WHERE issued_credential_id IN (SELECT DISTINCT credential_id FROM u) GROUP BY 1
    ),
    hours AS (SELECT DISTINCT credential_id, date_trunc('hour', used_at) AS h FROM u),
    gaps AS (
        SELECT credential_id, max(gap) AS max_gap FROM (
            SELECT credential_id, epoch(h) - epoch(lag(h) OVER (PARTITION BY credential_id ORDER BY h)) AS gap
            FROM hours) GROUP BY 1
    ),
    buckets AS (
        SELECT credential_id, count(*) AS shared_windows FROM (
            SELECT credential_id, floor(epoch(used_at) / ?) AS b FROM u WHERE source_ip IS NOT NULL
            GROUP BY ALL HAVING count(DISTINCT source_ip) > 1) GROUP BY 1
    )
    SELECT u.credential_id, mode(credential_kind) AS credential_kind,
           list_sort(list(DISTINCT actor) FILTER (WHERE actor IS NOT NULL)) AS actors,
           list_sort(list(DISTINCT cluster) FILTER (WHERE cluster IS NOT NULL)) AS clusters,
           any_value(issued.issued_at) AS issued_at, min(used_at) AS first_used, max(used_at) AS last_used,
           (epoch(max(used_at)) - epoch(coalesce(any_value(issued.issued_at), min(used_at)))) / 3600.0 AS age_hours,
           any_value(gaps.max_gap) / 3600.0 AS max_gap_hours,
           approx_count_distinct(audit_id) AS requests, count(DISTINCT source_ip) AS source_ips,
           count(DISTINCT user_agent) AS user_agents, coalesce(bool_or(is_legacy_token), false)
               OR mode(credential_kind) = 'legacy_secret' AS legacy,
           coalesce(any_value(buckets.shared_windows), 0) AS shared_windows
    FROM u LEFT JOIN issued USING (credential_id) LEFT JOIN gaps USING (credential_id)
           LEFT JOIN buckets USING (credential_id)
    GROUP BY u.credential_id ORDER BY last_used DESC, credential_id
    """
    rows = fetch(ctx.con, sql, [*params, float(cfg.shared_window_seconds)])
    dormancy_h = cfg.dormancy_days * 24
    for r in rows:
        limit = max_age.get(str(r["credential_kind"]), None)
        too_old = limit is not None and r["age_hours"] is not None and float(r["age_hours"]) > float(limit)
        dormant = r["max_gap_hours"] is not None and float(r["max_gap_hours"]) > dormancy_h
        r["stale"] = bool(too_old or dormant)
        r["shared"] = int(r["shared_windows"] or 0) > 0
    return [{c: r.get(c) for c in CRED_COLUMNS} for r in rows]


def _detector_flags(ctx: ReportContext) -> dict[str, set[str]]:
    """credential_id -> credential.* detector ids with findings in range."""
    where, params = ctx.filters.where(time_col=None, actor_cols=("actor",))
    rows = fetch(ctx.con, f"""SELECT DISTINCT credential_id, detector FROM findings
                              WHERE {where} AND starts_with(detector, 'credential.') AND credential_id IS NOT NULL""",
                 params)
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(str(r["credential_id"]), set()).add(str(r["detector"]))
    return out


def _enrich_external(ctx: ReportContext, rows: list[Row]) -> list[Row]:
    """Add legacy/stale/shared flags (kind, age and credential.* findings) to the detector's rows."""
    flags = _detector_flags(ctx)
    out = []
    for r in rows:
        if ctx.filters.actor is not None and r.get("holder") != ctx.filters.actor:
            continue
        if ctx.filters.cluster is not None and ctx.filters.cluster not in (r.get("clusters") or []):
            continue
        dets = flags.get(str(r.get("credential_id") or r.get("credential_key")), set())
        row = dict(r)
        row["legacy"] = r.get("credential_kind") == "legacy_secret" or "credential.legacy_token" in dets
        row["stale"] = bool(r.get("past_max_age")) or bool(r.get("stale_token_requests")) or \
            "credential.stale" in dets
        row["shared"] = "credential.shared" in dets
        row["findings"] = sorted(dets)
        out.append(row)
    return out


TABLE_SQL = """
CREATE OR REPLACE TEMP TABLE {name} AS
WITH c AS (
    SELECT credential_key, any_value(credential_id) AS credential_id, mode(credential_kind) AS credential_kind,
           mode(holder) AS holder, mode(holder_kind) AS holder_kind, min(issued_at) AS issued_at,
           any_value(issued_by) AS issued_by, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           count(*) AS days_used, sum(requests) AS requests, sum(stale_token_requests) AS stale_token_requests
    FROM credentials WHERE {where} GROUP BY credential_key
),
f AS (
    SELECT credential_id, list_sort(list(DISTINCT detector)) AS dets FROM findings
    WHERE starts_with(detector, 'credential.') AND credential_id IS NOT NULL GROUP BY credential_id
),
a AS (
    SELECT c.*, (epoch(c.last_seen) - epoch(coalesce(c.issued_at, c.first_seen))) / 3600.0 AS age_hours,
           coalesce(f.dets, []) AS findings
    FROM c LEFT JOIN f ON f.credential_id = c.credential_id
),
b AS (
    SELECT *, coalesce(age_hours > CASE credential_kind WHEN 'jti' THEN ? WHEN 'x509' THEN ?
                                      WHEN 'legacy_secret' THEN ? END, false) AS past_max_age
    FROM a
)
SELECT *, credential_kind = 'legacy_secret' OR list_contains(findings, 'credential.legacy_token') AS legacy,
       past_max_age OR stale_token_requests > 0 OR list_contains(findings, 'credential.stale') AS stale,
       list_contains(findings, 'credential.shared') AS shared
FROM b
"""
#: Lists are gathered only for the rows a section prints (the aggregate above may hold millions).
LISTS_SQL = """
SELECT credential_key, list_sort(list_distinct(flatten(list(clusters)))) AS clusters,
       list_sort(list_distinct(flatten(list(source_ips))))[1:50] AS source_ips,
       list_sort(list_distinct(flatten(list(user_agents))))[1:50] AS user_agents
FROM credentials WHERE {where} AND credential_key IN (SELECT unnest(?::VARCHAR[])) GROUP BY credential_key
"""
TABLE_COLUMNS = ["credential_key", "credential_id", "credential_kind", "holder", "holder_kind", "issued_at",
                 "issued_by", "first_seen", "last_seen", "days_used", "requests", "stale_token_requests", "clusters",
                 "source_ips", "user_agents", "age_hours", "past_max_age", "legacy", "stale", "shared", "findings"]


def from_table(ctx: ReportContext) -> tuple[list[Row], dict[str, list[Row]], dict[str, Any]]:
    """Inventory from the ``credentials`` table that detect builds: (top rows, flagged subsets, totals).

    Aggregation, flags, ordering and ``--limit`` all run in DuckDB, so the report costs the size of
    the derived table (one row per credential and day), not of the audit log.
    """
    day_filters = dataclasses.replace(
        ctx.filters, since=ctx.filters.since.replace(hour=0, minute=0, second=0, microsecond=0)
        if ctx.filters.since else None)
    where, params = day_filters.where(time_col="day", cluster_col=None, actor_cols=("holder",))
    if ctx.filters.cluster is not None:
        where += " AND list_contains(clusters, ?)"
        params.append(ctx.filters.cluster)
    ages = ctx.config.credentials.max_age_hours
    name = f"_zt_cred_{uuid.uuid4().hex[:10]}"
    ctx.con.execute(TABLE_SQL.format(name=name, where=where),
                    [*params, ages.get("jti"), ages.get("x509"), ages.get("legacy_secret")])
    order = "ORDER BY (legacy OR stale OR shared) DESC, last_seen DESC, credential_key LIMIT ?"
    try:
        inventory = fetch(ctx.con, f"SELECT * FROM {name} {order}", [ctx.limit])
        subsets = {flag: fetch(ctx.con, f"SELECT * FROM {name} WHERE {flag} {order}", [ctx.limit])
                   for flag in ("stale", "legacy", "shared")}
        totals = fetch(ctx.con, f"""SELECT count(*) AS credentials, count(*) FILTER (WHERE stale) AS stale,
                                           count(*) FILTER (WHERE legacy) AS legacy,
                                           count(*) FILTER (WHERE shared) AS shared FROM {name}""")[0]
    finally:
        ctx.con.execute(f"DROP TABLE IF EXISTS {name}")
    keys = sorted({str(r["credential_key"]) for rows in (inventory, *subsets.values()) for r in rows})
    lists = {str(r["credential_key"]): r for r in fetch(ctx.con, LISTS_SQL.format(where=where), [*params, keys])}
    for rows in (inventory, *subsets.values()):
        for r in rows:
            extra = lists.get(str(r["credential_key"]), {})
            r.update({k: extra.get(k) or [] for k in ("clusters", "source_ips", "user_agents")})
    return inventory, subsets, totals


def credential_rows(ctx: ReportContext) -> tuple[list[Row], str]:
    """(rows, source): the detector's report (plus flags) when available, else the SQL fallback."""
    fn = credentials_report
    if fn is not None:
        return _enrich_external(ctx, rows_of(fn(ctx.con, ctx.config, ctx.filters.since, ctx.filters.until))), \
            EXTERNAL
    return _fallback(ctx), "sql-fallback"


def has_files(lake: Any, table: str) -> bool:
    """True when ``lake`` (a path or None) holds Parquet files of ``table``."""
    return lake is not None and _has_files(Path(lake), table)


def _flag(r: Row, *names: str) -> bool:
    return any(bool(r.get(n)) for n in names)


def credentials(ctx: ReportContext) -> ReportResult:
    """Inventory plus the stale, legacy and shared subsets (from the derived table when detect built it)."""
    if has_files(ctx.lake, "credentials"):
        with ctx.progress.step("aggregating the credentials table"):
            inventory, subsets, totals = from_table(ctx)
        disp = list(EXTERNAL_DISPLAY)
        titles = {"stale": "Stale credentials (past max age, stale-token annotations or findings)",
                  "legacy": "Legacy secret-based service-account tokens",
                  "shared": "Shared credentials (credential.shared findings)"}
        return ReportResult("credentials", "Credentials", [
            Section("inventory", f"Credential inventory (flagged first, newest {ctx.limit})", TABLE_COLUMNS,
                    inventory, display=disp),
            *[Section(k, titles[k], TABLE_COLUMNS, v, display=disp) for k, v in subsets.items()],
            Section("totals", "Totals", ["credentials", "stale", "legacy", "shared"], [totals], vertical=True),
        ])
    with ctx.progress.step("inventorying credentials"):
        rows, source = credential_rows(ctx)
    if source == "sql-fallback":
        cols, disp = CRED_COLUMNS, CRED_DISPLAY
    else:
        cols = list(rows[0]) if rows else list(EXTERNAL_DISPLAY)
        disp = [c for c in EXTERNAL_DISPLAY if c in cols]
    flag_sections = [
        ("stale", "Stale credentials (past max age or used after dormancy)"),
        ("legacy", "Legacy secret-based service-account tokens"),
        ("shared", "Shared credentials (several source IPs at once)"),
    ]
    rows.sort(key=lambda r: not _flag(r, "stale", "legacy", "shared"))  # stable: flagged first
    totals = {"credentials": len(rows), **{f: sum(_flag(r, f) for r in rows) for f, _ in flag_sections}}
    sections = [Section("inventory", f"Credential inventory (flagged first, {ctx.limit} rows)", cols,
                        rows[: ctx.limit], display=disp)]
    for name, title in flag_sections:
        sections.append(Section(name, title, cols, [r for r in rows if _flag(r, name)][: ctx.limit], display=disp))
    sections.append(Section("totals", "Totals", ["credentials", "stale", "legacy", "shared"], [totals],
                            vertical=True))
    result = ReportResult("credentials", "Credentials", sections)
    if source == "sql-fallback":
        result.notes.append("computed by the report's SQL fallback (detectors.credentials.credentials_report "
                            "not available)")
    return result


def summary_counts(rows: list[Row]) -> dict[str, Any]:
    """Counts of credentials and of each flag (for the identity report)."""
    return {"credentials": len(rows), "stale": sum(bool(r.get("stale")) for r in rows),
            "legacy": sum(bool(r.get("legacy")) for r in rows), "shared": sum(bool(r.get("shared")) for r in rows)}

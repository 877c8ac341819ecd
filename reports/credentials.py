"""``report credentials``: credential inventory, and the stale, legacy and shared ones.

The rows come from the ``credentials`` table that ``ztaudit detect`` builds
(:func:`ztaudit.detectors.credentials.inventory`: one row per credential and UTC day of use, holder =
the authenticated user), aggregated in DuckDB, so the report costs the size of that table at any
lake size. A credential used on a day that overlaps ``[--since, --until)`` counts with that whole
day. ``--actor`` matches the holder, ``--cluster`` any cluster the credential was used on.

Sections: ``inventory`` (flagged first, then most recently used, ``--limit`` rows), ``stale``,
``legacy``, ``shared`` (the flagged subsets, ``--limit`` rows each) and ``totals`` (counts over
every credential in range). Fields: ``credential_key``, ``credential_id``, ``credential_kind``,
``holder``, ``holder_kind``, ``issued_at``, ``issued_by``, ``first_seen``, ``last_seen``,
``days_used``, ``requests``, ``stale_token_requests``, ``clusters``, ``source_ips``,
``user_agents``, ``age_hours`` (last use - the earlier of issue time and first use), ``past_max_age`` (age
above ``credentials.max_age_hours`` for its kind), ``legacy`` (legacy secret-based token or a
``credential.legacy_token`` finding), ``stale`` (past its maximum age, stale-token annotations or a
``credential.stale`` finding), ``shared`` (a ``credential.shared`` finding), ``findings`` (the
``credential.*`` detector ids with findings about it).

A lake ``detect`` has not run on has an empty ``credentials`` table: the report then has no rows
and a note says so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, empty_table_note, fetch

CRED_COLUMNS = ["credential_key", "credential_id", "credential_kind", "holder", "holder_kind", "issued_at",
                "issued_by", "first_seen", "last_seen", "days_used", "requests", "stale_token_requests", "clusters",
                "source_ips", "user_agents", "age_hours", "past_max_age", "legacy", "stale", "shared", "findings"]
CRED_DISPLAY = ["credential_id", "credential_kind", "holder", "last_seen", "age_hours", "requests", "legacy",
                "stale", "shared"]
FLAGS = ("stale", "legacy", "shared")
TOTAL_COLUMNS = ["credentials", *FLAGS]

TABLE_SQL = """
CREATE OR REPLACE TEMP TABLE {name} AS
WITH c AS (
    SELECT credential_key, any_value(credential_id) AS credential_id, mode(credential_kind) AS credential_kind,
           mode(holder) AS holder, mode(holder_kind) AS holder_kind, min(issued_at) AS issued_at,
           any_value(issued_by) AS issued_by, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           count(*) AS days_used, sum(requests) AS requests, sum(stale_token_requests) AS stale_token_requests
    FROM credentials WHERE {where} GROUP BY credential_key
),
f AS (  -- a credential.* finding's credential_id holds the credential KEY (fallback keys too)
    SELECT credential_id AS credential_key, list_sort(list(DISTINCT detector)) AS dets FROM findings
    WHERE starts_with(detector, 'credential.') AND credential_id IS NOT NULL GROUP BY credential_id
),
a AS (
    -- age from the earlier of issue and first use: a TokenRequest logged by an API server whose clock
    -- runs late can carry a later time than the token's first use (as credential.stale does)
    SELECT c.*, (epoch(c.last_seen) - epoch(least(coalesce(c.issued_at, c.first_seen), c.first_seen))) / 3600.0
               AS age_hours,
           coalesce(f.dets, []) AS findings
    FROM c LEFT JOIN f ON f.credential_key = c.credential_key
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


@dataclass
class Inventory:
    """The aggregated credentials in range: the top ``limit`` rows, each flag's top rows, the totals."""

    rows: list[Row]
    flagged: dict[str, list[Row]]
    totals: dict[str, Any]


def credential_inventory(ctx: ReportContext) -> Inventory:
    """Credentials from the ``credentials`` table for ``ctx.filters``, ``ctx.limit`` rows per part.

    Called by this report and by the identity report (with the filters' actor set to the identity).
    Aggregation, flags, ordering and the limit all run in DuckDB, so the cost is the size of the
    derived table (one row per credential and day), not of the audit log. SQL errors propagate;
    the temporary table is dropped either way.
    """
    f = ctx.filters.from_day_start()
    where, params = f.where(time_col="day", cluster_col=None, actor_cols=("holder",))
    if f.cluster is not None:
        where += " AND list_contains(clusters, ?)"
        params.append(f.cluster)
    ages = ctx.config.credentials.max_age_hours
    name = f"_zt_cred_{uuid.uuid4().hex[:10]}"
    ctx.con.execute(TABLE_SQL.format(name=name, where=where),
                    [*params, ages.get("jti"), ages.get("x509"), ages.get("legacy_secret")])
    order = "ORDER BY (legacy OR stale OR shared) DESC, last_seen DESC, credential_key LIMIT ?"
    try:
        rows = fetch(ctx.con, f"SELECT * FROM {name} {order}", [ctx.limit])
        flagged = {flag: fetch(ctx.con, f"SELECT * FROM {name} WHERE {flag} {order}", [ctx.limit])
                   for flag in FLAGS}
        totals = fetch(ctx.con, f"""SELECT count(*) AS credentials, count(*) FILTER (WHERE stale) AS stale,
                                           count(*) FILTER (WHERE legacy) AS legacy,
                                           count(*) FILTER (WHERE shared) AS shared FROM {name}""")[0]
    finally:
        ctx.con.execute(f"DROP TABLE IF EXISTS {name}")
    keys = sorted({str(r["credential_key"]) for part in (rows, *flagged.values()) for r in part})
    lists = {str(r["credential_key"]): r for r in fetch(ctx.con, LISTS_SQL.format(where=where), [*params, keys])}
    for part in (rows, *flagged.values()):
        for r in part:
            extra = lists.get(str(r["credential_key"]), {})
            r.update({k: extra.get(k) or [] for k in ("clusters", "source_ips", "user_agents")})
    return Inventory(rows, flagged, totals)


def credentials(ctx: ReportContext) -> ReportResult:
    """Inventory plus the stale, legacy and shared subsets and totals (``ztaudit report credentials``)."""
    with ctx.progress.step("aggregating the credentials table"):
        inv = credential_inventory(ctx)
    titles = {"stale": "Stale credentials (past max age, stale-token annotations or findings)",
              "legacy": "Legacy secret-based service-account tokens",
              "shared": "Shared credentials (credential.shared findings)"}
    result = ReportResult("credentials", "Credentials", [
        Section("inventory", f"Credential inventory (flagged first, newest {ctx.limit})", CRED_COLUMNS, inv.rows,
                display=CRED_DISPLAY),
        *[Section(k, titles[k], CRED_COLUMNS, v, display=CRED_DISPLAY) for k, v in inv.flagged.items()],
        Section("totals", "Totals", TOTAL_COLUMNS, [inv.totals], vertical=True),
    ])
    if not inv.rows:
        result.notes.append(empty_table_note(ctx.con, "credentials", "credentials"))
    return result

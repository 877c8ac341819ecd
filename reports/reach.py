"""``report reach``: top identities by blast radius, their growth, and (``--granted``) RBAC headroom.

Sources, first available wins:

1. the ``reach`` table that ``detect`` builds (one row per actor and window): aggregated in DuckDB,
   fast at any lake size. Fields: ``actor``, ``actor_kind``, ``peer_group``, ``windows``,
   ``first_window``, ``last_window``, ``requests``, ``clusters``, ``max_namespaces``,
   ``max_resources``, ``max_secret_namespaces``, ``max_foreign_secret_namespaces``,
   ``new_namespaces``, ``exec_count``, ``forbidden_requests``, ``growth`` (last window's
   namespaces / median), ``flagged`` (has a ``reach.*`` finding);
2. ``ztaudit.detectors.reach.reach_report(con, config, since, until, granted)`` (same fields but
   ``flagged``; with ``--granted`` the RBAC granted-vs-used table, which needs an RBAC snapshot);
3. a SQL fallback over ``k8s_audit``:

* window = [--since, --until); without ``--since`` the 7 days ending at --until or at the latest
  event; baseline = the window of the same length just before it;
* ``blast_radius`` = distinct (cluster, namespace, resource, verb) tuples the identity exercised,
  ``baseline_blast_radius`` the same for the baseline window and ``growth`` the difference;
* ``secrets`` = distinct secrets (namespace/name, ``*`` for list/watch) touched; ``requests`` =
  completed requests (ResponseComplete or Panic stages); ``flagged`` = has a ``reach.*`` finding in
  range. Flagged identities come first, then by blast radius; ``--limit`` rows.

JSON/CSV fields: ``actor``, ``actor_kind``, ``blast_radius``, ``baseline_blast_radius``,
``growth``, ``clusters``, ``namespaces``, ``resources``, ``verbs``, ``secrets``, ``requests``,
``first_seen``, ``last_seen``, ``flagged`` (detector rows may add columns after these).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ztaudit.core.catalog import has_files
from ztaudit.detectors.reach import reach_report
from ztaudit.reports import charts
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.formats import rows_of

REACH_COLUMNS = ["actor", "actor_kind", "blast_radius", "baseline_blast_radius", "growth", "clusters", "namespaces",
                 "resources", "verbs", "secrets", "requests", "first_seen", "last_seen", "flagged"]
REACH_DISPLAY = ["actor", "actor_kind", "blast_radius", "growth", "clusters", "namespaces", "resources", "verbs",
                 "secrets", "flagged"]
EXTERNAL = "ztaudit.detectors.reach:reach_report"


def reach_window(ctx: ReportContext) -> tuple[datetime | None, datetime | None]:
    """The [since, until) window the fallback judges (see module docstring)."""
    since, until = ctx.filters.since, ctx.filters.until
    if since is not None:
        return since, until
    if until is None:
        where, params = ctx.filters.where(time_col="request_received_at", actor_cols=("actor",))
        row = fetch(ctx.con, f"SELECT max(request_received_at) AS m FROM k8s_audit WHERE {where}", params)
        last = row[0]["m"] if row else None
        if last is None:
            return None, None
        until = last + timedelta(microseconds=1)
    return until - timedelta(days=7), until


def _fallback(ctx: ReportContext) -> list[Row]:
    since, until = reach_window(ctx)
    if since is None or until is None:
        return []
    span = until - since
    fw = type(ctx.filters)(since=since, until=until, cluster=ctx.filters.cluster, actor=ctx.filters.actor)
    bw = type(ctx.filters)(since=since - span, until=since, cluster=ctx.filters.cluster, actor=ctx.filters.actor)
    cur_where, cur_params = fw.where(time_col="request_received_at", actor_cols=("actor",))
    base_where, base_params = bw.where(time_col="request_received_at", actor_cols=("actor",))
    rwhere, rparams = fw.where(time_col=None, actor_cols=("actor",))
    # One pass over the audit rows: distinct (actor, cluster, namespace, resource, verb) tuples with
    # counts; every per-actor figure is then computed from those few tuples.
    sql = f"""
    WITH t AS (
        SELECT actor, cluster, namespace, resource, verb, mode(actor_kind) AS actor_kind,
               count(*) FILTER (WHERE stage IN ('ResponseComplete', 'Panic')) AS requests,
               min(request_received_at) AS first_seen, max(request_received_at) AS last_seen
        FROM k8s_audit WHERE {cur_where} AND actor IS NOT NULL GROUP BY ALL
    ),
    cur AS (
        SELECT actor, mode(actor_kind) AS actor_kind, count(*) AS blast_radius,
               count(DISTINCT cluster) AS clusters, count(DISTINCT namespace) AS namespaces,
               count(DISTINCT resource) AS resources, count(DISTINCT verb) AS verbs,
               sum(requests)::BIGINT AS requests, min(first_seen) AS first_seen, max(last_seen) AS last_seen
        FROM t GROUP BY actor
    ),
    top AS (
        SELECT cur.*, flagged.actor IS NOT NULL AS flagged FROM cur
        LEFT JOIN (SELECT DISTINCT actor FROM findings
                   WHERE starts_with(detector, 'reach.') AND {rwhere} AND last_seen >= ? AND first_seen < ?) flagged
               USING (actor)
        ORDER BY flagged DESC, blast_radius DESC, actor LIMIT ?
    ),
    base AS (
        SELECT actor, count(*) AS baseline_blast_radius FROM (
            SELECT DISTINCT actor, cluster, namespace, resource, verb FROM k8s_audit
            WHERE {base_where} AND actor IN (SELECT actor FROM top)) GROUP BY actor
    ),
    sec AS (
        SELECT actor, count(DISTINCT coalesce(namespace, '*') || '/' || coalesce(name, '*')) AS secrets
        FROM k8s_audit WHERE {cur_where} AND resource = 'secrets' AND actor IN (SELECT actor FROM top)
        GROUP BY actor
    )
    SELECT top.actor, top.actor_kind, top.blast_radius, base.baseline_blast_radius,
           top.blast_radius - coalesce(base.baseline_blast_radius, 0) AS growth,
           top.clusters, top.namespaces, top.resources, top.verbs, coalesce(sec.secrets, 0) AS secrets,
           top.requests, top.first_seen, top.last_seen, top.flagged
    FROM top LEFT JOIN base USING (actor) LEFT JOIN sec USING (actor)
    ORDER BY top.flagged DESC, top.blast_radius DESC, growth DESC, top.actor
    """
    return fetch(ctx.con, sql, [*cur_params, *rparams, since, until, ctx.limit, *base_params, *cur_params])


TABLE_COLUMNS = ["actor", "actor_kind", "peer_group", "windows", "first_window", "last_window", "requests",
                 "clusters", "max_namespaces", "max_resources", "max_secret_namespaces",
                 "max_foreign_secret_namespaces", "new_namespaces", "exec_count", "forbidden_requests", "growth",
                 "flagged"]
TABLE_DISPLAY = ["actor", "actor_kind", "windows", "max_namespaces", "max_resources", "max_secret_namespaces",
                 "new_namespaces", "growth", "flagged"]


def from_table(ctx: ReportContext) -> list[Row]:
    """Top identities from the ``reach`` table detect builds (one row per actor and window).

    Same figures as ``detectors.reach.reach_report`` (per actor and scope: windows, max namespaces,
    resources and secret namespaces, sums of new namespaces, exec and forbidden requests, growth =
    last window's namespaces / median), computed in DuckDB over the derived table.
    """
    where, params = ctx.filters.where(time_col="window_start", actor_cols=("actor",))
    fwhere, fparams = ctx.filters.where(time_col=None, actor_cols=("actor",))
    return fetch(ctx.con, f"""
        WITH r AS (
            SELECT *, CASE WHEN actor_kind IN ('service_account', 'node', 'system') THEN cluster END AS scope
            FROM reach WHERE {where}
        ),
        flagged AS (SELECT DISTINCT actor FROM findings WHERE starts_with(detector, 'reach.') AND {fwhere})
        SELECT r.actor, arg_max(actor_kind, window_start) AS actor_kind,
               arg_max(peer_group, window_start) AS peer_group,
               count(*) AS windows, min(window_start) AS first_window, max(window_start) AS last_window,
               sum(requests)::BIGINT AS requests, max(clusters) AS clusters, max(namespaces) AS max_namespaces,
               max(resources) AS max_resources, max(secret_namespaces) AS max_secret_namespaces,
               max(foreign_secret_namespaces) AS max_foreign_secret_namespaces,
               sum(new_namespaces)::BIGINT AS new_namespaces, sum(exec_count)::BIGINT AS exec_count,
               sum(forbidden_requests)::BIGINT AS forbidden_requests,
               arg_max(namespaces, window_start) / nullif(median(namespaces), 0) AS growth,
               any_value(flagged.actor) IS NOT NULL AS flagged
        FROM r LEFT JOIN flagged USING (actor)
        GROUP BY r.actor, r.scope
        ORDER BY flagged DESC, max_secret_namespaces DESC, max_namespaces DESC, r.actor LIMIT ?""",
                 [*params, *fparams, ctx.limit])


def reach_rows(ctx: ReportContext) -> tuple[list[Row], str]:
    """(rows, source): the ``reach`` table, the detector's reach report, or the SQL fallback."""
    fn = reach_report
    granted = bool(ctx.options.get("granted"))
    if not granted and ctx.lake is not None and has_files(Path(ctx.lake), "reach"):
        return from_table(ctx), "reach-table"
    if fn is not None:
        rows = rows_of(fn(ctx.con, ctx.config, ctx.filters.since, ctx.filters.until, granted))
        if ctx.filters.actor is not None:
            rows = [r for r in rows if r.get("actor") == ctx.filters.actor]
        if ctx.filters.cluster is not None:
            rows = [r for r in rows if r.get("cluster", ctx.filters.cluster) == ctx.filters.cluster]
        if not granted:
            fwhere, fparams = ctx.filters.where(time_col=None, actor_cols=("actor",))
            flagged = {r["actor"] for r in fetch(ctx.con, f"""SELECT DISTINCT actor FROM findings
                       WHERE starts_with(detector, 'reach.') AND {fwhere}""", fparams)}
            for r in rows:
                r["flagged"] = r.get("actor") in flagged
            rows.sort(key=lambda r: not r["flagged"])  # stable: the detector's order within each group
        return rows[: ctx.limit], EXTERNAL
    return _fallback(ctx), "sql-fallback"


def reach(ctx: ReportContext) -> ReportResult:
    """Top identities by blast radius with growth against the previous window."""
    with ctx.progress.step("measuring reach"):
        rows, source = reach_rows(ctx)
    display: list[str] | None
    if source == "sql-fallback":
        columns, display = REACH_COLUMNS, REACH_DISPLAY
    elif source == "reach-table":
        columns, display = TABLE_COLUMNS, TABLE_DISPLAY
    else:
        columns = list(rows[0]) if rows else TABLE_COLUMNS[:-1]
        display = [c for c in TABLE_DISPLAY if c in columns] or None
    result = ReportResult("reach", "Identity reach (blast radius)", [
        Section("reach", f"Top {ctx.limit} identities by blast radius", columns, rows, display=display,
                description="blast radius = distinct (cluster, namespace, resource, verb) exercised"
                if source == "sql-fallback" else f"per actor over {ctx.config.reach.window} windows"),
    ])
    if source == "sql-fallback":
        since, until = reach_window(ctx)
        result.params["window"] = f"{since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M}" if since and until else None
        result.notes.append("computed by the report's SQL fallback (detectors.reach.reach_report not available)")
        if ctx.options.get("granted"):
            result.notes.append("--granted needs detectors.reach.reach_report; RBAC comparison skipped")
    if ctx.options.get("granted") and source == EXTERNAL:
        result.sections[0].title = "Granted vs used (RBAC snapshot)"
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            actors = charts.flagged_actors(ctx) or [str(r["actor"]) for r in rows[:5] if r.get("actor")]
            result.charts.append(charts.reach_over_time(ctx, actors))
    return result


def top_blast_radius(rows: list[Row], n: int = 5) -> list[Any]:
    """The first ``n`` actors of reach rows (already ordered)."""
    return [r.get("actor") for r in rows[:n]]

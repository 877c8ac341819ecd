"""``report reach``: top identities by blast radius and its growth, or (``--granted``) RBAC granted vs used.

Without ``--granted`` the rows come from the ``reach`` table that ``ztaudit detect`` builds
(:func:`ztaudit.detectors.reach.build_reach_table`: one row per actor and ``reach.window``), aggregated
in DuckDB, so the report costs the size of that table at any lake size. One row per actor (and per
cluster for service accounts, nodes and control-plane identities, which are per cluster: the
``cluster`` column, empty for people), flagged first, then by most secret namespaces and most
namespaces, ``--limit`` rows. Fields: ``actor``, ``actor_kind``, ``cluster``, ``peer_group``,
``windows``, ``first_window``, ``last_window``, ``requests``,
``clusters``, ``max_namespaces``, ``max_resources``, ``max_secret_namespaces``,
``max_foreign_secret_namespaces``, ``new_namespaces``, ``exec_count``, ``forbidden_requests``,
``growth`` (last window's namespaces / median), ``flagged`` (has a ``reach.*`` finding; for a
per-cluster identity, one on that cluster). A lake
``detect`` has not run on has an empty ``reach`` table: the report then has no rows and a note
says so.

With ``--granted`` the rows are :func:`ztaudit.detectors.rbac.granted_vs_used` over
``[--since, --until)`` (needs an ingested RBAC snapshot): the detector's
:data:`~ztaudit.detectors.rbac.GRANTED_VS_USED` columns, one row per identity and granted rule or
used-but-not-granted permission; ``--actor`` matches ``identity``. Grants never used come first, then
uses no grant explains; a note says how many rows ``--limit`` left out.
"""

from __future__ import annotations

from typing import Final

from ztaudit.detectors.rbac import granted_vs_used
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, arrow_rows, empty_table_note, fetch
from ztaudit.reports.charts import flagged_actors, reach_over_time

REACH_COLUMNS = ["actor", "actor_kind", "cluster", "peer_group", "windows", "first_window", "last_window", "requests",
                 "clusters", "max_namespaces", "max_resources", "max_secret_namespaces",
                 "max_foreign_secret_namespaces", "new_namespaces", "exec_count", "forbidden_requests", "growth",
                 "flagged"]
REACH_DISPLAY = ["actor", "actor_kind", "cluster", "windows", "max_namespaces", "max_resources",
                 "max_secret_namespaces", "new_namespaces", "growth", "flagged"]


def reach_rows(ctx: ReportContext) -> list[Row]:
    """Top identities from the ``reach`` table (one row per actor and window), ``--limit`` rows.

    Per actor and scope over the ``reach`` table that detect builds (windows,
    max namespaces, resources and secret namespaces, sums of new namespaces, exec and forbidden
    requests, growth = last window's namespaces / median), computed in DuckDB over the derived
    table. Called by :func:`reach`; SQL errors propagate.
    """
    where, params = ctx.filters.where(time_col="window_start", actor_cols=("actor",))
    fwhere, fparams = ctx.filters.where(time_col=None, actor_cols=("actor",))
    return fetch(ctx.con, f"""
        WITH r AS (
            SELECT *, CASE WHEN actor_kind IN ('service_account', 'node', 'system') THEN cluster END AS scope
            FROM reach WHERE {where}
        ),
        flagged AS (SELECT DISTINCT actor, cluster AS fcluster FROM findings
                    WHERE starts_with(detector, 'reach.') AND {fwhere})
        SELECT r.actor, arg_max(actor_kind, window_start) AS actor_kind, r.scope AS cluster,
               arg_max(peer_group, window_start) AS peer_group,
               count(*) AS windows, min(window_start) AS first_window, max(window_start) AS last_window,
               sum(requests)::BIGINT AS requests, max(clusters) AS clusters, max(namespaces) AS max_namespaces,
               max(resources) AS max_resources, max(secret_namespaces) AS max_secret_namespaces,
               max(foreign_secret_namespaces) AS max_foreign_secret_namespaces,
               sum(new_namespaces)::BIGINT AS new_namespaces, sum(exec_count)::BIGINT AS exec_count,
               sum(forbidden_requests)::BIGINT AS forbidden_requests,
               arg_max(namespaces, window_start) / nullif(median(namespaces), 0) AS growth,
               any_value(f.actor) IS NOT NULL AS flagged
        -- A per-cluster identity (scope = its cluster) is flagged only where its finding is;
        -- a person (scope NULL: one row over every cluster) wherever one is.
        FROM r LEFT JOIN flagged f
          ON f.actor = r.actor AND (r.scope IS NULL OR f.fcluster IS NULL OR f.fcluster = r.scope)
        GROUP BY r.actor, r.scope
        ORDER BY flagged DESC, max_secret_namespaces DESC, max_namespaces DESC, r.actor, r.scope NULLS FIRST
        LIMIT ?""",
                 [*params, *fparams, ctx.limit])


#: The columns the table format shows for ``--granted`` (JSON and CSV carry them all).
GRANTED_DISPLAY: Final = ["cluster", "identity", "row_type", "binding", "verbs", "resources", "used_requests",
                          "suggestion"]


def granted_rows(ctx: ReportContext) -> tuple[list[str], list[Row]]:
    """(columns, rows) of the detector's RBAC granted-vs-used table, narrowed, what to act on first
    (grants never used, then uses no grant explains); :func:`reach` cuts them to ``--limit``.

    Called by :func:`reach` for ``--granted``; the columns are the detector table's own, so they
    are right even without rows. Errors of the detector's SQL propagate.
    """
    window = ctx.filters.window
    table = granted_vs_used(ctx.con, window.since, window.until)
    rows = arrow_rows(table)
    if ctx.filters.actor is not None:
        rows = [r for r in rows if r["identity"] == ctx.filters.actor]
    if ctx.filters.cluster is not None:
        rows = [r for r in rows if r["cluster"] == ctx.filters.cluster]
    # what to act on first: grants never used, then uses no grant explains; then by name (stable)
    rows.sort(key=lambda r: (not r["never_used"], r["row_type"] != "used_not_granted"))
    return list(table.schema.names), rows


def reach(ctx: ReportContext) -> ReportResult:
    """Top identities by blast radius, or RBAC granted vs used with ``--granted`` (``ztaudit report reach``)."""
    if ctx.options.get("granted"):
        with ctx.progress.step("comparing RBAC grants with use"):
            columns, every = granted_rows(ctx)
        rows = every[: ctx.limit]
        section = Section("reach", "Granted vs used (RBAC snapshot)", columns, rows, display=GRANTED_DISPLAY,
                          description="what RBAC grants each identity against what it used in range; "
                                      "never-used grants first")
    else:
        with ctx.progress.step("measuring reach"):
            rows = reach_rows(ctx)
        section = Section("reach", f"Top {ctx.limit} identities by blast radius", REACH_COLUMNS, rows,
                          display=REACH_DISPLAY, description=f"per actor over {ctx.config.reach.window} windows")
    result = ReportResult("reach", "Identity reach (blast radius)", [section])
    if ctx.options.get("granted") and len(every) > ctx.limit:
        result.notes.append(f"reach: {len(every) - ctx.limit} of {len(every)} rows left out by --limit {ctx.limit}")
    if not rows and ctx.options.get("granted"):
        result.notes.append("no rows in range; --granted compares with an ingested RBAC snapshot (rbac_snapshot)")
    elif not rows:
        result.notes.append(empty_table_note(ctx.con, "reach", "reach rows"))
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            actors = flagged_actors(ctx) or [str(r["actor"]) for r in rows[:5] if r.get("actor")]
            result.charts.append(reach_over_time(ctx, actors))
    return result

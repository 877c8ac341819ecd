"""``report impersonation``: how people reached the API server, and whether proxy and audit agree.

Sections:

* ``paths`` (primary; SQL over ``k8s_audit``): per cluster and human identity, completed requests
  (ResponseComplete or Panic stage) that came
  through an approved impersonator (the proxy) or with a proxy-minted JWT carrying a session id the
  proxy issued (tier B), directly, or through an impersonator that is not approved for that cluster
  (``impersonation.approved_impersonators``). ``status`` is ``ok``,
  ``proxy_bypass`` (direct requests), ``unapproved_impersonator``, or ``flagged`` (every path is the
  approved proxy, but open impersonation findings concern the person: :func:`flag_paths`). Fields:
  ``cluster``, ``actor``, ``requests``, ``via_approved_proxy``, ``direct``, ``via_unapproved``,
  ``impersonators`` (list), ``first_seen``, ``last_seen``, ``status``, ``findings`` (detectors of the
  open impersonation findings about the person).
* ``matching``: proxy decisions paired with impersonated audit requests, from
  :func:`ztaudit.detectors.correlate.impersonation_summary` (cluster, actor, matched_tier_a,
  matched_tier_b, matched_tier_c, unmatched_proxy, unmatched_audit, pending, match_rate, first_seen,
  last_seen), narrowed by ``--actor`` and ``--cluster``.
* ``proxy_own_traffic``: per cluster and approved impersonator, its requests without impersonation
  that pair with no person's proxy decision (its own housekeeping: config maps, ingresses, leases),
  from :func:`ztaudit.detectors.impersonation.proxy_own_traffic` (cluster, identity, requests,
  forbidden, actions, namespaces, first_seen, last_seen), narrowed by ``--actor`` and ``--cluster``.
  Those that pair with a person's decision are ``impersonation.unobserved`` findings instead.
* ``findings``: ``impersonation.*`` findings in range.
"""

from __future__ import annotations

from typing import Any, Final

from ztaudit.detectors.correlate import clock_offsets, impersonation_summary
from ztaudit.detectors.impersonation import OWN_TRAFFIC_COLUMNS, proxy_own_traffic
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, arrow_rows, fetch
from ztaudit.reports.findings import FINDING_COLUMNS, FINDING_DISPLAY, query_findings

PATH_COLUMNS = ["cluster", "actor", "requests", "via_approved_proxy", "direct", "via_unapproved", "impersonators",
                "first_seen", "last_seen", "status", "findings"]
#: The order of the ``paths`` rows by status, worst first.
_RANK: Final = {"unapproved_impersonator": 0, "proxy_bypass": 1, "flagged": 2, "ok": 3}
MATCH_DISPLAY = ["cluster", "actor", "matched_tier_a", "matched_tier_b", "matched_tier_c", "unmatched_proxy",
                 "unmatched_audit", "match_rate"]


def human_paths(ctx: ReportContext) -> list[Row]:
    """Per (cluster, actor): request counts by path (approved proxy / direct / other impersonator)."""
    where, params = ctx.filters.where(time_col="request_received_at", actor_cols=("actor",))
    raw = fetch(ctx.con, f"""
        SELECT cluster, actor, impersonator,
               -- tier B: a proxy-minted JWT carrying a session id the proxy issued (Pomerium-JWT mode)
               coalesce(proxy_session_id || chr(0) || lower(user_name) IN (
                            SELECT session_id || chr(0) || lower(email) FROM proxy_decision
                            WHERE session_id IS NOT NULL AND session_id <> '' AND email IS NOT NULL), false)
                 AS via_proxy_session,
               count(*) FILTER (WHERE stage IN ('ResponseComplete', 'Panic')) AS requests,
               -- the span of the requests counted (a request still in flight has no completed stage)
               coalesce(min(request_received_at) FILTER (WHERE stage IN ('ResponseComplete', 'Panic')),
                        min(request_received_at)) AS first_seen,
               coalesce(max(request_received_at) FILTER (WHERE stage IN ('ResponseComplete', 'Panic')),
                        max(request_received_at)) AS last_seen
        FROM k8s_audit WHERE {where} AND (actor_kind = 'human' OR impersonator IS NOT NULL)
        GROUP BY ALL ORDER BY cluster, actor""", params)
    agg: dict[tuple[Any, Any], Row] = {}
    for r in raw:
        key = (r["cluster"], r["actor"])
        a = agg.setdefault(key, {"cluster": r["cluster"], "actor": r["actor"], "requests": 0,
                                 "via_approved_proxy": 0, "direct": 0, "via_unapproved": 0, "impersonators": [],
                                 "first_seen": r["first_seen"], "last_seen": r["last_seen"]})
        n = int(r["requests"])
        a["requests"] += n
        imp = r["impersonator"]
        if imp is None and r["via_proxy_session"]:
            a["via_approved_proxy"] += n
        elif imp is None:
            a["direct"] += n
        elif imp in ctx.config.approved_for(r["cluster"]):
            a["via_approved_proxy"] += n
            a["impersonators"].append(imp)
        else:
            a["via_unapproved"] += n
            a["impersonators"].append(imp)
        a["first_seen"] = min(a["first_seen"], r["first_seen"])
        a["last_seen"] = max(a["last_seen"], r["last_seen"])
    out = []
    for a in agg.values():
        a["impersonators"] = sorted(set(a["impersonators"]))
        a["status"] = ("unapproved_impersonator" if a["via_unapproved"] else
                       "proxy_bypass" if a["direct"] and a["actor"] not in ctx.config.impersonation.break_glass
                       else "ok")
        out.append(a)
    return sorted(out, key=lambda a: (_RANK[a["status"]], -a["requests"], str(a["cluster"]), str(a["actor"])))


def flag_paths(paths: list[Row], found: list[Row]) -> None:
    """Give each ``paths`` row the detectors of the open impersonation findings about its person
    (``findings``; cluster equal, actor compared case-insensitively), and the status ``flagged`` to an
    ``ok`` row that has some: every request came through the approved proxy, yet a finding says one
    had no person's decision behind it (``impersonation.unbrokered``: the proxy's credential used by
    someone else) or similar, and "ok" beside it would read as an all-clear. Called by
    :func:`impersonation` with the findings it shows; changes ``paths`` in place, never raises."""
    about: dict[tuple[Any, str], set[str]] = {}
    for f in found:
        if f.get("status") == "open" and f.get("actor"):
            about.setdefault((f["cluster"], str(f["actor"]).lower()), set()).add(str(f["detector"]))
    for p in paths:
        p["findings"] = sorted(about.get((p["cluster"], str(p["actor"]).lower()), set()))
        if p["status"] == "ok" and p["findings"]:
            p["status"] = "flagged"
    paths.sort(key=lambda a: _RANK[a["status"]])  # stable: the order within a status stays


def matching_rows(ctx: ReportContext, *, detect_tables: bool = False) -> tuple[list[str], list[Row]]:
    """(columns, rows) of the detector's proxy/audit matching summary, narrowed by ``--actor``/``--cluster``.

    Called by :func:`impersonation`; ``detect_tables``: the correlation's detect-plan tables for the
    report's window are on ``ctx.con`` (see :func:`impersonation_summary`). The columns are the detector
    table's own, so they are right even when no row matched. Errors of the detector's SQL propagate.
    """
    window = ctx.filters.window
    table = impersonation_summary(ctx.con, ctx.config, window.since, window.until, detect_tables=detect_tables)
    rows = arrow_rows(table)
    if ctx.filters.actor is not None:
        rows = [r for r in rows if r["actor"] == ctx.filters.actor]
    if ctx.filters.cluster is not None:
        rows = [r for r in rows if r["cluster"] == ctx.filters.cluster]
    return list(table.schema.names), rows


def impersonation(ctx: ReportContext) -> ReportResult:
    """Paths to the API per human identity, proxy/audit matching, impersonation findings
    (``ztaudit report impersonation``)."""
    with ctx.progress.step("classifying request paths"):
        paths = human_paths(ctx)
    # the proxy's own traffic first: when the window has some, its pairing builds the correlation's
    # detect tables, whose summary the matching section then reads (one plan, not two: ~2 s at 10M)
    with ctx.progress.step("finding the proxy's own traffic"):
        window = ctx.filters.window
        traffic = proxy_own_traffic(ctx.con, ctx.config, window.since, window.until)
        own = [r for r in traffic.rows
               if ctx.filters.actor in (None, r["identity"]) and ctx.filters.cluster in (None, r["cluster"])]
    with ctx.progress.step("matching proxy decisions to audit events"):
        match_cols, matching = matching_rows(ctx, detect_tables=traffic.detect_tables)
        skew = clock_offsets(ctx.con)
    with ctx.progress.step("reading findings"):
        found = query_findings(ctx, detector_prefix="impersonation")
    flag_paths(paths, found)
    result = ReportResult("impersonation", "Impersonation: how people reach the API server", [
        Section("paths", "Human identities by path to the API server", PATH_COLUMNS, paths,
                display=["cluster", "actor", "requests", "via_approved_proxy", "direct", "via_unapproved", "status"],
                description="direct requests by people bypass the proxy; impersonators not approved for the "
                            "cluster are suspect"),
        Section("matching", "Proxy decisions vs impersonated audit requests", match_cols, matching,
                display=MATCH_DISPLAY),
        Section("proxy_own_traffic", "Approved impersonators' own requests (no person's decision behind them)",
                list(OWN_TRAFFIC_COLUMNS), own,
                display=["cluster", "identity", "requests", "forbidden", "actions", "namespaces", "last_seen"],
                description="requests without impersonation that pair with no person's proxy decision: the "
                            "proxy's own housekeeping, not a finding"),
        Section("findings", "Impersonation findings", FINDING_COLUMNS, found, display=FINDING_DISPLAY,
                detail="summary"),
    ])
    result.notes.extend(skew)
    return result

"""Chart data shared by several reports (queried only for HTML, where charts are drawn).

* findings over time: findings per UTC day of ``first_seen``, stacked by severity;
* revocation latency distribution: revocations per latency bucket (from revocation rows);
* reach over time: daily blast radius (distinct cluster/namespace/resource/verb exercised) of
  flagged identities;
* events per day per source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ztaudit.reports.base import Chart, ReportContext, Series, fetch

SEVERITIES = ("critical", "high", "medium", "low", "info")
#: (upper bound in seconds, label); the last bucket is open-ended.
LATENCY_BUCKETS: tuple[tuple[float, str], ...] = (
    (10, "≤10s"), (60, "≤1m"), (300, "≤5m"), (900, "≤15m"), (3600, "≤1h"), (6 * 3600, "≤6h"),
    (86400, "≤1d"), (float("inf"), ">1d"),
)


def _series_by(rows: Iterable[dict[str, Any]], key: str, x: str, y: str, order: Iterable[str] = ()) -> list[Series]:
    data: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in rows:
        data[str(r[key])].append((str(r[x]), float(r[y] or 0)))
    names = [o for o in order if o in data] + sorted(k for k in data if k not in set(order))
    return [Series(n, data[n]) for n in names]


def findings_over_time(ctx: ReportContext, extra_where: str = "TRUE", extra_params: list[Any] | None = None) -> Chart:
    """Findings per day of first_seen, stacked by severity."""
    where, params = ctx.filters.where(time_col="first_seen", actor_cols=("actor",))
    rows = fetch(ctx.con, f"""
        SELECT strftime(date_trunc('day', first_seen), '%Y-%m-%d') AS day, severity, count(DISTINCT finding_id) AS n
        FROM findings WHERE {where} AND {extra_where} AND first_seen IS NOT NULL
        GROUP BY ALL ORDER BY day""", [*params, *(extra_params or [])])
    return Chart("findings_over_time", "Findings over time (by first seen, UTC day)", "bar",
                 _series_by(rows, "severity", "day", "n", SEVERITIES), y_label="findings")


def latency_bucket(seconds: float) -> str:
    """The :data:`LATENCY_BUCKETS` label for a latency in seconds."""
    for bound, label in LATENCY_BUCKETS:
        if seconds <= bound:
            return label
    return LATENCY_BUCKETS[-1][1]


def revocation_times(rows: Iterable[dict[str, Any]]) -> list[tuple[str, float]]:
    """(status, seconds) per revocation for :func:`latency_chart`: for an enforced revocation the time
    until it was enforced (the proxy's notice or the first attributable denial, whichever came first),
    for the others the exposure (revocation to the last allowed use after it), when there is one."""
    out = []
    for r in rows:
        enforced = [r[k] for k in ("notice_latency_seconds", "denial_latency_seconds") if r.get(k) is not None]
        v = min(enforced) if r.get("status") == "enforced" and enforced else r.get("exposure_seconds")
        if v is not None:
            out.append((str(r.get("status")), float(v)))
    return out


def latency_chart(latencies: Iterable[tuple[str, float]], grace_seconds: float) -> Chart:
    """Histogram of revocation latencies, stacked by status; ``latencies`` are (status, seconds)."""
    counts: dict[str, dict[str, float]] = defaultdict(lambda: {label: 0.0 for _, label in LATENCY_BUCKETS})
    for status, secs in latencies:
        counts[status][latency_bucket(secs)] += 1
    order = ("enforced", "not_enforced", "quiet", "pending", "not_applicable")
    series = [Series(status, list(counts[status].items()))
              for status in [*[s for s in order if s in counts], *sorted(set(counts) - set(order))]]
    return Chart("revocation_latency", "Revocation latency distribution", "bar", series,
                 x_label="time from revocation to enforcement, or to the last allowed use", y_label="revocations",
                 note=f"grace period {int(grace_seconds)} s; activity after it is 'not_enforced'")


def reach_over_time(ctx: ReportContext, actors: list[str]) -> Chart:
    """Daily blast radius (distinct cluster/namespace/resource/verb) for ``actors``."""
    title = "Reach over time: flagged identities"
    if not actors:
        return Chart("reach_over_time", title, "line", [], note="no flagged identities in range")
    where, params = ctx.filters.where(time_col="request_received_at", use_actor=False)
    marks = ", ".join("?" for _ in actors)
    rows = fetch(ctx.con, f"""
        SELECT actor, strftime(date_trunc('day', request_received_at), '%Y-%m-%d') AS day,
               count(DISTINCT (cluster, namespace, resource, verb)) AS reach
        FROM k8s_audit WHERE {where} AND actor IN ({marks})
        GROUP BY ALL ORDER BY day""", [*params, *actors])
    return Chart("reach_over_time", title, "line", _series_by(rows, "actor", "day", "reach", actors),
                 y_label="blast radius",
                 note="blast radius = distinct (cluster, namespace, resource, verb) exercised per UTC day")


def flagged_actors(ctx: ReportContext, limit: int = 6) -> list[str]:
    """Identities with reach or other findings in range, most severe first (for reach charts)."""
    where, params = ctx.filters.where(time_col="first_seen", actor_cols=("actor",), dt=False)
    rows = fetch(ctx.con, f"""
        SELECT actor, max(CASE WHEN detector LIKE 'reach.%' THEN 1 ELSE 0 END) AS reach_flag,
               max(CASE severity WHEN 'critical' THEN 5 WHEN 'high' THEN 4 WHEN 'medium' THEN 3
                   WHEN 'low' THEN 2 ELSE 1 END) AS sev, count(*) AS n
        FROM findings WHERE {where} AND actor IS NOT NULL
        GROUP BY actor ORDER BY reach_flag DESC, sev DESC, n DESC, actor LIMIT ?""", [*params, limit])
    return [str(r["actor"]) for r in rows]


def events_per_day(ctx: ReportContext) -> Chart:
    """Rows per UTC day per source table."""
    parts = []
    params: list[Any] = []
    for table, col in (("k8s_audit", "request_received_at"), ("proxy_decision", "decided_at"),
                       ("idp_event", "occurred_at")):
        cluster_col = None if table == "idp_event" else "cluster"
        where, p = ctx.filters.where(time_col=col, cluster_col=cluster_col)
        parts.append(f"SELECT '{table}' AS source, strftime(date_trunc('day', {col}), '%Y-%m-%d') AS day, "
                     f"count(*) AS n FROM {table} WHERE {where} AND {col} IS NOT NULL GROUP BY ALL")
        params += p
    rows = fetch(ctx.con, " UNION ALL ".join(parts) + " ORDER BY day", params)
    return Chart("events_per_day", "Events per day by source (UTC)", "bar",
                 _series_by(rows, "source", "day", "n"), y_label="events")

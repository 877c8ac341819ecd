"""``report revocation``: each revocation, whether it was enforced, and how fast (latency percentiles).

Uses ``ztaudit.detectors.revocation.revocation_status(con, config, since, until)`` when that module
exists; otherwise a plain SQL fallback over the views:

* a revocation is an ``idp_event`` with ``is_revocation``; session-scoped revocations are matched
  to proxy decisions by ``session_id`` only, the others by login, subject id or session;
* *allowed activity after it* is an allowed proxy decision, or an audit event of the revoked login
  with a response code below 400, in (revoked_at, revoked_at + lookback];
* ``latency_seconds`` = last allowed activity - revoked_at (0 when only denials were seen);
* ``status`` = ``not_enforced`` (allowed activity after the grace period), ``enforced``
  (activity stopped within the grace period, or only denials seen) or ``unverified`` (no
  activity at all after the revocation, so enforcement cannot be judged).

With the detector, the rows are its :data:`ztaudit.detectors.revocation.STATUS_COLUMNS`: ``kind``,
``subject``, ``subject_id``, ``session_id``, ``cluster``, ``source``, ``system``, ``event_type``,
``revoked_at``, ``revoked_by``, ``restored_at``, last/first allowed and denied uses at the proxy
and the API, ``allowed_after_grace_proxy``, ``allowed_after_grace_api``,
``first_allowed_after_grace``, ``last_allowed_after_grace``, ``latency_seconds``,
``exposure_seconds``, ``status`` (enforced | not_enforced | unverified), ``evidence``,
``violations``.

Fallback JSON/CSV fields (one object per revocation): ``revoked_at``, ``idp``, ``event_type``, ``scope``,
``subject_id``, ``subject_login``, ``session_id``, ``revoked_by``, ``status``,
``latency_seconds``, ``last_allowed_at``, ``last_allowed_proxy_at``, ``last_allowed_audit_at``,
``allowed_after_grace`` (count), ``first_denied_at``. Section ``latency``: ``revocations``,
``enforced``, ``not_enforced``, ``unverified``, ``p50_seconds``, ``p90_seconds``, ``p95_seconds``,
``p99_seconds``, ``max_seconds``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from ztaudit.detectors.revocation import revocation_status
from ztaudit.reports import charts
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.formats import rows_of

REVOCATION_COLUMNS = ["revoked_at", "idp", "event_type", "scope", "subject_id", "subject_login", "session_id",
                      "revoked_by", "status", "latency_seconds", "last_allowed_at", "last_allowed_proxy_at",
                      "last_allowed_audit_at", "allowed_after_grace", "first_denied_at"]
REVOCATION_DISPLAY = ["revoked_at", "subject_login", "scope", "idp", "status", "latency_seconds",
                      "allowed_after_grace", "last_allowed_at"]
LATENCY_COLUMNS = ["revocations", "enforced", "not_enforced", "unverified", "p50_seconds", "p90_seconds",
                   "p95_seconds", "p99_seconds", "max_seconds"]
EXTERNAL = "ztaudit.detectors.revocation:revocation_status"
EXTERNAL_DISPLAY = ["revoked_at", "kind", "subject", "cluster", "status", "latency_seconds", "exposure_seconds",
                    "after_grace"]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _fallback(ctx: ReportContext) -> list[Row]:
    cfg = ctx.config.revocation
    where, params = ctx.filters.where(time_col="occurred_at", cluster_col=None,
                                      actor_cols=("subject_login", "subject_id"))
    cluster_px = "AND cluster = ?" if ctx.filters.cluster else ""
    cluster_params = [ctx.filters.cluster] if ctx.filters.cluster else []
    sql = f"""
    WITH rev AS (
        SELECT occurred_at AS revoked_at, idp, event_type, coalesce(revocation_scope, 'identity') AS scope,
               subject_id, subject_login, session_id, actor AS revoked_by,
               occurred_at + to_seconds(CAST(? AS DOUBLE)) AS grace_end,
               occurred_at + to_seconds(CAST(? AS DOUBLE)) AS window_end
        FROM idp_event WHERE is_revocation AND {where}
    ),
    t0 AS (SELECT min(revoked_at) AS t0 FROM rev),
    px AS (
        SELECT decided_at, email, user_id, session_id, is_allowed FROM proxy_decision
        WHERE decided_at >= (SELECT t0 FROM t0)
          AND CAST(dt AS VARCHAR) >= (SELECT strftime(t0, '%Y-%m-%d') FROM t0) {cluster_px}
    ),
    ka AS (
        SELECT request_received_at AS seen_at, actor, max(response_code) AS response_code FROM k8s_audit
        WHERE request_received_at >= (SELECT t0 FROM t0)
          AND CAST(dt AS VARCHAR) >= (SELECT strftime(t0, '%Y-%m-%d') FROM t0)
          AND actor IN (SELECT subject_login FROM rev) {cluster_px}
        GROUP BY cluster, audit_id, request_received_at, actor
    ),
    pm AS (
        SELECT rev.revoked_at, rev.subject_login, rev.subject_id, rev.session_id, px.decided_at, px.is_allowed,
               rev.grace_end
        FROM rev JOIN px ON px.decided_at > rev.revoked_at AND px.decided_at <= rev.window_end
         AND (CASE WHEN rev.scope = 'session' AND rev.session_id IS NOT NULL
                   THEN px.session_id = rev.session_id
                   ELSE (px.email = rev.subject_login OR px.user_id = rev.subject_id
                         OR px.session_id = rev.session_id) END)
    ),
    am AS (
        SELECT rev.revoked_at, rev.subject_login, rev.subject_id, rev.session_id, ka.seen_at,
               coalesce(ka.response_code, 200) < 400 AS ok, rev.grace_end
        FROM rev JOIN ka ON ka.actor = rev.subject_login AND ka.seen_at > rev.revoked_at
                        AND ka.seen_at <= rev.window_end
        WHERE rev.scope <> 'session'
    )
    SELECT rev.* EXCLUDE (grace_end, window_end),
        (SELECT max(decided_at) FROM pm WHERE pm.revoked_at = rev.revoked_at
            AND pm.subject_login IS NOT DISTINCT FROM rev.subject_login
            AND pm.session_id IS NOT DISTINCT FROM rev.session_id AND pm.is_allowed) AS last_allowed_proxy_at,
        (SELECT count(*) FROM pm WHERE pm.revoked_at = rev.revoked_at
            AND pm.subject_login IS NOT DISTINCT FROM rev.subject_login
            AND pm.session_id IS NOT DISTINCT FROM rev.session_id AND pm.is_allowed
            AND pm.decided_at > pm.grace_end) AS proxy_after_grace,
        (SELECT min(decided_at) FROM pm WHERE pm.revoked_at = rev.revoked_at
            AND pm.subject_login IS NOT DISTINCT FROM rev.subject_login
            AND pm.session_id IS NOT DISTINCT FROM rev.session_id AND NOT pm.is_allowed) AS first_denied_proxy_at,
        (SELECT max(seen_at) FROM am WHERE am.revoked_at = rev.revoked_at
            AND am.subject_login IS NOT DISTINCT FROM rev.subject_login AND am.ok) AS last_allowed_audit_at,
        (SELECT count(*) FROM am WHERE am.revoked_at = rev.revoked_at
            AND am.subject_login IS NOT DISTINCT FROM rev.subject_login AND am.ok
            AND am.seen_at > am.grace_end) AS audit_after_grace,
        (SELECT min(seen_at) FROM am WHERE am.revoked_at = rev.revoked_at
            AND am.subject_login IS NOT DISTINCT FROM rev.subject_login AND NOT am.ok) AS first_denied_audit_at
    FROM rev ORDER BY revoked_at, subject_login
    """
    raw = fetch(ctx.con, sql, [float(cfg.grace_seconds), float(cfg.lookback_days * 86400), *params,
                               *cluster_params, *cluster_params])
    out = []
    for r in raw:
        allowed = [t for t in (r["last_allowed_proxy_at"], r["last_allowed_audit_at"]) if t is not None]
        denied = [t for t in (r["first_denied_proxy_at"], r["first_denied_audit_at"]) if t is not None]
        last_allowed: datetime | None = max(allowed) if allowed else None
        after_grace = int(r["proxy_after_grace"] or 0) + int(r["audit_after_grace"] or 0)
        latency: float | None
        if last_allowed is not None:
            latency = (last_allowed - r["revoked_at"]).total_seconds()
            status = "not_enforced" if after_grace > 0 else "enforced"
        elif denied:
            latency, status = 0.0, "enforced"
        else:
            latency, status = None, "unverified"
        out.append({
            "revoked_at": r["revoked_at"], "idp": r["idp"], "event_type": r["event_type"], "scope": r["scope"],
            "subject_id": r["subject_id"], "subject_login": r["subject_login"], "session_id": r["session_id"],
            "revoked_by": r["revoked_by"], "status": status, "latency_seconds": latency,
            "last_allowed_at": last_allowed, "last_allowed_proxy_at": r["last_allowed_proxy_at"],
            "last_allowed_audit_at": r["last_allowed_audit_at"], "allowed_after_grace": after_grace,
            "first_denied_at": min(denied) if denied else None,
        })
    return out


def _normalise_external(rows: list[Row]) -> list[Row]:
    """Map the detector's row shape onto :data:`REVOCATION_COLUMNS` where names differ."""
    aliases = {"latency_seconds": ("latency_seconds", "latency_s", "latency"),
               "revoked_at": ("revoked_at", "occurred_at"),
               "scope": ("scope", "revocation_scope"),
               "allowed_after_grace": ("allowed_after_grace", "allowed_after_grace_count", "violations")}
    out = []
    for r in rows:
        row = dict(r)
        for target, names in aliases.items():
            if row.get(target) is None:
                for n in names:
                    if row.get(n) is not None:
                        v = row[n]
                        row[target] = v.total_seconds() if hasattr(v, "total_seconds") else v
                        break
        out.append(row)
    return out


def revocation_rows(ctx: ReportContext) -> tuple[list[Row], str]:
    """(rows, source) where source names the detector function or ``sql-fallback``."""
    fn = revocation_status
    if fn is not None:
        rows = _normalise_external(rows_of(fn(ctx.con, ctx.config, ctx.filters.since, ctx.filters.until)))
        if ctx.filters.actor is not None:
            rows = [r for r in rows
                    if ctx.filters.actor in (r.get("subject"), r.get("subject_login"), r.get("subject_id"))]
        if ctx.filters.cluster is not None:
            rows = [r for r in rows if r.get("cluster") == ctx.filters.cluster]
        for r in rows:  # display-only total (not a JSON/CSV field)
            r["after_grace"] = int(r.get("allowed_after_grace_proxy") or 0) + int(r.get("allowed_after_grace_api") or 0)
        return rows, EXTERNAL
    return _fallback(ctx), "sql-fallback"


def latency_summary(rows: list[Row]) -> dict[str, Any]:
    """Counts per status and latency percentiles in seconds over revocations with a latency."""
    lat = [float(r["latency_seconds"]) for r in rows if r.get("latency_seconds") is not None]
    statuses = [str(r.get("status")) for r in rows]
    return {
        "revocations": len(rows),
        "enforced": statuses.count("enforced"),
        "not_enforced": statuses.count("not_enforced"),
        "unverified": statuses.count("unverified"),
        "p50_seconds": percentile(lat, 50), "p90_seconds": percentile(lat, 90),
        "p95_seconds": percentile(lat, 95), "p99_seconds": percentile(lat, 99),
        "max_seconds": max(lat) if lat else None,
    }


def revocation(ctx: ReportContext) -> ReportResult:
    """Each revocation with status and latency, plus latency percentiles."""
    with ctx.progress.step("judging revocations"):
        rows, source = revocation_rows(ctx)
    if source == "sql-fallback":
        columns, display = REVOCATION_COLUMNS, REVOCATION_DISPLAY
    else:
        columns = [c for c in rows[0] if c != "after_grace"] if rows else list(EXTERNAL_DISPLAY[:-1])
        display = [c for c in EXTERNAL_DISPLAY if c in columns or c == "after_grace"]
    result = ReportResult("revocation", "Revocation enforcement", [
        Section("revocations", "Revocations (status and latency)", columns, rows, display=display,
                description=f"grace period {ctx.config.revocation.grace_seconds} s; "
                + ("latency = last allowed activity after the revocation" if source == "sql-fallback" else
                   "latency = revocation to first denial (enforced); exposure = revocation to last allowed use "
                   "after the grace period (not_enforced)")),
        Section("latency", "Revocation latency percentiles (seconds)", LATENCY_COLUMNS, [latency_summary(rows)],
                vertical=True),
    ])
    if source == "sql-fallback":
        result.notes.append("computed by the report's SQL fallback (detectors.revocation not available)")
    if ctx.want_charts:
        result.charts.append(charts.latency_chart(charts.revocation_times(rows),
                                                      ctx.config.revocation.grace_seconds))
    return result

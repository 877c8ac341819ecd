"""``report revocation``: each revocation, whether it was enforced, and how fast (latency percentiles).

The rows are :func:`ztaudit.detectors.revocation_status.revocation_status` over ``[--since, --until)``, the
same judgement the ``revocation.not_enforced`` detector makes. Fields (primary section
``revocations``): the detector's :data:`~ztaudit.detectors.revocation_status.STATUS_COLUMNS` — ``kind``,
``subject``, ``identity``, ``subject_id``, ``session_id``, ``cluster``, ``source``, ``system``,
``event_type``, ``revoked_at``, ``revoked_by``, ``restored_at``, last/first allowed and denied uses
at the proxy and the API, ``allowed_after_grace_proxy``, ``allowed_after_grace_api``,
``first_allowed_after_grace``, ``last_allowed_after_grace``, ``latency_seconds`` (revocation to first
denial), ``exposure_seconds`` (revocation to last allowed use after the grace period), ``status``
(enforced | not_enforced | unverified), ``evidence``, ``violations`` (event references of allowed
uses after the grace period) — then ``allowed_after_grace``, the same references as
``violations`` (kept so the report's JSON/CSV keys stay as they were).

``--actor`` keeps revocations whose ``subject`` or ``subject_id`` is the actor; ``--cluster`` those
of that cluster (IdP revocations name no cluster). Section ``latency``: ``revocations``,
``enforced``, ``not_enforced``, ``unverified``, ``p50_seconds``, ``p90_seconds``, ``p95_seconds``,
``p99_seconds``, ``max_seconds``.
"""

from __future__ import annotations

import math
from typing import Any

from ztaudit.detectors.revocation_status import STATUS_COLUMNS, revocation_status
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, arrow_rows
from ztaudit.reports.charts import latency_chart, revocation_times

#: JSON/CSV fields of the primary section, in order.
REVOCATION_COLUMNS = [*STATUS_COLUMNS, "allowed_after_grace"]
#: Columns the terminal and HTML tables show; ``after_grace`` is display-only (proxy + API counts).
REVOCATION_DISPLAY = ["revoked_at", "kind", "subject", "cluster", "status", "latency_seconds", "exposure_seconds",
                      "after_grace"]
LATENCY_COLUMNS = ["revocations", "enforced", "not_enforced", "unverified", "p50_seconds", "p90_seconds",
                   "p95_seconds", "p99_seconds", "max_seconds"]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def revocation_rows(ctx: ReportContext) -> list[Row]:
    """Every revocation in range with its status, narrowed by ``--actor`` and ``--cluster``.

    Called by this report, the summary report's latency chart and the ``audit_revocations``
    notebook. Errors of the detector's SQL propagate (the report fails; it never guesses).
    """
    window = ctx.filters.window
    rows = arrow_rows(revocation_status(ctx.con, ctx.config, window.since, window.until))
    if ctx.filters.actor is not None:
        rows = [r for r in rows if ctx.filters.actor in (r["subject"], r["subject_id"])]
    if ctx.filters.cluster is not None:
        rows = [r for r in rows if r["cluster"] == ctx.filters.cluster]
    for r in rows:
        r["allowed_after_grace"] = r["violations"]
        r["after_grace"] = int(r["allowed_after_grace_proxy"] or 0) + int(r["allowed_after_grace_api"] or 0)
    return rows


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
    """Each revocation with status and latency, plus latency percentiles (``ztaudit report revocation``)."""
    with ctx.progress.step("judging revocations"):
        rows = revocation_rows(ctx)
    result = ReportResult("revocation", "Revocation enforcement", [
        Section("revocations", "Revocations (status and latency)", REVOCATION_COLUMNS, rows,
                display=REVOCATION_DISPLAY,
                description=f"grace period {ctx.config.revocation.grace_seconds} s; latency = revocation to first "
                            "denial (enforced); exposure = revocation to last allowed use after the grace period "
                            "(not_enforced)"),
        Section("latency", "Revocation latency percentiles (seconds)", LATENCY_COLUMNS, [latency_summary(rows)],
                vertical=True),
    ])
    if ctx.want_charts:
        result.charts.append(latency_chart(revocation_times(rows), ctx.config.revocation.grace_seconds))
    return result

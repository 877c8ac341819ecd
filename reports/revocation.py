"""``report revocation``: was each revocation enforced, how do we know, and how fast.

The rows are :func:`ztaudit.detectors.revocation_status.revocation_status` over ``[--since, --until)``, the
same judgement the ``revocation.not_enforced`` detector makes. The report leads with the verdict
(:func:`verdict`: one line per question), then:

* section ``revocations`` (primary): one row per revocation, the detector's
  :data:`~ztaudit.detectors.revocation_status.STATUS_COLUMNS` (status, reason, evidence chain,
  latencies; docs/revocation.md says what each means), then ``allowed_after_grace``, the same
  references as ``violations`` (kept so the report's JSON/CSV keys stay as they were);
* section ``streams``: the revocations a stream outlived (``revocation.stream_survived``: a watch,
  exec, attach, port-forward, proxy or followed log opened before the revocation and open past its
  grace period), :data:`STREAM_COLUMNS`: how many, how many still open, the longest; each such
  revocation's ``reason`` ends with the same count, and the verdict says how many revocations a
  stream outlived (a revocation whose new requests were all refused is still ``enforced``);
* section ``latency``: one row per group (``all``, each IdP / system, each cluster the subject was
  seen on): :data:`LATENCY_COLUMNS`, the counts per status, the notice and denial latency
  percentiles and the share of judged revocations that met ``revocation.objective_seconds``.

``--actor`` keeps revocations whose ``subject``, ``identity`` or ``subject_id`` is the actor;
``--cluster`` those whose subject was seen on that cluster (IdP revocations name no cluster of
their own). Called by ``ztaudit report revocation``, the summary report's chart and the
``audit_revocations`` notebook; errors of the detector's SQL propagate (the report fails, it never
guesses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ztaudit.detectors.revocation_status import STATUS_COLUMNS, STATUSES, revocation_status
from ztaudit.detectors.revocation_stream import stream_exposure
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, arrow_rows
from ztaudit.reports.charts import latency_chart, revocation_times

#: JSON/CSV fields of the primary section, in order.
REVOCATION_COLUMNS = [*STATUS_COLUMNS, "allowed_after_grace"]
#: Columns the terminal and HTML tables show.
REVOCATION_DISPLAY = ["revoked_at", "system", "kind", "identity", "status", "notice_latency_seconds",
                      "denial_latency_seconds", "exposure_seconds", "reason"]
LATENCY_COLUMNS = ["group", "revocations", *STATUSES, "judged", "notice_p50_seconds", "notice_p95_seconds",
                   "denial_p50_seconds", "denial_p95_seconds", "exposure_max_seconds", "objective_met",
                   "objective_share"]
#: Columns of the ``streams`` section: one row per revocation that a stream outlived.
STREAM_COLUMNS = ["revoked_at", "system", "kind", "identity", "status", "streams", "still_open",
                  "longest_stream_seconds", "longest_stream", "longest_ref", "stream_kinds", "stream_refs"]
STREAM_DISPLAY = ["revoked_at", "system", "kind", "identity", "status", "streams", "still_open",
                  "longest_stream_seconds", "longest_stream"]
#: Statuses that count in the rates: pending and not_applicable are left out of every rate.
JUDGED = ("enforced", "not_enforced", "quiet")


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def revocation_rows(ctx: ReportContext) -> list[Row]:
    """Every revocation in range with its status, narrowed by ``--actor`` and ``--cluster``."""
    window = ctx.filters.window
    rows = arrow_rows(revocation_status(ctx.con, ctx.config, window.since, window.until))
    if ctx.filters.actor is not None:
        who = ctx.filters.actor.lower()
        rows = [r for r in rows if who in (str(r["subject"]).lower(), str(r["identity"]).lower(),
                                           str(r["subject_id"]).lower())]
    if ctx.filters.cluster is not None:
        rows = [r for r in rows if r["cluster"] == ctx.filters.cluster or ctx.filters.cluster in (r["clusters"] or [])]
    for r in rows:
        r["allowed_after_grace"] = r["violations"]
    return rows


def _values(rows: Iterable[Row], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def latency_summary(rows: list[Row], group: str = "all") -> dict[str, Any]:
    """Counts per status, latency percentiles (seconds) and the objective share for ``rows``.

    Percentiles are over the enforced revocations that have the latency; the objective share is
    over the judged ones (enforced, not_enforced, quiet): a quiet revocation proves nothing, so it
    does not meet the objective.
    """
    statuses = [str(r.get("status")) for r in rows]
    enforced = [r for r in rows if r.get("status") == "enforced"]
    judged = sum(statuses.count(s) for s in JUDGED)
    met = sum(1 for r in rows if r.get("objective_met") is True)
    notice, denial = _values(enforced, "notice_latency_seconds"), _values(enforced, "denial_latency_seconds")
    exposure = _values(rows, "exposure_seconds")
    return {
        "group": group, "revocations": len(rows), **{s: statuses.count(s) for s in STATUSES}, "judged": judged,
        "notice_p50_seconds": percentile(notice, 50), "notice_p95_seconds": percentile(notice, 95),
        "denial_p50_seconds": percentile(denial, 50), "denial_p95_seconds": percentile(denial, 95),
        "exposure_max_seconds": max(exposure) if exposure else None,
        "objective_met": met, "objective_share": round(met / judged, 4) if judged else None,
    }


def latency_groups(rows: list[Row]) -> list[dict[str, Any]]:
    """:func:`latency_summary` for all rows, then per system (IdP) and per cluster seen."""
    out = [latency_summary(rows)]
    for system in sorted({str(r["system"]) for r in rows}):
        out.append(latency_summary([r for r in rows if r["system"] == system], f"system:{system}"))
    clusters = sorted({c for r in rows for c in (r.get("clusters") or [])})
    for cluster in clusters:
        out.append(latency_summary([r for r in rows if cluster in (r.get("clusters") or [])], f"cluster:{cluster}"))
    return out


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _share(n: int, of: int) -> str:
    return f"{n} of {of} ({100 * n / of:.0f} %)" if of else f"{n}"


def add_stream_exposure(rows: list[Row], exposure: dict[tuple[Any, ...], dict[str, Any]]) -> list[Row]:
    """Give each revocation row the streams that outlived it (``streams``, ``longest_stream_seconds``...,
    :func:`~ztaudit.detectors.revocation_stream.stream_exposure` keyed by evidence, kind, subject and
    time), end its ``reason`` with them, and return the ``streams`` section's rows (those with any)."""
    out: list[Row] = []
    for r in rows:
        e = exposure.get((r["evidence"], r["kind"], r["subject"], r["revoked_at"]))
        r["streams"] = e["streams"] if e else 0
        if not e:
            continue
        least = " at least" if e["longest_still_open"] else ""
        r["longest_stream_seconds"] = e["longest_seconds"]
        r["reason"] = (f"{r['reason']}; but {e['streams']} stream(s) opened before it stayed open past the grace "
                       f"period ({', '.join(e['kinds'])}"
                       + (f", {e['still_open']} still open at the end of the logs" if e["still_open"] else "")
                       + f"), the longest{least} {_dur(e['longest_seconds'])} after it (revocation.stream_survived)")
        out.append({**{k: r[k] for k in ("revoked_at", "system", "kind", "identity", "status")},
                    "streams": e["streams"], "still_open": e["still_open"],
                    "longest_stream_seconds": e["longest_seconds"],
                    "longest_stream": f"{e['longest_stream']}{' (still open)' if e['longest_still_open'] else ''}",
                    "longest_ref": e["longest_ref"], "stream_kinds": e["kinds"], "stream_refs": e["refs"]})
    return out


def verdict(rows: list[Row], objective_seconds: int) -> list[str]:
    """One line per question, for the top of the report (every format) and the notebook.

    Rows given streams by :func:`add_stream_exposure` also get the line on open streams.
    """
    s = latency_summary(rows)
    judged = int(s["judged"])
    if not rows:
        return ["No revocation in this window: nothing to judge."]
    lines = [f"{len(rows)} revocation(s): {judged} judged, {s['pending']} pending (grace period not yet passed), "
             f"{s['not_applicable']} not applicable (subject never used the proxy or the API server)."]
    lines.append(f"Enforced: {_share(int(s['enforced']), judged)}; the proxy noticed in "
                 f"{_dur(s['notice_p50_seconds'])} (p50) / {_dur(s['notice_p95_seconds'])} (p95); first attributable "
                 f"denial {_dur(s['denial_p50_seconds'])} (p50).")
    lines.append(f"Objective (enforced, nothing allowed, within {_dur(float(objective_seconds))}): met by "
                 f"{_share(int(s['objective_met']), judged)}.")
    lines.append(f"Not enforced: {_share(int(s['not_enforced']), judged)}"
                 + (" — allowed use after the grace period; see the findings of revocation.not_enforced."
                    if s["not_enforced"] else "."))
    lines.append(f"Quiet: {_share(int(s['quiet']), judged)} — seen before, nothing allowed or denied after and no "
                 "proxy notice: no proof either way.")
    if any("streams" in r for r in rows):
        outlived = [r for r in rows if r.get("streams")]
        if outlived:
            enforced = sum(1 for r in outlived if r.get("status") == "enforced")
            met = sum(1 for r in outlived if r.get("objective_met") is True)
            longest = max(float(r["longest_stream_seconds"]) for r in outlived)
            lines.append(f"Open streams: {len(outlived)} revocation(s) outlived by a stream opened before them "
                         f"({enforced} of them enforced for new requests, {met} counted above as meeting the "
                         f"objective), the longest open {_dur(longest)} after its revocation: a revocation stops new "
                         "requests only; see revocation.stream_survived.")
        else:
            lines.append("Open streams: no watch, exec, attach, port-forward, proxy or followed log opened before a "
                         "revocation stayed open past its grace period.")
    return lines


def revocation(ctx: ReportContext) -> ReportResult:
    """The verdict, each revocation with its evidence chain, and latency per group (``ztaudit report revocation``)."""
    with ctx.progress.step("judging revocations"):
        rows = revocation_rows(ctx)
    with ctx.progress.step("finding streams that outlived them"):
        streams = add_stream_exposure(rows, stream_exposure(ctx.con, ctx.config, ctx.filters.window.until))
    rc = ctx.config.revocation
    result = ReportResult("revocation", "Revocation enforcement", [
        Section("revocations", "Revocations (status, reason and latency)", REVOCATION_COLUMNS, rows,
                display=REVOCATION_DISPLAY,
                description=f"grace period {rc.grace_seconds} s; notice = revocation to the proxy dropping the "
                            "session; denial = revocation to the first attributable denial; exposure = revocation "
                            "to the last allowed use after it"),
        Section("streams", "Streams that outlived a revocation (watch, exec, attach, port-forward, proxy, logs -f)",
                STREAM_COLUMNS, streams, display=STREAM_DISPLAY,
                description=f"opened before the revocation and open more than {rc.grace_seconds} s after it; "
                            "longest = seconds open after the revocation (a minimum when still open at the end of "
                            "the logs); the API server authorizes a stream only when it opens"),
        Section("latency", "Latency and objective per IdP and cluster (seconds)", LATENCY_COLUMNS,
                latency_groups(rows)),
    ], verdict=verdict(rows, rc.objective_seconds))
    if ctx.want_charts:
        result.charts.append(latency_chart(revocation_times(rows), rc.grace_seconds))
    return result

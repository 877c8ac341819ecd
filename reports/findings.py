"""``report findings``: detector findings, most severe and most recent first.

JSON/CSV fields (one object per finding): ``finding_id`` (stable id), ``detector``, ``severity``
(info|low|medium|high|critical), ``actor``, ``credential_id``, ``cluster``, ``namespace``,
``first_seen``, ``last_seen`` (ISO-8601 UTC), ``summary``, ``evidence`` (list of ``table:key``
event references), ``score`` (detector-specific, higher = more certain), ``context`` (object with
detector details), ``detected_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.charts import findings_over_time

FINDING_COLUMNS = ["finding_id", "detector", "severity", "actor", "credential_id", "cluster", "namespace",
                   "first_seen", "last_seen", "summary", "evidence", "score", "context", "detected_at"]
FINDING_DISPLAY = ["severity", "detector", "actor", "cluster", "last_seen", "summary"]
SEVERITY_RANK = ("CASE severity WHEN 'critical' THEN 5 WHEN 'high' THEN 4 WHEN 'medium' THEN 3 "
                 "WHEN 'low' THEN 2 WHEN 'info' THEN 1 ELSE 0 END")
SEVERITY_LEVELS = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}


def query_findings(ctx: ReportContext, *, detector_prefix: str | None = None, actor: str | None = None,
                   min_severity: str | None = None, limit: int | None = None,
                   detector_ids: Sequence[str] | None = None) -> list[Row]:
    """Findings overlapping [since, until), newest version of each finding_id, bound filters only.

    ``detector_ids`` (from :func:`ztaudit.detectors.registry.resolve`) keeps only those detectors;
    ``detector_prefix`` is for report code that names a family it knows exists.
    """
    where, params = ctx.filters.where(time_col=None, actor_cols=("actor",), use_actor=actor is None)
    parts = [where]
    if ctx.filters.since is not None:
        parts.append("last_seen >= ?")
        params.append(ctx.filters.since)
    if ctx.filters.until is not None:
        parts.append("first_seen < ?")
        params.append(ctx.filters.until)
    if actor is not None:
        parts.append("actor = ?")
        params.append(actor)
    if detector_prefix:
        parts.append("(detector = ? OR starts_with(detector, ?))")
        params += [detector_prefix, detector_prefix.rstrip(".") + "."]
    if detector_ids is not None:
        parts.append(f"detector IN ({', '.join('?' for _ in detector_ids) or 'NULL'})")
        params += list(detector_ids)
    if min_severity:
        parts.append(f"{SEVERITY_RANK} >= ?")
        params.append(SEVERITY_LEVELS[min_severity])
    sql = f"""
        SELECT {", ".join(FINDING_COLUMNS)} FROM findings WHERE {" AND ".join(parts)}
        QUALIFY row_number() OVER (PARTITION BY finding_id ORDER BY detected_at DESC NULLS LAST) = 1
        ORDER BY {SEVERITY_RANK} DESC, last_seen DESC NULLS LAST, finding_id"""
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return fetch(ctx.con, sql, params)


def findings(ctx: ReportContext) -> ReportResult:
    """All findings in range (``--detector`` and ``--severity`` minimum narrow it).

    The ``detector`` option is an id or family, or a list of them, resolved by
    :func:`ztaudit.detectors.registry.resolve` (one that names no detector raises ``UnknownName``,
    exit 2). With no rows the note says whether the filters or a missing ``detect`` run is why.
    """
    detector = ctx.options.get("detector")
    severity = ctx.options.get("severity")
    ids = None
    if detector:
        # Imported here: the registry imports every detector (and with them pandas), which the
        # reports that never filter by detector must not pay for (tests/core/test_catalog.py).
        from ztaudit.detectors import registry

        ids = registry.resolve([detector] if isinstance(detector, str) else list(detector))
    with ctx.progress.step("reading findings"):
        rows = query_findings(ctx, detector_ids=ids, min_severity=severity)
    by: dict[tuple[str, str], int] = {}
    for r in rows:
        k = (str(r["detector"]), str(r["severity"]))
        by[k] = by.get(k, 0) + 1
    counts: list[dict[str, Any]] = [{"detector": d, "severity": s, "findings": n}
                                    for (d, s), n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))]
    result = ReportResult("findings", "Findings", [
        Section("findings", "Findings (most severe, most recent first)", FINDING_COLUMNS, rows,
                display=FINDING_DISPLAY, detail="summary"),
        Section("by_detector", "Findings by detector and severity", ["detector", "severity", "findings"], counts),
    ])
    if not rows:
        result.notes.append(_empty_note(ctx, detector=ids, severity=severity))
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            result.charts.append(findings_over_time(ctx))
    return result


def _empty_note(ctx: ReportContext, *, detector: Sequence[str] | None, severity: str | None) -> str:
    """Why ``report findings`` has no rows: no findings stored at all (run ``detect``), or the
    filters excluded the N stored ones (naming the filters given)."""
    row = ctx.con.execute("SELECT count(DISTINCT finding_id) FROM findings").fetchone()
    total = int(row[0]) if row and row[0] else 0
    if not total:
        return "no findings in range; run `ztaudit detect` after ingesting if you have not"
    given = [f"--{k}" for k, v in (("since", ctx.filters.since), ("until", ctx.filters.until),
                                     ("cluster", ctx.filters.cluster), ("actor", ctx.filters.actor),
                                     ("detector", detector), ("severity", severity)) if v]
    return (f"no findings match {' '.join(given) or 'the filters'} (the lake holds {total} finding"
            f"{'s' if total != 1 else ''})")

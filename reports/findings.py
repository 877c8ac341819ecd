"""``report findings``: detector findings, most severe and most recent first.

JSON/CSV fields (one object per finding): ``finding_id`` (stable id), ``detector``, ``severity``
(info|low|medium|high|critical), ``actor``, ``credential_id``, ``cluster``, ``namespace``,
``first_seen``, ``last_seen`` (ISO-8601 UTC), ``summary``, ``evidence`` (list of ``table:key``
event references), ``score`` (detector-specific, higher = more certain), ``context`` (object with
detector details), ``detected_at``, ``first_detected_at`` and ``first_run`` (when and by which run
the finding id was first produced), then the triage fields ``status`` (open|acked|suppressed),
``triage_reason``, ``triaged_by``, ``triaged_at``, ``triage_until`` (docs/triage.md). The fields
are generated into docs/fields.md (scripts/gen-fields).

Triage (``status`` option, default :data:`~ztaudit.core.triage.DEFAULT_STATUSES`, open and acked):
suppressed findings are hidden unless asked for, and a note says how many. ``new``: only findings
first produced since the last ``ztaudit detect`` run began (the ``detect_runs`` table).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ztaudit.core.names import UnknownName, did_you_mean
from ztaudit.core.schema import FINDINGS
from ztaudit.core.triage import DEFAULT_STATUSES, STATUSES, TRIAGE_FIELDS, latest_decisions, parse_rules, status_of
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.charts import findings_over_time

#: The findings table's columns, then the triage fields: the same fields as a finding on the
#: findings topic (detectors/streaming.py ``finding_record``).
FINDING_COLUMNS = [*FINDINGS.names, *TRIAGE_FIELDS]
FINDING_DISPLAY = ["severity", "status", "detector", "actor", "cluster", "last_seen", "summary"]
SEVERITY_RANK = ("CASE severity WHEN 'critical' THEN 5 WHEN 'high' THEN 4 WHEN 'medium' THEN 3 "
                 "WHEN 'low' THEN 2 WHEN 'info' THEN 1 ELSE 0 END")
SEVERITY_LEVELS = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}


def query_findings(ctx: ReportContext, *, detector_prefix: str | None = None, actor: str | None = None,
                   min_severity: str | None = None, limit: int | None = None,
                   detector_ids: Sequence[str] | None = None, statuses: Sequence[str] | None = None,
                   first_detected_since: datetime | None = None) -> list[Row]:
    """Findings overlapping [since, until), newest version of each finding_id, bound filters only,
    each with its triage fields (:func:`with_triage`).

    ``detector_ids`` (from :func:`ztaudit.detectors.registry.resolve`) keeps only those detectors;
    ``detector_prefix`` is for report code that names a family it knows exists. ``statuses`` keeps
    those triage statuses (applied after ``limit``); ``first_detected_since`` keeps findings first
    produced at or after it.
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
    if first_detected_since is not None:
        parts.append("first_detected_at >= ?")
        params.append(first_detected_since)
    sql = f"""
        SELECT {", ".join(FINDINGS.names)} FROM findings WHERE {" AND ".join(parts)}
        QUALIFY row_number() OVER (PARTITION BY finding_id ORDER BY detected_at DESC NULLS LAST) = 1
        ORDER BY {SEVERITY_RANK} DESC, last_seen DESC NULLS LAST, finding_id"""
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    rows = with_triage(ctx, fetch(ctx.con, sql, params))
    if statuses is not None:
        rows = [r for r in rows if r["status"] in statuses]
    return rows


def with_triage(ctx: ReportContext, rows: list[Row]) -> list[Row]:
    """``rows`` with their triage fields: the latest explicit decision, else the config's rules."""
    if not rows:
        return rows
    rules = parse_rules(ctx.config.triage.suppress)
    decisions = latest_decisions(ctx.con, [str(r["finding_id"]) for r in rows])
    for r in rows:
        r.update(status_of(r, decisions.get(str(r["finding_id"])), rules).fields())
    return rows


def wanted_statuses(option: Any) -> tuple[str, ...]:
    """The ``status`` option (a word, comma-separated words, a list, or ``all``) as statuses; an
    unknown word raises :class:`UnknownName` (exit 2) naming the nearest."""
    if not option:
        return DEFAULT_STATUSES
    words = [w.strip() for part in ([option] if isinstance(option, str) else option)
             for w in str(part).split(",") if w.strip()]
    if "all" in words:
        return STATUSES
    for w in words:
        if w not in STATUSES:
            raise UnknownName(f"unknown status {w!r}{did_you_mean(w, STATUSES)}",
                              fix=f"use {', '.join(STATUSES)} or all (comma-separated)")
    return tuple(dict.fromkeys(words))


def last_detect_run(ctx: ReportContext) -> datetime | None:
    """When the last ``ztaudit detect`` run that wrote findings began (``detect_runs``), or None."""
    row = ctx.con.execute("SELECT max(started_at) FROM detect_runs").fetchone()
    return row[0] if row and row[0] is not None else None


def findings(ctx: ReportContext) -> ReportResult:
    """All findings in range (``--detector`` and ``--severity`` minimum narrow it).

    The ``detector`` option is an id or family, or a list of them, resolved by
    :func:`ztaudit.detectors.registry.resolve` (one that names no detector raises ``UnknownName``,
    exit 2). With no rows the note says whether the filters or a missing ``detect`` run is why.
    """
    detector = ctx.options.get("detector")
    severity = ctx.options.get("severity")
    statuses = wanted_statuses(ctx.options.get("status"))
    new_since = None
    notes: list[str] = []
    if ctx.options.get("new"):
        new_since = last_detect_run(ctx)
        if new_since is None:
            notes.append("--new: no `ztaudit detect` run is recorded in this lake (runs of earlier versions "
                         "are not); every finding counts as new until the next detect run")
        else:
            notes.append(f"--new: findings first produced since the last detect run began "
                         f"({new_since.strftime('%Y-%m-%d %H:%M:%S')} UTC)")
    ids = None
    if detector:
        # Imported here: the registry imports every detector (and with them pandas), which the
        # reports that never filter by detector must not pay for (tests/core/test_catalog.py).
        from ztaudit.detectors import registry

        ids = registry.resolve([detector] if isinstance(detector, str) else list(detector))
    with ctx.progress.step("reading findings"):
        every = query_findings(ctx, detector_ids=ids, min_severity=severity, first_detected_since=new_since)
    rows = [r for r in every if r["status"] in statuses]
    hidden = {s: sum(1 for r in every if r["status"] == s) for s in STATUSES if s not in statuses}
    notes += [f"{n} {s} finding{'s' if n != 1 else ''} not shown (--status {s} or --status all to list "
              f"{'them' if n != 1 else 'it'})" for s, n in hidden.items() if n]
    notes += _rule_notes(ctx)
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
    result.params["status"] = ",".join(statuses)
    result.notes += notes
    if not rows and not every:
        result.notes.append(_empty_note(ctx, detector=ids, severity=severity))
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            result.charts.append(findings_over_time(ctx))
    return result


def _rule_notes(ctx: ReportContext) -> list[str]:
    """A note for each ``[[triage.suppress]]`` rule whose detector pattern names no registered
    detector (a typo would otherwise suppress nothing, silently)."""
    rules = parse_rules(ctx.config.triage.suppress)
    if not rules:
        return []
    from ztaudit.detectors.registry import DETECTORS  # imported only when rules exist (pandas)

    return [f"config {r.name}: detector {r.detector.pattern!r} matches no detector"
            f"{did_you_mean(r.detector.pattern, DETECTORS)}" for r in rules
            if not any(r.detector.match(d) for d in DETECTORS)]


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

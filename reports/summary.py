"""``report summary``: the answer to each question of the mission first, then what the lake holds.

Called by ``ztaudit report summary`` and as the first report of ``ztaudit demo``. The result opens
(:attr:`~ztaudit.reports.base.ReportResult.verdict`, shown first by every human format and in
``--section all``) with a header line (the lake, the time span of its events, the config file and
ztaudit's version) and one line per question of the mission (:data:`QUESTIONS`), each with its
number and status; the same answers are the ``questions`` section and the header is the one-row
``about`` section, for scripts. The primary section stays ``sources`` (rows, days, span and
identities per table and cluster), so ``--format json`` keeps its documented shape; then
quarantine by reason and findings by detector. SQL errors propagate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from ztaudit.core.config import Config
from ztaudit.core.schema import PARTITION_TIME, TABLES
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.cells import display
from ztaudit.reports.charts import (
    events_per_day,
    findings_over_time,
    flagged_actors,
    latency_chart,
    reach_over_time,
    revocation_times,
)
from ztaudit.reports.revocation import latency_summary, revocation_rows

#: The column that names "who" in each table, for a distinct-identities count.
ACTOR_COLUMN = {"k8s_audit": "actor", "proxy_decision": "email", "idp_event": "subject_login",
                "findings": "actor"}

SOURCE_COLUMNS = ["table", "cluster", "rows", "days", "first_at", "last_at", "identities"]
QUESTION_COLUMNS = ["question", "status", "count", "unit", "answer", "detectors"]
ABOUT_COLUMNS = ["lake", "first_at", "last_at", "config", "version"]
#: Tables of logged events (the span the header names); the others are derived by ``detect``.
EVENT_TABLES = ("k8s_audit", "proxy_decision", "idp_event")


@dataclass(frozen=True)
class Question:
    """One question of the mission (README, "ztaudit"): its words and the detector family answering it."""

    key: str
    text: str
    family: str


#: The four questions, in the README's order; ``family`` is the detector-id prefix of their findings.
QUESTIONS = (
    Question("impersonation", "Impersonation observed?", "impersonation"),
    Question("revocation", "Revocations enforced?", "revocation"),
    Question("reach", "Unusual reach?", "reach"),
    Question("credentials", "Stale credentials?", "credential"),
)

#: Every status a question can have, worst first: what each means is in :func:`answers`.
STATUSES = ("violation", "not_enforced", "review", "pending", "unproven", "not_run", "no_data", "ok",
            "enforced", "none")


def ztaudit_version() -> str:
    """The installed distribution's version (``ztaudit --version``), or ``unknown`` from a bare tree."""
    try:
        return version("ztaudit")
    except PackageNotFoundError:
        return "unknown"


def config_label(config: Config) -> str:
    """The config file a report ran with, or where its settings came from when there was none."""
    if config.source_path:
        return config.source_path
    env = sorted({o for o in config.origins.values() if o.startswith("environment")})
    return "none (built-in defaults" + (" and ZTAUDIT_* environment variables)" if env else ")")


def source_rows(ctx: ReportContext) -> list[Row]:
    """Rows, days, time span and distinct identities per lake table and cluster (section ``sources``)."""
    rows: list[Row] = []
    for table, schema in TABLES.items():
        if table == "quarantine":
            continue
        tcol = PARTITION_TIME[table]
        has_cluster = "cluster" in schema.names
        where, params = ctx.filters.where(time_col=tcol, cluster_col="cluster" if has_cluster else None,
                                          actor_cols=(ACTOR_COLUMN[table],) if table in ACTOR_COLUMN else ())
        actor = ACTOR_COLUMN.get(table)
        cluster_expr = "cluster" if has_cluster else "CAST(NULL AS VARCHAR)"
        ident = f"approx_count_distinct({actor})" if actor else "CAST(NULL AS BIGINT)"
        with ctx.progress.step(f"summarising {table}"):
            rows += fetch(ctx.con, f"""
                SELECT ? AS "table", {cluster_expr} AS cluster, count(*) AS rows,
                       count(DISTINCT dt) AS days, min({tcol}) AS first_at, max({tcol}) AS last_at,
                       {ident} AS identities
                FROM "{table}" WHERE {where} GROUP BY ALL HAVING count(*) > 0
                ORDER BY cluster NULLS FIRST""", [table, *params])
    return rows


def family_counts(ctx: ReportContext) -> dict[str, Row]:
    """Per detector family (``impersonation``, ``credential``...): findings, identities, and
    findings per detector, over the same findings the ``findings`` section counts."""
    where, params = ctx.filters.where(time_col="first_seen", actor_cols=("actor",), dt=False)
    rows = fetch(ctx.con, f"""
        SELECT split_part(detector, '.', 1) AS family, detector, count(DISTINCT finding_id) AS findings,
               count(DISTINCT actor) AS identities
        FROM findings WHERE {where} GROUP BY ALL ORDER BY family, findings DESC, detector""", params)
    out: dict[str, Row] = {}
    for r in rows:
        fam = out.setdefault(str(r["family"]), {"findings": 0, "detectors": {}})
        fam["findings"] += int(r["findings"])
        fam["detectors"][str(r["detector"])] = int(r["findings"])
    ident = fetch(ctx.con, f"""
        SELECT split_part(detector, '.', 1) AS family, count(DISTINCT actor) AS identities
        FROM findings WHERE {where} GROUP BY ALL""", params)
    for r in ident:
        out[str(r["family"])]["identities"] = int(r["identities"])
    return out


def _derived_rows(ctx: ReportContext, table: str) -> int:
    """Rows of a table ``detect`` builds (``reach``, ``credentials``): 0 means detect has not run."""
    row = ctx.con.execute(f'SELECT count(*) FROM "{table}"').fetchone()  # table: a name from this module
    return int(row[0]) if row else 0


def _by_detector(fam: Row) -> str:
    return ", ".join(f"{d.split('.', 1)[-1]} {n}" for d, n in fam["detectors"].items())


def answers(ctx: ReportContext, sources: Sequence[Row], revocations: list[Row]) -> list[Row]:
    """One row per :data:`QUESTIONS` entry: status, its number (``count`` of ``unit``) and the answer.

    Statuses: ``violation`` (findings that break the model), ``review`` (reach anomalies: unusual,
    not necessarily wrong), ``ok`` (data to judge, ``detect`` ran, nothing found), ``not_run``
    (``detect`` has not built its tables), ``no_data`` (nothing to judge in range). Revocations use
    the revocation report's judgement (:func:`~ztaudit.reports.revocation.latency_summary`):
    ``not_enforced``, ``pending``, ``unproven`` (only quiet ones: no proof either way),
    ``enforced`` or ``none`` (no revocation in range).
    """
    fams = family_counts(ctx)
    tables = {str(r["table"]) for r in sources}
    detected = "findings" in tables or _derived_rows(ctx, "reach") > 0 or _derived_rows(ctx, "credentials") > 0
    out: list[Row] = []
    for q in QUESTIONS:
        fam = fams.get(q.family, {"findings": 0, "identities": 0, "detectors": {}})
        n, who, dets = int(fam["findings"]), int(fam.get("identities", 0)), _by_detector(fam)
        row: Row = {"question": q.text, "detectors": list(fam["detectors"])}
        if q.key == "revocation":
            s = latency_summary(revocations)
            row |= {"count": int(s["not_enforced"]), "unit": "not enforced"}
            if s["not_enforced"]:
                status = "not_enforced"
            elif n:
                status = "violation"
            elif s["pending"] and not s["judged"]:
                status = "pending"
            elif s["quiet"]:
                status = "unproven"
            elif s["enforced"]:
                status = "enforced"
            else:
                status = "none"
            row["answer"] = (f"of {s['revocations']} revocation(s): {s['enforced']} enforced, {s['quiet']} quiet "
                             f"(no proof either way), {s['pending']} pending, "
                             f"{s['not_applicable']} not applicable"
                             + (f"; findings: {dets}" if n else "") + " (report revocation)")
        else:
            row |= {"count": n, "unit": "finding(s)"}
            needs = {"impersonation": ("k8s_audit",), "reach": ("k8s_audit",),
                     "credentials": ("k8s_audit",)}[q.key]
            if n:
                status = "review" if q.key == "reach" else "violation"
                row["answer"] = f"{who} identit{'y' if who == 1 else 'ies'}: {dets}"
            elif not set(needs) & tables:
                status = "no_data"
                row["answer"] = "no Kubernetes audit events in range to judge"
            elif not detected:
                status = "not_run"
                row["answer"] = "no findings table: run `ztaudit detect` after ingesting"
            else:
                status = "ok"
                row["answer"] = {"impersonation": "every person reached the API server through an approved "
                                                  "impersonator with a proxy decision behind it",
                                 "reach": "no identity's reach is unusual for itself or its peers",
                                 "credentials": "no stale, legacy, shared or off-cluster credential use"}[q.key]
        row["status"] = status
        out.append(row)
    return out


def about_row(ctx: ReportContext, sources: Sequence[Row]) -> Row:
    """The header: the lake, the first and last event of the logged tables, the config, the version."""
    events = [r for r in sources if r["table"] in EVENT_TABLES]
    firsts = [r["first_at"] for r in events if r["first_at"] is not None]
    lasts = [r["last_at"] for r in events if r["last_at"] is not None]
    return {"lake": ctx.lake, "first_at": min(firsts) if firsts else None, "last_at": max(lasts) if lasts else None,
            "config": config_label(ctx.config), "version": ztaudit_version()}


def _days(first: datetime, last: datetime) -> str:
    """How many UTC days ``first``..``last`` touch, in words."""
    n = (last.date() - first.date()).days + 1
    return f"{n} day{'s' if n != 1 else ''}"


def header_line(about: Row) -> str:
    """The header as one line: lake, time span (UTC), config and version."""
    first, last = about["first_at"], about["last_at"]
    span = (f"Events {display(first)} to {display(last)} UTC"
            + (f" ({_days(first, last)})" if isinstance(first, datetime) and isinstance(last, datetime) else "")
            if first is not None else "No events in range")
    parts = [f"Lake {about['lake']}"] if about["lake"] else []
    return " · ".join([*parts, span, f"config: {about['config']}", f"ztaudit {about['version']}"])


def answer_line(row: Row) -> str:
    """One question as a verdict line: question, STATUS, number, then the answer."""
    status = str(row["status"]).replace("_", " ").upper()
    return f"{row['question']} {status}: {row['count']} {row['unit']} — {row['answer']}"


def summary(ctx: ReportContext) -> ReportResult:
    """The answers first, then rows, days, span and identities per table and cluster; quarantine and
    findings (``ztaudit report summary``, and the first report of ``ztaudit demo``). SQL errors propagate."""
    rows = source_rows(ctx)
    sources = Section("sources", "Lake contents by table and cluster", SOURCE_COLUMNS, rows,
                      description="rows = stored rows (audit: one per stage); identities is approximate "
                                  "(HyperLogLog).")
    qwhere, qparams = ctx.filters.where(time_col="quarantined_at", cluster_col=None)
    with ctx.progress.step("summarising quarantine"):
        quarantine = fetch(ctx.con, f"""
            SELECT source_guess, reason, count(*) AS records, sum(raw_size) AS bytes,
                   min(quarantined_at) AS first_at, max(quarantined_at) AS last_at
            FROM quarantine WHERE {qwhere} GROUP BY ALL ORDER BY records DESC, reason, source_guess""", qparams)
    fwhere, fparams = ctx.filters.where(time_col="first_seen", actor_cols=("actor",), dt=False)
    with ctx.progress.step("summarising findings"):
        findings = fetch(ctx.con, f"""
            SELECT detector, severity, count(DISTINCT finding_id) AS findings,
                   count(DISTINCT actor) AS identities, max(last_seen) AS last_seen
            FROM findings WHERE {fwhere} GROUP BY detector, severity
            ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2
                     WHEN 'low' THEN 3 ELSE 4 END, findings DESC, detector""", fparams)
    with ctx.progress.step("judging revocations"):
        revocations = revocation_rows(ctx)
    with ctx.progress.step("answering the questions"):
        questions = answers(ctx, rows, revocations)
    about = about_row(ctx, rows)
    result = ReportResult("summary", "Lake summary", [
        sources,
        Section("questions", "The four questions", QUESTION_COLUMNS, questions,
                display=["question", "status", "count", "unit", "answer"]),
        Section("about", "This report", ABOUT_COLUMNS, [about], vertical=True),
        Section("quarantine", "Quarantined records by source and reason",
                ["source_guess", "reason", "records", "bytes", "first_at", "last_at"], quarantine),
        Section("findings", "Findings by detector and severity",
                ["detector", "severity", "findings", "identities", "last_seen"], findings),
    ], verdict=[header_line(about), *(answer_line(q) for q in questions)])
    if not rows:
        result.notes.append("the lake holds no events in this range; ingest logs with `ztaudit ingest`")
    if ctx.want_charts:
        with ctx.progress.step("charts"):
            result.charts.append(events_per_day(ctx))
            result.charts.append(findings_over_time(ctx))
            result.charts.append(latency_chart(revocation_times(revocations), ctx.config.revocation.grace_seconds))
            result.charts.append(reach_over_time(ctx, flagged_actors(ctx)))
    return result

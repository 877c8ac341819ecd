"""``report quarantine``: what was rejected at ingest and why (nothing is dropped silently).

JSON/CSV fields of the primary section (one object per rejected record): ``quarantined_at``,
``origin`` (file:path:line or kafka:topic/partition/offset), ``source_guess``, ``reason``,
``detail``, ``raw_size`` (bytes), ``raw_truncated``, ``raw_preview`` (first 200 characters of
the scrubbed raw bytes, decoded as UTF-8 with replacement).
"""

from __future__ import annotations

from ztaudit.reports.base import ReportContext, ReportResult, Section, fetch

RECORD_COLUMNS = ["quarantined_at", "origin", "source_guess", "reason", "detail", "raw_size", "raw_truncated",
                  "raw_preview"]
PREVIEW_BYTES = 200


def quarantine(ctx: ReportContext) -> ReportResult:
    """Rejected records (newest first, ``--limit``) and counts by reason."""
    where, params = ctx.filters.where(time_col="quarantined_at", cluster_col=None)
    with ctx.progress.step("reading quarantine"):
        by_reason = fetch(ctx.con, f"""
            SELECT reason, source_guess, count(*) AS records, sum(raw_size) AS bytes,
                   min(quarantined_at) AS first_at, max(quarantined_at) AS last_at,
                   min(origin) AS example_origin
            FROM quarantine WHERE {where} GROUP BY ALL ORDER BY records DESC, reason, source_guess""", params)
        records = fetch(ctx.con, f"""
            SELECT quarantined_at, origin, source_guess, reason, detail, raw_size, raw_truncated,
                   raw AS raw_preview
            FROM quarantine WHERE {where}
            ORDER BY quarantined_at DESC, origin LIMIT ?""", [*params, ctx.limit])
    for r in records:
        raw = r.get("raw_preview")
        if isinstance(raw, (bytes, bytearray, memoryview)):
            r["raw_preview"] = bytes(raw)[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    result = ReportResult("quarantine", "Quarantined records", [
        Section("records", f"Rejected records (newest {ctx.limit})", RECORD_COLUMNS, records,
                display=["quarantined_at", "reason", "source_guess", "origin", "detail"]),
        Section("by_reason", "Rejections by reason and source",
                ["reason", "source_guess", "records", "bytes", "first_at", "last_at", "example_origin"],
                by_reason),
    ])
    if ctx.filters.cluster or ctx.filters.actor:
        result.notes.append("--cluster and --actor do not apply to quarantined records (they were not parsed)")
    if not by_reason:
        result.notes.append("nothing was quarantined in range")
    return result

"""The consumer's post-flush hook: judge the newly durable window and return changed findings.

Called by ``ztaudit consume`` after each durable flush (after the lake files were renamed into
place, before offsets are committed is *not* required: findings are derived data and a replay
recomputes them). It runs every importable detector over [since − detect.streaming_lookback_seconds,
until), so a proxy line and its audit event that arrive in different flushes still pair up, writes
the findings under the findings lock (shared with batch ``detect``), and returns the findings that
are new or changed and not suppressed (docs/triage.md), as machine records (:func:`finding_record`),
for the consumer to produce to ``kafka.findings_topic``.

One machine format: a record has exactly the fields and value forms of ``ztaudit report findings
--format json`` (the ``findings`` table's columns, the triage fields of
:data:`~ztaudit.core.triage.TRIAGE_FIELDS`, ``schema_version``; times ISO-8601 UTC with
microseconds and ``Z``; ``context`` an object), so a consumer of the topic and a script reading the
report parse the same thing (tests/reports/test_triage_format.py compares them).

Only the detectors that judge events incrementally run here (:data:`STREAMING_DETECTORS`: the
impersonation and revocation checks); baselines and derived tables (reach, credentials) are
day-level batch work for ``ztaudit detect``. A per-day finding re-judged over the last hour is
combined with the stored one (findings_store), not cut down to that hour.

The hook stays on DuckDB (issue 17, item 4): it opens an ``open_lake`` connection, which
:func:`~ztaudit.detectors.run.run_detectors` wraps in a ``DuckDBEngine`` for the detectors, and reads
the triage decisions (:func:`publishable`) from the same connection.

Failure: a detector that raises is logged and skipped (its previous findings stay); lake write
errors (``SinkError``, including the lock timeout) propagate to the consumer, which decides whether
to retry.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ztaudit.core.config import Config
from ztaudit.core.errors import SinkError
from ztaudit.core.lake import open_lake, spill_directory
from ztaudit.core.schema import FINDINGS, SCHEMA_VERSION
from ztaudit.core.triage import State, latest_decisions, parse_rules, status_of
from ztaudit.detectors.engine import DuckDBConnection
from ztaudit.detectors.findings_store import write_findings
from ztaudit.detectors.run import run_detectors

log = logging.getLogger(__name__)

#: Detectors the post-flush hook runs by default.
STREAMING_DETECTORS: tuple[str, ...] = (
    "impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
    "impersonation.unapproved_impersonator", "revocation.not_enforced", "revocation.stream_survived",
)


def on_flush(lake: str | Path, since: datetime, until: datetime, config: Config,
             detectors: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the detectors over the flushed window plus lookback; return the machine records of the
    new/changed findings that are not suppressed."""
    start = since - timedelta(seconds=config.detect.streaming_lookback_seconds)
    with spill_directory() as spill:
        con = open_lake(lake, must_exist=False, memory_limit=config.detect.memory_limit or None, spill_dir=spill)
        try:
            result = run_detectors(lake, config, since=start, until=until, build_tables=False,
                                   detector_ids=list(detectors or STREAMING_DETECTORS), write=False, con=con)
            for did, err in result.errors.items():
                log.error("streaming detect: %s failed over [%s, %s): %s", did, start.isoformat(),
                          until.isoformat(), err.splitlines()[0])
            try:  # only the detectors that ran may retract (run.py); `counts` holds exactly those
                changed = write_findings(lake, result.rows, detectors=sorted(result.counts), since=start,
                                         until=until, lock_timeout=config.detect.lock_timeout_seconds,
                                         run="consume")
            except OSError as exc:
                raise SinkError(f"cannot write findings to {Path(lake) / 'findings'}: {exc.strerror or exc}",
                                fix="make the lake writable (check its permissions and free space)") from exc
            return publishable(con, changed, config)
        finally:
            con.close()


def publishable(con: DuckDBConnection, rows: Sequence[Mapping[str, Any]], config: Config,
                now: datetime | None = None) -> list[dict[str, Any]]:
    """The machine records of ``rows`` (findings-table dicts) that triage does not suppress: their
    latest explicit decision (the ``triage`` view of ``con``) and the config's rules."""
    if not rows:
        return []
    rules = parse_rules(config.triage.suppress)
    decisions = latest_decisions(con, [str(r["finding_id"]) for r in rows])
    out = []
    for r in rows:
        state = status_of(r, decisions.get(str(r["finding_id"])), rules, now)
        if state.status == "suppressed":
            log.info("streaming detect: finding %s (%s) is suppressed (%s); not produced", r["finding_id"],
                     r["detector"], state.by)
            continue
        out.append(finding_record(r, state))
    return out


def _machine(value: Any, column: str) -> Any:
    """One value as the machine formats write it (reports/cells.py ``jsonable`` does the same)."""
    if isinstance(value, datetime):
        ts = value if value.tzinfo else value.replace(tzinfo=UTC)
        return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (list, tuple)):
        return [_machine(v, "") for v in value]
    if column == "context" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def finding_record(row: Mapping[str, Any], state: State) -> dict[str, Any]:
    """A finding as every machine output shows it: ``schema_version``, the ``findings`` columns, then
    the triage fields, each JSON-ready (module docstring)."""
    rec: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    rec.update({name: _machine(row.get(name), name) for name in FINDINGS.names})
    rec.update({name: _machine(v, name) for name, v in state.fields().items()})
    return rec

"""The consumer's post-flush hook: judge the newly durable window and return changed findings.

Called by ``ztaudit consume`` after each durable flush (after the lake files were renamed into
place, before offsets are committed is *not* required: findings are derived data and a replay
recomputes them). It runs every importable detector over [since − detect.streaming_lookback_seconds,
until), so a proxy line and its audit event that arrive in different flushes still pair up, writes
the findings under the findings lock (shared with batch ``detect``), and returns the rows that are
new or changed, for the consumer to produce to ``kafka.findings_topic``.

Only the detectors that judge events incrementally run here (:data:`STREAMING_DETECTORS`: the
impersonation and revocation checks); baselines and derived tables (reach, credentials) are
day-level batch work for ``ztaudit detect``. A per-day finding re-judged over the last hour is
combined with the stored one (findings_store), not cut down to that hour.

Failure: a detector that raises is logged and skipped (its previous findings stay); lake write
errors (``SinkError``, including the lock timeout) propagate to the consumer, which decides whether
to retry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ztaudit.core.config import Config
from ztaudit.detectors.run import run_detectors

log = logging.getLogger(__name__)

#: Detectors the post-flush hook runs by default.
STREAMING_DETECTORS: tuple[str, ...] = (
    "impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
    "impersonation.unapproved_impersonator", "revocation.not_enforced", "revocation.stream_survived",
)


def on_flush(lake: str | Path, since: datetime, until: datetime, config: Config,
             detectors: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the detectors over the flushed window plus lookback; return new/changed finding rows."""
    start = since - timedelta(seconds=config.detect.streaming_lookback_seconds)
    result = run_detectors(lake, config, since=start, until=until, build_tables=False,
                           detector_ids=list(detectors or STREAMING_DETECTORS),
                           memory_limit=config.detect.memory_limit or None)
    for did, err in result.errors.items():
        log.error("streaming detect: %s failed over [%s, %s): %s", did, start.isoformat(), until.isoformat(),
                  err.splitlines()[0])
    return result.changed

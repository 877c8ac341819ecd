"""Issue 11, items 12-15, "Planted-marker test": a unique marker in every place a secret can hide,
across every source kind and every quarantine reason; after ingest, detect and compact, no byte
of any file under the lake (``_state`` included) holds one, raw or decompressed.

The same corpus is sent through ``ztaudit consume`` in tests/integration/test_consume_markers.py.
"""

from __future__ import annotations

from pathlib import Path

from support.markers import MAX_RECORD, Markers, assert_no_marker, audit_events, write_corpus

from ztaudit.core.config import Config
from ztaudit.core.schema import COMPACTABLE_TABLES
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.compact import compact
from ztaudit.pipeline.ingest import ingest_paths


def compact_everything(lake: Path) -> None:
    for table in COMPACTABLE_TABLES:
        for day_dir in sorted((lake / table).glob("dt=*")):
            compact(lake, table, day_dir.name.removeprefix("dt="), target_rows=1_000_000)


def test_no_planted_marker_reaches_any_lake_file(tmp_path: Path) -> None:
    mk = Markers()
    inputs = write_corpus(tmp_path / "in", mk)
    lake = tmp_path / "lake"
    stats = ingest_paths(inputs, lake, cluster="c1", max_record_bytes=MAX_RECORD)
    # The corpus exercised what it claims: rows in every table, and quarantine of several reasons.
    assert stats.rows["k8s_audit"] >= 80 + 2 * len(audit_events(Markers()))
    assert stats.rows["proxy_decision"] >= 3 and stats.rows["idp_event"] >= 4
    reasons = set(stats.quarantined)
    assert {"invalid_json", "truncated", "not_utf8", "oversized", "bad_timestamp", "missing_field",
            "unknown_shape"} <= reasons, reasons
    assert_no_marker(lake, mk)

    result = run_detectors(lake, Config())
    assert not result.errors, result.errors
    assert (lake / "credentials").exists()
    assert_no_marker(lake, mk)

    compact_everything(lake)
    assert_no_marker(lake, mk)

"""Issue 11, items 12-15, through ``ztaudit consume``: the planted-marker corpus (tests/support/markers.py)
sent as Kafka messages, one record each, on one topic per source file; after consume, detect and
compact, no byte of any file under the lake (``_state`` with the consumer's metrics included) holds a
marker, raw or decompressed. The file-ingest variant is tests/hostile/test_markers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.kafka_broker import KafkaBroker, create_topic, producer, run_consume
from support.markers import MAX_RECORD, Markers, assert_no_marker, corpus

from ztaudit.core.config import Config
from ztaudit.core.schema import COMPACTABLE_TABLES
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.compact import compact

pytestmark = pytest.mark.kafka


def test_no_planted_marker_reaches_the_lake_through_consume(kafka_broker: KafkaBroker, topic_name: str,
                                                            tmp_path: Path, backend: str) -> None:
    mk = Markers()
    records = corpus(mk)
    topics = {name: f"{topic_name}-{i}" for i, name in enumerate(records)}
    p = producer(kafka_broker, max_request_size=4 * 1024 * 1024, linger_ms=0)
    try:
        for name, values in records.items():
            create_topic(kafka_broker, topics[name], 1)
            for v in values:
                p.send(topics[name], value=v, partition=0)
        p.flush()
    finally:
        p.close()
    sent = sum(len(v) for v in records.values())

    lake = tmp_path / "lake"
    first, *rest = topics.values()
    extra = [a for t in rest for a in ("--topic", t)]
    metrics_file = lake / "_state" / "consume-metrics.json"  # inside the lake: scanned for markers too
    proc = run_consume(kafka_broker, first, lake, "g-markers", *extra, "--max-record-bytes", str(MAX_RECORD),
                       "--metrics-file", str(metrics_file), until_idle=3, backend=backend)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Every message is accounted for (the conservation law, in the consumer's metrics file) ...
    metrics = json.loads(metrics_file.read_text())
    assert metrics["records"] == sent and metrics["balanced"], metrics
    assert metrics["quarantined"] >= 5, metrics
    # ... and quarantine got several reasons, so the scrub was exercised.
    assert_no_marker(lake, mk)

    result = run_detectors(lake, Config())
    assert not result.errors, result.errors
    assert_no_marker(lake, mk)
    for table in COMPACTABLE_TABLES:
        for day_dir in sorted((lake / table).glob("dt=*")):
            compact(lake, table, day_dir.name.removeprefix("dt="), target_rows=1_000_000)
    assert_no_marker(lake, mk)

"""A consumer replay after ``ztaudit compact`` adds no duplicates (real broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.kafka_broker import KafkaBroker, audit_events, audit_id_counts, create_topic, produce, run_consume
from support.lakes import audit_day_checksum

from ztaudit.pipeline import compact as compact_mod

DAY = "2026-11-20"


@pytest.mark.kafka
def test_consumer_replay_after_compaction_adds_no_duplicates(kafka_broker: KafkaBroker, topic_name: str,
                                                            tmp_path: Path) -> None:
    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(4000, run="rc"))
    lake = tmp_path / "lake"
    assert run_consume(kafka_broker, topic_name, lake, "g-rc-1", "--flush-records", "100",
                       until_idle=1.5).returncode == 0
    assert len(list(lake.glob(f"k8s_audit/dt={DAY}/*.parquet"))) == 40
    before = audit_day_checksum(lake)
    compact_mod.compact(lake, "k8s_audit", DAY)
    assert len(list(lake.glob(f"k8s_audit/dt={DAY}/*.parquet"))) == 1
    # a new group replays the whole topic, with different (wall-clock) file boundaries
    replay = run_consume(kafka_broker, topic_name, lake, "g-rc-2", "--flush-records", "700", until_idle=1.5)
    assert replay.returncode == 0, replay.stderr[-3000:]
    counts = audit_id_counts(lake)
    assert len(counts) == 4000 and set(counts.values()) == {1}
    assert audit_day_checksum(lake)[0] == before[0]
    assert "already in compacted" in replay.stderr

"""Where a consumer starts reading a partition, against what the lake holds.

An Iceberg lake ahead of the Kafka group (issue 16): the consumer starts where the lake's snapshots
say a partition was written up to, and never past the partition's end. Offsets moved back behind
committed files (a re-created topic): it refuses rather than replace them.

A round's files are registered in Iceberg with its offsets before the offsets are committed to Kafka;
``ZTAUDIT_CONSUME_KILL_AFTER_PUBLISH`` kills the consumer between the two. The restart must skip what
the lake holds (not re-read it) and still leave every event exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from support.kafka_broker import (
    KafkaBroker,
    audit_events,
    audit_id_counts,
    create_topic,
    produce,
    run_consume,
    wait_until,
    ztaudit_env,
)

from ztaudit.core.iceberg_publish import publish
from ztaudit.core.iceberg_snapshot import LastRound, last_rounds, offsets_summary, snapshot_files

pytestmark = pytest.mark.kafka

ICEBERG = {"ZTAUDIT_LAKE_FORMAT": "iceberg"}
FLAGS = ("--flush-records", "1000")


def _metrics(path: Path) -> dict[str, int]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _committed(broker: KafkaBroker, topic: str, group: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        c.close()


def _ends(broker: KafkaBroker, topic: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        got = c.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: int(off) for tp, off in got.items()}
    finally:
        c.close()


def test_a_kill_between_iceberg_and_kafka_commits_resumes_from_the_lake(kafka_broker: KafkaBroker, topic_name: str,
                                                                          tmp_path: Path, backend: str) -> None:
    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(4000, run="resume"))
    lake, metrics = tmp_path / "lake", tmp_path / "metrics.json"
    killed = run_consume(kafka_broker, topic_name, lake, "g-resume", *FLAGS, backend=backend,
                         env=ztaudit_env(**ICEBERG, ZTAUDIT_CONSUME_KILL_AFTER_PUBLISH="2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ahead = {tp: r.end for tp, r in last_rounds(lake).items()}
    assert ahead and all(t == topic_name for t, _ in ahead), ahead
    group = _committed(kafka_broker, topic_name, "g-resume", 2)
    # the kill left the lake ahead of the group on at least one partition (else nothing is tested)
    assert any(off > group[p] for (_, p), off in ahead.items()), (ahead, group)
    ends = _ends(kafka_broker, topic_name, 2)
    expected = sum(ends[p] - max(group[p], ahead.get((topic_name, p), 0)) for p in range(2))

    done = run_consume(kafka_broker, topic_name, lake, "g-resume", *FLAGS, "--metrics-file", str(metrics),
                       backend=backend, env=ztaudit_env(**ICEBERG))
    assert done.returncode == 0, done.stderr[-3000:]
    m = _metrics(metrics)
    # the partitions the lake was ahead on started there: the registered rounds were not re-read
    assert m["resumed_from_lake"] >= 1, done.stderr[-3000:]
    assert "the lake's Iceberg snapshot holds everything before it" in done.stderr, done.stderr[-3000:]
    assert m["messages"] == expected, (m["messages"], expected, ahead, group)
    # and the group was told: its committed offsets are past what the lake holds
    assert _committed(kafka_broker, topic_name, "g-resume", 2) == ends
    counts = audit_id_counts(lake)
    assert len(counts) == 4000 and set(counts.values()) == {1}


def test_lake_offsets_past_the_partition_end_are_not_followed(kafka_broker: KafkaBroker, topic_name: str,
                                                              tmp_path: Path) -> None:
    """Offsets past a partition's end are not about this topic (one deleted and created again under the
    same name starts over): the consumer reads from the group's offset and says why."""
    create_topic(kafka_broker, topic_name, 1)
    produce(kafka_broker, topic_name, audit_events(500, run="end"))
    lake, metrics = tmp_path / "lake", tmp_path / "metrics.json"
    first = run_consume(kafka_broker, topic_name, lake, "g-end-1", *FLAGS, env=ztaudit_env(**ICEBERG))
    assert first.returncode == 0, first.stderr[-3000:]
    assert last_rounds(lake) == {(topic_name, 0): LastRound(0, 500)}
    # a round that claims far more than the partition holds (registering a listed file again commits)
    listed = snapshot_files(lake, "k8s_audit")
    publish(lake, added=[Path(listed[0])],
            summary=offsets_summary({(topic_name, 0): 1_000_000}, {(topic_name, 0): 0}))
    assert last_rounds(lake) == {(topic_name, 0): LastRound(0, 1_000_000)}

    second = run_consume(kafka_broker, topic_name, lake, "g-end-2", *FLAGS, "--metrics-file", str(metrics),
                         env=ztaudit_env(**ICEBERG))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "past the partition's end 500" in second.stderr
    m = _metrics(metrics)
    assert m["resumed_from_lake"] == 0 and m["messages"] == 500
    counts = audit_id_counts(lake)
    assert len(counts) == 500 and set(counts.values()) == {1}


@pytest.mark.parametrize("lake_format", ["parquet", "iceberg"])
def test_a_recreated_topic_is_refused_before_it_replaces_committed_files(kafka_broker: KafkaBroker,
                                                                          topic_name: str, tmp_path: Path,
                                                                          lake_format: str) -> None:
    """A topic deleted and created again starts its offsets over, and its chunks would get the names
    of the old topic's committed files. The consumer took the old file at offset 0 for a leftover of
    its own, held the new records back until they reached its end, and would then have replaced it:
    now the digest of the first record each chunk file keeps tells the records apart, and it stops
    with exit 2 and the reason; the lake keeps every old row. (A new group re-reading the *same* topic
    rewrites the same files: tests/integration/test_consume_basic.py.)"""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient

    create_topic(kafka_broker, topic_name, 1)
    produce(kafka_broker, topic_name, audit_events(3000, run="old"))
    lake = tmp_path / "lake"
    env = ztaudit_env(ZTAUDIT_LAKE_FORMAT=lake_format)
    first = run_consume(kafka_broker, topic_name, lake, "g-old", *FLAGS, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        admin.delete_topics([topic_name])
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    try:
        wait_until(lambda: topic_name not in probe.topics(), timeout=60, what=f"topic {topic_name} deleted")
    finally:
        probe.close()
    deadline = time.monotonic() + 60
    while True:  # the broker may still be finishing the deletion
        try:
            create_topic(kafka_broker, topic_name, 1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    produce(kafka_broker, topic_name, audit_events(3500, run="new"))  # past the old end: a skip would lose 3000
    before = sorted((p.name, p.stat().st_mtime_ns) for p in lake.glob("*/dt=*/*.parquet"))
    second = run_consume(kafka_broker, topic_name, lake, "g-new", *FLAGS, env=env)
    assert second.returncode == 2, second.stderr[-3000:]
    # on Iceberg, reading began (offset 0) outside the lake's last round (2000..2999): not skipped, although
    # the new topic now reaches past that round's end
    assert "skips to offset" not in second.stderr
    assert "the record now at offset 0 is not the one the lake's file" in second.stderr
    assert "chunks from offset 1000 on" in second.stderr
    assert "give a re-created topic a new name" in second.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in lake.glob("*/dt=*/*.parquet")) == before
    counts = audit_id_counts(lake)
    assert len(counts) == 3000 and set(counts.values()) == {1}

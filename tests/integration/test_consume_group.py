"""Two consumer processes in one group share the partitions and together write every event exactly
once; when one leaves mid-stream, the rebalance hands its partitions over without loss."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from support.kafka_broker import KafkaBroker, audit_events, audit_id_counts, create_topic, kcat_produce, start_consume

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _committed(metrics: Path) -> dict[str, int]:
    try:
        return dict(json.loads(metrics.read_text()).get("committed", {}))
    except (OSError, ValueError):
        return {}


def test_two_members_share_partitions_and_a_leaving_member_loses_nothing(kafka_broker: KafkaBroker,
                                                                          topic_name: str, tmp_path: Path,
                                                                          backend: str) -> None:
    create_topic(kafka_broker, topic_name, 4)
    lake = tmp_path / "lake"
    events = audit_events(60_000, run="grp")
    producer = kcat_produce(kafka_broker, topic_name, events[:30_000], tmp_path)
    assert producer.wait(timeout=120) == 0
    flags = ["--flush-records", "2000", "--flush-seconds", "1", "--session-timeout-ms", "3000", "--backend", backend]
    m1, m2 = tmp_path / "m1.json", tmp_path / "m2.json"
    a = start_consume(kafka_broker, topic_name, lake, "g-two", *flags, "--metrics-file", str(m1),
                      log=tmp_path / "a.log")
    time.sleep(1.0)
    b = start_consume(kafka_broker, topic_name, lake, "g-two", *flags, "--metrics-file", str(m2),
                      log=tmp_path / "b.log", until_idle=8)
    # both members commit partitions of their own (the group shares the topic)
    deadline = time.monotonic() + 90
    # (the metrics files are rewritten periodically, so wait for them rather than read them once)
    while not (_committed(m1) and _committed(m2) and len(set(_committed(m1)) | set(_committed(m2))) >= 3):
        assert time.monotonic() < deadline, ((tmp_path / "a.log").read_text()[-2000:],
                                             (tmp_path / "b.log").read_text()[-2000:])
        assert a.poll() is None and b.poll() is None
        time.sleep(0.3)
    # (each has committed partitions of its own; A may also have committed some before B joined)
    assert len(set(_committed(m1)) | set(_committed(m2))) >= 3
    # more data arrives while A leaves (SIGTERM: flush, commit, leave group) -> B takes over all
    producer = kcat_produce(kafka_broker, topic_name, events[30_000:], tmp_path)
    time.sleep(0.5)
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert producer.wait(timeout=120) == 0
    assert b.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()[-3000:]

    counts = audit_id_counts(lake)
    assert len(counts) == 60_000, f"{60_000 - len(counts)} missing"
    assert set(counts.values()) == {1}
    # Every partition's offsets were committed up to its end by one member or the other. (Whether B
    # committed a given partition itself depends on whether A's final flush had already reached
    # the end of it when A left, so that is not asserted.)
    c1, c2 = _committed(m1), _committed(m2)
    final = {tp: max(c1.get(tp, 0), c2.get(tp, 0)) for tp in set(c1) | set(c2)}
    assert len(final) == 4 and sum(final.values()) == 60_000, final
    assert "revoked" in (tmp_path / "b.log").read_text() or "assigned" in (tmp_path / "b.log").read_text()

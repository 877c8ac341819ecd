"""Broker outage: the broker is stopped for 20 s mid-stream and restarted; the consumer never exits,
retries with backoff (logging coordinates), and the lake ends with every event exactly once."""

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
    data_files,
    produce,
    start_consume,
    wait_until,
    ztaudit_env,
)
from support.s3proxy import S3Store, lake_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_S = 20


def test_broker_down_20s_mid_stream_no_loss_no_duplicates(kafka_broker: KafkaBroker, topic_name: str,
                                                         tmp_path: Path, backend: str) -> None:
    broker_outage(kafka_broker, topic_name, tmp_path, backend, {})


def test_broker_down_20s_into_an_iceberg_lake_no_loss_no_duplicates(kafka_broker: KafkaBroker, topic_name: str,
                                                                    tmp_path: Path) -> None:
    """The same outage with the lake as Iceberg tables (issue 16): rows counted from the snapshot."""
    broker_outage(kafka_broker, topic_name, tmp_path, "kafka-python", {"ZTAUDIT_LAKE_FORMAT": "iceberg"})
    assert (tmp_path / "lake" / "_iceberg" / "catalog.db").is_file()


@pytest.mark.s3
def test_broker_down_20s_into_a_lake_on_s3_no_loss_no_duplicates(kafka_broker: KafkaBroker, topic_name: str,
                                                                  tmp_path: Path, s3proxy: S3Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same outage with the Iceberg lake's files on S3 (S3Proxy, issue 16): nothing on local disk."""
    env = lake_env(s3proxy, "outage")
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # this process counts the rows: it reads the lake on S3 too
    broker_outage(kafka_broker, topic_name, tmp_path, "kafka-python", env)
    assert not list((tmp_path / "lake").glob("*/dt=*"))


def broker_outage(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path, backend: str,
                  extra_env: dict[str, str]) -> None:
    """Stop the broker for 20 s mid-stream, then produce more: every event in the lake exactly once."""
    if kafka_broker.dir is None:
        pytest.skip("needs a broker this test can stop and start (scripts/kafka-broker)")
    create_topic(kafka_broker, topic_name, 4)
    first = audit_events(40_000, run="out-a")
    second = audit_events(20_000, run="out-b")
    produce(kafka_broker, topic_name, first)
    lake = tmp_path / "lake"
    log = tmp_path / "consume.log"
    metrics = tmp_path / "metrics.json"
    # No --until-idle: it would let the consumer exit between the restart and the second batch (it may,
    # once the broker confirms no lag; CI stop 25 failed on that). The test stops it with SIGTERM once the
    # group's committed offsets cover every record: each round is written, registered and committed then.
    p = start_consume(kafka_broker, topic_name, lake, "g-outage", "--flush-records", "3000", "--flush-seconds", "1",
                      "--metrics-file", str(metrics), "--progress-seconds", "1", log=log, backend=backend,
                      env=ztaudit_env(**extra_env))
    # stop the broker while the consumer is mid-stream (some files written, most not)
    wait_until(lambda: p.poll() is not None or len(data_files(lake, "k8s_audit")) >= 2, timeout=60,
               what=lambda: log.read_text()[-3000:])
    assert p.poll() is None, log.read_text()[-3000:]
    kafka_broker.stop()
    t_down = time.monotonic()
    try:
        while time.monotonic() - t_down < OUTAGE_S:  # the outage's length, checked all along
            assert p.poll() is None, f"consumer exited during the outage: {log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        kafka_broker.start()
    assert p.poll() is None, f"consumer exited during the outage: {log.read_text()[-3000:]}"
    produce(kafka_broker, topic_name, second)
    wait_until(lambda: p.poll() is not None or _committed(metrics) >= 60_000, timeout=300,
               what=lambda: f"committed {_committed(metrics)} of 60000: {log.read_text()[-3000:]}")
    assert p.poll() is None, f"the consumer exited on its own: {log.read_text()[-3000:]}"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0, log.read_text()[-3000:]

    counts = audit_id_counts(lake)
    assert len(counts) == 60_000, f"{60_000 - len(counts)} missing"
    assert set(counts.values()) == {1}
    text = log.read_text()
    # the consumer saw the outage: counted it, and said so (a failed poll, a commit or connect retried)
    assert json.loads(metrics.read_text())["broker_errors"] > 0
    assert "retrying" in text, text[-3000:]


def _committed(metrics: Path) -> int:
    """Records the group has committed so far, from the metrics file (its offsets start at 0)."""
    try:
        return sum(int(v) for v in json.loads(metrics.read_text()).get("committed", {}).values())
    except (FileNotFoundError, ValueError):
        return 0

"""``consume --detect --findings-topic``: after each durable flush the streaming detectors judge the
window, and their findings are produced to Kafka as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.kafka_broker import KafkaBroker, audit_events, create_topic, produce, run_consume

pytestmark = pytest.mark.kafka


def test_detect_hook_produces_findings_as_json(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    create_topic(kafka_broker, topic_name, 1)
    findings_topic = f"{topic_name}-findings"
    create_topic(kafka_broker, findings_topic, 1)
    # the factory's human (alice@example.com) calls the API server directly: not through the proxy
    produce(kafka_broker, topic_name, audit_events(400, run="det"))
    lake = tmp_path / "lake"
    proc = run_consume(kafka_broker, f"{topic_name}=k8s_audit", lake, "g-det", "--detect", "--findings-topic",
                       findings_topic, until_idle=1.5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = KafkaConsumer(findings_topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=5000)
    try:
        msgs = []
        deadline = time.monotonic() + 20
        while not msgs and time.monotonic() < deadline:
            msgs = [m for m in c]
    finally:
        c.close()
    assert msgs, proc.stderr[-3000:]
    findings = [json.loads(m.value) for m in msgs]
    assert all("detector" in f and "finding_id" in f for f in findings)
    assert any(f["detector"] == "impersonation.proxy_bypass" for f in findings), {f["detector"] for f in findings}

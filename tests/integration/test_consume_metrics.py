"""``consume --metrics-port`` and ``--log-format json`` against the real broker: the Prometheus
endpoint scraped by a real HTTP client (urllib) while the consumer runs, every log line JSON, and
an unresolvable or refusing broker named, with the reason, while the consumer retries."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.kafka_broker import (
    ZTAUDIT,
    KafkaBroker,
    audit_events,
    create_topic,
    produce,
    start_consume,
    wait_until,
    ztaudit_env,
)

pytestmark = pytest.mark.kafka

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    """(status, content type, body) of ``GET path`` on the endpoint, by urllib."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, str], float]:
    """{(metric name, labels text): value} of an exposition text; every non-comment line must parse."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not an exposition line: {line!r}"
        out[(m["name"], m["labels"] or "")] = float(m["value"])
    return out


def up(port: int) -> bool:
    try:
        return scrape(port)[0] == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def test_metrics_endpoint_counts_what_the_consumer_did(kafka_broker: KafkaBroker, topic_name: str,
                                                        tmp_path: Path) -> None:
    create_topic(kafka_broker, topic_name, 2)
    events = audit_events(3000, run="metrics")
    bad = [b"{not json", b"\xff\xfe not utf-8"]
    produce(kafka_broker, topic_name, [*events, *bad])
    port, log = free_port(), tmp_path / "consume.log"
    proc = start_consume(kafka_broker, topic_name, tmp_path / "lake", "g-metrics", "--flush-records", "500",
                         "--metrics-port", str(port), "--log-format", "json", log=log)
    try:
        wait_until(lambda: up(port), timeout=60, what=lambda: f"metrics endpoint; log: {log.read_text()[-2000:]}")

        def done() -> bool:
            s = samples(scrape(port)[2])
            lags = [v for (n, _), v in s.items() if n == "ztaudit_consume_lag_records"]
            return (s[("ztaudit_consume_events_total", "")] == len(events) and len(lags) == 2 and not any(lags)
                    and s[("ztaudit_consume_buffered_records", "")] == 0)
        wait_until(done, timeout=120, what=lambda: f"all events counted: {scrape(port)[2][:3000]}")
        status, ctype, body = scrape(port)
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        s = samples(body)
        assert s[("ztaudit_consume_messages_total", "")] == len(events) + len(bad)
        assert s[("ztaudit_consume_message_bytes_total", "")] == sum(len(v) for v in [*events, *bad])
        assert s[("ztaudit_consume_quarantined_total", "")] == len(bad)
        assert s[("ztaudit_consume_records_balanced", "")] == 1
        committed = {labels: v for (n, labels), v in s.items() if n == "ztaudit_consume_committed_offset"}
        assert set(committed) == {f'topic="{topic_name}",partition="{p}"' for p in (0, 1)}
        assert sum(committed.values()) == len(events) + len(bad)
        lags = {labels for (n, labels), _ in s.items() if n == "ztaudit_consume_lag_records"}
        assert lags == set(committed)
        commits = s[("ztaudit_consume_commits_total", "")]
        assert commits >= 2 and s[("ztaudit_consume_commit_duration_seconds_count", "")] == commits
        assert s[("ztaudit_consume_commit_duration_seconds_bucket", 'le="+Inf"')] == commits
        assert s[("ztaudit_consume_flush_duration_seconds_count", "")] == s[("ztaudit_consume_flushes_total", "")]
        assert 0 < s[("ztaudit_consume_flush_duration_seconds_sum", "")] < 120
        age = s[("ztaudit_consume_last_commit_age_seconds", "")]
        assert not math.isnan(age) and 0 <= age < 120
        assert s[("ztaudit_consume_state", 'state="running"')] == 1
        assert scrape(port, "/healthz")[:1] == (200,) and scrape(port, "/nope")[0] == 404
        time.sleep(1.2)  # the age grows while nothing is committed
        assert samples(scrape(port)[2])[("ztaudit_consume_last_commit_age_seconds", "")] > age
    finally:
        rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    with pytest.raises(OSError):
        scrape(port)  # stopped with the consumer
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if not line.startswith("consume: ")]  # the CLI's summary echo
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("metrics on http://127.0.0.1:" in r["msg"] for r in records)
    assert any(r["msg"].startswith("consume: subscribed to") for r in records)


@pytest.mark.parametrize("where", ["unresolvable", "refused"])
def test_unreachable_broker_is_named_with_the_reason_while_retrying(where: str, tmp_path: Path) -> None:
    bootstrap = "no-such-broker.invalid:9092" if where == "unresolvable" else f"127.0.0.1:{free_port()}"
    expected = "cannot resolve host 'no-such-broker.invalid'" if where == "unresolvable" else "refused the connection"
    port, log = free_port(), tmp_path / "consume.log"
    args = [ZTAUDIT, "consume", "--bootstrap-servers", bootstrap, "--topic", "t", "--lake", str(tmp_path / "lake"),
            "--metrics-port", str(port), "--log-format", "json"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=ztaudit_env())
    try:
        wait_until(lambda: expected in log.read_text(), timeout=90, what=lambda: f"the reason: {log.read_text()}")
        status, _, body = scrape(port, "/healthz")
        assert status == 503 and expected in body
        s = samples(scrape(port)[2])
        assert s[("ztaudit_consume_broker_errors_total", "")] >= 1
        assert s[("ztaudit_consume_state", 'state="connecting"')] == 1
        assert math.isnan(s[("ztaudit_consume_last_commit_age_seconds", "")])
    finally:
        rc = stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    warned = [json.loads(line) for line in log.read_text().splitlines() if expected in line]
    assert warned and warned[0]["level"] == "warning" and bootstrap in warned[0]["msg"]

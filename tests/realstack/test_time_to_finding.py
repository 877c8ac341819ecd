"""Time to finding: real logs shipped to the real Kafka broker as users ship them, judged by
``ztaudit consume --detect`` with the default 30 s flush, findings read back from the findings topic.

A small tailer stands in for the log shipper (Fluent Bit's tail input and kafka output, Vector's
file source and kafka sink; docs/shippers.md): it follows the API server's audit log, Pomerium's log
and Keycloak's JSON log from their current end and pipes every new line, wrapped in that shipper's
envelope, into ``kcat -P`` (librdkafka, a producer that is not ours). Audit lines travel as Fluent Bit
records and name their cluster with a Kafka header; Pomerium's as Vector records; Keycloak's as
Fluent Bit records. Then scenarios act on the real stack, and for each the time from the moment the
real system wrote its line (the line's own timestamp) to the finding on the findings topic is measured
and printed (the scenario's request is sent at the start time; the API server's audit line carries
that time to the millisecond). What bounds it: the consumer flushes a partition when its oldest buffered record is
``kafka.flush_seconds`` (30 s) old, then runs the streaming detectors; a request is judged once both
planes have data a match window past it (brokered traffic keeps them moving).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.kafka_broker import KafkaBroker, create_topic, run_consume, start_consume
from support.realstack import SUMMARIES, Stack

pytestmark = [pytest.mark.realstack, pytest.mark.kafka]

CONFIG = """
[impersonation]
break_glass = ["realstack-admin"]
"""


def _fluent_bit(line: str) -> bytes:
    # Fluent Bit's kafka output, Format json, tail input without a parser: the line under "log".
    return json.dumps({"@timestamp": time.time(), "log": line}).encode()


def _vector(path: str) -> Callable[[str], bytes]:
    def wrap(line: str) -> bytes:
        # Vector's kafka sink, json encoding, file source: the line under "message" plus metadata.
        return json.dumps({"message": line, "timestamp": datetime.now(UTC).isoformat(), "file": path,
                           "host": "realstack", "source_type": "file"}).encode()
    return wrap


class Tailer(threading.Thread):
    """Follows ``path`` from its current end and produces each new line, wrapped, with kcat."""

    def __init__(self, broker: KafkaBroker, path: str, topic: str, wrap: Callable[[str], bytes],
                 headers: tuple[str, ...] = ()) -> None:
        super().__init__(daemon=True)
        self.path, self.wrap, self.stop = path, wrap, threading.Event()
        self.offset = Path(path).stat().st_size
        args = ["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-X", "queue.buffering.max.ms=20"]
        for h in headers:
            args += ["-H", h]
        self.kcat = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = 0
        self.sent: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except OSError as e:  # kcat died (BrokenPipe): close() reports its stderr
            self.error = e

    def _follow(self) -> None:
        assert self.kcat.stdin is not None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            buf = b""
            while not self.stop.is_set():
                chunk = f.read()
                if not chunk:
                    time.sleep(0.1)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    if ln.strip():
                        line = ln.decode("utf-8", "replace")
                        self.kcat.stdin.write(self.wrap(line) + b"\n")
                        self.sent.append(line)
                        self.lines += 1
                self.kcat.stdin.flush()

    def close(self) -> str:
        """Stop following, let kcat deliver what it has and exit; its stderr (and a follow error)."""
        self.stop.set()
        self.join(timeout=10)
        assert self.kcat.stdin is not None
        try:
            self.kcat.stdin.close()
        except OSError:
            pass
        try:
            self.kcat.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kcat.kill()
            self.kcat.wait()
        assert self.kcat.stderr is not None
        err = self.kcat.stderr.read()
        self.kcat.stderr.close()
        return err.decode(errors="replace") + (f" ({self.error})" if self.error else "")


class FindingsReader(threading.Thread):
    """Reads the findings topic from its start and keeps (arrival time, finding)."""

    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.stop = broker, topic, threading.Event()
        self.got: list[tuple[datetime, dict[str, Any]]] = []

    def run(self) -> None:
        from kafka import KafkaConsumer
        c = KafkaConsumer(self.topic, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest",
                          consumer_timeout_ms=500)
        try:
            while not self.stop.is_set():
                for m in c:
                    self.got.append((datetime.now(UTC), json.loads(m.value)))
        finally:
            c.close()

    def first(self, detector: str, actor: str) -> datetime | None:
        return next((t for t, f in self.got if f["detector"] == detector and f["actor"] == actor), None)


@dataclass
class Shipped:
    """What the module's run shipped and found: topics, the lines each tailer produced, the times."""

    topics: dict[str, str]
    tailers: list[Tailer]
    reader: FindingsReader
    acted: dict[tuple[str, str], datetime]
    log: Path
    errs: list[str]


@pytest.fixture(scope="module")
def shipped(realstack: Stack, kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    s = realstack
    tmp_path = tmp_path_factory.mktemp("ttf")
    run = uuid.uuid4().hex[:6]
    topics = {k: f"rs-{k}-{run}" for k in ("audit", "pomerium", "keycloak", "findings")}
    for t in topics.values():
        create_topic(kafka_broker, t, 1)
    tailers = [
        Tailer(kafka_broker, s.info["audit_log"], topics["audit"], _fluent_bit, ("cluster=realstack",)),
        Tailer(kafka_broker, s.info["pomerium"]["log"], topics["pomerium"], _vector(s.info["pomerium"]["log"])),
        Tailer(kafka_broker, s.info["keycloak"]["json_log"], topics["keycloak"], _fluent_bit),
    ]
    for t in tailers:
        t.start()
    reader = FindingsReader(kafka_broker, topics["findings"])
    reader.start()
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "consume.log"
    consume = start_consume(
        kafka_broker, f"{topics['audit']}=k8s_audit", tmp_path / "lake", f"g-{run}",
        "--topic", topics["pomerium"], "--topic", topics["keycloak"], "--detect",
        "--findings-topic", topics["findings"], "--config", str(cfg), log=log)
    stop = threading.Event()
    alice = s.user_kubeconfig("alice")

    def brokered() -> None:  # ordinary brokered traffic keeps both planes moving
        while not stop.is_set():
            s.kubectl("get", "pods", "-n", "dev", kubeconfig=alice, check=False)
            stop.wait(3)

    bg = threading.Thread(target=brokered, daemon=True)
    bg.start()
    acted: dict[tuple[str, str], datetime] = {}
    try:
        time.sleep(3)
        dave = s.kubeconfig("dave-ttf", server=s.info["apiserver"], token=s.info["direct_user"]["token"])
        acted[("impersonation.proxy_bypass", "dave@example.com")] = datetime.now(UTC)
        s.kubectl("get", "pods", "-n", "dev", kubeconfig=dave)
        pom = s.kubeconfig("pomerium-ttf", server=s.info["apiserver"],
                           token=Path(s.info["pomerium"]["sa_token_file"]).read_text().strip())
        acted[("impersonation.unbrokered", "frank@example.com")] = datetime.now(UTC)
        # frank has no RBAC binding: forbidden, but audited as the proxy impersonating him
        s.kubectl("get", "pods", "-n", "dev", "--as=frank@example.com", kubeconfig=pom, check=False)
        bot = s.kubeconfig("deploy-bot-ttf", server=s.info["apiserver"], token=s.sa_token("ci", "deploy-bot"))
        acted[("impersonation.unapproved_impersonator", "system:serviceaccount:ci:deploy-bot")] = datetime.now(UTC)
        s.kubectl("get", "pods", "-n", "dev", "--as=alice@example.com", kubeconfig=bot, check=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(reader.first(*k) for k in acted):
            assert consume.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        stop.set()
        bg.join(timeout=30)
        errs = [t.close() for t in tailers]
        consume.terminate()
        try:
            consume.wait(timeout=60)
        except subprocess.TimeoutExpired:
            consume.kill()
            consume.wait()
        reader.stop.set()
        reader.join(timeout=10)
    return Shipped(topics, tailers, reader, acted, log, errs)


def test_time_to_finding_through_kafka(shipped: Shipped) -> None:
    reader, tailers, log, errs = shipped.reader, shipped.tailers, shipped.log, shipped.errs
    lines = ["time to finding through Kafka (consume --detect, flush 30 s):"]
    times = {}
    for (det, actor), t0 in shipped.acted.items():
        t1 = reader.first(det, actor)
        times[det] = (t1 - t0).total_seconds() if t1 else None
        lines.append(f"  {det:40} {actor:38} " + (f"{times[det]:5.1f} s" if t1 else "not found"))
    shipped = ", ".join(f"{Path(t.path).name} {t.lines}" for t in tailers)
    lines.append(f"  shipped lines: {shipped}")
    SUMMARIES.append("\n".join(lines))
    assert all(v is not None for v in times.values()), (
        "\n".join(lines) + f"\nfindings seen: {[(f['detector'], f['actor']) for _, f in reader.got]}\n"
        f"consume log: {log.read_text()[-3000:]}\nkcat: {errs}")
    assert max(v for v in times.values() if v is not None) < 60, "\n".join(lines)


def test_consume_delivers_every_real_event_once_across_kill_9(shipped: Shipped, kafka_broker: KafkaBroker,
                                                             tmp_path: Path) -> None:
    """The same shipped topics read again by a new group into a new lake, the consumer killed with
    SIGKILL after its first durable flush and restarted: every (auditID, stage) and every Pomerium
    (request-id, line kind) that was shipped is in the lake exactly once."""
    import duckdb

    audit_sent = Counter((e["auditID"], e["stage"]) for e in map(json.loads, shipped.tailers[0].sent))
    kinds = {"authorize check": "authorize", "http-request": "access"}
    proxy_sent = Counter((d["request-id"], kinds[d["message"]]) for d in map(json.loads, shipped.tailers[1].sent)
                         if d.get("message") in kinds and d.get("request-id"))
    assert audit_sent and proxy_sent
    t = shipped.topics
    lake, log = tmp_path / "lake", tmp_path / "consume.log"
    args = (f"{t['audit']}=k8s_audit", lake, f"g-once-{uuid.uuid4().hex[:6]}", "--topic", t["pomerium"],
            "--topic", t["keycloak"], "--flush-records", "10")
    first = start_consume(kafka_broker, *args, log=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(lake.glob("*/dt=*/*.parquet")):
        time.sleep(0.05)
    first.kill()
    first.wait(timeout=30)
    again = run_consume(kafka_broker, *args, until_idle=3)
    assert again.returncode == 0, again.stderr[-2000:]
    con = duckdb.connect()
    audit_rows = Counter(dict(((a, st), n) for a, st, n in con.execute(
        "SELECT audit_id, stage, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY ALL",
        [str(lake / "k8s_audit" / "**" / "*.parquet")]).fetchall()))
    proxy_rows = Counter(dict(((r, k), n) for r, k, n in con.execute(
        "SELECT request_id, record_type, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY ALL",
        [str(lake / "proxy_decision" / "**" / "*.parquet")]).fetchall()))
    assert audit_rows == audit_sent, (audit_sent - audit_rows, audit_rows - audit_sent)
    assert proxy_rows == proxy_sent, (proxy_sent - proxy_rows, proxy_rows - proxy_sent)
    SUMMARIES.append(f"consume across kill -9: {sum(audit_rows.values())} audit events and "
                     f"{sum(proxy_rows.values())} Pomerium lines shipped, each once in the lake")

"""Benchmark ``ztaudit consume`` against the ceilings below it (run by ``make bench`` through
``scripts/with-kafka``, which provides the broker in ``$ZTAUDIT_TEST_KAFKA_BOOTSTRAP``).

Pre-produces ``BENCH_CONSUME_EVENTS`` (default 500,000) generated audit events of ~1.4 KB into a
4-partition topic with ``kcat -P``, then measures, in one run:

1. ``ztaudit consume --until-idle`` (one process, default flush settings): events/s and peak RSS;
2. a bare kafka-python poll loop with the same fetch settings that only counts records;
3. ``kcat -C -e`` to /dev/null (librdkafka: the client ceiling of this machine);
4. ``process()`` alone on in-memory batches (the normalization ceiling, no Kafka).

Prints a table with ratios and the targets (>= 50k ev/s per process, >= 70 % of bare kafka-python,
RSS < 1 GiB) and writes ``bench/out/consume.json``. Not a test: numbers, not assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kafka_broker import KafkaBroker, audit_events, create_topic  # noqa: E402

N = int(os.environ.get("BENCH_CONSUME_EVENTS", "500000"))
PARTITIONS = 4
UNTIL_IDLE = 2.0
ZTAUDIT = str(Path(sys.executable).parent / "ztaudit")


def _broker() -> KafkaBroker:
    boot = os.environ.get("ZTAUDIT_TEST_KAFKA_BOOTSTRAP")
    if not boot:
        sys.exit("bench/consume.py: run it through scripts/with-kafka (make bench)")
    return KafkaBroker(boot, "", "", "", None)


def produce(broker: KafkaBroker, topic: str, work: Path) -> tuple[int, float]:
    """Write N events to a file, produce them with kcat (keyed -> spread over partitions)."""
    path = work / "events.ndjson"
    total = 0
    with open(path, "wb") as fh:
        for start in range(0, N, 50_000):
            batch = audit_events(min(50_000, N - start), start=start, run="bench", spread_s=86_400.0)
            for i, v in enumerate(batch):
                total += len(v)
                fh.write(f"k{start + i}\t".encode() + v + b"\n")
    t0 = time.monotonic()
    subprocess.run(["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-K", "\t", "-l", "-X", "acks=1",
                    "-X", "linger.ms=50", "-X", "batch.num.messages=10000", str(path)], check=True)
    el = time.monotonic() - t0
    path.unlink()
    return total, el


def run_ztaudit(broker: KafkaBroker, topic: str, work: Path) -> dict[str, Any]:
    lake = work / "lake"
    metrics = work / "metrics.json"
    args = [ZTAUDIT, "consume", "--bootstrap-servers", broker.bootstrap, "--topic", f"{topic}=k8s_audit",
            "--lake", str(lake), "--group", f"bench-{uuid.uuid4().hex[:6]}", "--until-idle", str(UNTIL_IDLE),
            "--metrics-file", str(metrics), "--progress-seconds", "5", "-q"]
    t0 = time.monotonic()
    p = subprocess.Popen(args)
    _, status, rusage = os.wait4(p.pid, 0)
    el = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    m = json.loads(metrics.read_text())
    busy = el - UNTIL_IDLE
    return {"rc": p.returncode, "events": m["events"], "wall_s": round(el, 2), "busy_s": round(busy, 2),
            "ev_s": m["events"] / busy, "rss_mb": rusage.ru_maxrss / 1024, "files": m["files"]}


def run_bare(broker: KafkaBroker, topic: str) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition
    from ztaudit.pipeline.config import KafkaSettings
    from ztaudit.pipeline.sources.kafka import consumer_config

    cfg = consumer_config(KafkaSettings(bootstrap_servers=broker.bootstrap), group="unused", start_from="earliest")
    cfg.pop("group_id")
    cfg["enable_auto_commit"] = False
    c = KafkaConsumer(**cfg)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    n = nbytes = 0
    t0 = time.monotonic()
    while n < N:
        for recs in c.poll(timeout_ms=1000).values():
            n += len(recs)
            for r in recs:
                nbytes += len(r.value)
    el = time.monotonic() - t0
    c.close()
    return {"events": n, "wall_s": round(el, 2), "ev_s": n / el}


def run_kcat(broker: KafkaBroker, topic: str) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["kcat", "-C", "-b", broker.bootstrap, "-t", topic, "-e", "-q", "-o", "beginning"],
                       stdout=null, check=True)
    el = time.monotonic() - t0
    return {"events": N, "wall_s": round(el, 2), "ev_s": N / el}


def run_process_only() -> dict[str, Any]:
    from ztaudit.pipeline.normalize import NormalizeContext
    from ztaudit.pipeline.process import process
    from ztaudit.pipeline.records import KafkaOrigins, RawBatch

    n = min(N, 100_000)
    vals = audit_events(n, run="proc")
    process(RawBatch(vals[:1000], KafkaOrigins("t", 0, list(range(1000)))), NormalizeContext())  # warm up
    t0 = time.monotonic()
    res = process(RawBatch(vals, KafkaOrigins("t", 0, list(range(n)))), NormalizeContext())
    el = time.monotonic() - t0
    return {"events": res.rows, "wall_s": round(el, 2), "ev_s": res.rows / el}


def main() -> int:
    broker = _broker()
    topic = f"bench-consume-{uuid.uuid4().hex[:6]}"
    create_topic(broker, topic, PARTITIONS)
    with tempfile.TemporaryDirectory(prefix="ztaudit-bench-consume-") as tmp:
        work = Path(tmp)
        print(f"bench/consume: producing {N:,} events to {topic} ({PARTITIONS} partitions) with kcat ...", flush=True)
        nbytes, prod_s = produce(broker, topic, work)
        print(f"  {nbytes / N:,.0f} B/event, {nbytes / 1e6:,.0f} MB, produced in {prod_s:.1f} s", flush=True)
        z = run_ztaudit(broker, topic, work)
        bare = run_bare(broker, topic)
        kc = run_kcat(broker, topic)
        proc = run_process_only()
    rows = [
        ("ztaudit consume (1 process)", z["ev_s"], f"{z['events']:,} events, {z['files']} files, "
         f"wall {z['wall_s']} s (incl. {UNTIL_IDLE} s idle wait), peak RSS {z['rss_mb']:,.0f} MiB"),
        ("bare kafka-python poll loop", bare["ev_s"], f"{bare['events']:,} records in {bare['wall_s']} s"),
        ("kcat -C -e > /dev/null", kc["ev_s"], f"{kc['wall_s']} s"),
        ("process() alone (100k batch)", proc["ev_s"], f"{proc['events']:,} rows in {proc['wall_s']} s"),
    ]
    print()
    print(f"{'path':32} {'events/s':>10}  {'vs bare':>8}  notes")
    for name, rate, note in rows:
        print(f"{name:32} {rate:>10,.0f}  {rate / bare['ev_s']:>7.0%}  {note}")
    print()
    ok_rate = z["ev_s"] >= 50_000
    ok_ratio = z["ev_s"] >= 0.7 * bare["ev_s"]
    ok_rss = z["rss_mb"] < 1024
    print(f"targets: >= 50k ev/s per process: {'yes' if ok_rate else 'NO'} ({z['ev_s']:,.0f}); "
          f">= 70% of bare kafka-python: {'yes' if ok_ratio else 'NO'} ({z['ev_s'] / bare['ev_s']:.0%}); "
          f"RSS < 1 GiB: {'yes' if ok_rss else 'NO'} ({z['rss_mb']:,.0f} MiB)")
    print(f"kafka-python ceiling vs librdkafka (kcat): {bare['ev_s'] / kc['ev_s']:.0%}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "consume.json").write_text(json.dumps({"events": N, "ztaudit": z, "bare_kafka_python": bare,
                                                  "kcat": kc, "process_only": proc}, indent=2))
    return 0 if z["rc"] == 0 and z["events"] == N else 1


if __name__ == "__main__":
    sys.exit(main())

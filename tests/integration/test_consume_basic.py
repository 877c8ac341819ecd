"""``ztaudit consume`` end to end against the real broker: two producers, exact counts, same rows as
``ztaudit ingest``, library API, metrics file, SIGTERM drains."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from support.kafka_broker import (
    ZTAUDIT,
    KafkaBroker,
    audit_events,
    audit_id_counts,
    create_topic,
    kcat_errors,
    kcat_produce,
    produce,
    read_lake,
    run_consume,
    start_consume,
    wait_until,
    ztaudit_env,
)

pytestmark = pytest.mark.kafka


def test_kafka_python_and_kcat_events_all_land_once_and_match_ingest(kafka_broker: KafkaBroker, topic_name: str,
                                                                      tmp_path: Path, backend: str) -> None:
    create_topic(kafka_broker, topic_name, 4)
    py_events = audit_events(6000, run="py")
    kc_events = audit_events(6000, run="kc")
    produce(kafka_broker, topic_name, py_events)
    kc = kcat_produce(kafka_broker, topic_name, kc_events, tmp_path)
    assert kc.wait(timeout=120) == 0, kcat_errors(tmp_path)

    lake = tmp_path / "lake"
    metrics = tmp_path / "metrics.json"
    proc = run_consume(kafka_broker, topic_name, lake, "g-basic", "--flush-records", "2500",
                       "--metrics-file", str(metrics), backend=backend)
    assert proc.returncode == 0, proc.stderr[-3000:]

    counts = audit_id_counts(lake)
    assert len(counts) == 12000
    assert set(counts.values()) == {1}
    # every file is named by its origin: <topic>+<partition>+<first offset, 20 digits>
    files = sorted(p.name for p in lake.glob("k8s_audit/dt=*/*.parquet"))
    assert files and all(f.startswith(f"{topic_name}+") and len(f.split("+")[-1]) == len("0" * 20 + ".parquet")
                         for f in files)
    m = json.loads(metrics.read_text())
    assert m["events"] == 12000 and m["messages"] == 12000 and m["quarantined"] == 0
    assert m["state"] == "stopped" and set(m["lag"].values()) == {0}
    assert sum(m["committed"].values()) == 12000  # committed offset = last flushed + 1, per partition

    # The same events through `ztaudit ingest` from a file give the same rows, field by field.
    src = tmp_path / "events.ndjson"
    src.write_bytes(b"\n".join(py_events + kc_events) + b"\n")
    lake2 = tmp_path / "lake-ingest"
    ing = subprocess.run([ZTAUDIT, "ingest", str(src), "--lake", str(lake2), "-q"], capture_output=True, text=True,
                         env=ztaudit_env(), timeout=300)
    assert ing.returncode == 0, ing.stderr[-3000:]
    names, rows = read_lake(lake)
    names2, rows2 = read_lake(lake2)
    assert len(rows2) == 12000
    skip = {"origin", "ingested_at", "dt"}
    by_id = {r[names.index("audit_id")]: r for r in rows}
    by_id2 = {r[names2.index("audit_id")]: r for r in rows2}
    sample = sorted(by_id)[::97]
    compared = [c for c in names if c not in skip and c in names2]
    assert len(compared) > 20
    for aid in sample:
        a, b = by_id[aid], by_id2[aid]
        for col in compared:
            assert a[names.index(col)] == b[names2.index(col)], (aid, col)
    origins = {r[names.index("origin")] for r in rows}
    assert all(o.startswith(f"kafka:{topic_name}/") for o in origins)


def test_replay_with_same_group_writes_nothing_new_and_new_group_rewrites_same_files(
        kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path, backend: str) -> None:
    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(3000, run="rp"))
    lake = tmp_path / "lake"
    assert run_consume(kafka_broker, topic_name, lake, "g-rp", "--flush-records", "700",
                       until_idle=1.5, backend=backend).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in lake.glob("k8s_audit/dt=*/*.parquet")}
    # same group: everything is committed, nothing is re-read
    again = run_consume(kafka_broker, topic_name, lake, "g-rp", "--flush-records", "700", until_idle=1.5,
                        backend=backend)
    assert again.returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in lake.glob("k8s_audit/dt=*/*.parquet")} == before
    # a new group re-reads from the beginning: count-determined boundaries -> the same file names
    assert run_consume(kafka_broker, topic_name, lake, "g-rp-2", "--flush-records", "700",
                       until_idle=1.5, backend=backend).returncode == 0
    assert {p.name for p in lake.glob("k8s_audit/dt=*/*.parquet")} == set(before)
    counts = audit_id_counts(lake)
    assert len(counts) == 3000 and set(counts.values()) == {1}


def test_sigterm_flushes_commits_and_exits_zero(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path,
                                                backend: str) -> None:
    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(2000, run="st"))
    lake = tmp_path / "lake"
    log = tmp_path / "consume.log"
    # thresholds never reached: only the SIGTERM drain can write these records
    p = start_consume(kafka_broker, topic_name, lake, "g-term", "--flush-records", "1000000", "--flush-seconds",
                      "3600", log=log, backend=backend)

    def polled_some() -> bool:  # a progress line counts messages, and the last one is not 0
        text = log.read_text()
        return p.poll() is not None or ("messages" in text and " 0 messages" not in text.splitlines()[-1])

    wait_until(polled_some, timeout=60, what=lambda: log.read_text()[-3000:], every=0.5)
    assert p.poll() is None, log.read_text()[-3000:]
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
    counts = audit_id_counts(lake)
    assert len(counts) == 2000 and set(counts.values()) == {1}
    # and it committed: the same group has nothing left to read
    again = run_consume(kafka_broker, topic_name, lake, "g-term", until_idle=1.0, backend=backend)
    assert again.returncode == 0
    assert "0 events" in again.stderr.splitlines()[-1]


def test_library_api_in_process_with_on_flush_hook(kafka_broker: KafkaBroker, topic_name: str,
                                                   tmp_path: Path, backend: str) -> None:
    from ztaudit.core.config import KafkaSettings
    from ztaudit.pipeline.consume.loop import ConsumeOptions, consume

    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(1500, run="lib"))
    windows = []
    opts = ConsumeOptions(topics={topic_name: "k8s_audit"}, lake=tmp_path / "lake", group="g-lib",
                          flush_records=500, until_idle=1.0,
                          on_flush=[lambda since, until, paths: windows.append((since, until, paths))])
    m = consume(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, backend=backend), opts)
    assert m.events == 1500 and m.quarantined == 0
    assert windows and all(s <= u for s, u, _ in windows)
    assert sum(len(p) for _, _, p in windows) == m.files
    assert all(p.exists() for _, _, ps in windows for p in ps)

"""Crash safety: ``kill -9`` the consumer at random moments while 200,000 events stream through a
4-partition topic; after the restarts every event is in the lake exactly once (by audit id)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.kafka_broker import (
    KafkaBroker,
    audit_events,
    audit_id_counts,
    create_topic,
    data_files,
    kcat_produce,
    produce,
    run_consume,
    start_consume,
    ztaudit_env,
)
from support.s3proxy import S3Store, lake_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 200_000
#: Events held back from the initial produce: a run with an injected kill after N writes that finds the
#: topic already consumed is given more to write, 4,000 at a time (else it would wait for ever).
RESERVE = 40_000
RESERVE_STEP = 4_000
#: kill -9 rounds per backend (every third one at the injected worst moment); the optional
#: confluent backend is held to the issue's "at least 10" too, with three injected after-write kills.
KILLS = {"kafka-python": 12, "confluent": 10}


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(kafka_broker: KafkaBroker, topic_name: str,
                                                               tmp_path: Path, backend: str) -> None:
    kill_9_rounds(kafka_broker, topic_name, tmp_path, backend, KILLS[backend], {})


def test_kill_9_into_an_iceberg_lake_loses_and_duplicates_nothing(kafka_broker: KafkaBroker, topic_name: str,
                                                                  tmp_path: Path) -> None:
    """The same kills into an Iceberg lake (issue 16): readers see the snapshot, which must hold
    every event exactly once; a kill between the rename and the publish leaves files the replay
    publishes under the same names."""
    kill_9_rounds(kafka_broker, topic_name, tmp_path, "kafka-python", 9, {"ZTAUDIT_LAKE_FORMAT": "iceberg"})
    lake = tmp_path / "lake"
    assert (lake / "_iceberg" / "catalog.db").is_file()
    from ztaudit.core.iceberg_snapshot import snapshot_files

    listed = set(snapshot_files(lake, "k8s_audit"))
    on_disk = data_files(lake, "k8s_audit")
    assert listed == on_disk, f"unpublished: {sorted(on_disk - listed)[:3]}, gone: {sorted(listed - on_disk)[:3]}"


@pytest.mark.s3
def test_kill_9_into_a_lake_on_s3_loses_and_duplicates_nothing(kafka_broker: KafkaBroker, topic_name: str,
                                                               tmp_path: Path, s3proxy: S3Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The same kills into an Iceberg lake whose files are on S3 (S3Proxy, issue 16): each object is PUT
    whole, a kill between the PUT and the publish leaves an unlisted object that the replay finds by
    listing, rewrites under the same key and publishes; at the end the snapshot lists exactly the
    objects in the bucket, and nothing was written to local disk but the catalog."""
    env = lake_env(s3proxy, "crash")
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # this process counts the rows: it reads the lake on S3 too
    kill_9_rounds(kafka_broker, topic_name, tmp_path, "kafka-python", 9, env)
    lake = tmp_path / "lake"
    from ztaudit.core.iceberg_snapshot import snapshot_files

    listed = set(snapshot_files(lake, "k8s_audit"))
    in_bucket = data_files(lake, "k8s_audit")
    assert listed and all(f.startswith("s3://") for f in listed)
    assert listed == in_bucket, f"unpublished: {sorted(in_bucket - listed)[:3]}, gone: {sorted(listed - in_bucket)[:3]}"
    assert not list(lake.glob("*/dt=*"))


def kill_9_rounds(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path, backend: str, rounds: int,
                  extra_env: dict[str, str]) -> None:
    """``rounds`` kill -9s (every third at the injected worst moment), then a run to the end; every
    event must be in the lake exactly once (read the way readers read: the snapshot on Iceberg)."""
    rnd = random.Random(20261127)
    create_topic(kafka_broker, topic_name, 4)
    # ~1 KB events (no padding) so 200k stream through in well under a minute on 2 cores
    events = [e.replace(b'"ztaudit.test/pad":"', b'"p":"', 1)
              for e in audit_events(N_EVENTS, run="crash", spread_s=3 * 86400)]
    reserve = events[-RESERVE:]
    producer = kcat_produce(kafka_broker, topic_name, events[:-RESERVE], tmp_path)
    lake = tmp_path / "lake"
    log = tmp_path / "consume.log"
    # small, different thresholds: count cuts, byte cuts and wall-clock cuts all happen
    flags = ["--flush-records", "4000", "--flush-bytes", str(2_500_000), "--flush-seconds", "0.7",
             # the killed member's partitions come back after its session expires (test broker allows 1 s)
             "--session-timeout-ms", "1500"]
    kills = 0
    injected = 0
    ran_for: list[str | float] = []
    while kills < rounds:
        env = ztaudit_env(**extra_env)
        injected_now = kills % 3 == 2
        if injected_now:
            # the worst moment, deterministically: files renamed into place, offsets not committed yet
            env = ztaudit_env(**extra_env, ZTAUDIT_CONSUME_KILL_AFTER_WRITES=str(rnd.randint(1, 6)))
        p = start_consume(kafka_broker, topic_name, lake, "g-crash", *flags, log=log, env=env, backend=backend)
        try:
            if injected_now:
                rc = None
                deadline = time.monotonic() + 120
                while rc is None and time.monotonic() < deadline:
                    try:
                        rc = p.wait(timeout=8)
                    except subprocess.TimeoutExpired:
                        if reserve:  # caught up before its N-th write: give it something to write
                            produce(kafka_broker, topic_name, reserve[:RESERVE_STEP])
                            reserve = reserve[RESERVE_STEP:]
                assert rc == -signal.SIGKILL, f"injected kill did not happen (rc {rc}): {log.read_text()[-3000:]}"
                injected += 1
                ran_for.append("after-write")
            else:
                # random moments: before the first flush (startup ~1 s), during and between flushes
                delay = rnd.choice([0.4, 0.9, 1.3]) if kills < 3 else rnd.uniform(1.0, 3.5)
                time.sleep(delay)
                assert p.poll() is None, f"consumer exited by itself: {log.read_text()[-3000:]}"
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=30)
                ran_for.append(round(delay, 2))
        finally:
            if p.poll() is None:  # a failed assertion must not leave a consumer running
                p.kill()
                p.wait(timeout=30)
        kills += 1
    assert producer.wait(timeout=300) == 0
    if reserve:
        produce(kafka_broker, topic_name, reserve)
    done = run_consume(kafka_broker, topic_name, lake, "g-crash", *flags, until_idle=3.0, timeout=600,
                       backend=backend, env=ztaudit_env(**extra_env))
    assert done.returncode == 0, done.stderr[-3000:]

    counts = audit_id_counts(lake)
    missing = N_EVENTS - len(counts)
    dupes = {a: c for a, c in counts.items() if c != 1}
    assert missing == 0, f"{missing} events missing after {kills} kills ({ran_for})"
    assert not dupes, f"{len(dupes)} audit ids duplicated, e.g. {list(dupes.items())[:5]}"
    assert not data_files(lake, "quarantine")
    # no half-written file is visible to readers; temp files of killed writers are hidden names
    assert all(not Path(p).name.startswith(".") for p in data_files(lake, "k8s_audit"))
    text = log.read_text() + done.stderr
    recoveries = text.count("uncommitted earlier flush found")
    print(f"kills ({backend}, {extra_env or 'plain lake'}): {ran_for}; leftover recoveries: {recoveries}")
    # the injected kills left renamed-but-uncommitted files: the restarts found and rewrote them
    assert injected >= 3 and recoveries >= injected

"""Two consumer processes in one group share the partitions and together write every event exactly
once; when one leaves mid-stream, the rebalance hands its partitions over without loss."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from support.kafka_broker import (
    KafkaBroker,
    audit_events,
    audit_id_counts,
    create_topic,
    data_files,
    kcat_produce,
    start_consume,
    topic_size,
    wait_until,
    ztaudit_env,
)
from support.s3proxy import S3Store, lake_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: The loop's line for each assignment it applies: ``consume: assigned t[0], t[1]`` (``-``: none).
ASSIGNED = re.compile(r"consume: assigned (.+)$", re.MULTILINE)


def _metrics(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _committed(path: Path) -> dict[str, int]:
    return dict(_metrics(path).get("committed", {}))


def _assignments(log: Path) -> list[set[str]]:
    """Every assignment the member applied, in order (the partitions it owned from then on)."""
    text = log.read_text() if log.exists() else ""
    return [set() if m == "-" else set(m.split(", ")) for m in ASSIGNED.findall(text)]


def test_two_members_share_partitions_and_a_leaving_member_loses_nothing(kafka_broker: KafkaBroker,
                                                                          topic_name: str, tmp_path: Path,
                                                                          backend: str) -> None:
    two_members(kafka_broker, topic_name, tmp_path, backend, {})


def test_two_members_sharing_an_iceberg_lake_lose_and_double_nothing(kafka_broker: KafkaBroker, topic_name: str,
                                                                     tmp_path: Path) -> None:
    """The same group into an Iceberg lake (issue 16): two processes publish to the same tables
    concurrently (optimistic commits), and a rebalance hands partitions over between them."""
    two_members(kafka_broker, topic_name, tmp_path, "kafka-python", {"ZTAUDIT_LAKE_FORMAT": "iceberg"})
    from ztaudit.core.iceberg_snapshot import snapshot_files

    lake = tmp_path / "lake"
    listed = snapshot_files(lake, "k8s_audit")
    assert len(listed) == len(set(listed))
    assert set(listed) == data_files(lake, "k8s_audit")


@pytest.mark.s3
def test_two_members_sharing_a_lake_on_s3_lose_and_double_nothing(kafka_broker: KafkaBroker, topic_name: str,
                                                                  tmp_path: Path, s3proxy: S3Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same group into an Iceberg lake whose files are on S3 (S3Proxy, issue 16): two processes
    write objects and commit to the same tables; every object is listed once, none is left unlisted."""
    env = lake_env(s3proxy, "group")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    two_members(kafka_broker, topic_name, tmp_path, "kafka-python", env)
    from ztaudit.core.iceberg_snapshot import snapshot_files

    lake = tmp_path / "lake"
    listed = snapshot_files(lake, "k8s_audit")
    assert listed and len(listed) == len(set(listed)) and all(f.startswith("s3://") for f in listed)
    assert set(listed) == data_files(lake, "k8s_audit")
    assert not list(lake.glob("*/dt=*"))


def two_members(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path, backend: str,
                extra_env: dict[str, str]) -> None:
    """A and B in one group; B joins, A leaves while data arrives: exactly once, rebalances seen."""
    env = ztaudit_env(**extra_env)
    create_topic(kafka_broker, topic_name, 4)
    lake = tmp_path / "lake"
    events = audit_events(60_000, run="grp")
    producer = kcat_produce(kafka_broker, topic_name, events[:30_000], tmp_path)
    assert producer.wait(timeout=120) == 0
    flags = ["--flush-records", "2000", "--flush-seconds", "1", "--session-timeout-ms", "3000", "--backend", backend]
    m1, m2 = tmp_path / "m1.json", tmp_path / "m2.json"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    every = {f"{topic_name}[{p}]" for p in range(4)}

    def logs() -> str:
        return f"A: {a_log.read_text()[-2000:]}\nB: {b_log.read_text()[-2000:] if b_log.exists() else ''}"

    a = start_consume(kafka_broker, topic_name, lake, "g-two", *flags, "--metrics-file", str(m1), log=a_log,
                      env=env)
    # B joins only once A owns every partition: B's partitions can then only come from A (a rebalance)
    wait_until(lambda: any(s == every for s in _assignments(a_log)) or a.poll() is not None, timeout=60,
               what=logs)
    assert a.poll() is None, logs()
    b = start_consume(kafka_broker, topic_name, lake, "g-two", *flags, "--metrics-file", str(m2), log=b_log,
                      until_idle=8, env=env)
    # both members commit partitions of their own (the group shares the topic)
    # (the metrics files are rewritten periodically, so wait for them rather than read them once)
    wait_until(lambda: a.poll() is not None or b.poll() is not None or (
        bool(_committed(m1)) and bool(_committed(m2)) and len(set(_committed(m1)) | set(_committed(m2))) >= 3),
        timeout=90, what=logs)
    assert a.poll() is None and b.poll() is None, logs()
    # more data arrives while A leaves (SIGTERM: flush, commit, leave group) -> B takes over all
    producer = kcat_produce(kafka_broker, topic_name, events[30_000:], tmp_path)
    wait_until(lambda: topic_size(kafka_broker, topic_name) > 30_000 or producer.poll() is not None, timeout=60,
               what="the second half reaching the topic")
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0, a_log.read_text()[-3000:]
    assert producer.wait(timeout=120) == 0
    assert b.wait(timeout=300) == 0, b_log.read_text()[-3000:]

    counts = audit_id_counts(lake)
    assert len(counts) == 60_000, f"{60_000 - len(counts)} missing"
    assert set(counts.values()) == {1}
    # Every partition's offsets were committed up to its end by one member or the other. (Whether B
    # committed a given partition itself depends on whether A's final flush had already reached
    # the end of it when A left, so that is not asserted.)
    c1, c2 = _committed(m1), _committed(m2)
    final = {tp: max(c1.get(tp, 0), c2.get(tp, 0)) for tp in set(c1) | set(c2)}
    assert len(final) == 4 and sum(final.values()) == 60_000, final

    # The rebalances happened: when B joined, A gave partitions up (it owned all four, then fewer);
    # B owned a share while both ran, and all four after A left. Without a rebalance either member
    # keeps a single assignment and this fails.
    a_sets, b_sets = _assignments(a_log), _assignments(b_log)
    assert every in a_sets, a_sets
    assert any(s < every for s in a_sets[a_sets.index(every) + 1:]), f"A never had partitions revoked: {a_sets}"
    assert any(s and s < every for s in b_sets), f"B never shared the topic with A: {b_sets}"
    assert b_sets and b_sets[-1] == every, f"B did not take A's partitions over when A left: {b_sets}"
    assert _metrics(m1)["rebalances"] >= 2 and _metrics(m2)["rebalances"] >= 2, (_metrics(m1), _metrics(m2))

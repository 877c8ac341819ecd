"""Malformed and oversized messages (one of 5 MB) go to quarantine with their topic/partition/offset;
the valid messages around them, including JSON arrays and EventLists, are all in the lake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.kafka_broker import (
    KafkaBroker,
    audit_events,
    audit_id_counts,
    create_topic,
    producer,
    read_lake,
    run_consume,
)

pytestmark = pytest.mark.kafka


def test_bad_and_oversized_messages_are_quarantined_with_coordinates(kafka_broker: KafkaBroker, topic_name: str,
                                                                     tmp_path: Path, backend: str) -> None:
    create_topic(kafka_broker, topic_name, 1)
    good = audit_events(700, run="bad")
    big_event = json.loads(good[0])
    big_event["annotations"]["ztaudit.test/pad"] = "y" * (5 * 1024 * 1024)
    five_mb = json.dumps(big_event).encode()
    assert len(five_mb) > 5 * 1024 * 1024
    bad = {
        "invalid_json": b"this is not json {",
        "not_utf8": b"\x00\xff\xfe\x89PNG binary \xc3\x28",
        "truncated": good[1][: len(good[1]) // 2],
        "oversized": five_mb,
        "oversized_2mb": b'{"kind":"Event","x":"' + b"z" * (2 * 1024 * 1024) + b'"}',
        "empty": b"",
    }
    # messages: 100 single events, then bad ones interleaved with an EventList and a JSON array
    values: list[tuple[str, bytes]] = [("good", v) for v in good[2:102]]
    values.append(("eventlist", b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":['
                   + b",".join(good[102:402]) + b"]}"))
    for i, (name, v) in enumerate(bad.items()):
        values.append((name, v))
        values.append(("good", good[402 + i]))
    values.append(("array", b"[" + b",".join(good[500:700]) + b"]"))
    p = producer(kafka_broker, max_request_size=16 * 1024 * 1024, linger_ms=0)
    offsets: dict[str, int] = {}
    try:
        for name, v in values:
            md = p.send(topic_name, value=v, partition=0).get(timeout=60)
            offsets.setdefault(name, md.offset)
        p.flush()
    finally:
        p.close()
    good_ids = {json.loads(v)["auditID"] for name, v in values if name == "good"}
    good_ids |= {json.loads(v)["auditID"] for v in good[102:402] + good[500:700]}

    lake = tmp_path / "lake"
    proc = run_consume(kafka_broker, topic_name, lake, "g-bad", "--flush-records", "50", until_idle=2,
                       backend=backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = audit_id_counts(lake)
    assert set(counts) == good_ids and set(counts.values()) == {1}

    _names, rows = read_lake(lake, "quarantine", "origin, reason, raw_size, raw_truncated")
    got = {r[0]: (r[1], r[2], r[3]) for r in rows}
    expected_reason = {"invalid_json": "invalid_json", "not_utf8": "not_utf8", "truncated": "truncated",
                       "oversized": "oversized", "oversized_2mb": "oversized", "empty": "empty"}
    assert len(got) == len(bad), got
    for name, reason in expected_reason.items():
        origin = f"kafka:{topic_name}/0/{offsets[name]}"
        assert origin in got, (name, origin, got)
        assert got[origin][0] == reason, (name, got[origin])
    assert got[f"kafka:{topic_name}/0/{offsets['oversized']}"][1] == len(five_mb)
    assert got[f"kafka:{topic_name}/0/{offsets['oversized']}"][2] is True  # raw kept only up to the cap
    # each quarantine line is also logged with its coordinates
    assert f"quarantined kafka:{topic_name}/0/{offsets['oversized']}" in proc.stderr

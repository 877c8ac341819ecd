"""Consumer pieces that need no broker: file keys, the cut policy, partition state, leftover
recovery, the chunk writer, the retry helper, topic specs and client settings."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from support.kafka_broker import audit_events

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import ConfigError, SinkError
from ztaudit.core.keys import file_key, origin_offsets
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.compact import merge_ranges
from ztaudit.pipeline.consume import writer as writer_mod
from ztaudit.pipeline.consume.buffers import Chunk, CutPolicy, PartitionBuffer, Partitions
from ztaudit.pipeline.consume.recovery import find_leftovers
from ztaudit.pipeline.consume.writer import ChunkWriter, retry
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import KafkaOrigins, RawBatch
from ztaudit.pipeline.sources.kafka.base import TP, parse_topics, redact
from ztaudit.pipeline.sources.kafka.kafka_python import client_config, consumer_config

A0 = TP("audit", 0)


def _policy(flush_records: int = 1000, flush_bytes: int = 1 << 30, flush_seconds: float = 3600.0,
            max_buffer_bytes: int = 1 << 30) -> CutPolicy:
    return CutPolicy(flush_records, flush_bytes, flush_seconds, max_buffer_bytes)


def _buffer(offsets: list[int], size: int = 10, opened_at: float = 0.0) -> PartitionBuffer:
    b = PartitionBuffer(opened_at)
    b.append(list(offsets), [b"x" * size for _ in offsets])
    return b


def test_file_key_is_topic_partition_and_20_digit_first_offset() -> None:
    assert file_key("k8s-audit", 3, 42) == "k8s-audit+3+00000000000000000042"


def test_origin_offsets_parses_kafka_origins_only() -> None:
    got = origin_offsets(pa.array(["kafka:a/b/2/17", "file:/x.log:3", None, "kafka:t/0/9000000000"]))
    assert got.to_pylist() == [17, None, None, 9_000_000_000]


def test_count_cut_is_exact_and_one_chunk_per_round() -> None:
    policy = _policy(flush_records=4)
    buf = _buffer(list(range(100, 111)))
    assert policy.chunk_end(buf, now=1.0) == 4
    chunk = buf.take(A0, 4, now=1.0)
    assert chunk.offsets == [100, 101, 102, 103] and chunk.nbytes == 40 and not chunk.recovered
    assert buf.offsets[0] == 104 and len(buf.values) == 7 and buf.nbytes == 70 and buf.opened_at == 1.0
    # a round takes at most one chunk per partition, even when more are due
    parts = Partitions()
    parts.buffers[A0] = _buffer(list(range(100, 111)))
    assert [c.offsets for c in parts.cut_round(policy, now=1.0)] == [[100, 101, 102, 103]]


def test_byte_cut_is_data_determined() -> None:
    buf = _buffer(list(range(0, 300)), size=100)
    assert _policy(flush_bytes=1024).chunk_end(buf, now=1.0) == 11  # 11 * 100 B is the first to reach 1024 B


def test_wall_clock_cut_only_when_due_or_taking_all() -> None:
    policy = _policy(flush_seconds=5)
    assert policy.chunk_end(_buffer([1, 2, 3]), now=1.0) is None
    assert policy.chunk_end(_buffer([1, 2, 3]), now=6.0) == 3
    assert policy.chunk_end(_buffer([1, 2]), now=1.0, take_all=True) == 2
    assert policy.chunk_end(PartitionBuffer(0.0), now=99.0, take_all=True) is None  # nothing buffered


def test_memory_pressure_cuts_only_the_largest_buffer() -> None:
    """Above memory_cut_share of the budget the largest buffer is due whatever its size or age;
    the others wait for their own thresholds. must_wait is the hard cap on buffers + in flight."""
    policy = _policy(max_buffer_bytes=1000)
    small, large = TP("audit", 0), TP("audit", 1)
    below = {small: _buffer([1, 2], size=100), large: _buffer([5, 6, 7], size=100)}  # 500 B: not above half
    assert policy.plan(below, now=1.0) == {}
    above = {small: _buffer([1, 2], size=100), large: _buffer([5, 6, 7, 8], size=100)}  # 600 B
    assert policy.plan(above, now=1.0) == {large: 4}
    assert policy.plan(above, now=1.0, take_all=True) == {small: 2, large: 4}
    assert not policy.must_wait(buffered_bytes=600, in_flight_bytes=400)
    assert policy.must_wait(buffered_bytes=600, in_flight_bytes=401)


def test_revoked_partition_is_dropped_and_rewound_only_if_it_comes_back() -> None:
    parts = Partitions()
    p0, p1 = TP("audit", 0), TP("audit", 1)
    for tp in (p0, p1):
        buf, check = parts.buffer_for(tp, 10, now=0.0)
        assert not check  # never assigned here: nothing to look for
        parts.append(tp, buf, [10, 11, 12], [b"{}"] * 3)
    assert parts.revoke([p0, p1]) == 6 and not parts.buffers and not parts.next_offset
    parts.drop_from(p0, 7)  # an uncommitted chunk from 7 was in flight too: the lowest offset wins
    assert parts.assign([p0]) == {p0: 7}
    assert parts.assign([p1]) == {}  # p1 went elsewhere meanwhile: its new owner starts at the commit
    buf, check = parts.buffer_for(p0, 7, now=0.0)
    assert check  # a fresh partition's first record looks for leftovers
    assert parts.buffer_for(p0, 7, now=0.0)[1] is False  # once


def test_position_going_backwards_starts_the_buffer_over() -> None:
    parts = Partitions()
    buf, _ = parts.buffer_for(A0, 10, now=0.0)
    parts.append(A0, buf, [10, 11], [b"{}"] * 2)
    again, check = parts.buffer_for(A0, 11, now=1.0)
    assert again is not buf and not again.offsets and check


def test_recovered_boundary_reproduces_the_earlier_cut(tmp_path: Path) -> None:
    """An earlier (wall-clock) flush wrote offsets 10..16 and died before its commit: the replay
    finds the file by its key and ends its first chunk exactly at 16, even with other thresholds."""
    lake = tmp_path / "lake"
    events = audit_events(7, run="rec")
    table = process(RawBatch(events, KafkaOrigins("audit", 0, list(range(10, 17)))), NormalizeContext())
    sink = LakeSink(lake)
    sink.write("k8s_audit", table.tables["k8s_audit"], file_key("audit", 0, 10))
    assert find_leftovers(sink, A0, 11) is None
    found = find_leftovers(sink, A0, 10)
    assert found is not None and found.boundary == 16 and len(found.paths) == 1
    policy = _policy(flush_records=3)
    buf = _buffer(list(range(10, 15)), size=2)
    buf.leftovers, buf.boundary = found.paths, found.boundary
    assert policy.chunk_end(buf, now=99.0, take_all=True) is None  # not all of 10..16 read yet: wait
    buf.append([15, 16, 17, 18], [b"{}"] * 4)
    end = policy.chunk_end(buf, now=99.0)
    assert end == 7
    chunk = buf.take(A0, end, now=99.0)
    assert chunk.offsets == list(range(10, 17)) and chunk.recovered and chunk.leftovers == found.paths
    assert buf.boundary is None and buf.offsets == [17, 18] and buf.leftovers == []


def test_chunk_writer_rewrites_the_key_and_removes_leftovers_it_did_not_rewrite(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = LakeSink(lake)
    events = audit_events(5, run="cw")
    stale = lake / "k8s_audit" / "dt=2001-01-01" / f"{file_key('audit', 0, 10)}.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier attempt on another day")
    writer = ChunkWriter(sink, NormalizeContext(), {"audit": "k8s_audit"}, max_record_bytes=1 << 20)
    out = writer.write(Chunk(A0, events, list(range(10, 15)), [stale], True, sum(map(len, events))))
    assert out.rows == 5 and out.quarantined == 0 and out.window is not None and out.paths
    assert all(p.name == stale.name and p.exists() for p in out.paths)
    assert not stale.exists()


def test_retry_backs_off_gives_up_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(writer_mod.time, "sleep", sleeps.append)
    seen: list[tuple[int, float]] = []
    calls = iter([SinkError("1"), SinkError("2"), "ok"])

    def flaky() -> str:
        got = next(calls)
        if isinstance(got, Exception):
            raise got
        return got

    assert retry(flaky, retry_on=SinkError, on_retry=lambda e, n, d: seen.append((n, d))) == "ok"
    assert seen == [(1, 0.5), (2, 1.0)] and sleeps == [0.5, 1.0]
    sleeps.clear()

    def down() -> None:
        raise SinkError("down")

    with pytest.raises(SinkError):
        retry(down, retry_on=SinkError, on_retry=lambda e, n, d: None, tries=6)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]  # 6 attempts: 5 waits, doubling
    sleeps.clear()
    with pytest.raises(SinkError):  # forever, until asked to stop
        retry(down, retry_on=SinkError, on_retry=lambda e, n, d: None, until=lambda: len(sleeps) == 7)
    assert sleeps[-2:] == [15.0, 15.0]  # capped at BACKOFF_MAX_S
    with pytest.raises(ValueError):  # other errors are not retried

        def bad() -> None:
            raise ValueError("bug")

        retry(bad, retry_on=SinkError, on_retry=lambda e, n, d: None)


def test_topic_specs_and_errors() -> None:
    assert parse_topics(["a", "b=k8s_audit", "c=proxy_decision"]) == {"a": None, "b": "k8s_audit",
                                                                      "c": "proxy_decision"}
    with pytest.raises(ConfigError, match="unknown source kind"):
        parse_topics(["a=nope"])
    with pytest.raises(ConfigError):
        parse_topics(["=k8s_audit"])


def test_consumer_config_never_autocommits_and_fetches_5mb_messages() -> None:
    cfg = consumer_config(KafkaSettings(), group="g", start_from="earliest")
    assert cfg["enable_auto_commit"] is False and cfg["group_id"] == "g"
    assert cfg["max_partition_fetch_bytes"] > 5 * 1024 * 1024


def test_sasl_config_needs_password_and_redacts_it() -> None:
    s = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                      ssl_cafile="/ca.pem")
    with pytest.raises(ConfigError, match="no SASL password"):
        client_config(s, password=None)
    cfg = client_config(s, password="s3cret")
    assert cfg["sasl_plain_password"] == "s3cret" and cfg["ssl_cafile"] == "/ca.pem"
    assert redact("auth failed for s3cret", "s3cret") == "auth failed for ***"


def test_merge_ranges() -> None:
    assert merge_ranges([(10, 19), (0, 9), (30, 40), (35, 50)]) == [(0, 19), (30, 50)]


def test_confluent_config_maps_security_and_never_autocommits() -> None:
    pytest.importorskip("confluent_kafka")
    from ztaudit.pipeline.sources.kafka.confluent import confluent_config

    s = KafkaSettings(bootstrap_servers="a:1, b:2", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="u", ssl_cafile="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/k.pem")
    cfg = confluent_config(s, group="g", start_from="latest", password="s3cret")
    assert cfg["bootstrap.servers"] == "a:1,b:2" and cfg["group.id"] == "g"
    assert cfg["enable.auto.commit"] is False and cfg["enable.auto.offset.store"] is False
    assert cfg["auto.offset.reset"] == "latest"
    assert cfg["fetch.message.max.bytes"] > 5 * 1024 * 1024 and cfg["message.max.bytes"] > 5 * 1024 * 1024
    assert cfg["receive.message.max.bytes"] >= cfg["fetch.max.bytes"] + 512
    assert (cfg["security.protocol"], cfg["sasl.mechanism"], cfg["sasl.username"], cfg["sasl.password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "u", "s3cret")
    assert (cfg["ssl.ca.location"], cfg["ssl.certificate.location"], cfg["ssl.key.location"]) == (
        "/ca.pem", "/c.pem", "/k.pem")
    with pytest.raises(ConfigError, match="no SASL password"):
        confluent_config(s, group="g", start_from="earliest", password=None)
    plain = confluent_config(KafkaSettings(), group="g", start_from="earliest")
    assert not any(k.startswith(("sasl.", "ssl.")) for k in plain)


def test_backend_is_validated_and_selects_the_source(tmp_path: Path) -> None:
    from ztaudit.core.config import load_config
    from ztaudit.pipeline.sources.kafka.backends import BACKENDS, open_source
    from ztaudit.pipeline.sources.kafka.kafka_python import KafkaPythonSource

    with pytest.raises(ConfigError, match=r"kafka\.backend"):
        load_config(None, overrides={"kafka": {"backend": "librdkafka"}})
    with pytest.raises(ConfigError, match=r"kafka\.backend"):
        open_source(KafkaSettings(backend="librdkafka"), group="g", start_from="earliest")
    assert set(BACKENDS) == {"kafka-python", "confluent"}
    assert isinstance(open_source(KafkaSettings(), group="g", start_from="earliest"), KafkaPythonSource)
    pytest.importorskip("confluent_kafka")
    from ztaudit.pipeline.sources.kafka.confluent import ConfluentSource

    assert isinstance(open_source(KafkaSettings(backend="confluent"), group="g", start_from="earliest"),
                      ConfluentSource)


def test_chunk_writer_warns_about_audit_rows_without_a_cluster(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    events = audit_events(3, run="nc")
    chunk = Chunk(A0, events, [0, 1, 2], [], False, sum(map(len, events)))
    with caplog.at_level("WARNING", logger="ztaudit.pipeline.consume.writer"):
        out = ChunkWriter(LakeSink(tmp_path / "a"), NormalizeContext(), {"audit": "k8s_audit"},
                          max_record_bytes=1 << 20).write(chunk)
    assert out.no_cluster == 3
    assert "3 k8s_audit rows have no cluster" in caplog.text and "--cluster NAME" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ztaudit.pipeline.consume.writer"):
        out = ChunkWriter(LakeSink(tmp_path / "b"), NormalizeContext(cluster="prod"), {"audit": "k8s_audit"},
                          cluster="prod", max_record_bytes=1 << 20).write(chunk)
    assert out.no_cluster == 0 and "no cluster" not in caplog.text

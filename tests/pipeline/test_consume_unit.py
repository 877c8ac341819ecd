"""Consumer pieces that need no broker: file keys, chunk cutting, leftover recovery, topic specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pytest
from support.kafka_broker import audit_events

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import ConfigError
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.compact import merge_ranges
from ztaudit.pipeline.consume import ConsumeOptions, StreamConsumer, _Buffer, file_key, origin_offsets
from ztaudit.pipeline.normalize import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import KafkaOrigins, RawBatch
from ztaudit.pipeline.sources.kafka import client_config, consumer_config, parse_topics, redact


class TP(NamedTuple):
    topic: str
    partition: int


def _consumer(tmp_path: Path, **kw: Any) -> StreamConsumer:
    opts = ConsumeOptions(topics={"audit": None}, lake=tmp_path / "lake", **kw)
    return StreamConsumer(KafkaSettings(), opts)


def _buffer(offsets: list[int], size: int = 10) -> _Buffer:
    b = _Buffer(0.0)
    b.offsets = list(offsets)
    b.values = [b"x" * size for _ in offsets]
    b.nbytes = size * len(offsets)
    return b


def test_file_key_is_topic_partition_and_20_digit_first_offset() -> None:
    assert file_key("k8s-audit", 3, 42) == "k8s-audit+3+00000000000000000042"


def test_origin_offsets_parses_kafka_origins_only() -> None:
    got = origin_offsets(pa.array(["kafka:a/b/2/17", "file:/x.log:3", None, "kafka:t/0/9000000000"]))
    assert got.to_pylist() == [17, None, None, 9_000_000_000]


def test_count_cut_is_exact_and_one_chunk_per_round(tmp_path: Path) -> None:
    c = _consumer(tmp_path, flush_records=4, flush_seconds=3600)
    buf = _buffer(list(range(100, 111)))
    chunk = c._cut(TP("audit", 0), buf, now=1.0, final=False)
    assert chunk is not None and chunk.offsets == [100, 101, 102, 103]
    assert buf.offsets[0] == 104 and len(buf.values) == 7 and buf.nbytes == 70


def test_byte_cut_is_data_determined(tmp_path: Path) -> None:
    c = _consumer(tmp_path, flush_records=1000, flush_bytes=1024, flush_seconds=3600)
    buf = _buffer(list(range(0, 300)), size=100)
    chunk = c._cut(TP("audit", 0), buf, now=1.0, final=False)
    assert chunk is not None and len(chunk.offsets) == 11  # 11 * 100 B is the first to reach 1024 B


def test_wall_clock_cut_only_when_due_or_final(tmp_path: Path) -> None:
    c = _consumer(tmp_path, flush_records=1000, flush_seconds=5)
    assert c._cut(TP("audit", 0), _buffer([1, 2, 3]), now=1.0, final=False) is None
    chunk = c._cut(TP("audit", 0), _buffer([1, 2, 3]), now=6.0, final=False)
    assert chunk is not None and chunk.offsets == [1, 2, 3]
    assert c._cut(TP("audit", 0), _buffer([1, 2]), now=1.0, final=True) is not None


def test_recovered_boundary_reproduces_the_earlier_cut(tmp_path: Path) -> None:
    """An earlier (wall-clock) flush wrote offsets 10..16 and died before its commit: the replay
    finds the file by its key and ends its first chunk exactly at 16, even with other thresholds."""
    c = _consumer(tmp_path, flush_records=3, flush_seconds=3600)
    events = audit_events(7, run="rec")
    table = process(RawBatch(events, KafkaOrigins("audit", 0, list(range(10, 17)))), NormalizeContext())
    LakeSink(tmp_path / "lake").write("k8s_audit", table.tables["k8s_audit"], file_key("audit", 0, 10))
    buf = _Buffer(0.0)
    c._recover(TP("audit", 0), 10, buf)
    assert buf.boundary == 16 and len(buf.leftovers) == 1
    buf.offsets, buf.values, buf.nbytes = list(range(10, 15)), [b"{}"] * 5, 10
    assert c._cut(TP("audit", 0), buf, now=99.0, final=True) is None  # not all of 10..16 read yet: wait
    buf.offsets += [15, 16, 17, 18]
    buf.values += [b"{}"] * 4
    chunk = c._cut(TP("audit", 0), buf, now=99.0, final=False)
    assert chunk is not None and chunk.offsets == list(range(10, 17)) and chunk.recovered
    assert buf.boundary is None and buf.offsets == [17, 18]


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
    from ztaudit.pipeline.sources.confluent import confluent_config

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
    from ztaudit.pipeline.sources.kafka import KafkaPythonSource, open_source

    with pytest.raises(ConfigError, match=r"kafka\.backend"):
        load_config(None, overrides={"kafka": {"backend": "librdkafka"}})
    assert isinstance(open_source(KafkaSettings(), group="g", start_from="earliest"), KafkaPythonSource)
    pytest.importorskip("confluent_kafka")
    from ztaudit.pipeline.sources.confluent import ConfluentSource

    assert isinstance(open_source(KafkaSettings(backend="confluent"), group="g", start_from="earliest"),
                      ConfluentSource)

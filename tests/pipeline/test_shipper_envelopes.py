"""Log shippers' envelopes (Fluent Bit, Vector) and the cluster a shipper names
(``pipeline/decode/shipper_envelopes.py``, called by ``process()``; docs/shippers.md).

Every shape is checked through ``process()`` and both of its paths (the columnar fast path and the
per-record path): a record wrapped in an envelope must give exactly the rows the bare record gives
when read from a file. The records are the repository's sample logs (real formats: a kube-apiserver
audit line, Pomerium authorize and access lines, Keycloak's console and ECS JSON lines, Okta); the
envelopes are what Fluent Bit's kafka output and Vector's kafka sink write (docs/shippers.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztaudit.core.config import DEFAULT_CLUSTER_FIELDS, load_config
from ztaudit.core.errors import ConfigError
from ztaudit.core.quarantine import Reason
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.consume.buffers import Partitions
from ztaudit.pipeline.consume.writer import ChunkWriter
from ztaudit.pipeline.decode.shipper_envelopes import MAX_DEPTH, cluster_of, open_record, usable_cluster
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import BatchResult, KafkaOrigins, LineOrigins, RawBatch
from ztaudit.pipeline.sources.kafka.base import TP, header_cluster

SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"
CTX = NormalizeContext(cluster=None, ingested_at=datetime(2026, 12, 1, tzinfo=UTC))
MiB = 1024 * 1024


def _first(path: str, contains: str = "") -> str:
    for line in (SAMPLES / path).read_text().splitlines():
        if line.strip() and contains in line:
            return line
    raise AssertionError(f"no line with {contains!r} in {path}")


#: (name, the record as a log line, the table it must land in)
RECORDS: list[tuple[str, str, str]] = [
    ("kube-apiserver audit line", _first("k8s_audit/apiserver-audit.jsonl"), "k8s_audit"),
    ("Pomerium authorize check", _first("proxy_decision/pomerium-authorize.jsonl"), "proxy_decision"),
    ("Pomerium Envoy access line", _first("proxy_decision/pomerium-access.jsonl"), "proxy_decision"),
    ("Keycloak console line", _first("idp_event/keycloak-server.log", "org.keycloak.events"), "idp_event"),
    ("Keycloak ECS JSON", _first("idp_event/keycloak-ecs.jsonl"), "idp_event"),
    ("Okta System Log", _first("idp_event/okta-system-log.jsonl"), "idp_event"),
]
TS = 1764000000.123456
K8S_META = {"pod_name": "kube-apiserver-cp1", "namespace_name": "kube-system",
            "pod_id": "5e0f3d4c-1b2a-4c3d-9e8f-7a6b5c4d3e2f", "host": "cp1", "container_name": "kube-apiserver",
            "docker_id": "4f1c0c1e9a", "container_image": "registry.k8s.io/kube-apiserver:v1.31.2"}
VECTOR_K8S_META = {"pod_name": "pomerium-authorize-7d9f8", "pod_namespace": "pomerium", "pod_node_name": "w1",
                   "container_name": "authorize", "pod_uid": "0b9c8d7e", "pod_labels": {"app": "pomerium"},
                   "container_image": "pomerium/pomerium:v0.30.0"}


def fluent_bit(line: str) -> dict[str, Any]:
    """kafka output, Format json, default Timestamp_Key; tail input without a parser (Key log)."""
    return {"@timestamp": TS, "log": line}


#: envelope name -> how it wraps a line. Each is a record a shipper writes to Kafka.
ENVELOPES: dict[str, Callable[[str], dict[str, Any]]] = {
    "fluent-bit tail (no parser)": fluent_bit,
    "fluent-bit tail, docker parser": lambda line: {"@timestamp": TS, "log": line + "\n", "stream": "stdout",
                                                    "time": "2026-11-24T10:07:52.123456789Z"},
    "fluent-bit tail, cri parser": lambda line: {"@timestamp": TS, "time": "2026-11-24T10:07:52.123456789Z",
                                                 "stream": "stderr", "logtag": "F", "message": line},
    "fluent-bit kubernetes filter": lambda line: {"@timestamp": TS, "log": line + "\n", "stream": "stdout",
                                                  "kubernetes": K8S_META},
    "fluent-bit date key": lambda line: {"date": TS, "log": line},
    "vector file source": lambda line: {"message": line, "timestamp": "2026-11-24T10:07:52.123456Z", "host": "cp1",
                                        "source_type": "file", "file": "/var/log/kubernetes/audit/audit.log"},
    "vector kubernetes_logs": lambda line: {"message": line, "timestamp": "2026-11-24T10:07:52.123456Z",
                                            "source_type": "kubernetes_logs", "stream": "stdout",
                                            "file": "/var/log/pods/pomerium_authorize/0.log",
                                            "kubernetes": VECTOR_K8S_META},
    "fluent-bit inside vector (kafka source)": lambda line: {
        "message": json.dumps(fluent_bit(line)), "source_type": "kafka", "topic": "edge-logs", "partition": 2,
        "offset": 118, "message_key": None, "timestamp": "2026-11-24T10:07:53.001Z"},
}


def run(lines: Sequence[bytes], *, fast: bool, cluster: str | None = None, ctx: NormalizeContext = CTX,
        **kw: Any) -> BatchResult:
    """process() over ``lines`` read as a file, through the fast path (``fast``) or the per-record path."""
    result = process(RawBatch(list(lines), LineOrigins("f.log"), cluster=cluster), ctx,
                     fast_path_min_records=0 if fast else 10**9, **kw)
    assert result.balanced(), result
    return result


def rows(result: BatchResult) -> dict[str, list[dict[str, Any]]]:
    return {name: t.to_pylist() for name, t in sorted(result.tables.items())}


def _wrapped(line: str, envelope: str) -> bytes:
    return json.dumps(ENVELOPES[envelope](line)).encode()


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "record-path"])
@pytest.mark.parametrize("envelope", list(ENVELOPES))
@pytest.mark.parametrize(("name", "line", "table"), RECORDS, ids=[r[0] for r in RECORDS])
def test_each_envelope_gives_the_rows_of_the_bare_record(name: str, line: str, table: str, envelope: str,
                                                         fast: bool) -> None:
    bare = run([line.encode()] * 3, fast=fast)
    assert bare.rows == 3 and set(bare.tables) == {table}, (name, bare.rejected)
    shipped = run([_wrapped(line, envelope)] * 3, fast=fast)
    assert shipped.quarantined == 0, shipped.rejected
    assert rows(shipped) == rows(bare)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "record-path"])
def test_vector_message_parsed_into_an_object_and_merged_fluent_bit_records(fast: bool) -> None:
    """A remap that parsed the line (``.message = parse_json!(.message)``) leaves an object inside;
    Fluent Bit's json parser merges the event's keys into the record (no envelope: only its cluster
    field is read). Both give the bare record's rows."""
    for _name, line, _table in RECORDS:
        if not line.startswith("{"):
            continue
        bare = rows(run([line.encode()] * 2, fast=fast))
        event = json.loads(line)
        parsed = {"message": event, "source_type": "file", "host": "cp1", "timestamp": "2026-11-24T10:07:52Z"}
        assert rows(run([json.dumps(parsed).encode()] * 2, fast=fast)) == bare
        if "@timestamp" not in event:
            merged = {**event, "@timestamp": TS}
            assert rows(run([json.dumps(merged).encode()] * 2, fast=fast)) == bare


def test_records_that_only_look_like_envelopes_are_left_alone() -> None:
    """Keycloak's ECS JSON has ``log`` as an object (``log.logger``); Pomerium's own JSON has a
    ``message``: neither is a shipper's envelope."""
    ecs = json.loads(_first("idp_event/keycloak-ecs.jsonl"))
    nested = {k: v for k, v in ecs.items() if not k.startswith("log.")}
    nested["log"] = {"logger": ecs["log.logger"], "level": ecs["log.level"]}
    assert open_record(nested, DEFAULT_CLUSTER_FIELDS) is None
    pomerium = json.loads(_first("proxy_decision/pomerium-authorize.jsonl"))
    assert open_record(pomerium, DEFAULT_CLUSTER_FIELDS) is None
    result = run([json.dumps(nested).encode()], fast=False)
    assert result.rows == 1 and set(result.tables) == {"idp_event"}, result.rejected


AUDIT = _first("k8s_audit/apiserver-audit.jsonl")


def clusters(result: BatchResult) -> list[str | None]:
    return result.tables["k8s_audit"].column("cluster").to_pylist()


@pytest.mark.parametrize(("extra", "expected"), [
    ({"cluster": "prod"}, "prod"),                                     # record_modifier: Record cluster prod
    ({"cluster_name": "prod"}, "prod"),
    ({"kubernetes": {**K8S_META, "cluster_name": "prod"}}, "prod"),    # nested into the kubernetes metadata
    ({"k8s.cluster.name": "prod"}, "prod"),                            # OpenTelemetry attribute, flat key
    ({"k8s": {"cluster": {"name": "prod"}}}, "prod"),                  # ... or nested
    ({"cluster": " prod "}, "prod"),
    ({"cluster": 7}, "fallback"),                                      # not a name: the next way is tried
    ({"cluster": ""}, "fallback"),
    ({"cluster": "pr\nod"}, "fallback"),
    ({"cluster": "x" * 254}, "fallback"),
    ({"kubernetes": K8S_META}, "fallback"),                            # Fluent Bit's own metadata names none
], ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else str(v))
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "record-path"])
def test_cluster_from_a_shipper_field(extra: dict[str, Any], expected: str, fast: bool) -> None:
    wrapped = {"@timestamp": TS, "log": AUDIT, **extra}
    merged = {**json.loads(AUDIT), **extra}  # json parser: the event's keys merged into the record
    for record in (wrapped, merged):
        result = run([json.dumps(record).encode()] * 2, fast=fast, cluster="fallback")
        assert clusters(result) == [expected] * 2


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "record-path"])
def test_cluster_precedence_field_header_topic_flag(fast: bool) -> None:
    """A shipper field, then the record's Kafka header, then the batch default (the topic map or
    --cluster); an envelope that names its own cluster (EKS here) wins over all of them."""
    named = json.dumps({"log": AUDIT, "cluster": "from-field"}).encode()
    plain = json.dumps({"log": AUDIT}).encode()
    eks = json.dumps({"logGroup": "/aws/eks/from-eks/cluster", "logEvents": [{"message": AUDIT}],
                      "cluster": "from-field"}).encode()
    ctx = NormalizeContext(cluster="from-flag", ingested_at=CTX.ingested_at)
    result = process(RawBatch([named, plain, plain, AUDIT.encode(), eks], KafkaOrigins("t", 0, [0, 1, 2, 3, 4]),
                              cluster="from-topic"), ctx, fast_path_min_records=0 if fast else 10**9,
                     record_clusters=["from-header", "from-header", None, None, "from-header"])
    assert result.balanced() and result.quarantined == 0
    got = dict(zip(result.tables["k8s_audit"].column("origin").to_pylist(), clusters(result), strict=True))
    assert got == {"kafka:t/0/0": "from-field", "kafka:t/0/1": "from-header", "kafka:t/0/2": "from-topic",
                   "kafka:t/0/3": "from-topic", "kafka:t/0/4": "from-eks"}
    no_topic = process(RawBatch([plain], KafkaOrigins("t", 0, [0])), ctx)
    assert clusters(no_topic) == ["from-flag"]


def test_innermost_cluster_wins_and_fields_are_configurable() -> None:
    inner = {"@timestamp": TS, "log": AUDIT, "kubernetes": {"cluster_name": "node-side"}}
    outer = {"message": json.dumps(inner), "source_type": "kafka", "cluster": "aggregator-side"}
    opened = open_record(outer, DEFAULT_CLUSTER_FIELDS)
    assert opened is not None and opened.cluster == "node-side" and opened.form == "vector>fluent-bit"
    assert opened.raw == AUDIT.encode()
    custom = {"log": AUDIT, "env": {"k8s": "custom"}, "cluster": "default-field"}
    assert clusters(run([json.dumps(custom).encode()], fast=False, cluster_fields=("env.k8s",))) == ["custom"]
    assert cluster_of(custom, ()) is None


def test_header_values_and_cluster_names_are_bounded() -> None:
    assert header_cluster([("trace", b"x"), ("cluster", b"prod")], "cluster") == "prod"
    assert header_cluster([("cluster", b"a"), ("cluster", b"b")], "cluster") == "b"
    assert header_cluster([("cluster", b"\xff\xfe")], "cluster") is None
    assert header_cluster([("cluster", None)], "cluster") is None
    assert header_cluster([("cluster", b"prod")], "") is None  # kafka.cluster_header = "": headers not read
    assert header_cluster(None, "cluster") is None
    assert usable_cluster("prod\x00") is None and usable_cluster("p" * 253) == "p" * 253


# --- hostile envelopes ---------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "reason", "says"), [
    ({"log": 12, "@timestamp": TS}, Reason.WRONG_TYPE, "'log' is int"),
    ({"log": None, "stream": "stdout"}, Reason.WRONG_TYPE, "'log' is null"),
    ({"log": ["a", "b"]}, Reason.WRONG_TYPE, "'log' is list"),
    ({"log": True}, Reason.WRONG_TYPE, "'log' is bool"),
    ({"log": "  \n"}, Reason.EMPTY, "empty 'log'"),
    ({"message": 3.5, "source_type": "file"}, Reason.WRONG_TYPE, "vector envelope whose 'message' is float"),
    ({"message": "", "source_type": "kubernetes_logs"}, Reason.EMPTY, "vector envelope with an empty 'message'"),
    ({"message": None, "logtag": "F"}, Reason.WRONG_TYPE, "'message' is null"),
], ids=lambda v: json.dumps(v)[:30] if isinstance(v, dict) else str(v))
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "record-path"])
def test_envelope_without_a_usable_inner_value_is_quarantined(record: dict[str, Any], reason: Reason, says: str,
                                                              fast: bool) -> None:
    raw = json.dumps(record).encode()
    result = run([raw, AUDIT.encode()], fast=fast)
    assert result.rows == 1 and result.quarantined == 1
    rej = result.rejected[0]
    assert rej.reason is reason and says in rej.detail and rej.origin == "file:f.log:1"
    assert json.loads(rej.raw) == record  # the envelope as it arrived (re-serialised by the scrubber)


def test_nesting_deeper_than_the_limit_is_quarantined() -> None:
    def nest(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {"@timestamp": TS, "log": AUDIT}
        for _ in range(depth - 1):
            value = {"message": json.dumps(value), "source_type": "kafka"}
        return value

    ok = run([json.dumps(nest(MAX_DEPTH)).encode()], fast=False)
    assert ok.rows == 1 and ok.quarantined == 0
    deep = run([json.dumps(nest(MAX_DEPTH + 1)).encode()], fast=False)
    assert deep.rows == 0 and deep.quarantined == 1
    assert deep.rejected[0].reason is Reason.UNKNOWN_SHAPE and "nested deeper than 3" in deep.rejected[0].detail


def test_the_size_cap_applies_to_the_record_and_to_its_inner_value() -> None:
    cap = 4096
    big = json.dumps({"log": AUDIT + " " * cap}).encode()
    assert run([big], fast=False, max_record_bytes=cap).rejected[0].reason is Reason.OVERSIZED
    # An inner object that re-serialises longer than the envelope (1E2 -> 100.0) is over the cap.
    filler = "[" + ",".join(["1E2"] * ((cap - 200) // 4)) + "]"
    raw = b'{"source_type":"x","message":{"kind":"Event","n":' + filler.encode() + b"}}"
    assert len(raw) <= cap
    result = run([raw], fast=False, max_record_bytes=cap)
    assert result.quarantined == 1 and result.rejected[0].reason is Reason.OVERSIZED, result.rejected


def test_hostile_inner_values_stay_linear_and_are_read_as_from_a_file() -> None:
    """An inner JSON string nested a million levels deep, a broken one, and a text line no one reads
    end exactly as they would in a file: quarantined with the file reader's reason, quickly."""
    deep = json.dumps({"log": "[" * 500_000 + "]" * 500_000}).encode()
    broken = json.dumps({"log": '{"kind":"Event","auditID":'}).encode()
    text = json.dumps({"message": "10:07AM INF nothing to see here", "source_type": "file"}).encode()
    t0 = time.perf_counter()
    shipped = run([deep, broken, text], fast=False, max_record_bytes=4 * MiB)
    assert time.perf_counter() - t0 < 10
    bare = run([b"[" * 500_000 + b"]" * 500_000, b'{"kind":"Event","auditID":', b"10:07AM INF nothing to see here"],
               fast=False, max_record_bytes=4 * MiB)
    assert [(r.reason, r.origin) for r in shipped.rejected] == [(r.reason, r.origin) for r in bare.rejected]
    assert shipped.rejected[1].reason is Reason.TRUNCATED


# --- the consumer's side: header clusters travel with their records; the topic map --------------

def test_header_clusters_travel_through_the_partition_buffers() -> None:
    parts = Partitions()
    tp = TP("audit", 0)
    buf, _ = parts.buffer_for(tp, 0, 0.0)
    parts.append(tp, buf, [0, 1], [b"a", b"b"])                      # a poll without headers
    parts.append(tp, buf, [2, 3], [b"c", b"d"], [None, "prod"])      # one with
    first = buf.take(tp, 3, 1.0)
    assert first.clusters == [None, None, None] and first.offsets == [0, 1, 2]
    assert buf.take(tp, 1, 2.0).clusters == ["prod"]


def test_chunk_writer_uses_the_topic_map_then_the_flag(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path / "lake")
    writer = ChunkWriter(sink, CTX, {"audit-prod": None, "audit-any": None}, cluster="flag", max_record_bytes=MiB,
                         topic_clusters={"audit-prod": "prod"})
    parts = Partitions()
    for topic, offset in (("audit-prod", 0), ("audit-any", 0)):
        tp = TP(topic, 0)
        buf, _ = parts.buffer_for(tp, offset, 0.0)
        event = json.loads(AUDIT)
        event["auditID"] = f"{topic}-a"
        parts.append(tp, buf, [0, 1], [json.dumps({"log": json.dumps(event)}).encode(),
                                       json.dumps({**event, "auditID": f"{topic}-b"}).encode()], ["hdr", None])
        out = writer.write(buf.take(tp, 2, 1.0))
        assert out.rows == 2 and out.no_cluster == 0
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "lake").glob("k8s_audit/dt=*/*.parquet")))
    got = dict(zip(table.column("audit_id").to_pylist(), table.column("cluster").to_pylist(), strict=True))
    assert got == {"audit-prod-a": "hdr", "audit-prod-b": "prod", "audit-any-a": "hdr", "audit-any-b": "flag"}


def test_config_keys(tmp_path: Path) -> None:
    cfg_file = tmp_path / "ztaudit.toml"
    cfg_file.write_text('[ingest]\ncluster_fields = ["env.cluster"]\n'
                        '[kafka]\ncluster_header = "x-cluster"\ntopic_clusters = { "audit-prod" = "prod" }\n')
    cfg = load_config(cfg_file, env={})
    assert cfg.ingest.cluster_fields == ["env.cluster"] and cfg.kafka.cluster_header == "x-cluster"
    assert cfg.kafka.topic_clusters == {"audit-prod": "prod"}
    assert load_config(None, env={}).ingest.cluster_fields == list(DEFAULT_CLUSTER_FIELDS)
    cfg_file.write_text('[kafka]\ntopic_clusters = { "audit-prod" = "" }\n')
    with pytest.raises(ConfigError, match="topic_clusters"):
        load_config(cfg_file, env={})


# --- property: wrapping any valid record in any envelope gives the same lake row ------------------

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc", "Zs")),
                min_size=1, max_size=20)
shipper_noise = st.dictionaries(st.sampled_from(["host", "stream", "file", "time", "_p", "offset", "topic"]),
                                st.text(max_size=12) | st.integers(0, 10**6), max_size=4)


@st.composite
def audit_records(draw: st.DrawFn) -> str:
    """A valid kube-apiserver audit line with drawn identities, verbs and objects."""
    event = json.loads(AUDIT)
    event["auditID"] = str(draw(st.uuids()))
    event["verb"] = draw(st.sampled_from(["get", "list", "watch", "create", "delete", "patch"]))
    event["user"] = {"username": draw(st.sampled_from(["alice@example.com", "system:serviceaccount:a:b",
                                                       "system:node:w1"])), "groups": draw(st.lists(names, max_size=3))}
    event["objectRef"] = {"resource": draw(st.sampled_from(["pods", "secrets", "configmaps"])),
                          "namespace": draw(names), "apiVersion": "v1"}
    event["sourceIPs"] = [draw(st.ip_addresses(v=4).map(str))]
    return json.dumps(event, separators=(",", ":") if draw(st.booleans()) else (", ", ": "))


SINGLE = sorted(k for k in ENVELOPES if "inside" not in k)


@st.composite
def wrapped(draw: st.DrawFn, line: str) -> tuple[bytes, str | None]:
    """``line`` in 1..MAX_DEPTH envelopes, each with shipper noise, one maybe naming the cluster;
    returns the record and the cluster it names (None if it names none, or names it unusably)."""
    levels = draw(st.integers(1, MAX_DEPTH))
    at = draw(st.integers(0, levels - 1))
    cluster = draw(st.none() | names)
    value: Any = line
    for depth in range(levels):
        kind = draw(st.sampled_from(SINGLE))  # one envelope each (the chain makes the nesting)
        inner = value if isinstance(value, str) else json.dumps(value)
        if depth == 0 and inner.startswith("{") and kind.startswith("vector") and draw(st.booleans()):
            record: dict[str, Any] = {**ENVELOPES[kind]("x"), "message": json.loads(inner)}  # parsed by a remap
        else:
            record = ENVELOPES[kind](inner)
        record = {**draw(shipper_noise), **record}
        if cluster is not None and depth == at:
            record["cluster"] = cluster
        value = record
    return json.dumps(value).encode(), usable_cluster(cluster)


@SETTINGS
@given(data=st.data(), fast=st.booleans())
def test_property_any_record_in_any_envelopes_gives_the_bare_rows(data: st.DataObject, fast: bool) -> None:
    name, line, table = data.draw(st.sampled_from(RECORDS))
    if table == "k8s_audit":
        line = data.draw(audit_records())
    record, cluster = data.draw(wrapped(line))
    shipped = run([record] * 2, fast=fast, cluster="flag")
    assert shipped.quarantined == 0, (name, shipped.rejected)
    expected_cluster = cluster if cluster is not None and table == "k8s_audit" else "flag"
    bare = run([line.encode()] * 2, fast=fast, cluster=expected_cluster)
    assert rows(shipped) == rows(bare), name

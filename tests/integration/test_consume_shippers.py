"""``ztaudit consume`` of what log shippers put into Kafka (docs/shippers.md), against the real broker.

Real public records from the shared corpus (read in place) are wrapped as Fluent Bit's kafka output
and Vector's kafka sink write them -- Fluent Bit with the cluster added by a ``record_modifier``
filter, Vector without one -- and produced with **kcat** (librdkafka, as both shippers use), one
topic per way of naming the cluster: a shipper field, a Kafka header (``kcat -H cluster=...``), the
``kafka.topic_clusters`` map, and ``--cluster``. The lake must hold exactly the rows ``ztaudit
ingest`` makes of the bare records, each with its cluster, the broken envelopes quarantined, and
the consumer's counts conserved (records = rows + quarantined + ignored).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.kafka_broker import ZTAUDIT, KafkaBroker, create_topic, run_consume, ztaudit_env

pytestmark = pytest.mark.kafka

AUDIT = ["k8s-audit/audit2rbac/demo.log",
         "k8s-audit/elastic-integrations/kubernetes-audit_logs/test-audit.log",
         "k8s-audit/hori-linkerd-k3s/control-plane.md.audit-events.extracted.jsonl"]
AKS = "k8s-audit/elastic-integrations/kubernetes-audit_logs/test-kube-audit.log"  # names its own cluster
POMERIUM = "proxy/pomerium/docs-examples.jsonl"
#: Keycloak's console (jboss-logging) text lines: these carry a time of day only, so they are
#: quarantined ``bad_timestamp`` -- from a file and from an envelope alike
KEYCLOAK = "idp/keycloak/events-legacy-jboss-format.elastic-test.log"
OKTA = "idp/okta/user-session-end-start.elastic-test.jsonl"
TS = 1764000000.123456
#: Broken envelopes (Fluent Bit with a non-string and an empty ``log``): quarantined, counted.
BAD = [json.dumps({"@timestamp": TS, "log": 12, "cluster": "prod"}), json.dumps({"@timestamp": TS, "log": ""})]


def corpus_lines(corpus: Path, *files: str) -> list[str]:
    return [line for f in files for line in (corpus / f).read_text().splitlines() if line.strip()]


def fluent_bit(line: str, **added: str) -> str:
    """Fluent Bit's kafka output (Format json, Timestamp_Key @timestamp) of a tail input line, with
    the fields a record_modifier adds (docs/shippers.md)."""
    return json.dumps({"@timestamp": TS, "log": line, **added}, separators=(",", ":"))


def vector(line: str) -> str:
    """Vector's kafka sink (encoding.codec json) of a file source event (docs/shippers.md)."""
    return json.dumps({"file": "/var/log/kubernetes/audit/audit.log", "host": "cp1", "message": line,
                       "source_type": "file", "timestamp": "2026-11-24T10:07:52.123456Z"}, separators=(",", ":"))


def kcat(broker: KafkaBroker, topic: str, values: list[str], workdir: Path, *headers: str) -> None:
    """Produce ``values``, one message per line, with kcat and the given ``-H name=value`` headers."""
    path = workdir / f"{topic}.ndjson"
    path.write_text("".join(v + "\n" for v in values))
    args = ["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-l", "-X", "acks=all"]
    for h in headers:
        args += ["-H", h]
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def lake_rows(lake: Path, table: str, where: str = "true") -> list[dict[str, Any]]:
    files = list(lake.glob(f"{table}/dt=*/*.parquet"))
    if not files:
        return []
    con = duckdb.connect()
    try:
        cur = con.execute(f"SELECT * EXCLUDE (dt) FROM read_parquet('{lake}/{table}/dt=*/*.parquet', "
                          f"hive_partitioning=true, union_by_name=true) WHERE {where}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def comparable(rows: list[dict[str, Any]]) -> Counter[str]:
    """Rows as a multiset, without where they came from and when they were written."""
    return Counter(json.dumps({k: v for k, v in r.items() if k not in ("origin", "ingested_at")},
                              sort_keys=True, default=str) for r in rows)


def ingest(lines: list[str], tmp_path: Path, name: str, cluster: str) -> Path:
    """The bare records through ``ztaudit ingest`` (as read from a file), into their own lake."""
    src = tmp_path / f"{name}.log"
    src.write_text("".join(line + "\n" for line in lines))
    lake = tmp_path / f"lake-{name}"
    proc = subprocess.run([ZTAUDIT, "ingest", str(src), "--lake", str(lake), "--cluster", cluster, "-q"],
                          capture_output=True, text=True, env=ztaudit_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lake


def test_shipped_records_land_with_their_cluster_as_ingest_reads_them(
        kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path, corpus: Path, backend: str) -> None:
    audit = corpus_lines(corpus, *AUDIT)
    aks = corpus_lines(corpus, AKS)
    others = corpus_lines(corpus, POMERIUM, KEYCLOAK, OKTA)
    assert len(audit) >= 40 and len(aks) == 1 and len(others) >= 12
    topics = {way: f"{topic_name[:30]}-{topic_name[-6:]}-{way}" for way in ("field", "header", "map", "flag")}
    for t in topics.values():
        create_topic(kafka_broker, t, 2)
    # cluster from a field Fluent Bit's record_modifier adds (the AKS record names its own)
    fb = [fluent_bit(line, cluster="prod") for line in audit + aks + others]
    kcat(kafka_broker, topics["field"], fb + BAD, tmp_path)
    # cluster from a Kafka header; one record also has a field, which wins
    kcat(kafka_broker, topics["header"], [vector(line) for line in audit + others] + [fluent_bit(audit[0],
         cluster="field-wins")], tmp_path, "cluster=staging")
    # cluster from kafka.topic_clusters; and nothing at all (--cluster)
    kcat(kafka_broker, topics["map"], [vector(line) for line in audit], tmp_path)
    kcat(kafka_broker, topics["flag"], [fluent_bit(line) for line in audit], tmp_path)

    config = tmp_path / "ztaudit.toml"
    config.write_text(f'[kafka]\ntopic_clusters = {{ "{topics["map"]}" = "dev" }}\n')
    lake = tmp_path / "lake"
    metrics = tmp_path / "metrics.json"
    extra = [a for t in list(topics.values())[1:] for a in ("--topic", t)]
    proc = run_consume(kafka_broker, topics["field"], lake, f"g-ship-{backend}", *extra, "--cluster", "fallback",
                       "--config", str(config), "--metrics-file", str(metrics), backend=backend)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # counts conserved: every message is a row, quarantined or ignored; the two broken envelopes
    # are quarantined with their reasons, at their Kafka coordinates
    m = json.loads(metrics.read_text())
    produced = len(fb) + len(BAD) + len(audit) + len(others) + 1 + 2 * len(audit)
    assert m["records"] == m["messages"] == produced and m["balanced"] is True
    assert m["records"] + m["expanded"] == m["written"] + m["quarantined"] + m["ignored_total"]
    bare_others = ingest(others, tmp_path, "others", "fallback")
    bare_rejects = sorted(str(q["reason"]) for q in lake_rows(bare_others, "quarantine"))  # as a file gives them
    assert m["quarantined"] == 2 + 2 * len(bare_rejects)
    for way, reasons in (("field", ["empty", "wrong_type", *bare_rejects]), ("header", bare_rejects),
                         ("map", []), ("flag", [])):
        got = lake_rows(lake, "quarantine", f"origin LIKE 'kafka:{topics[way]}/%'")
        assert sorted(str(q["reason"]) for q in got) == sorted(reasons), way

    # each topic's audit rows: the bare records' rows (as ingest reads them), with the cluster
    # the shipper field, the header, the topic map or --cluster names
    aks_cluster = lake_rows(ingest(aks, tmp_path, "aks", "x"), "k8s_audit")[0]["cluster"]
    assert aks_cluster and aks_cluster != "x"
    expect = {"field": ("prod", audit), "header": ("staging", audit), "map": ("dev", audit),
              "flag": ("fallback", audit)}
    expected_clusters: Counter[str] = Counter()
    for way, (cluster, lines) in expect.items():
        got = lake_rows(lake, "k8s_audit", f"origin LIKE 'kafka:{topics[way]}/%'")
        wanted = lake_rows(ingest(lines, tmp_path, way, cluster), "k8s_audit")
        if way == "field":
            wanted += lake_rows(ingest(aks, tmp_path, "aks2", cluster), "k8s_audit")
        if way == "header":
            wanted += lake_rows(ingest(audit[:1], tmp_path, "field-wins", "field-wins"), "k8s_audit")
        assert len(got) == len(wanted) > 40
        assert comparable(got) == comparable(wanted), way
        expected_clusters.update(r["cluster"] for r in wanted)
    # (a few corpus records are cloud envelopes that name their own cluster: they keep it)
    clusters = Counter(r["cluster"] for r in lake_rows(lake, "k8s_audit"))
    assert clusters == expected_clusters
    assert {"prod", "staging", "dev", "fallback", "field-wins", aks_cluster} <= set(clusters)

    # Pomerium's, Keycloak's and Okta's lines, in both envelopes, are what their bare lines make
    for table in ("proxy_decision", "idp_event"):
        wanted = lake_rows(bare_others, table)
        assert wanted, table
        for way in ("field", "header"):
            got = lake_rows(lake, table, f"origin LIKE 'kafka:{topics[way]}/%'")
            assert comparable(got) == comparable(wanted), (table, way)

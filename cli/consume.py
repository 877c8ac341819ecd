"""``ztaudit consume``: Kafka topics into the lake, offsets committed after each durable write.

Thin: flags and ``[kafka]`` settings -> :class:`ztaudit.pipeline.consume.loop.ConsumeOptions` ->
:func:`ztaudit.pipeline.consume.loop.consume`. Errors become exit codes in ``cli/main.py``:
2 bad flags/config, 4 lake not writable, 5 Kafka refused us (wrong SASL password, TLS).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ztaudit.cli.options import lake_option
from ztaudit.core.config import Config, KafkaSettings, load_config
from ztaudit.core.config import replace as replace_config
from ztaudit.core.errors import ConfigError

log = logging.getLogger("ztaudit.pipeline.consume")


def _kafka_overrides(**flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None and v != ()}


def _finding_rows(found: Any) -> Iterable[dict[str, Any]]:
    if found is None:
        return []
    if hasattr(found, "to_pylist"):  # a pyarrow Table
        rows: list[dict[str, Any]] = found.to_pylist()
        return rows
    if hasattr(found, "to_dict"):  # a pandas DataFrame
        recs: list[dict[str, Any]] = found.to_dict(orient="records")
        return recs
    return [r if isinstance(r, dict) else dataclasses.asdict(r) for r in found]


def detect_hook(lake: Path, cfg: Config, findings_topic: str | None, password: str | None) -> Any:
    """on_flush hook: ``ztaudit.detectors.streaming.on_flush(lake, since, until, config)``, findings
    optionally produced as JSON to ``findings_topic`` (keyed by ``finding_id``). Built only with
    ``--detect``, so a plain ``consume`` never imports the detectors."""
    from ztaudit.detectors import streaming

    producer = None
    if findings_topic:
        from kafka import KafkaProducer

        from ztaudit.pipeline.sources.kafka.kafka_python import producer_config

        producer = KafkaProducer(**producer_config(cfg.kafka, password=password))

    def on_flush(since: datetime, until: datetime, paths: list[Path]) -> None:
        found = streaming.on_flush(lake, since, until, cfg)
        rows = list(_finding_rows(found))
        if rows:
            log.info("consume: detect %s..%s: %d finding(s)", since.isoformat(), until.isoformat(), len(rows))
        if producer is not None and rows:
            for r in rows:
                key = str(r.get("finding_id", "")).encode() or None
                producer.send(findings_topic, key=key, value=json.dumps(r, default=str, sort_keys=True).encode())
            producer.flush(timeout=30)

    on_flush.__name__ = "detect"
    return on_flush


@click.command()
@click.option("--bootstrap-servers", default=None, help="host:port[,host:port] (config kafka.bootstrap_servers).")
@click.option("--topic", "topics", multiple=True, metavar="NAME[=SOURCE_KIND]",
              help="Topic to read, repeatable; =k8s_audit|proxy_decision|idp_event names its kind "
                   "(default: detect per record).")
@click.option("--group", default=None, help="Consumer group (config kafka.group, default ztaudit).")
@click.option("--backend", type=click.Choice(["kafka-python", "confluent"]), default=None,
              help="Kafka client library (config kafka.backend, default kafka-python); confluent (librdkafka, "
                   "`pip install 'ztaudit[confluent]'`) is faster per process. Same commit semantics.")
@click.option("--session-timeout-ms", type=click.IntRange(min=1000), default=None,
              help="Group session timeout: how long a killed consumer holds its partitions (default 10000; "
                   "the broker's group.min.session.timeout.ms, 6000 by default, is the floor).")
@lake_option("Lake directory to write into (created if missing).")
@click.option("--cluster", default=None,
              help="Cluster name for audit records nothing else names: not their envelope, a shipper field "
                   "(ingest.cluster_fields), the Kafka header kafka.cluster_header or kafka.topic_clusters.")
@click.option("--flush-records", type=click.IntRange(min=1), default=None,
              help="Records per file per partition (data-determined boundary; default 100000).")
@click.option("--flush-bytes", type=click.IntRange(min=1024), default=None,
              help="Bytes per file per partition (data-determined boundary; default 128 MiB).")
@click.option("--flush-seconds", type=click.FloatRange(min=0.05), default=None,
              help="Flush a partition whose oldest buffered record waited this long (default 30).")
@click.option("--from", "start_from", type=click.Choice(["earliest", "latest"]), default=None,
              help="Where a group without committed offsets starts (default earliest).")
@click.option("--until-idle", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Drain and exit 0 after SECONDS without new records (and no lag).")
@click.option("--security-protocol", type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
              default=None, help="Kafka security protocol (config kafka.security_protocol).")
@click.option("--sasl-mechanism", type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]), default=None,
              help="SASL mechanism.")
@click.option("--sasl-username", default=None,
              help="SASL user. The password is never a flag: $ZTAUDIT_KAFKA_PASSWORD (or the variable named "
                   "by kafka.sasl_password_env) or the file kafka.sasl_password_file.")
@click.option("--ssl-cafile", default=None, type=click.Path(dir_okay=False), help="CA bundle for SSL/SASL_SSL.")
@click.option("--ssl-certfile", default=None, type=click.Path(dir_okay=False), help="Client certificate (mTLS).")
@click.option("--ssl-keyfile", default=None, type=click.Path(dir_okay=False), help="Client key (mTLS).")
@click.option("--metrics-file", default=None, type=click.Path(dir_okay=False),
              help="Write the progress counters as JSON here (replaced atomically at each progress tick).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Serve Prometheus metrics (GET /metrics, /healthz) on this port; 0 = off.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address of the metrics endpoint (loopback by default: it names topics and their lag).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per log line on stderr (ts, level, logger, msg).")
@click.option("--progress-seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Interval of the progress line and the metrics file.")
@click.option("--max-record-bytes", type=click.IntRange(min=1024), default=None,
              help="Quarantine messages larger than this (default: config ingest.max_record_bytes, 1 MiB).")
@click.option("--detect", is_flag=True, help="After each flush, run the streaming detectors over the window.")
@click.option("--findings-topic", default=None, help="With --detect: produce findings as JSON to this topic.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: $ZTAUDIT_CONFIG or ./ztaudit.toml).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines (warnings and errors only).")
def consume(bootstrap_servers: str | None, topics: tuple[str, ...], group: str | None, backend: str | None,
            session_timeout_ms: int | None, lake: str,
            cluster: str | None, flush_records: int | None, flush_bytes: int | None,
            flush_seconds: float | None, start_from: str | None, until_idle: float | None,
            security_protocol: str | None, sasl_mechanism: str | None, sasl_username: str | None,
            ssl_cafile: str | None, ssl_certfile: str | None, ssl_keyfile: str | None,
            metrics_file: str | None, metrics_port: int, metrics_host: str, log_format: str,
            progress_seconds: float, max_record_bytes: int | None, detect: bool,
            findings_topic: str | None, config_path: str | None, quiet: bool) -> None:
    """Consume Kafka topics into the lake, exactly once per record.

    Each partition's records are buffered and written as one Parquet file per flush, named
    <topic>+<partition>+<first offset>; the offset is committed only after the file is renamed into
    place, so a crash or rebalance replays into the same file names (no duplicates, nothing lost).
    SIGTERM/Ctrl-C flushes, commits and exits 0.
    """
    from ztaudit.pipeline.consume.loop import ConsumeOptions, context_from_config
    from ztaudit.pipeline.consume.loop import consume as run_consume
    from ztaudit.pipeline.sources.kafka.base import parse_topics

    flags = _kafka_overrides(bootstrap_servers=bootstrap_servers, group=group, backend=backend,
                             session_timeout_ms=session_timeout_ms,
                             flush_records=flush_records,
                             flush_bytes=flush_bytes, flush_seconds=flush_seconds, start_from=start_from,
                             security_protocol=security_protocol, sasl_mechanism=sasl_mechanism,
                             sasl_username=sasl_username, ssl_cafile=ssl_cafile, ssl_certfile=ssl_certfile,
                             ssl_keyfile=ssl_keyfile, findings_topic=findings_topic,
                             topics=list(topics) if topics else None)
    cfg = load_config(config_path, overrides={"kafka": flags})
    cfg = replace_config(cfg, "kafka", **flags)  # flags win over ZTAUDIT_KAFKA_* too
    k: KafkaSettings = cfg.kafka
    if not k.topics:
        raise click.UsageError("no topic: give --topic NAME[=SOURCE_KIND] or set kafka.topics in ztaudit.toml")
    if findings_topic and not detect:
        raise click.UsageError("--findings-topic needs --detect")
    topic_kinds = parse_topics(k.topics)
    password = k.password() if k.security_protocol.startswith("SASL") else None
    if k.security_protocol.startswith("SASL") and password is None:
        raise ConfigError("kafka.sasl_password_env",
                          f"no SASL password: ${k.sasl_password_env} is empty and kafka.sasl_password_file is not set",
                          fix=f"export {k.sasl_password_env or 'ZTAUDIT_KAFKA_PASSWORD'}=... or set "
                              "kafka.sasl_password_file")
    if log_format == "json":
        from ztaudit.pipeline.consume.progress import JsonLogFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    if not quiet:
        logging.getLogger("ztaudit.pipeline").setLevel(logging.INFO)
    # kafka-python logs every reconnect attempt; our own lines say what matters, with coordinates.
    # Even with -vv it stays at INFO: its DEBUG lines dump SASL request bytes (a PLAIN password).
    # Same for librdkafka's log lines (--backend confluent), forwarded to the "rdkafka" logger.
    for name in ("kafka", "rdkafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL if logging.getLogger().level > logging.DEBUG
                                         else logging.INFO)
    lake_path = Path(lake)
    hooks = [detect_hook(lake_path, cfg, k.findings_topic or None, password)] if detect else []
    opts = ConsumeOptions(
        topics=topic_kinds, lake=lake_path, group=k.group, cluster=cluster, flush_records=k.flush_records,
        flush_bytes=k.flush_bytes, flush_seconds=k.flush_seconds, start_from=k.start_from, until_idle=until_idle,
        metrics_file=Path(metrics_file) if metrics_file else None, progress_seconds=progress_seconds,
        metrics_port=metrics_port, metrics_host=metrics_host,
        max_record_bytes=max_record_bytes or cfg.ingest.max_record_bytes, on_flush=hooks,
        topic_clusters=k.topic_clusters, cluster_fields=tuple(cfg.ingest.cluster_fields),
        table_format=cfg.lake.format)
    m = run_consume(k, opts, ctx=context_from_config(cfg, cluster), password=password, signals=True)
    if not quiet:
        click.echo(f"consume: {m.events} events, {m.messages} messages, {m.quarantined} quarantined, "
                   f"{m.files} files, {m.commits} commits", err=True)

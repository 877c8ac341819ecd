"""kafka-python glue for ``ztaudit consume``: client settings, error classes, topic specs.

Everything here is about *talking to Kafka*; the consume loop (what is read, when it is written,
when offsets are committed) is :mod:`ztaudit.pipeline.consume`.

Client settings that matter for a buffering sink (pipeline-anchors §2.1):

* ``enable_auto_commit=False``: offsets are committed explicitly, per partition, only after the
  Parquet files are renamed into place.
* ``max_partition_fetch_bytes`` 8 MiB and ``fetch_max_bytes`` 64 MiB: a 5 MB message is fetched
  whole (then quarantined as oversized by ``process()``), and 1.4 KB events arrive in few requests.
* ``isolation_level='read_committed'``: records of aborted producer transactions never reach the
  lake.
* ``check_crcs=True`` with the ``crc32c`` C implementation (:func:`crc32c_available`): the pure
  Python fallback is ~40x slower.

Security: ``security_protocol`` PLAINTEXT / SSL / SASL_PLAINTEXT / SASL_SSL; SASL PLAIN or
SCRAM-SHA-256/512; the password is read via :meth:`KafkaSettings.password` (an environment
variable or a file named in the config), never from a flag, and :func:`redact` removes it from any
text before it is logged or raised.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..config import KafkaSettings
from ..errors import ConfigError, KafkaConnectError

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: Per-partition fetch limit: above the 5 MB messages some shippers produce, so they arrive and
#: are quarantined as oversized instead of stalling the partition.
MAX_PARTITION_FETCH_BYTES: Final = 8 * MiB
FETCH_MAX_BYTES: Final = 64 * MiB
#: The source kinds a topic may be mapped to (``--topic NAME=KIND``).
SOURCE_KINDS: Final = ("k8s_audit", "proxy_decision", "idp_event")


@dataclass(frozen=True)
class TopicSpec:
    """``--topic NAME[=SOURCE_KIND]``: a topic and the source kind of its records (None: detect)."""

    name: str
    source: str | None = None

    @classmethod
    def parse(cls, spec: str) -> TopicSpec:
        name, sep, kind = spec.partition("=")
        name, kind = name.strip(), kind.strip()
        if not name:
            raise ConfigError("kafka.topics", f"empty topic name in {spec!r}", fix="write NAME or NAME=SOURCE_KIND")
        if sep and kind not in SOURCE_KINDS:
            raise ConfigError("kafka.topics", f"unknown source kind {kind!r} in {spec!r}",
                              fix=f"use one of {', '.join(SOURCE_KINDS)}, or omit '=KIND' to detect it per record")
        return cls(name, kind or None)


def parse_topics(specs: Iterable[str]) -> dict[str, str | None]:
    """topic name -> source kind (None = detect per record). Raises ConfigError on bad specs."""
    out: dict[str, str | None] = {}
    for spec in specs:
        t = TopicSpec.parse(spec)
        if t.name in out and out[t.name] != t.source:
            raise ConfigError("kafka.topics", f"topic {t.name} given twice with different kinds")
        out[t.name] = t.source
    return out


def crc32c_available() -> bool:
    """True when kafka-python verifies record-batch CRCs with the ``crc32c`` C extension."""
    try:
        from kafka.record import util
    except ImportError:  # pragma: no cover - kafka-python missing entirely
        return False
    return getattr(util, "crc32c_c", None) is not None


def warn_if_slow_crc() -> bool:
    """Log a warning (once, at startup) when CRC checks would use the slow pure-Python code."""
    ok = crc32c_available()
    if not ok:
        log.warning("kafka-python's crc32c C implementation is not installed: CRC checks run ~40x slower; "
                    "install it with `pip install 'kafka-python[crc32c]'`")
    return ok


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (the SASL password) masked."""
    return text.replace(secret, "***") if secret else text


def client_config(settings: KafkaSettings, *, password: str | None = None) -> dict[str, Any]:
    """kafka-python keyword arguments for bootstrap and security, shared by consumer and producer."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.security_protocol,
        "client_id": "ztaudit",
        # kafka-python backs reconnects off up to 30 s by default: after an outage the consumer would
        # idle that long after the broker is back. 2 s caps it (still exponential, still jittered).
        "reconnect_backoff_max_ms": 2_000,
    }
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism", f"required with security_protocol {settings.security_protocol}",
                              fix="set --sasl-mechanism SCRAM-SHA-256 (or PLAIN, SCRAM-SHA-512)")
        if not settings.sasl_username:
            raise ConfigError("kafka.sasl_username", "required with SASL", fix="set --sasl-username")
        if password is None:
            raise ConfigError("kafka.sasl_password_env",
                              f"no SASL password: ${settings.sasl_password_env} is empty and "
                              "kafka.sasl_password_file is not set",
                              fix=f"export {settings.sasl_password_env or 'ZTAUDIT_KAFKA_PASSWORD'}=... or set "
                              "kafka.sasl_password_file in ztaudit.toml")
        cfg.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                   sasl_plain_password=password)
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_cafile:
            cfg["ssl_cafile"] = settings.ssl_cafile
        if settings.ssl_certfile:
            cfg["ssl_certfile"] = settings.ssl_certfile
        if settings.ssl_keyfile:
            cfg["ssl_keyfile"] = settings.ssl_keyfile
    return cfg


def consumer_config(settings: KafkaSettings, *, group: str, start_from: str,
                    password: str | None = None) -> dict[str, Any]:
    """KafkaConsumer keyword arguments for the buffering sink (see the module docstring)."""
    cfg = client_config(settings, password=password)
    cfg.update(
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset=start_from,
        isolation_level="read_committed",
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_MAX_BYTES,
        fetch_min_bytes=64 * 1024,
        fetch_max_wait_ms=200,
        max_poll_records=5000,
        # A flush (columnar parse + Parquet write) of 100k events takes seconds, far below this.
        max_poll_interval_ms=300_000,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(300, min(3_000, settings.session_timeout_ms // 3)),
        request_timeout_ms=30_000,
        check_crcs=True,
    )
    return cfg


def producer_config(settings: KafkaSettings, *, password: str | None = None) -> dict[str, Any]:
    """KafkaProducer keyword arguments (findings topic)."""
    cfg = client_config(settings, password=password)
    cfg.update(acks="all", linger_ms=20, retries=5)
    return cfg


def auth_error_types() -> tuple[type[BaseException], ...]:
    """kafka-python exception classes that a retry cannot fix (credentials, ACLs, TLS)."""
    from kafka import errors as ke

    names = ("SaslAuthenticationFailedError", "AuthenticationFailedError", "AuthenticationMethodNotSupported",
             "UnsupportedSaslMechanismError", "IllegalSaslStateError", "TopicAuthorizationFailedError",
             "GroupAuthorizationFailedError", "ClusterAuthorizationFailedError", "SecurityDisabledError")
    found: list[type[BaseException]] = [ssl.SSLError]
    for n in names:
        t = getattr(ke, n, None)
        if isinstance(t, type) and issubclass(t, BaseException):
            found.append(t)
    return tuple(found)


def is_auth_error(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) is an authentication/authorization/TLS failure."""
    types = auth_error_types()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            return True
        e = e.__cause__ or e.__context__
    return False


def connect_error(exc: BaseException, settings: KafkaSettings, password: str | None) -> KafkaConnectError:
    """A :class:`KafkaConnectError` (exit code 5) for an auth/TLS failure, secret-free."""
    detail = redact(f"{type(exc).__name__}: {exc}", password)
    who = f"user {settings.sasl_username!r} " if settings.sasl_username else ""
    return KafkaConnectError(
        f"Kafka at {settings.bootstrap_servers} refused {who}({settings.security_protocol}"
        f"{'/' + settings.sasl_mechanism if settings.sasl_mechanism else ''}): {detail}",
        fix="check the SASL user name and the password in "
            f"${settings.sasl_password_env or 'ZTAUDIT_KAFKA_PASSWORD'} / kafka.sasl_password_file, "
            "the mechanism, and the CA/certificate files")


def tp_name(topic: str, partition: int) -> str:
    """The coordinate spelling every log line uses: ``topic[partition]``."""
    return f"{topic}[{partition}]"


def lag_by_partition(positions: Mapping[Any, int], ends: Mapping[Any, int]) -> dict[str, int]:
    """``{"topic[p]": end - position}`` for partitions with both numbers."""
    out = {}
    for tp, end in ends.items():
        pos = positions.get(tp)
        if pos is not None and end is not None:
            out[tp_name(tp.topic, tp.partition)] = max(0, int(end) - int(pos))
    return out

"""The seam between the consume loop and a Kafka client library, and what both backends share.

The consume loop (:mod:`ztaudit.pipeline.consume`) talks to Kafka only through :class:`KafkaSource`
(below). Two implementations, each in its own module that imports this one (never the other way):
:mod:`.kafka_python` (kafka-python, the default) and :mod:`.confluent` (confluent-kafka /
librdkafka, the optional ``ztaudit[confluent]`` extra). :mod:`.backends` picks one by its name
(``--backend`` / ``kafka.backend``).

Shared here: :class:`TP`, the record and callback shapes, :class:`CommitRejectedError`, topic specs
(:func:`parse_topics`), the validated SASL/TLS settings under neutral names
(:func:`security_settings`), the secret-free :func:`connect_error`, :func:`redact`, and the fetch
limits both backends use.

Security: ``security_protocol`` PLAINTEXT / SSL / SASL_PLAINTEXT / SASL_SSL; SASL PLAIN or
SCRAM-SHA-256/512; the password is read via :meth:`KafkaSettings.password` (an environment
variable or a file named in the config), never from a flag, and :func:`redact` removes it from any
text before it is logged or raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import ConfigError, KafkaConnectError, KafkaTransientError
from ztaudit.pipeline.decode.shipper_envelopes import usable_cluster

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: Per-partition fetch limit: above the 5 MB messages some shippers produce, so they arrive and
#: are quarantined as oversized instead of stalling the partition.
MAX_PARTITION_FETCH_BYTES: Final = 8 * MiB
FETCH_MAX_BYTES: Final = 64 * MiB
#: The source kinds a topic may be mapped to (``--topic NAME=KIND``).
SOURCE_KINDS: Final = ("k8s_audit", "proxy_decision", "idp_event")
#: How long a synchronous commit may wait for the coordinator before it fails (and is retried).
COMMIT_TIMEOUT_MS: Final = 10_000


# --- the seam between the consume loop and a Kafka client library ----------------------------

class TP(NamedTuple):
    """A topic partition. Equal (and hash-equal) to kafka-python's ``TopicPartition`` namedtuple."""

    topic: str
    partition: int


#: One partition's records from one poll: (offsets, values[, clusters]), parallel lists in offset
#: order; a null value is ``b""``. The backends add ``clusters``: each record's
#: ``kafka.cluster_header`` value (:func:`header_cluster`), or None when no record of the poll had
#: one; ``process()`` decides the cluster with it (docs/shippers.md).
Records = tuple[list[int], list[bytes]] | tuple[list[int], list[bytes], "list[str | None] | None"]
#: A rebalance callback: the partitions revoked (or lost) / assigned. Implementations call it on
#: whatever thread their library uses (kafka-python: its IO thread; librdkafka: inside ``poll()``),
#: so it must only record what happened -- never flush, commit or call back into the source.
RebalanceCallback = Callable[[list[TP]], None]
#: The revocation callback may return an event: the consume loop's write of a revoked partition is
#: still in flight. The source must not give the partitions up (return from its library's
#: callback) before the event is set, and must wait for it without calling into the client.
RevokeCallback = Callable[[list[TP]], "threading.Event | None"]
#: Poll interval of a revocation waiting for a write on kafka-python's IO loop (awaited, so the
#: heartbeats go on), and how often such a wait is logged.
REVOKE_WAIT_POLL_S: Final = 0.02
REVOKE_WAIT_LOG_S: Final = 10.0


class CommitRejectedError(KafkaTransientError):
    """The group coordinator rejected a commit because the group moved on (rebalance, generation):
    these partitions may belong to another member now."""


class KafkaSource(Protocol):
    """What the consume loop needs from a Kafka client; nothing else crosses this line.

    Errors: :class:`KafkaConnectError` (exit 5: credentials, ACLs, TLS; never retried; the
    message never holds the password), :class:`CommitRejectedError` (commit refused by the group),
    :class:`KafkaTransientError` (broker away, timeouts: the caller retries with backoff).
    """

    backend: str

    def subscribe(self, topics: Sequence[str], on_revoke: RevokeCallback, on_assign: RebalanceCallback) -> None:
        """Connect (failing fast on bad credentials) and join the group for ``topics``."""

    def poll(self, timeout_s: float) -> dict[TP, Records]:
        """Records fetched since the last call, per partition (rebalance callbacks may run)."""

    def take_errors(self) -> int:
        """Transient broker errors seen (and logged) since the last call, for the metrics."""

    def assignment(self) -> set[TP]:
        """The partitions this member owns now."""

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit exactly these next-offsets (``last + 1``), synchronously."""

    def seek(self, tp: TP, offset: int) -> None:
        """Make the next poll of ``tp`` start at ``offset``."""

    def highwater(self, tp: TP) -> int | None:
        """The partition's end offset as last seen by a fetch (cheap, may be None)."""

    def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        """End offsets asked from the broker."""

    def positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        """The next offset each partition will be read from (partitions without one are left out)."""

    def ping(self) -> None:
        """A metadata round trip; raises :class:`KafkaTransientError` when no broker answers."""

    def close(self) -> None:
        """Leave the group without committing anything."""


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


def header_cluster(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The cluster a record's Kafka headers name: the last header called ``name`` (``kafka.cluster_header``;
    empty = headers are not read) whose value is a usable name (UTF-8, printable, at most 253
    characters; :func:`~ztaudit.pipeline.decode.shipper_envelopes.usable_cluster`), else None."""
    if not headers or not name:
        return None
    found = None
    for key, value in headers:
        if key == name and value is not None:
            found = value
    return usable_cluster(found) if found is not None else None


def records_clusters(records: Records) -> list[str | None] | None:
    """The ``clusters`` list of a poll's :data:`Records` (None when it has none)."""
    return records[2] if len(records) == 3 else None


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (the SASL password) masked."""
    return text.replace(secret, "***") if secret else text


def security_settings(settings: KafkaSettings, password: str | None) -> dict[str, str]:
    """The SASL and TLS settings both backends need, validated, under neutral names.

    Raises :class:`ConfigError` naming the key when SASL is asked for without a mechanism, a user
    or a password (the password itself never appears in the message).
    """
    out: dict[str, str] = {}
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
        out.update(mechanism=settings.sasl_mechanism, username=settings.sasl_username, password=password)
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        for key, value in (("cafile", settings.ssl_cafile), ("certfile", settings.ssl_certfile),
                           ("keyfile", settings.ssl_keyfile)):
            if value:
                out[key] = value
    return out


def connect_error(exc: BaseException | str, settings: KafkaSettings, password: str | None) -> KafkaConnectError:
    """A :class:`KafkaConnectError` (exit code 5) for an auth/TLS failure, secret-free."""
    detail = redact(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}", password)
    who = f"user {settings.sasl_username!r} " if settings.sasl_username else ""
    return KafkaConnectError(
        f"Kafka at {settings.bootstrap_servers} refused {who}({settings.security_protocol}"
        f"{'/' + settings.sasl_mechanism if settings.sasl_mechanism else ''}): {detail}",
        fix="check the SASL user name and the password in "
            f"${settings.sasl_password_env or 'ZTAUDIT_KAFKA_PASSWORD'} / kafka.sasl_password_file, "
            "the mechanism, and the CA/certificate files")


def wait_before_revoking(done: threading.Event | None, tps: Sequence[TP]) -> None:
    """Block until ``done`` (a :data:`RevokeCallback` result) is set, logging now and then."""
    if done is None:
        return
    t0 = time.monotonic()
    while not done.wait(REVOKE_WAIT_LOG_S):
        log.warning("consume: revocation of %s waits for their write to be renamed into place (%.0f s)",
                    ", ".join(tp_name(t.topic, t.partition) for t in tps), time.monotonic() - t0)


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

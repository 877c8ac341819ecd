"""confluent-kafka (librdkafka) behind the :class:`~.base.KafkaSource` seam: ``--backend confluent``.

Optional (``pip install 'ztaudit[confluent]'``): librdkafka fetches and decodes record batches in C
on its own threads, so one process reads several times faster than with kafka-python, whose
pure-Python record decoding is ~45 % of the consume loop's main thread (``make bench``).

Same exactly-once contract as the kafka-python source (:mod:`ztaudit.pipeline.consume`):

* ``enable.auto.commit=false`` and ``enable.auto.offset.store=false``: nothing is committed but
  the explicit ``{tp: last + 1}`` offsets of :meth:`ConfluentSource.commit` (synchronous), which
  the loop calls only after the rename.
* librdkafka runs ``on_assign``/``on_revoke``/``on_lost`` *inside* ``consume()``, on the calling
  thread; they only forward the partitions to the loop's recorder (no flush, no commit there).
  If a revoked partition's write is still in flight on the loop's writer thread, ``on_revoke``
  blocks until it is renamed into place (librdkafka's heartbeats run on its own threads meanwhile).
  librdkafka performs the (un)assignment itself after the callback returns.
* Errors arrive through ``error_cb`` (also served inside ``consume()``): authentication,
  authorization and TLS errors make the next :meth:`poll` raise :class:`KafkaConnectError` (exit
  5, password redacted); anything else (broker down, transport) is logged, counted and left to
  librdkafka's own reconnects -- the loop never exits for it.
* Fetch sizes match the kafka-python settings: 8 MiB per partition (a 5 MB message arrives whole
  and is quarantined as oversized), 64 MiB per fetch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import confluent_kafka as ck

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import ConfigError, KafkaConnectError, KafkaTransientError
from ztaudit.pipeline.sources.kafka.base import (
    COMMIT_TIMEOUT_MS,
    FETCH_MAX_BYTES,
    MAX_PARTITION_FETCH_BYTES,
    TP,
    CommitRejectedError,
    RebalanceCallback,
    Records,
    RevokeCallback,
    connect_error,
    header_cluster,
    redact,
    security_settings,
    wait_before_revoking,
)

#: Neutral security setting (``security_settings``) -> librdkafka property.
_CONFLUENT_SECURITY_KEYS: Final = {
    "mechanism": "sasl.mechanism", "username": "sasl.username", "password": "sasl.password",
    "cafile": "ssl.ca.location", "certfile": "ssl.certificate.location", "keyfile": "ssl.key.location",
}

log = logging.getLogger("ztaudit.pipeline.consume")
#: librdkafka's own log lines (forwarded to Python logging; ``ztaudit consume`` quiets it like
#: kafka-python's logger: our lines say what matters, with coordinates).
rdkafka_log = logging.getLogger("rdkafka")

#: Messages per ``consume()`` call (kafka-python's ``max_poll_records`` is 5000; librdkafka's
#: per-call cost is lower, bigger batches amortize the Python loop).
BATCH: Final = 10_000
#: Repeat a given transient error in the log at most this often.
ERROR_LOG_INTERVAL_S: Final = 10.0


def _codes(*names: str) -> frozenset[int]:
    return frozenset(int(getattr(ck.KafkaError, n)) for n in names if hasattr(ck.KafkaError, n))


#: Retrying cannot fix these: credentials, mechanism, ACLs, TLS.
AUTH_CODES: Final = _codes("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "_SSL", "ILLEGAL_SASL_STATE",
                           "UNSUPPORTED_SASL_MECHANISM", "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
                           "CLUSTER_AUTHORIZATION_FAILED")
#: A commit refused because the group moved on (the partitions may be someone else's now).
REJECTED_CODES: Final = _codes("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS",
                               "FENCED_INSTANCE_ID", "STALE_MEMBER_EPOCH", "_ASSIGNMENT_LOST")
_NO_OFFSET: Final = -1001  # librdkafka RD_KAFKA_OFFSET_INVALID


def confluent_config(settings: KafkaSettings, *, group: str, start_from: str,
                     password: str | None = None) -> dict[str, Any]:
    """librdkafka configuration for the buffering sink (see the module docstring)."""
    cfg: dict[str, Any] = {
        "bootstrap.servers": ",".join(s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()),
        "client.id": "ztaudit",
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": start_from,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        # kafka-python's consumer default (allow_auto_create_topics=True); the broker's setting decides
        "allow.auto.create.topics": True,
        "check.crcs": True,
        "fetch.message.max.bytes": MAX_PARTITION_FETCH_BYTES,
        "message.max.bytes": MAX_PARTITION_FETCH_BYTES,
        "fetch.max.bytes": FETCH_MAX_BYTES,
        "receive.message.max.bytes": FETCH_MAX_BYTES + MAX_PARTITION_FETCH_BYTES + 1024 * 1024,
        "fetch.min.bytes": 64 * 1024,
        "fetch.wait.max.ms": 200,
        # the prefetch queue (all partitions together): bounds librdkafka's share of the RSS
        "queued.max.messages.kbytes": 64 * 1024,
        # when that queue is full librdkafka stops fetching for this long (default 1 s); the loop drains
        # it in well under a second, then waited for the backoff: ~0.5 s lost per 100k events
        "fetch.queue.backoff.ms": 20,
        "max.poll.interval.ms": 300_000,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(300, min(3_000, settings.session_timeout_ms // 3)),
        # a synchronous commit while the coordinator is away gives up after this, and is retried
        "socket.timeout.ms": COMMIT_TIMEOUT_MS,
        "reconnect.backoff.max.ms": 2_000,
        "security.protocol": settings.security_protocol,
        "logger": rdkafka_log,
    }
    cfg.update({_CONFLUENT_SECURITY_KEYS[k]: v for k, v in security_settings(settings, password).items()})
    return cfg


def _ctp(tp: TP, offset: int | None = None) -> Any:
    return ck.TopicPartition(tp.topic, tp.partition) if offset is None else ck.TopicPartition(tp.topic, tp.partition,
                                                                                              offset)


class ConfluentSource:
    """:class:`~ztaudit.pipeline.sources.kafka.base.KafkaSource` on confluent-kafka's ``Consumer``.

    Built by :func:`ztaudit.pipeline.sources.kafka.backends.open_source` for ``--backend confluent``;
    importing this module needs the optional ``confluent-kafka`` package (ImportError otherwise).
    """

    backend = "confluent"

    def __init__(self, settings: KafkaSettings, *, group: str, start_from: str, password: str | None = None,
                 batch: int = BATCH) -> None:
        self.settings = settings
        self.password = password
        self.batch = batch
        self._cfg = confluent_config(settings, group=group, start_from=start_from, password=password)
        self._cfg["error_cb"] = self._on_error
        self._start_from = start_from
        self._c: Any = None
        self._fatal: Any = None
        self._errors = 0
        self._logged_at: dict[int, float] = {}

    # --- errors ---------------------------------------------------------------------------

    def _on_error(self, err: Any) -> None:
        """``error_cb``: runs inside ``consume()`` on the calling thread."""
        code = int(err.code())
        if code in AUTH_CODES or err.fatal():
            if self._fatal is None:
                self._fatal = err
            return
        self._errors += 1
        now = time.monotonic()
        if now - self._logged_at.get(code, -1e9) >= ERROR_LOG_INTERVAL_S:
            self._logged_at[code] = now
            log.warning("consume: Kafka at %s: %s (%s); librdkafka is retrying", self.settings.bootstrap_servers,
                        redact(str(err.str()), self.password), err.name())

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            err = self._fatal
            raise connect_error(f"{err.name()}: {err.str()}", self.settings, self.password)

    def _fail(self, exc: Any) -> KafkaConnectError | KafkaTransientError:
        err: Any = exc.args[0] if getattr(exc, "args", None) else None
        is_err = isinstance(err, ck.KafkaError)
        code = int(err.code()) if is_err else None
        text = redact(f"{err.name()}: {err.str()}" if is_err else str(exc), self.password)
        if code in AUTH_CODES:
            return connect_error(text, self.settings, self.password)
        if code in REJECTED_CODES:
            return CommitRejectedError(text)
        return KafkaTransientError(text)

    # --- KafkaSource ----------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], on_revoke: RevokeCallback, on_assign: RebalanceCallback) -> None:
        def assigned(_c: Any, parts: list[Any]) -> None:
            on_assign([TP(p.topic, p.partition) for p in parts])

        def revoked(_c: Any, parts: list[Any]) -> None:
            tps = [TP(p.topic, p.partition) for p in parts]
            wait_before_revoking(on_revoke(tps), tps)

        try:
            self._c = ck.Consumer(self._cfg)
            self._c.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        except (ValueError, TypeError) as exc:  # librdkafka rejected a setting
            raise ConfigError("kafka", f"confluent-kafka refused the client settings: "
                              f"{redact(str(exc), self.password)}") from None

    def poll(self, timeout_s: float) -> dict[TP, Records]:
        try:
            msgs = self._c.consume(num_messages=self.batch, timeout=timeout_s)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        self._raise_fatal()
        got: dict[TP, tuple[list[int], list[bytes], list[str | None]]] = {}
        name = self.settings.cluster_header
        last_t: str | None = None
        last_p = -1
        offs: list[int] = []
        vals: list[bytes] = []
        clus: list[str | None] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                self._on_error(err)
                continue
            p = m.partition()
            t = m.topic()
            if p != last_p or t != last_t:
                last_t, last_p = t, p
                lists = got.get(TP(t, p))
                if lists is None:
                    lists = got[TP(t, p)] = ([], [], [])
                offs, vals, clus = lists
            offs.append(m.offset())
            vals.append(m.value() or b"")
            clus.append(header_cluster(m.headers(), name) if name else None)
        self._raise_fatal()
        return {tp: (o, v, c if any(x is not None for x in c) else None) for tp, (o, v, c) in got.items()}

    def take_errors(self) -> int:
        n, self._errors = self._errors, 0
        return n

    def assignment(self) -> set[TP]:
        return {TP(p.topic, p.partition) for p in self._c.assignment()}

    def commit(self, offsets: Mapping[TP, int]) -> None:
        try:
            res = self._c.commit(offsets=[_ctp(tp, off) for tp, off in offsets.items()], asynchronous=False)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        for p in res or []:
            if p.error is not None:
                raise self._fail(ck.KafkaException(p.error))

    def seek(self, tp: TP, offset: int) -> None:
        try:
            self._c.seek(_ctp(tp, offset))
        except ck.KafkaException as exc:
            raise KafkaTransientError(str(exc)) from None

    def highwater(self, tp: TP) -> int | None:
        try:
            got = self._c.get_watermark_offsets(_ctp(tp), cached=True)
        except ck.KafkaException:
            return None
        if not got or got[1] < 0:
            return None
        return int(got[1])

    def _watermarks(self, tp: TP) -> tuple[int, int]:
        try:
            got = self._c.get_watermark_offsets(_ctp(tp), timeout=5.0, cached=False)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        if not got:
            raise KafkaTransientError(f"no watermark offsets for {tp.topic}[{tp.partition}] within 5 s")
        return int(got[0]), int(got[1])

    def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        """One ListOffsets(latest) round trip for all partitions (timestamp -1 = the end offset);
        per-partition watermark queries would each wait behind the in-flight fetch."""
        if not tps:
            return {}
        try:
            got = self._c.offsets_for_times([_ctp(tp, ck.OFFSET_END) for tp in tps], timeout=5.0)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        out = {}
        for p in got:
            if p.error is not None:
                raise self._fail(ck.KafkaException(p.error))
            if p.offset >= 0:
                out[TP(p.topic, p.partition)] = int(p.offset)
        return out

    def positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        """The consumed position; else the committed offset; else where ``auto.offset.reset`` starts."""
        if not tps:
            return {}
        try:
            pos = {TP(p.topic, p.partition): p.offset for p in self._c.position([_ctp(tp) for tp in tps])}
            missing = [tp for tp in tps if pos.get(tp, _NO_OFFSET) < 0]
            if missing:
                for p in self._c.committed([_ctp(tp) for tp in missing], timeout=5.0):
                    pos[TP(p.topic, p.partition)] = p.offset
        except ck.KafkaException as exc:
            raise self._fail(exc) from None
        out = {}
        for tp in tps:
            off = pos.get(tp, _NO_OFFSET)
            if off < 0:
                lo, hi = self._watermarks(tp)
                off = lo if self._start_from == "earliest" else hi
            out[tp] = int(off)
        return out

    def ping(self) -> None:
        try:
            self._c.list_topics(timeout=5.0)
        except ck.KafkaException as exc:
            raise self._fail(exc) from None

    def close(self) -> None:
        if self._c is not None:
            c, self._c = self._c, None
            c.close()

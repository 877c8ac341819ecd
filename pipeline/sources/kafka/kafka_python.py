"""kafka-python behind :class:`~ztaudit.pipeline.sources.kafka.base.KafkaSource`: the default backend.

Also the kafka-python client settings other code needs (:func:`consumer_config`, the findings
topic's :func:`producer_config`) and the :func:`preflight` that makes refused credentials fail fast.

Client settings that matter for a buffering sink (pipeline-anchors §2.1):

* ``enable_auto_commit=False``: offsets are committed explicitly, per partition, only after the
  Parquet files are renamed into place.
* ``max_partition_fetch_bytes`` 8 MiB and ``fetch_max_bytes`` 64 MiB: a 5 MB message is fetched
  whole (then quarantined as oversized by ``process()``), and 1.4 KB events arrive in few requests.
* ``isolation_level='read_committed'``: records of aborted producer transactions never reach the
  lake.
* ``check_crcs=True`` with the ``crc32c`` C implementation (:func:`crc32c_available`): the pure
  Python fallback is ~40x slower.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import KafkaConnectError, KafkaTransientError
from ztaudit.pipeline.sources.kafka.base import (
    COMMIT_TIMEOUT_MS,
    FETCH_MAX_BYTES,
    MAX_PARTITION_FETCH_BYTES,
    REVOKE_WAIT_LOG_S,
    REVOKE_WAIT_POLL_S,
    TP,
    CommitRejectedError,
    RebalanceCallback,
    Records,
    RevokeCallback,
    connect_error,
    header_cluster,
    redact,
    security_settings,
    tp_name,
    wait_before_revoking,
)

log = logging.getLogger(__name__)


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


#: Neutral security setting -> kafka-python keyword (``security_settings`` keys).
KAFKA_PYTHON_SECURITY_KEYS: Final = {
    "mechanism": "sasl_mechanism", "username": "sasl_plain_username", "password": "sasl_plain_password",
    "cafile": "ssl_cafile", "certfile": "ssl_certfile", "keyfile": "ssl_keyfile",
}


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
    cfg.update({KAFKA_PYTHON_SECURITY_KEYS[k]: v for k, v in security_settings(settings, password).items()})
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


def preflight(settings: KafkaSettings, password: str | None) -> None:
    """Fail fast when the broker answers TCP but refuses the session (credentials, mechanism, TLS).

    kafka-python reports a SASL failure the broker answers by closing the socket only as "unable
    to bootstrap" after its timeout, so: TCP reachable + a bootstrap that fails twice on a SASL or
    SSL listener = :class:`KafkaConnectError` (exit 5). Unreachable = ``KafkaTimeoutError`` (the
    caller retries). PLAINTEXT needs no preflight.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError, KafkaTimeoutError

    if settings.security_protocol == "PLAINTEXT":
        return
    cfg = client_config(settings, password=password)
    reachable = False
    for server in cfg["bootstrap_servers"]:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)), timeout=3).close()
            reachable = True
            break
        except OSError:
            continue
    if not reachable:
        raise KafkaTimeoutError(f"no bootstrap server of {settings.bootstrap_servers} accepts TCP connections")
    last: BaseException | None = None
    for _ in range(2):
        try:
            c = KafkaConsumer(bootstrap_timeout_ms=4000, request_timeout_ms=5000, **cfg)
            c.close()
            return
        except KafkaError as exc:
            last = exc
            if is_auth_error(exc):
                break
    assert last is not None
    raise KafkaConnectError(
        f"Kafka at {settings.bootstrap_servers} accepts connections but refused the {settings.security_protocol}"
        f"{'/' + settings.sasl_mechanism if settings.sasl_mechanism else ''} session for user "
        f"{settings.sasl_username!r} ({redact(type(last).__name__ + ': ' + str(last), password)})",
        fix=f"check the user name, the password in ${settings.sasl_password_env or 'ZTAUDIT_KAFKA_PASSWORD'} or "
            "kafka.sasl_password_file, the SASL mechanism, and the TLS CA/certificate files")


class KafkaPythonSource:
    """:class:`KafkaSource` on kafka-python 3.x (the default backend).

    Its rebalance listener runs on kafka-python's IO thread (pipeline-anchors §2.3): the callbacks
    it forwards to only record events. When a revocation must wait for an in-flight write
    (:data:`RevokeCallback`), the listener is an ``AsyncConsumerRebalanceListener`` that *awaits*
    the write on the IO loop, so heartbeats go on meanwhile (a blocking wait would stall them and
    could get the member expired, and its partitions handed over, before its rename). Without
    that class (older kafka-python) it blocks instead. ``factory(**kwargs)`` builds the
    ``KafkaConsumer``.
    """

    backend = "kafka-python"

    def __init__(self, settings: KafkaSettings, *, group: str, start_from: str, password: str | None = None,
                 factory: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.group = group
        self.start_from = start_from
        self.password = password
        self._factory = factory
        self._c: Any = None

    def _fail(self, exc: BaseException) -> KafkaConnectError | KafkaTransientError:
        if is_auth_error(exc):
            return connect_error(exc, self.settings, self.password)
        return KafkaTransientError(redact(f"{type(exc).__name__}: {exc}", self.password))

    async def _await_revoke(self, done: threading.Event | None, tps: list[TP]) -> None:
        """Wait for ``done`` on kafka-python's IO loop without blocking it (``sleep`` of its loop)."""
        if done is None or done.is_set():
            return
        sleep = getattr(getattr(self._c, "_net", None), "sleep", None)
        if sleep is None:  # not the kafka-python 3.x loop we know: block (heartbeats pause meanwhile)
            wait_before_revoking(done, tps)
            return
        t0 = logged = time.monotonic()
        while not done.is_set():
            await sleep(REVOKE_WAIT_POLL_S)
            if time.monotonic() - logged >= REVOKE_WAIT_LOG_S:
                logged = time.monotonic()
                log.warning("consume: revocation of %s waits for their write to be renamed into place (%.0f s)",
                            ", ".join(tp_name(t.topic, t.partition) for t in tps), logged - t0)

    def subscribe(self, topics: Sequence[str], on_revoke: RevokeCallback, on_assign: RebalanceCallback) -> None:
        import kafka
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        source = self
        async_base = getattr(kafka, "AsyncConsumerRebalanceListener", None)
        listener: Any
        if async_base is not None:
            class AsyncListener(async_base):  # type: ignore[misc,valid-type]
                async def on_partitions_revoked(self, revoked: Any) -> None:
                    tps = [TP(*tp) for tp in revoked]
                    await source._await_revoke(on_revoke(tps), tps)

                async def on_partitions_assigned(self, assigned: Any) -> None:
                    on_assign([TP(*tp) for tp in assigned])

                async def on_partitions_lost(self, lost: Any) -> None:
                    await self.on_partitions_revoked(lost)

            listener = AsyncListener()
        else:
            class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
                def on_partitions_revoked(self, revoked: Any) -> None:
                    tps = [TP(*tp) for tp in revoked]
                    wait_before_revoking(on_revoke(tps), tps)

                def on_partitions_assigned(self, assigned: Any) -> None:
                    on_assign([TP(*tp) for tp in assigned])

                def on_partitions_lost(self, lost: Any) -> None:
                    self.on_partitions_revoked(lost)

            listener = Listener()

        try:
            preflight(self.settings, self.password)
            cfg = consumer_config(self.settings, group=self.group, start_from=self.start_from,
                                  password=self.password)
            cfg["bootstrap_timeout_ms"] = 10_000
            self._c = (self._factory or KafkaConsumer)(**cfg)
            self._c.subscribe(topics=list(topics), listener=listener)
        except (KafkaError, OSError) as exc:
            raise self._fail(exc) from None

    def poll(self, timeout_s: float) -> dict[TP, Records]:
        from kafka.errors import KafkaError

        try:
            got = self._c.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise self._fail(exc) from None
        name = self.settings.cluster_header
        out: dict[TP, Records] = {}
        for tp, recs in got.items():
            clusters = [header_cluster(r.headers, name) for r in recs] if name else []
            out[TP(*tp)] = ([r.offset for r in recs], [r.value if r.value is not None else b"" for r in recs],
                            clusters if any(c is not None for c in clusters) else None)
        return out

    def take_errors(self) -> int:
        return 0  # kafka-python retries inside poll() silently; failures surface as exceptions

    def assignment(self) -> set[TP]:
        return {TP(*tp) for tp in self._c.assignment()}

    def commit(self, offsets: Mapping[TP, int]) -> None:
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            self._c.commit(offsets={TopicPartition(*tp): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                           timeout_ms=COMMIT_TIMEOUT_MS)
        except CommitFailedError as exc:
            raise CommitRejectedError(str(exc)) from None
        except KafkaError as exc:
            raise self._fail(exc) from None

    def seek(self, tp: TP, offset: int) -> None:
        from kafka import TopicPartition
        from kafka.errors import IllegalStateError, KafkaError

        try:
            self._c.seek(TopicPartition(*tp), offset)
        except (IllegalStateError, KafkaError, AssertionError, ValueError) as exc:
            raise KafkaTransientError(f"{type(exc).__name__}: {exc}") from None

    def highwater(self, tp: TP) -> int | None:
        from kafka import TopicPartition

        hw = self._c.highwater(TopicPartition(*tp))
        return None if hw is None else int(hw)

    def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        try:
            ends = self._c.end_offsets([TopicPartition(*tp) for tp in tps])
        except (KafkaError, AssertionError, ValueError) as exc:
            raise self._fail(exc) from None
        return {TP(*tp): int(end) for tp, end in ends.items() if end is not None}

    def positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        out = {}
        try:
            for tp in tps:
                pos = self._c.position(TopicPartition(*tp), timeout_ms=5000)
                if pos is not None:
                    out[tp] = int(pos)
        except (KafkaError, AssertionError, ValueError) as exc:
            raise self._fail(exc) from None
        return out

    def ping(self) -> None:
        # Nothing to do: subscribe() returned only after a bootstrap, and kafka-python keeps its
        # assignment while the coordinator is away. (KafkaConsumer.topics() would block without a
        # timeout during an outage.)
        return None

    def close(self) -> None:
        if self._c is not None:
            self._c.close(autocommit=False)
            self._c = None

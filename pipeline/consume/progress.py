"""How the consumer is doing: :class:`Metrics`, the progress line and ``--metrics-file``, idle exit.

All of it runs on the main thread, between polls, except two readers: the writer thread's end of
a round (:meth:`Metrics.observe_flush`) and the ``--metrics-port`` endpoint
(:mod:`.metrics_http`), which reads the counters while the loop runs (histograms take a lock;
dicts are copied, which CPython does atomically). The progress line (:class:`Progress`) and the
metrics file carry the same counters under the same names; the file is replaced atomically at
each tick, so a reader never sees half of it. :class:`IdleWatch` decides when ``--until-idle`` is
reached: nothing polled for that long *and* the broker confirms there is no lag.
:class:`JsonLogFormatter` is ``--log-format json``; :func:`broker_diagnosis` says why the
bootstrap brokers cannot be reached while the loop retries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ztaudit.core.errors import KafkaTransientError
from ztaudit.core.files import write_bytes_atomic
from ztaudit.core.schema import SCHEMA_VERSION
from ztaudit.pipeline.sources.kafka.base import TP, KafkaSource, lag_by_partition, tp_name

if TYPE_CHECKING:
    from ztaudit.pipeline.consume.writer import Written

log = logging.getLogger(__name__)


#: Upper bounds (seconds) of the flush and commit latency histograms; +Inf is implied.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative latency buckets, their sum and count (Prometheus histogram semantics).

    :meth:`observe` may run on the writer thread while the endpoint reads :meth:`snapshot` on
    its own: both take the lock.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._sum += seconds
            for i, bound in enumerate(self.bounds):
                if seconds <= bound:
                    self._counts[i] += 1
                    break
            else:
                self._counts[-1] += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (upper bound, count) pairs ending with +Inf, sum, count)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return cumulative, total, running

    def as_dict(self) -> dict[str, Any]:
        """Count, sum and mean for the metrics file."""
        _, total, count = self.snapshot()
        return {"count": count, "sum_seconds": round(total, 6),
                "mean_seconds": round(total / count, 6) if count else None}


@dataclass
class Metrics:
    """Counters for the progress line and ``--metrics-file`` (same names in both); ``run()`` returns them."""

    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    messages: int = 0
    message_bytes: int = 0
    events: int = 0
    quarantined: int = 0
    #: The conservation law (``BatchResult``; docs/pipeline-notes.md §6) over every chunk the
    #: writer processed: ``records + expanded == written + quarantined + ignored_total``.
    #: ``records`` are Kafka messages processed (``messages`` counts those polled, some of which
    #: may still be buffered); ``written`` counts entries stored as rows (``events`` counts rows).
    records: int = 0
    expanded: int = 0
    written: int = 0
    ignored_total: int = 0
    #: ignored entries per "source/reason" (valid, not for ztaudit; never stored)
    ignored: dict[str, int] = field(default_factory=dict)
    balanced: bool = True
    files: int = 0
    flushes: int = 0
    commits: int = 0
    commit_retries: int = 0
    rebalances: int = 0
    dropped_uncommitted: int = 0
    recovered_chunks: int = 0
    #: partitions started past the group's offset, where an Iceberg lake's snapshots say it was written
    resumed_from_lake: int = 0
    compacted_rows_skipped: int = 0
    broker_errors: int = 0
    events_per_s: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    buffered: int = 0
    state: str = "starting"
    #: writer time of each flush round (normalize, write, rename), submit to done
    flush_seconds: Histogram = field(default_factory=Histogram)
    #: time of each offset commit, retries included (not the hooks after it)
    commit_seconds: Histogram = field(default_factory=Histogram)
    #: wall-clock time (epoch seconds) of the last successful commit; None before the first
    last_commit_at: float | None = None
    #: the last reason the bootstrap brokers could not be reached (:func:`broker_diagnosis`); "" once connected
    broker_problem: str = ""

    def observe_flush(self, seconds: float) -> None:
        """A flush round took ``seconds`` on the writer (called on the writer thread)."""
        self.flush_seconds.observe(seconds)

    def observe_commit(self, seconds: float) -> None:
        """An offset commit went through after ``seconds`` (main thread)."""
        self.commit_seconds.observe(seconds)
        self.last_commit_at = time.time()

    def add(self, res: Written) -> None:
        """Count what the writer made of one chunk (called once per chunk of a collected round,
        on the main thread), and re-check the conservation law."""
        self.events += res.rows
        self.quarantined += res.quarantined
        self.files += len(res.paths)
        self.compacted_rows_skipped += res.compacted_rows_skipped
        self.records += res.records
        self.expanded += res.expanded
        self.written += res.written
        for what, n in res.ignored.items():
            self.ignored[what] = self.ignored.get(what, 0) + n
            self.ignored_total += n
        self.balanced = self.records + self.expanded == self.written + self.quarantined + self.ignored_total
        if not self.balanced:
            log.error("consume: records not accounted for: %d records + %d in envelopes != %d written + %d "
                      "quarantined + %d ignored (a bug: please report it)", self.records, self.expanded,
                      self.written, self.quarantined, self.ignored_total)

    def as_dict(self) -> dict[str, Any]:
        """The counters as the metrics file writes them, with ``schema_version`` (core/schema.py)."""
        d = {"schema_version": SCHEMA_VERSION,
             **{k: v.as_dict() if isinstance(v, Histogram) else v for k, v in self.__dict__.items()}}
        d["updated_at"] = datetime.now(UTC).isoformat()
        return d


def lag_of(source: KafkaSource, next_offsets: Mapping[TP, int]) -> dict[str, int]:
    """``{"topic[p]": high watermark - next offset}`` from what the last fetches saw (no round trip)."""
    out = {}
    for tp, nxt in sorted(next_offsets.items()):
        hw = source.highwater(tp)
        if hw is not None:
            out[tp_name(tp.topic, tp.partition)] = max(0, int(hw) - nxt)
    return out


class Progress:
    """The progress line and ``--metrics-file``: :meth:`tick` after every poll, forced at the end."""

    def __init__(self, every_s: float, metrics_file: Path | None) -> None:
        self.every_s = every_s
        self.metrics_file = metrics_file
        self._last = time.monotonic()
        self._events_at_last = 0

    def tick(self, m: Metrics, *, lag: Callable[[], dict[str, int]] | None, buffered: Callable[[], int],
             force: bool = False) -> None:
        """Every ``every_s`` (or when ``force``): update the rate, lag and buffered counts, log one
        line, write the metrics file. ``lag`` is None when there is no source (the last lag stays);
        a lag that cannot be read is skipped. A metrics file that cannot be written raises."""
        now = time.monotonic()
        dt = now - self._last
        if not force and dt < self.every_s:
            return
        if dt > 0:
            m.events_per_s = round((m.events - self._events_at_last) / dt, 1)
        self._last = now
        self._events_at_last = m.events
        if lag is not None:
            with contextlib.suppress(Exception):
                m.lag = lag()
        m.buffered = buffered()
        lag_text = " ".join(f"{k}={v}" for k, v in m.lag.items()) or "-"
        log.info("consume: %.0f ev/s, %d events, %d messages, %d quarantined, %d ignored, %d files, buffered %d, "
                 "lag %s", m.events_per_s, m.events, m.messages, m.quarantined, m.ignored_total, m.files,
                 m.buffered, lag_text)
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.metrics_file,
                               json.dumps(m.as_dict(), indent=2, sort_keys=True, default=str).encode())


class IdleWatch:
    """``--until-idle``: when the loop may drain and exit (main thread only).

    The loop reports what it sees: :meth:`saw_records` after a poll that brought records,
    :meth:`revoked` and :meth:`assigned` for rebalance events; :meth:`done` then decides.
    """

    def __init__(self, until_idle: float | None, session_timeout_ms: int) -> None:
        self.until_idle = until_idle
        self.session_timeout_s = session_timeout_ms / 1000
        self.last_record_at = time.monotonic()
        #: since when this member waits for the group to assign it partitions (subscribed or revoked,
        #: not assigned yet); None once assigned -- even an empty assignment
        self.awaiting_since: float | None = time.monotonic()

    def saw_records(self) -> None:
        self.last_record_at = time.monotonic()

    def revoked(self) -> None:
        self.awaiting_since = time.monotonic()

    def assigned(self) -> None:
        self.awaiting_since = None
        self.last_record_at = time.monotonic()  # new partitions: idle time starts over

    def done(self, source: KafkaSource, *, in_flight: bool) -> bool:
        """True when nothing was polled for ``until_idle`` and the broker confirms no lag (the
        buffered records are then flushed by the final drain). Never with a round in flight (not
        idle until it is committed). A broker that cannot confirm is logged and waited for."""
        if self.until_idle is None or in_flight:
            return False
        now = time.monotonic()
        if now - self.last_record_at < self.until_idle:
            return False
        if self.awaiting_since is not None and (
                now - self.awaiting_since < self.until_idle + 2 * self.session_timeout_s):
            # between a revocation (or a lost session, e.g. after a broker outage) and the next
            # assignment the member owns nothing, but is not idle: the group hands it partitions soon
            return False
        assigned = sorted(source.assignment())
        try:
            if not assigned:
                # no partitions for until_idle since the last assignment (a group with more members than
                # partitions, or a topic that does not exist yet) -- but only if the broker answers:
                # librdkafka subscribes without one, and drops the assignment when its session times out
                # during an outage; neither is "idle"
                source.ping()
                return True
            ends = source.end_offsets(assigned)
            positions = source.positions(assigned)
        except KafkaTransientError as exc:
            log.info("consume: idle, but cannot confirm lag (%s); waiting", exc)
            self.saw_records()
            return False
        if any(lag_by_partition(positions, ends).values()):
            self.saw_records()
            return False
        return True


class JsonLogFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line (``ts`` ISO-8601 UTC, ``level``, ``logger``,
    ``msg``, and ``exc`` with the traceback when there is one), for log collectors.

    Log messages carry log values (topic names, reasons): ``json.dumps`` escapes every control
    character, so a value cannot start a new line or forge another record.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def broker_diagnosis(bootstrap_servers: str, timeout_s: float = 2.0) -> str:
    """Why each bootstrap server cannot be reached, in words: ``host:port: cannot resolve host
    (...)``, ``refused the connection``, ``no answer within 2 s``, or ``accepts TCP connections``
    (then the problem is above TCP: TLS, protocol or the broker's advertised listeners).

    Called by the consume loop each time connecting failed, before it waits to retry; at most one
    name lookup and one TCP connect of ``timeout_s`` per server, and never raises.
    """
    out = []
    for server in [s.strip() for s in bootstrap_servers.split(",") if s.strip()][:8]:
        host, _, port_text = server.rpartition(":")
        host = host.strip("[]") or server
        try:
            port = int(port_text)
        except ValueError:
            out.append(f"{server}: no port (write host:port)")
            continue
        try:
            addrs = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            out.append(f"{server}: cannot resolve host {host!r} ({getattr(exc, 'strerror', None) or exc})")
            continue
        family, kind, proto, _, addr = addrs[0]
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout_s)
                sock.connect(addr)
            out.append(f"{server}: accepts TCP connections (so the failure is TLS, the protocol or the "
                       "broker's advertised listeners)")
        except ConnectionRefusedError:
            out.append(f"{server}: {addr[0]} port {port} refused the connection (no broker listening)")
        except TimeoutError:
            out.append(f"{server}: no answer from {addr[0]} within {timeout_s:g} s (firewall or host down)")
        except OSError as exc:
            out.append(f"{server}: {exc.strerror or exc}")
    return "; ".join(out) or "no bootstrap server given"

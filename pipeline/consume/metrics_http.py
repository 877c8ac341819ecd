"""``consume --metrics-port``: the consumer's counters as a Prometheus text endpoint.

Started by :class:`~ztaudit.pipeline.consume.loop.StreamConsumer` before it connects (so an
operator can see a consumer that is still waiting for its broker), stopped when it returns.
``GET /metrics`` answers the text exposition format 0.0.4 (what Prometheus, VictoriaMetrics and
the OpenTelemetry collector's prometheus receiver scrape); ``GET /healthz`` answers ``ok`` while
the loop runs and 503 with the reason while it cannot reach its broker or has stopped; anything
else is 404. It listens on 127.0.0.1 unless ``--metrics-host`` says otherwise: the counters name
topics and the lag of each partition, which is not for everyone.

Why the standard library and not ``prometheus_client``: the exposition format is a few lines of
text, the consumer already keeps every counter in :class:`~.progress.Metrics` (the same names as
``--metrics-file``), and a second registry would have to be kept in step with it. One thread
(``http.server``) answers one request at a time, with a 5 s socket timeout; a request's line and
headers are bounded by ``http.server`` (64 KiB), bodies are never read, and each answer is
rendered from a snapshot, so a scraper cannot slow the loop down.

Metric names (all prefixed ``ztaudit_consume_``): counters ``messages_total``,
``message_bytes_total``, ``events_total`` (rows written), ``quarantined_total``, ``ignored_total``,
``files_total``, ``flushes_total``, ``commits_total``, ``commit_retries_total``,
``broker_errors_total``, ``rebalances_total``; gauges ``lag_records{topic,partition}``,
``committed_offset{topic,partition}``, ``buffered_records``, ``events_per_second``,
``last_commit_age_seconds`` (NaN before the first commit), ``records_balanced`` (1 while
``records read = written + quarantined + ignored`` holds), ``state{state}``; histograms
``flush_duration_seconds`` and ``commit_duration_seconds``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from ztaudit.pipeline.consume.progress import Histogram, Metrics

log = logging.getLogger(__name__)

PREFIX = "ztaudit_consume_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("starting", "connecting", "running", "draining", "stopped")

#: (metric suffix, Metrics attribute, help) of the counters
COUNTERS = (
    ("messages_total", "messages", "Kafka messages polled"),
    ("message_bytes_total", "message_bytes", "bytes of the Kafka messages polled"),
    ("events_total", "events", "rows written to the lake"),
    ("quarantined_total", "quarantined", "records quarantined (LAKE/quarantine)"),
    ("ignored_total", "ignored_total", "valid records that are not for ztaudit (not stored)"),
    ("files_total", "files", "Parquet files written"),
    ("flushes_total", "flushes", "flush rounds written"),
    ("commits_total", "commits", "offset commits that went through"),
    ("commit_retries_total", "commit_retries", "offset commits retried while the broker was away"),
    ("broker_errors_total", "broker_errors", "transient broker errors (unreachable, timeouts)"),
    ("rebalances_total", "rebalances", "partition assignments received"),
)


def _label(value: str) -> str:
    """A label value escaped as the exposition format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _partition(key: str) -> tuple[str, str]:
    """``topic[3]`` (:func:`~ztaudit.pipeline.sources.kafka.base.tp_name`) -> (``topic``, ``3``);
    Kafka topic names cannot hold ``[``."""
    topic, _, rest = key.rpartition("[")
    return (topic, rest.rstrip("]")) if topic else (key, "")


def _histogram(lines: list[str], name: str, help_text: str, hist: Histogram) -> None:
    buckets, total, count = hist.snapshot()
    lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} histogram"]
    for bound, n in buckets:
        lines.append(f'{PREFIX}{name}_bucket{{le="{_num(bound)}"}} {n}')
    lines += [f"{PREFIX}{name}_sum {_num(total)}", f"{PREFIX}{name}_count {count}"]


def render(m: Metrics, now: float | None = None) -> str:
    """The exposition text of ``m`` (a snapshot: dicts are copied before they are read)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for name, attr, help_text in COUNTERS:
        lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} counter",
                  f"{PREFIX}{name} {_num(float(getattr(m, attr)))}"]
    for name, values, help_text in (
            ("lag_records", dict(m.lag), "records between the committed position and the partition's end "
                                         "(updated at each progress tick)"),
            ("committed_offset", dict(m.committed), "last committed next-offset per partition")):
        lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge"]
        for key, v in sorted(values.items()):
            topic, part = _partition(key)
            lines.append(f'{PREFIX}{name}{{topic="{_label(topic)}",partition="{_label(part)}"}} {_num(float(v))}')
    last = m.last_commit_at
    for name, value, help_text in (
            ("buffered_records", float(m.buffered), "records buffered or being written, not committed yet"),
            ("events_per_second", float(m.events_per_s), "rows written per second over the last progress tick"),
            ("last_commit_age_seconds", (now - last) if last is not None else math.nan,
             "seconds since the last offset commit went through (NaN before the first)"),
            ("records_balanced", 1.0 if m.balanced else 0.0,
             "1 while records read = rows written + quarantined + ignored")):
        lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge", f"{PREFIX}{name} {_num(value)}"]
    lines += [f"# HELP {PREFIX}state 1 for the loop's current state", f"# TYPE {PREFIX}state gauge"]
    state = m.state
    for s in (*STATES, *([state] if state not in STATES else [])):
        lines.append(f'{PREFIX}state{{state="{_label(s)}"}} {1 if s == state else 0}')
    _histogram(lines, "flush_duration_seconds", "writer time of a flush round: normalize, write, rename",
               m.flush_seconds)
    _histogram(lines, "commit_duration_seconds", "time of an offset commit, retries included", m.commit_seconds)
    return "\n".join(lines) + "\n"


class MetricsServer:
    """The endpoint on ``host:port`` in a daemon thread: :meth:`start`, then :meth:`stop`.

    ``metrics`` returns the live :class:`Metrics`. ``OSError`` from :meth:`start` (the port is
    taken, the address is not local) propagates: the CLI turns it into a usage error naming the
    port.
    """

    def __init__(self, metrics: Callable[[], Metrics], host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve; returns the bound port (the one asked for, or a free one for port 0)."""
        get = self.metrics

        class Handler(BaseHTTPRequestHandler):
            server_version = "ztaudit"
            sys_version = ""
            timeout = 5  # seconds a client may take to send its request: a stalled one cannot hold the endpoint

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                m = get()
                if path == "/metrics":
                    self._answer(200, render(m), CONTENT_TYPE)
                elif path == "/healthz":
                    healthy = m.state in ("starting", "running", "draining") and not m.broker_problem
                    reason = m.broker_problem or m.state
                    self._answer(200 if healthy else 503, "ok\n" if healthy else f"{reason}\n",
                                 "text/plain; charset=utf-8")
                else:
                    self._answer(404, "not found: GET /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _answer(self, code: int, body: str, ctype: str) -> None:
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics endpoint: " + format, *args)

        server = HTTPServer((self.host, self.port), Handler)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="ztaudit-metrics", daemon=True)
        self._thread.start()
        log.info("consume: metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

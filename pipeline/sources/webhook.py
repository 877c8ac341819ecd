"""``ztaudit serve``: the Kubernetes API server's audit webhook as a source.

The API server's webhook backend (``--audit-webhook-config-file``, k8s.io/apiserver
``plugin/pkg/audit/webhook``) POSTs ``application/json`` bodies holding an ``audit.k8s.io/v1``
``EventList`` to the ``server`` of a kubeconfig-format file, authenticating as that file's
``user`` (client certificate or bearer token). :func:`serve` is that receiver. Called by
``ztaudit serve`` (``cli/serve.py``); it runs until SIGTERM or SIGINT (or ``stop`` is set) and
returns what it did (:class:`ServeStats`).

One post reads as the pipeline does -- authenticate, bound, process, write, answer:

1. **authenticate**: a client certificate verified against ``--client-ca`` during the TLS
   handshake (mTLS), or ``Authorization: Bearer <token>`` matching a line of ``--token-file``
   (compared in constant time against sha256 digests: the tokens themselves are not kept in
   memory, and are never logged). Anything else: 401, the body is not read.
2. **bound**: the body is read by its ``Content-Length`` (none: 411; over ``--max-body-bytes``:
   413, not read) and at most ``--max-concurrent`` posts are received and processed at once
   (more: 503 with ``Retry-After``, not read), so memory stays below about
   ``max_concurrent x max_body_bytes`` plus one post being processed.
3. **process**: the body is *one record* of source ``k8s_audit`` for the shared
   :func:`~ztaudit.pipeline.process.process`, which unwraps the ``EventList`` (or a single
   ``Event``; :mod:`ztaudit.pipeline.decode.k8s_envelopes`), maps and redacts every Event and
   quarantines what it cannot read, exactly as ``ingest`` and ``consume`` do. Its size cap is
   ``--max-body-bytes`` (a batch of 400 events is far above ``ingest.max_record_bytes``). Posts
   are processed one at a time on one worker thread (one DuckDB connection; the sink is used by
   one thread), so two copies of the same post never write the same temporary file at once.
4. **write** (:mod:`~ztaudit.pipeline.sources.webhook_writer`): the tables and the quarantine go
   through :class:`~ztaudit.core.sink.LakeSink` under the file key ``webhook+<32 hex>``, a sha256
   of the cluster name and the body (``post_key``). The API server re-sends a failed batch with the
   same bytes (it encodes the same ``EventList`` again; Go's JSON encoding is deterministic), so a re-send -- after a
   lost answer, or after a ``kill -9`` of serve between the write and the answer -- rewrites the
   same files: one row per Event (``auditID`` + stage) whatever the number of re-sends. Rows are
   partitioned by their event time (the same on every re-send); the quarantine by the day it was
   written, so a copy a re-send across midnight left on the neighbouring day is deleted.
5. **answer**: ``200`` only after every file of the post is renamed into place and its
   directory fsynced (the sink's rename is the durability point). A lake write that fails is
   answered ``503`` with ``Retry-After`` (nothing is acknowledged; the re-send rewrites the same
   key).

**A body that is not an EventList or Event** (invalid JSON, another ``kind``, not UTF-8) is
quarantined by ``process()`` with the post's origin ``webhook:<remote address>/<body sha256>``
and the reason, scrubbed like every quarantined record, and answered **200** once that
quarantine is durable. Why not 400: the audit webhook retries *every* error, 4xx included
(``retryOnError`` in ``plugin/pkg/audit/webhook/webhook.go``: "there is hardly any error that
could be a justified reason NOT to retry sending audit events"), five attempts 10 s apart and
growing (``DefaultRetryBackoffWithInitialDelay``: factor 1.5). A 400 would only make it re-send
the same poison bytes four more times over ~80 s, each rewriting the same quarantine file, while
its batch goroutine waits. The bytes are accounted for in the lake; ``report quarantine`` shows
them, and the summary and a warning per post count them.

Failure: a bad setting (no certificate, no way to authenticate, no cluster name for some
caller, an unreadable token file, an address that cannot be bound) raises
:class:`~ztaudit.core.errors.ConfigError` before anything listens (exit 2); a lake that cannot
be created raises :class:`~ztaudit.core.errors.SinkError` (exit 4). Once listening, nothing a
client sends stops the server: bad posts are answered and counted.

Shutdown (SIGTERM, SIGINT or ``stop``): the listening socket stops accepting, connections that
wait between requests are closed, posts in flight are read, written and answered, then
:func:`serve` returns (the CLI exits 0).

HTTP is the standard library's ``http.server`` and ``ssl``: the API server's client is one
well-behaved Go HTTP/1.1 client, and the limits that matter (body size, concurrency, connection
count, read deadlines, the handshake off the accept loop) are a few lines here; a framework
would add a dependency without removing any of them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import signal
import socket
import socketserver
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from ztaudit.core.errors import ConfigError, SinkError
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.k8s_audit import SOURCE as K8S
from ztaudit.pipeline.records import BatchResult
from ztaudit.pipeline.sources.webhook_writer import PostWriter

log = logging.getLogger(__name__)

#: Per-``recv`` timeout while a request's headers or body arrive.
READ_TIMEOUT_S: Final = 30.0
#: A body still arriving after this long is abandoned (the API server gives up on a request after
#: 30 s, ``defaultRequestTimeout`` in k8s.io/apiserver ``pkg/util/webhook``): bounds how long a slow
#: client holds a post slot and how long shutdown waits for it.
BODY_DEADLINE_S: Final = 60.0
#: How long a kept-alive connection may wait for its next request. Longer than Go's idle
#: connection timeout (90 s), so the API server closes idle connections before we do and never
#: sends a post on a connection we just closed.
IDLE_TIMEOUT_S: Final = 120.0
#: Open connections allowed per post slot (``max_concurrent``): the API server keeps idle
#: keep-alive connections; beyond the limit a new connection is closed at once.
CONNECTIONS_PER_SLOT: Final = 4
#: Connections that have not yet authenticated a request, at most: beyond it the oldest of them is
#: closed, so anonymous clients (a port scan, a slowloris) never hold every slot and the API server's
#: connections always get their turn.
UNAUTHENTICATED_CONNECTIONS: Final = 8
#: A new connection must complete TLS and authenticate its first request's headers within this
#: long, or it is closed (slowloris: a request line and headers dribbled a byte at a time).
FIRST_REQUEST_DEADLINE_S: Final = 10.0
#: Events in one post, at most (the API server batches 400 by default,
#: ``--audit-webhook-batch-max-size``): bounds memory per post whatever the events' size.
MAX_EVENTS_PER_POST: Final = 20_000
#: ``Retry-After`` seconds for 503 answers (busy, lake write failed).
RETRY_AFTER_S: Final = 1


@dataclass(frozen=True)
class ServeOptions:
    """Everything :func:`serve` needs (built by ``cli/serve.py`` from flags and ``[serve]``)."""

    lake: Path
    #: cluster of posts whose token names none (and of every mTLS post)
    cluster: str | None
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    client_ca: Path | None
    token_file: Path | None
    max_body_bytes: int
    max_concurrent: int
    summary_seconds: float = 60.0
    #: ``lake.format``: the format a new lake is created in (an existing lake keeps its own)
    table_format: str | None = None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); raises ConfigError. Port 0 asks
    the kernel for a free port (:func:`serve` reports the one it got)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError("serve.listen", f"{value!r} is not HOST:PORT", fix="write it like 127.0.0.1:8443")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("serve.listen", f"{value!r}: the port must be a number from 0 to 65535",
                          fix="write it like 127.0.0.1:8443")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (anything else is reachable from elsewhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenTable:
    """Bearer tokens from ``--token-file``: one per line, ``TOKEN`` or ``TOKEN,CLUSTER``; blank
    lines and ``#`` comments skipped. Only each token's sha256 is kept; :meth:`lookup` compares a
    presented token against every entry with :func:`hmac.compare_digest` and no early exit."""

    def __init__(self, entries: list[tuple[bytes, str | None]]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Read the file; raises ConfigError (unreadable, empty, a token twice with two clusters).
        Warns when group or others may read it. Error messages name lines, never tokens."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("serve.token_file", f"cannot read {path}: {exc}",
                              fix="point it at a readable UTF-8 file with one TOKEN[,CLUSTER] per line") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("serve: %s may be read by group or others (mode %o); chmod 600 it", path,
                        stat.S_IMODE(mode))
        seen: dict[bytes, tuple[str | None, int]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            token, _, cluster_part = line.partition(",")
            token = token.strip()
            cluster = cluster_part.strip() or None
            if not token:
                raise ConfigError("serve.token_file", f"{path}:{n}: empty token",
                                  fix="write one TOKEN or TOKEN,CLUSTER per line")
            if len(token) < 16:
                log.warning("serve: %s:%d: a token of %d characters is easy to guess; use 32 or more random "
                            "characters (openssl rand -hex 32)", path, n, len(token))
            digest = hashlib.sha256(token.encode("utf-8")).digest()
            if digest in seen and seen[digest][0] != cluster:
                raise ConfigError("serve.token_file", f"{path}:{n}: the token of line {seen[digest][1]} again, "
                                  "with another cluster", fix="give each cluster its own token")
            seen[digest] = (cluster, n)
        if not seen:
            raise ConfigError("serve.token_file", f"{path} holds no token",
                              fix="write one TOKEN or TOKEN,CLUSTER per line (openssl rand -hex 32)")
        return cls([(d, c) for d, (c, _) in seen.items()])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def all_have_cluster(self) -> bool:
        return all(c is not None for _, c in self._entries)

    def lookup(self, token: str) -> tuple[bool, str | None]:
        """(valid, the token's cluster or None)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: tuple[bool, str | None] = (False, None)
        for known, cluster in self._entries:
            if hmac.compare_digest(known, digest):
                found = (True, cluster)
        return found


@dataclass
class ServeStats:
    """What the server did: posts written, their entries and what became of them, and the posts
    refused per reason. Updated under :attr:`lock` by the worker and the handler threads."""

    posts: int = 0
    events: int = 0
    rows: int = 0
    quarantined: int = 0
    ignored: int = 0
    bytes: int = 0
    #: posts (or connections) refused, per reason: unauthenticated, too_large, no_length, busy,
    #: lake_error, error, incomplete, method, tls, too_many_connections
    rejected: Counter[str] = field(default_factory=Counter)
    #: ``k8s_audit`` rows written without a cluster (cannot happen once started: kept as a check)
    no_cluster: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, result: BatchResult, nbytes: int) -> None:
        with self.lock:
            self.posts += 1
            self.events += result.records + result.expanded
            self.rows += result.rows
            self.quarantined += result.quarantined
            self.ignored += result.ignored_total
            self.bytes += nbytes
            self.no_cluster += result.audit_rows_without_cluster

    def refuse(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] += 1

    def line(self) -> str:
        """``N posts, E events (R rows, Q quarantined, I ignored), X rejected (reason=n, ...)``."""
        with self.lock:
            refused = sum(self.rejected.values())
            why = f" ({', '.join(f'{r}={n}' for r, n in sorted(self.rejected.items()))})" if refused else ""
            return (f"{self.posts:,} posts, {self.events:,} events ({self.rows:,} rows, {self.quarantined:,} "
                    f"quarantined, {self.ignored:,} ignored), {refused:,} rejected{why}, "
                    f"{self.bytes / 1e6:,.1f} MB")


def tls_context(opts: ServeOptions) -> ssl.SSLContext:
    """The server's TLS context: its certificate, TLS 1.2 or later, and -- with ``client_ca`` --
    client certificates verified against it (required when there is no token file, else
    optional: a post then authenticates with either). Raises ConfigError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(opts.tls_cert), str(opts.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("serve.tls_cert", f"cannot load {opts.tls_cert} with key {opts.tls_key}: {exc}",
                          fix="give a PEM certificate and its PEM private key (unencrypted)") from exc
    if opts.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(opts.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("serve.client_ca", f"cannot load {opts.client_ca}: {exc}",
                              fix="give the PEM CA certificate that signs the API server's client certificate"
                              ) from exc
        ctx.verify_mode = ssl.CERT_OPTIONAL if opts.token_file is not None else ssl.CERT_REQUIRED
    return ctx


class WebhookServer(ThreadingHTTPServer):
    """A threading HTTPS server whose TLS handshake runs in the connection's thread (a slow client
    cannot stall the accept loop), with a cap on open connections, and that knows which
    connections wait between requests so that shutdown can close them (:meth:`close_idle`)."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext, app: _App) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler, bind_and_activate=False)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.app = app
        self.stopping = False
        self._conns: dict[socket.socket, bool] = {}  # connection -> busy (inside an authenticated request)
        self._authed: set[socket.socket] = set()  # connections that authenticated a request
        self._conn_lock = threading.Lock()

    def server_bind(self) -> None:
        """Bind without ``http.server``'s reverse DNS lookup of the address (``getfqdn`` can hang)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        evict: socket.socket | None = None
        with self._conn_lock:
            anonymous = [c for c in self._conns if c not in self._authed]  # oldest first (insertion order)
            if anonymous and (len(anonymous) >= UNAUTHENTICATED_CONNECTIONS
                              or len(self._conns) >= self.app.max_connections):
                # Make room by closing the oldest connection that has not authenticated: anonymous
                # clients can never hold every slot, and a new client (the API server reconnecting)
                # always gets its chance to authenticate.
                evict = anonymous[0]
                self._conns.pop(evict, None)
            full = len(self._conns) >= self.app.max_connections
            if not full:
                self._conns[request] = False
        if evict is not None:
            self.app.stats.refuse("evicted_unauthenticated")
            try:
                socket.socket.shutdown(evict, socket.SHUT_RDWR)
            except OSError:
                pass
        if full:
            self.app.stats.refuse("too_many_connections")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.pop(request, None)
                self._authed.discard(request)

    def set_authenticated(self, conn: socket.socket) -> None:
        with self._conn_lock:
            if conn in self._conns:
                self._authed.add(conn)

    def set_busy(self, conn: socket.socket, busy: bool) -> None:
        with self._conn_lock:
            if conn in self._conns:
                self._conns[conn] = busy

    def close_idle(self) -> int:
        """Shut down the connections that wait between requests, and those that never authenticated
        a request (their threads then end); returns how many. Busy ones -- inside an authenticated
        request -- finish it and close after the answer (:attr:`stopping`)."""
        with self._conn_lock:
            idle = [c for c, busy in self._conns.items() if not busy]
        for conn in idle:
            try:
                # the plain socket's shutdown: SSLSocket.shutdown would drop the TLS object under
                # the thread that is reading from it
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        return len(idle)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed outside a request (TLS handshake, reset): counted, logged at debug
        without the client's bytes."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ssl.SSLError, timeouts and resets are OSErrors
            self.app.stats.refuse("tls" if isinstance(exc, ssl.SSLError) else "incomplete")
            log.debug("serve: connection from %s ended: %s", _peer(client_address), type(exc).__name__)
            return
        log.warning("serve: connection from %s failed: %r", _peer(client_address), exc)


def _peer(address: Any) -> str:
    """The remote address of a connection, as origins show it (``1.2.3.4``, ``[::1]``)."""
    host = str(address[0]) if isinstance(address, tuple) and address else "unknown"
    return f"[{host}]" if ":" in host else host


class _App:
    """The state every handler thread shares: settings, tokens, the post slots, the worker."""

    def __init__(self, opts: ServeOptions, tokens: TokenTable | None, writer: PostWriter) -> None:
        self.opts = opts
        self.tokens = tokens
        self.writer = writer
        self.stats = ServeStats()
        self.slots = threading.BoundedSemaphore(opts.max_concurrent)
        self.max_connections = CONNECTIONS_PER_SLOT * opts.max_concurrent + 4
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztaudit-serve-writer")


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.1 keep-alive, as the API server's Go client uses)."""

    server: WebhookServer
    protocol_version = "HTTP/1.1"
    server_version = "ztaudit-serve"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S

    def setup(self) -> None:
        conn = self.request
        # Until a request authenticates, the connection lives on a deadline (slowloris).
        self._deadline: threading.Timer | None = threading.Timer(FIRST_REQUEST_DEADLINE_S, self._expire, (conn,))
        self._deadline.daemon = True
        self._deadline.start()
        conn.settimeout(READ_TIMEOUT_S)
        conn.do_handshake()
        super().setup()

    def finish(self) -> None:
        self._authenticated()
        super().finish()

    def _expire(self, conn: socket.socket) -> None:
        self.server.app.stats.refuse("first_request_deadline")
        try:
            socket.socket.shutdown(conn, socket.SHUT_RDWR)
        except OSError:
            pass

    def _authenticated(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def parse_request(self) -> bool:
        self.connection.settimeout(READ_TIMEOUT_S)
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            if self.server.stopping:
                self.close_connection = True
            self.server.set_busy(self.connection, False)
            try:
                self.connection.settimeout(IDLE_TIMEOUT_S)
            except OSError:
                self.close_connection = True

    # -- http.server's own logging would print request lines (attacker-chosen) to stderr ------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("serve: %s: http.server: %s", _peer(self.client_address), format % args)

    # -- answers ----------------------------------------------------------------------------
    def _answer(self, code: int, payload: dict[str, Any], *, close: bool = False,
                headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        if close or self.server.stopping:
            self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _refuse(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer without reading the body (so the connection is closed), and count it."""
        app = self.server.app
        app.stats.refuse(reason)
        log.debug("serve: %s: %d %s", _peer(self.client_address), code, reason)
        self._answer(code, {"status": "error", "reason": reason, "message": message}, close=True, headers=headers)

    # -- methods ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._answer(200, {"status": "ok"})
        else:
            self._refuse(405, "method", "POST audit EventLists here", {"Allow": "POST"})

    def do_PUT(self) -> None:
        self._refuse(405, "method", "POST audit EventLists here", {"Allow": "POST"})

    do_DELETE = do_PATCH = do_PUT

    def do_POST(self) -> None:
        app = self.server.app
        ok, token_cluster = self._authenticate()
        if not ok:
            self._refuse(401, "unauthenticated", "a client certificate or a bearer token is required",
                         {"WWW-Authenticate": 'Bearer realm="ztaudit"'})
            return
        self._authenticated()
        self.server.set_authenticated(self.connection)
        self.server.set_busy(self.connection, True)
        length = self._content_length()
        if length is None:
            return
        if not app.slots.acquire(blocking=False):
            self._refuse(503, "busy", f"{app.opts.max_concurrent} posts are being received; retry",
                         {"Retry-After": str(RETRY_AFTER_S)})
            return
        try:
            self._post(length, token_cluster or app.opts.cluster)
        finally:
            app.slots.release()

    def _authenticate(self) -> tuple[bool, str | None]:
        """(authenticated, the token's cluster). A valid bearer token wins (it may name the
        cluster); else a client certificate the handshake verified against ``--client-ca``."""
        app = self.server.app
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if app.tokens is not None and scheme.lower() == "bearer" and token.strip():
            ok, cluster = app.tokens.lookup(token.strip())
            if ok:
                return True, cluster
        if app.opts.client_ca is not None and self.connection.getpeercert():
            return True, None
        return False, None

    def _content_length(self) -> int | None:
        """The body's length, or None after refusing the post (411 without one, 413 over the cap)."""
        app = self.server.app
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
            self._refuse(411, "no_length", "send the body with a Content-Length")
            return None
        if len(self.headers.get_all("Content-Length") or []) > 1:
            self._refuse(400, "no_length", "one Content-Length header, please")
            return None
        raw = self.headers.get("Content-Length", "").strip()
        if not (raw.isascii() and raw.isdigit()):
            self._refuse(400 if raw else 411, "no_length", "Content-Length must be a number")
            return None
        length = int(raw)
        if length > app.opts.max_body_bytes:
            log.warning("serve: %s: a post of %d bytes refused (413): --max-body-bytes is %d; the API server "
                        "re-sends it and then drops it (enable --audit-webhook-truncate-enabled or raise the "
                        "limit)", _peer(self.client_address), length, app.opts.max_body_bytes)
            self._refuse(413, "too_large", f"the body is over {app.opts.max_body_bytes} bytes")
            return None
        return length

    def _read_body(self, length: int) -> bytes | None:
        """Exactly ``length`` bytes, or None when the client stopped sending or was too slow."""
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        deadline = time.monotonic() + BODY_DEADLINE_S
        while got < length:
            if time.monotonic() > deadline:
                return None
            n = self.rfile.readinto(view[got:min(length, got + (1 << 20))])
            if not n:
                return None
            got += n
        view.release()
        return bytes(buf)

    def _post(self, length: int, cluster: str | None) -> None:
        app = self.server.app
        peer = _peer(self.client_address)
        started = time.monotonic()
        try:
            body = self._read_body(length)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            body = None
        if body is None:
            app.stats.refuse("incomplete")
            log.warning("serve: %s: the post's body stopped arriving before %d bytes; not written (the API "
                        "server re-sends it)", peer, length)
            self.close_connection = True
            return
        events = body.count(b'"auditID"')
        if events > MAX_EVENTS_PER_POST:
            log.warning("serve: %s: a post of about %d events refused (413): at most %d per post (the API "
                        "server's --audit-webhook-batch-max-size defaults to 400)", peer, events, MAX_EVENTS_PER_POST)
            self._refuse(413, "too_many_events", f"at most {MAX_EVENTS_PER_POST} events per post")
            return
        try:
            done = app.worker.submit(app.writer.write, body, peer, cluster).result()
        except SinkError as exc:
            app.stats.refuse("lake_error")
            log.error("serve: %s: post of %d bytes not written, answered 503 (the API server re-sends it): %s",
                      peer, length, exc)
            self._answer(503, {"status": "error", "reason": "lake_error", "message": "the lake write failed"},
                         headers={"Retry-After": str(RETRY_AFTER_S)})
            return
        except Exception as exc:  # a bug must not stop the server; the post is not acknowledged
            app.stats.refuse("error")
            log.exception("serve: %s: post of %d bytes failed: %s", peer, length, exc)
            self._answer(500, {"status": "error", "reason": "error", "message": "internal error"})
            return
        del body
        res = done.result
        app.stats.add(res, length)
        if res.rejected:
            reasons = Counter(str(r.reason) for r in res.rejected)
            log.warning("serve: %s: post sha256=%s: %d quarantined (%s); see ztaudit report quarantine", peer,
                        done.sha256[:16], res.quarantined,
                        ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())))
        if not res.balanced():
            log.error("serve: post sha256=%s is UNBALANCED: %d records + %d = %d written + %d quarantined + %d "
                      "ignored (a bug: please report it)", done.sha256[:16], res.records, res.expanded,
                      res.written, res.quarantined, res.ignored_total)
        log.debug("serve: %s: post sha256=%s cluster=%s %d bytes: %d events -> %d rows, %d quarantined, %d ignored, "
                  "%d files, %.0f ms", peer, done.sha256[:16], cluster, length, res.records + res.expanded,
                  res.rows, res.quarantined, res.ignored_total, done.files, 1000 * (time.monotonic() - started))
        self._answer(200, {"status": "ok", "events": res.records + res.expanded, "rows": res.rows,
                           "quarantined": res.quarantined, "ignored": res.ignored_total})


def check_cluster_source(opts: ServeOptions, tokens: TokenTable | None) -> None:
    """Refuse to start when some authenticated post would have no cluster name: mTLS posts take
    ``--cluster``, token posts their token's cluster or ``--cluster``. Raises ConfigError."""
    if opts.client_ca is None and tokens is None:
        raise ConfigError("serve", "no way to authenticate the API server: neither --client-ca nor --token-file",
                          fix="give --client-ca (the CA of the API server's client certificate) and/or "
                              "--token-file (bearer tokens); ztaudit serve never accepts anonymous posts")
    if opts.cluster:
        return
    if opts.client_ca is not None:
        raise ConfigError("serve", "no cluster name for posts authenticated by client certificate",
                          fix="give --cluster NAME (audit events do not name their cluster)")
    if tokens is not None and not tokens.all_have_cluster:
        raise ConfigError("serve", "some tokens of --token-file name no cluster and --cluster is not given",
                          fix="give --cluster NAME, or write each line as TOKEN,CLUSTER")


def serve(opts: ServeOptions, ctx: NormalizeContext, *, stop: threading.Event | None = None,
          on_ready: Callable[[str, int], None] | None = None, signals: bool = True) -> ServeStats:
    """Listen, take posts until SIGTERM/SIGINT (``signals``, main thread only) or ``stop``, then
    finish the posts in flight and return the stats. ``on_ready(host, port)`` is called once
    listening (the port the kernel chose for port 0). Raises ConfigError or SinkError before
    listening (module docstring)."""
    tokens = TokenTable.load(opts.token_file) if opts.token_file is not None else None
    check_cluster_source(opts, tokens)
    if opts.max_concurrent < 1 or opts.max_body_bytes < 1024:
        raise ConfigError("serve", "max_concurrent must be >= 1 and max_body_bytes >= 1024")
    tls = tls_context(opts)
    if not is_loopback(opts.host):
        log.warning("serve: listening on %s, which is not a loopback address: anyone who can reach it can "
                    "try to authenticate; make sure a firewall or network policy limits it to the API servers",
                    opts.host)
    sink = LakeSink(opts.lake, table_format=opts.table_format)
    # A serve killed mid-write (kill -9, OOM) leaves .<name>.tmp-<pid> files; clear them now rather
    # than at the first post that happens to write the same table.
    for table in (K8S, "quarantine"):
        sink.sweep(table)
    app = _App(opts, tokens, PostWriter(sink, ctx, opts.max_body_bytes))
    try:
        server = WebhookServer((opts.host, opts.port), tls, app)
    except OSError as exc:
        app.worker.shutdown()
        raise ConfigError("serve.listen", f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}",
                          fix="choose a free port or an address of this host") from exc
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                            name="ztaudit-serve-accept", daemon=True)
    loop.start()
    host, port = server.server_address[:2]
    auth = " + ".join(m for m, on in (("mTLS", opts.client_ca is not None), ("tokens", tokens is not None)) if on)
    log.debug("serve: listening on https://%s:%d (cluster %s, %s, at most %d concurrent posts of %d bytes)",
             host, port, opts.cluster or "from the tokens", auth, opts.max_concurrent, opts.max_body_bytes)
    if on_ready is not None:
        on_ready(str(host), int(port))
    try:
        while not stop.wait(opts.summary_seconds):
            log.info("serve: %s", app.stats.line())
    finally:
        # stop accepting, close idle keep-alive connections, let posts in flight finish
        server.shutdown()
        server.stopping = True
        server.socket.close()
        idle = server.close_idle()
        log.info("serve: stopping: closed %d idle connections, finishing posts in flight", idle)
        server.server_close()  # joins every connection thread
        app.worker.shutdown(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("serve: stopped: %s", app.stats.line())
    return app.stats

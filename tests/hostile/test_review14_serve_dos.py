"""Review of issue 14, defects 2, 3 and 9: ``ztaudit serve`` against clients that never authenticate.

A real ``ztaudit serve`` subprocess (token authentication, as scripts/realstack and
deploy/kubernetes/serve.yaml run it), certificates made with ``openssl``, raw sockets. Each server is
stopped by its PID.

* #2 (high): the connection cap (``CONNECTIONS_PER_SLOT x max_concurrent + 4`` = 20) counts
  connections that have not authenticated, and the headers have no overall deadline (each ``recv``
  has 30 s), so 20 connections that send a header byte now and then lock the API server out for as
  long as they like (> 80 s: the webhook then drops the batch). The shipped NetworkPolicy admits
  port 8443 from every pod.
* #3 (medium): such a connection is "busy", so SIGTERM waits for it forever (``server_close`` joins
  its thread): the "graceful shutdown" never ends while it dribbles.
* #9 (low): an authenticated ``Content-Length`` that ``str.isdigit`` accepts but ``int`` does not
  (``\\xb2``, superscript two, a latin-1 header byte) raises in the handler: no answer at all, a
  warning with a traceback class in the log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "T" * 40
BODY = (b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"kind":"Event","auditID":"x1",'
        b'"stage":"ResponseComplete","verb":"get","requestURI":"/api","user":{"username":"u"},'
        b'"requestReceivedTimestamp":"2026-11-01T10:00:00.000001Z","stageTimestamp":"2026-11-01T10:00:00.000002Z",'
        b'"responseStatus":{"code":200}}]}')


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=ca")
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return d


class Serve:
    def __init__(self, pki: Path, d: Path) -> None:
        tokens = d / "tokens"
        tokens.write_text(f"{TOKEN},prod\n")
        tokens.chmod(0o600)
        self.log = d / "serve.log"
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ztaudit.cli.main", "serve", "--lake", str(d / "lake"), "--listen",
                 "127.0.0.1:0", "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                 "--token-file", str(tokens)], stdout=subprocess.DEVNULL, stderr=fh, cwd=str(d), env=dict(os.environ))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"listening on https://127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError("serve did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def serve(pki: Path, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(pki, tmp_path)
    yield s
    s.kill()


def tls(pki: Path, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def request(pki: Path, port: int, head: bytes) -> bytes:
    """Send ``head`` (+ BODY) on a fresh connection; the status line, or b'' when the server answered nothing."""
    try:
        s = tls(pki, port)
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b"\r\n", 1)[0]
    except (OSError, ssl.SSLError):
        return b""


def authenticated_post(pki: Path, port: int) -> bytes:
    return request(pki, port, b"POST /audit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                   + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)


def dribblers(pki: Path, port: int, n: int) -> list[ssl.SSLSocket]:
    """``n`` connections that finish TLS (no client certificate) and start a request they never finish."""
    out = []
    for _ in range(n):
        s = tls(pki, port)
        s.sendall(b"POST /audit HTTP/1.1\r\nHost: x\r\n")
        out.append(s)
    return out


def test_unauthenticated_slow_clients_cannot_lock_out_the_api_server(pki: Path, serve: Serve) -> None:
    assert authenticated_post(pki, serve.port) == b"HTTP/1.1 200 OK"  # the control
    socks = dribblers(pki, serve.port, 20)  # CONNECTIONS_PER_SLOT x max_concurrent + 4
    try:
        time.sleep(0.5)
        status = authenticated_post(pki, serve.port)
    finally:
        for s in socks:
            s.close()
    assert status == b"HTTP/1.1 200 OK", f"the API server's post got {status!r} while 20 anonymous clients held on"


def test_sigterm_is_not_held_by_a_slow_unauthenticated_client(pki: Path, serve: Serve) -> None:
    (sock,) = dribblers(pki, serve.port, 1)
    try:
        time.sleep(0.5)
        serve.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 12 and serve.proc.poll() is None:
            time.sleep(3)
            try:
                sock.send(b"X")
            except OSError:
                break
        assert serve.proc.poll() == 0, "serve still running 12 s after SIGTERM"
    finally:
        sock.close()


def test_a_unicode_digit_content_length_is_answered_400(pki: Path, serve: Serve) -> None:
    status = request(pki, serve.port, b"POST /audit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Length: \xb2\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 4"), status

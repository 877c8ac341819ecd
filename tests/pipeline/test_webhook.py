"""``ztaudit serve`` as the API server sees it: a real ``serve`` subprocess on a free port, TLS
certificates made with ``openssl``, EventLists posted with ``ssl``/``http.client`` over mTLS or a
bearer token, the lake read back with DuckDB. Every server is stopped by its PID."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ztaudit.core.files import TEMP_GRACE_S, sweep_temp_files
from ztaudit.core.lake import open_lake

BASE = "2026-11-01T10:00:00"


# --- certificates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, ca: str, subject: str, ext: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate (clientAuth) it signed, and a
    client certificate signed by another CA."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                 f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}", cwd=d)
    _issue(d, "server", "ca", "/CN=localhost",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "ca", "/CN=kube-apiserver", "extendedKeyUsage=clientAuth\n")
    _issue(d, "rogue", "rogue-ca", "/CN=kube-apiserver", "extendedKeyUsage=clientAuth\n")
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "rogue.crt", d / "rogue.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- the server subprocess ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """One ``ztaudit -vv serve`` subprocess (stderr in ``log``), stopped by its PID."""

    def __init__(self, pki: Pki, lake: Path, log: Path, *flags: str, port: int = 0,
                 env: dict[str, str] | None = None, client_ca: bool = True) -> None:
        args = [sys.executable, "-m", "ztaudit.cli.main", "-vv", "serve", "--lake", str(lake),
                "--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        if client_ca:
            args += ["--client-ca", str(pki.ca)]
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([*args, *flags], stdout=subprocess.DEVNULL, stderr=fh,
                                        env={**os.environ, **(env or {})}, cwd=str(lake.parent))
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[self.offset:].decode(errors="replace")
            m = re.search(r"listening on https://127\.0\.0\.1:(\d+)", text)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {text[-3000:]}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_bytes()[self.offset:].decode(errors="replace")


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    """Servers started by a test; any still running at its end is killed by PID."""
    started: list[Serve] = []
    yield started
    for s in started:
        s.kill()


# --- the client (as the API server posts) ------------------------------------------------------

def client_context(pki: Pki, *, cert: bool = True, rogue: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if rogue:
        ctx.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
    elif cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def post(pki: Pki, port: int, body: bytes, *, cert: bool = True, token: str | None = None,
         rogue: bool = False, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(pki, cert=cert, rogue=rogue),
                                       timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "application/json, */*"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/audit", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def event(i: int, stage: str = "ResponseComplete", run: str = "w") -> dict[str, Any]:
    ts = f"{BASE}.{i:06d}Z"
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"{run}-{i:06d}",
            "stage": stage, "requestURI": f"/api/v1/namespaces/ns-{i % 5}/pods", "verb": "list",
            "user": {"username": "alice@example.com", "groups": ["system:authenticated"]},
            "sourceIPs": ["10.0.0.1"], "userAgent": "kubectl/v1.32.0",
            "objectRef": {"resource": "pods", "namespace": f"ns-{i % 5}", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": ts, "stageTimestamp": ts}


def event_list(events: list[dict[str, Any]]) -> bytes:
    """An EventList as the API server encodes it (Go's encoding/json: compact)."""
    return json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events},
                      separators=(",", ":")).encode()


def rows(lake: Path, sql: str) -> list[tuple[Any, ...]]:
    glob_k = lake / "k8s_audit"
    if not list(glob_k.glob("dt=*/*.parquet")) and "k8s_audit" in sql:
        return []
    con = duckdb.connect()
    try:
        sql = sql.replace("k8s_audit", f"read_parquet('{lake}/k8s_audit/dt=*/*.parquet')")
        sql = sql.replace("quarantine", f"read_parquet('{lake}/quarantine/dt=*/*.parquet')")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def audit_counts(lake: Path) -> dict[str, int]:
    return {str(a): int(n) for a, n in rows(lake, "SELECT audit_id, count(*) FROM k8s_audit GROUP BY 1")}


# --- tests -------------------------------------------------------------------------------------

def test_mtls_post_is_in_the_lake_before_the_answer(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod")
    servers.append(srv)
    body = event_list([event(i) for i in range(50)])
    status, _, answer = post(pki, srv.port, body)
    assert status == 200, answer
    assert json.loads(answer)["rows"] == 50
    # durable when answered: the rows are readable now, before the server stops
    got = rows(lake, "SELECT cluster, origin, count(*) FROM k8s_audit GROUP BY 1, 2")
    assert got == [("prod", f"webhook:127.0.0.1/{hashlib.sha256(body).hexdigest()}", 50)]
    assert sorted(audit_counts(lake)) == [f"w-{i:06d}" for i in range(50)]
    assert srv.stop() == 0


def test_bearer_tokens_name_their_cluster_and_are_never_logged(pki: Pki, tmp_path: Path,
                                                              servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    secret_a, secret_b = "tok-" + "a1" * 20, "tok-" + "b2" * 20
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per cluster\n{secret_a},prod\n\n{secret_b}\n")
    tokens.chmod(0o600)
    srv = Serve(pki, lake, tmp_path / "serve.log", "--token-file", str(tokens), "--cluster", "staging",
                client_ca=False)
    servers.append(srv)
    assert post(pki, srv.port, event_list([event(1, run="a")]), cert=False, token=secret_a)[0] == 200
    assert post(pki, srv.port, event_list([event(2, run="b")]), cert=False, token=secret_b)[0] == 200
    assert post(pki, srv.port, event_list([event(3, run="x")]), cert=False, token=secret_a + "x")[0] == 401
    assert sorted(rows(lake, "SELECT audit_id, cluster FROM k8s_audit")) == [("a-000001", "prod"),
                                                                           ("b-000002", "staging")]
    assert srv.stop() == 0
    log = srv.output()
    assert "unauthenticated=1" in log
    for secret in (secret_a, secret_b, "a1" * 20, "b2" * 20):
        assert secret not in log


def test_without_credentials_401_and_nothing_is_read(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    tokens = tmp_path / "tokens"
    tokens.write_text("t" * 40 + "\n")
    tokens.chmod(0o600)
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod", "--token-file", str(tokens))
    servers.append(srv)
    body = event_list([event(1)])
    status, headers, _ = post(pki, srv.port, body, cert=False)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert post(pki, srv.port, body, cert=False, token="wrong")[0] == 401
    # a client certificate from another CA fails the handshake (the post never arrives)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        post(pki, srv.port, body, rogue=True)
    assert not (lake / "k8s_audit").exists()
    # the same server takes the real certificate and the real token
    assert post(pki, srv.port, body)[0] == 200
    assert post(pki, srv.port, event_list([event(2)]), cert=False, token="t" * 40)[0] == 200
    assert audit_counts(lake) == {"w-000001": 1, "w-000002": 1}
    assert srv.stop() == 0


def test_oversized_post_413_without_reading_it(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod", "--max-body-bytes", "4096")
    servers.append(srv)
    big = event_list([event(i) for i in range(20)])
    assert len(big) > 4096
    # headers only, with a Content-Length over the cap: refused at once, the body is never sent
    raw = socket.create_connection(("127.0.0.1", srv.port))
    tls = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    tls.settimeout(20)
    tls.sendall(f"POST /audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(big)}\r\n\r\n".encode())
    answer = _read_http(tls)
    tls.close()
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"Connection: close" in answer
    assert post(pki, srv.port, event_list([event(i) for i in range(5)]))[0] == 200
    assert len(audit_counts(lake)) == 5
    assert srv.stop() == 0
    assert "too_large=1" in srv.output()


def _read_http(sock: ssl.SSLSocket) -> bytes:
    """One HTTP answer (headers and a Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"Content-Length: (\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_garbage_is_quarantined_with_its_origin_and_answered_200(pki: Pki, tmp_path: Path,
                                                                  servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod")
    servers.append(srv)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYXJrZXIifQ.c2lnbmF0dXJlTUFSS0VS"
    bodies = {
        "invalid_json": f'{{"kind":"EventList","items":[{{"token":"{jwt}"}}}} MARKER garbage'.encode(),
        "unknown_shape": b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x"}}',
    }
    for body in bodies.values():
        status, _, answer = post(pki, srv.port, body)
        assert status == 200, answer  # the audit webhook re-sends every non-2xx: see the module docstring
        assert json.loads(answer)["quarantined"] == 1
    got = {origin: reason for origin, reason in rows(lake, "SELECT origin, reason FROM quarantine")}
    assert got == {f"webhook:127.0.0.1/{hashlib.sha256(body).hexdigest()}": reason
                   for reason, body in bodies.items()}
    everything = b"".join(p.read_bytes() for p in lake.rglob("*.parquet"))
    assert b"MARKER" not in everything and jwt.encode() not in everything
    # an EventList whose one item is not an Event: the good items are rows, the bad one quarantined
    status, _, answer = post(pki, srv.port, event_list([event(1), {"kind": "Pod"}, event(2)]))
    assert status == 200 and json.loads(answer) == {"status": "ok", "events": 3, "rows": 2, "quarantined": 1,
                                                    "ignored": 0}
    assert srv.stop() == 0


def test_the_same_batch_twice_is_one_row_per_event_and_stage(pki: Pki, tmp_path: Path,
                                                            servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod")
    servers.append(srv)
    events = [event(i, stage) for i in range(30) for stage in ("RequestReceived", "ResponseComplete")]
    body = event_list(events)
    for _ in range(3):  # a lost answer, re-sent twice
        assert post(pki, srv.port, body)[0] == 200
    assert post(pki, srv.port, event_list([event(99)]))[0] == 200
    got = rows(lake, "SELECT audit_id, stage, count(*) FROM k8s_audit GROUP BY 1, 2")
    assert len(got) == 61 and all(n == 1 for *_, n in got)
    assert len(list(lake.glob("k8s_audit/dt=*/*.parquet"))) == 2
    con = open_lake(lake)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT audit_id) FROM k8s_requests").fetchone() == (31, 31)
        assert con.execute("SELECT DISTINCT stage FROM k8s_requests").fetchall() == [("ResponseComplete",)]
    finally:
        con.close()
    assert srv.stop() == 0


def _post_until_200(pki: Pki, port: int, body: bytes, restart: Any = None, deadline_s: float = 120) -> int:
    """Post as the API server does: re-send the same bytes after any error until a 2xx answer;
    ``restart()`` is called when the connection fails (the server may be dead). Returns attempts."""
    attempts = 0
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        attempts += 1
        try:
            status, _, _ = post(pki, port, body, timeout=30)
            if status == 200:
                return attempts
        except (OSError, http.client.HTTPException):
            if restart is not None:
                restart()
        time.sleep(0.05)
    raise AssertionError(f"no 200 for a post after {attempts} attempts")


def test_kill_9_between_the_write_and_the_answer_duplicates_nothing(pki: Pki, tmp_path: Path,
                                                                   servers: list[Serve]) -> None:
    """The worst moment, injected: files renamed into place, answer not sent. The re-send of the
    same bytes to the restarted server rewrites the same files."""
    lake = tmp_path / "lake"
    log = tmp_path / "serve.log"
    port = free_port()
    batches = [event_list([event(b * 100 + i, run="k") for i in range(40)]) for b in range(6)]
    kills = [3, 1, 2]  # each server dies after its N-th written post, before answering it

    def start() -> None:
        env = {"ZTAUDIT_TEST_SERVE_KILL_AFTER_POSTS": str(kills.pop(0))} if kills else {}
        servers.append(Serve(pki, lake, log, "--cluster", "prod", port=port, env=env))

    def restart() -> None:
        try:  # the connection may drop an instant before the process is gone
            rc = servers[-1].proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return
        assert rc == -signal.SIGKILL
        start()

    start()
    resent = sum(_post_until_200(pki, port, body, restart) - 1 for body in batches)
    assert resent == 3  # one re-send per injected kill
    assert [s.proc.returncode for s in servers[:-1]] == [-signal.SIGKILL] * 3
    counts = audit_counts(lake)
    assert len(counts) == 240 and set(counts.values()) == {1}
    assert len(list(lake.glob("k8s_audit/dt=*/*.parquet"))) == 6
    assert servers[-1].stop() == 0


def test_kill_9_at_random_moments_with_concurrent_posts(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    """Three posters re-send until 200 while the server is killed at random moments and restarted:
    every auditID exactly once."""
    lake = tmp_path / "lake"
    log = tmp_path / "serve.log"
    port = free_port()
    rnd = random.Random(1207)
    batches = [event_list([event(b * 1000 + i, run="r") for i in range(rnd.randint(1, 120))]) for b in range(45)]
    total = sum(len(json.loads(b)["items"]) for b in batches)
    lock = threading.Lock()
    servers.append(Serve(pki, lake, log, "--cluster", "prod", port=port))
    errors: list[BaseException] = []

    def poster(mine: list[bytes]) -> None:
        try:
            for body in mine:
                _post_until_200(pki, port, body, deadline_s=240)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=poster, args=(batches[k::3],)) for k in range(3)]
    for t in threads:
        t.start()
    for _ in range(4):
        time.sleep(rnd.uniform(0.3, 1.5))
        with lock:
            servers[-1].kill()
            servers.append(Serve(pki, lake, log, "--cluster", "prod", port=port))
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    counts = audit_counts(lake)
    assert len(counts) == total and set(counts.values()) == {1}
    assert servers[-1].stop() == 0
    # A writer killed mid-write leaves .<name>.tmp-<pid>; the next run's sweep removes it once it is
    # TEMP_GRACE_S old (a younger one could be a live writer's in another PID namespace). Age the
    # leftovers past the grace and sweep: none may survive.
    left = list(lake.rglob(".*.tmp-*"))
    for p in left:
        os.utime(p, (time.time() - TEMP_GRACE_S - 1,) * 2)
    for d in {p.parent for p in left}:
        sweep_temp_files(d)
    assert not list(lake.rglob(".*.tmp-*")), "a killed writer's temporary file is not a sweepable leftover"


def test_sigterm_finishes_the_post_in_flight_and_exits_0(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod")
    servers.append(srv)
    body = event_list([event(i) for i in range(200)])
    # an idle keep-alive connection (one post done) and a post whose body is half sent
    idle = http.client.HTTPSConnection("127.0.0.1", srv.port, context=client_context(pki), timeout=20)
    idle.request("POST", "/audit", body=event_list([event(999)]), headers={"Content-Type": "application/json"})
    first = idle.getresponse()
    assert first.status == 200 and first.getheader("Connection") != "close"
    first.read()
    inflight = client_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", srv.port)),
                                               server_hostname="127.0.0.1")
    inflight.settimeout(30)
    inflight.sendall(f"POST /audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert srv.proc.poll() is None, "serve exited with a post in flight"
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    assert idle.sock is not None and idle.sock.recv(1) == b""  # the idle connection was closed
    idle.close()
    inflight.sendall(body[len(body) // 2:])
    answer = _read_http(inflight)
    inflight.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"Connection: close" in answer
    assert srv.proc.wait(timeout=30) == 0
    assert len(audit_counts(lake)) == 201


def test_more_posts_than_slots_503_with_retry_after(pki: Pki, tmp_path: Path, servers: list[Serve]) -> None:
    lake = tmp_path / "lake"
    srv = Serve(pki, lake, tmp_path / "serve.log", "--cluster", "prod", "--max-concurrent", "1")
    servers.append(srv)
    body = event_list([event(i) for i in range(10)])
    holder = client_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", srv.port)),
                                             server_hostname="127.0.0.1")
    holder.settimeout(30)
    holder.sendall(f"POST /audit HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    time.sleep(0.5)
    status, headers, _ = post(pki, srv.port, event_list([event(50)]))
    assert status == 503 and headers["retry-after"] == "1"
    holder.sendall(body[10:])
    assert _read_http(holder).startswith(b"HTTP/1.1 200")
    holder.close()
    assert post(pki, srv.port, event_list([event(50)]))[0] == 200  # the slot is free again
    assert len(audit_counts(lake)) == 11
    assert srv.stop() == 0

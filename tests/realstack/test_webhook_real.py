"""``ztaudit serve`` behind the real kube-apiserver's audit webhook, with a ``kill -9`` in the middle.

``scripts/realstack`` starts kube-apiserver with ``--audit-webhook-config-file`` pointing at
``https://127.0.0.1:<webhook port>/`` (bearer token, the run's CA), ``--audit-webhook-batch-max-wait=1s``
and ``--audit-webhook-initial-backoff=1s``, and with the JSON file backend beside it. This test
starts ``serve`` on that port, drives traffic, kills ``serve`` with SIGKILL and restarts it while the
API server keeps posting, and then checks that every (auditID, stage) the file backend wrote in the
window is in the lake exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from support.realstack import Stack

pytestmark = pytest.mark.realstack

ZTAUDIT = str(Path(sys.executable).parent / "ztaudit")


def _serve(stack: Stack, lake: Path, log: Path) -> subprocess.Popen[bytes]:
    w = stack.info["webhook"]
    port = stack.info["ports"]["webhook"]
    out = open(log, "ab")
    p = subprocess.Popen([ZTAUDIT, "serve", "--lake", str(lake), "--cluster", "realstack",
                          "--listen", f"127.0.0.1:{port}", "--tls-cert", w["tls_cert"], "--tls-key", w["tls_key"],
                          "--token-file", w["token_file"]], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    ctx = ssl.create_default_context(cafile=stack.info["ca"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert p.poll() is None, f"serve exited with {p.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2):
                return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise AssertionError(f"serve did not answer /healthz: {log.read_text()[-2000:]}")


def _file_events(path: str, lo: datetime, hi: datetime) -> dict[tuple[str, str], str]:
    out = {}
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            t = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if lo <= t < hi:
                out[(e["auditID"], e["stage"])] = e["verb"]
    return out


def test_every_audit_event_once_across_kill_9(realstack: Stack, tmp_path: Path) -> None:
    lake, log = tmp_path / "lake", tmp_path / "serve.log"
    serve = _serve(realstack, lake, log)
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            realstack.kubectl("-n", "ci", "get", "configmaps", check=False)
            realstack.kubectl("-n", "ci", "create", "configmap", f"webhook-{os.getpid()}-{i}",
                              "--from-literal=k=v", check=False)
            i += 1

    time.sleep(2)  # batches of events from before serve listened are not judged
    lo = datetime.now(UTC)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        time.sleep(6)
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=10)
        time.sleep(1)
        serve = _serve(realstack, lake, log)
        time.sleep(6)
    finally:
        stop.set()
        t.join(timeout=60)
    hi = datetime.now(UTC)
    # The API server flushes a batch within --audit-webhook-batch-max-wait (1 s); a batch refused during
    # the restart is retried with backoff from 1 s.
    expected = _file_events(realstack.info["audit_log"], lo, hi)
    deadline = time.monotonic() + 40
    con = duckdb.connect()
    got: dict[tuple[str, str], int] = {}
    while time.monotonic() < deadline:
        time.sleep(2)
        if not any(lake.glob("k8s_audit/**/*.parquet")):
            continue
        rows = con.execute(
            "SELECT audit_id, stage, count(*) FROM read_parquet(?, hive_partitioning = true) "
            "WHERE request_received_at >= ? AND request_received_at < ? GROUP BY ALL",
            [str(lake / "k8s_audit" / "**" / "*.parquet"), lo, hi]).fetchall()
        got = {(a, s): n for a, s, n in rows}
        if set(expected) <= set(got):
            break
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0, log.read_text()[-2000:]
    assert len(expected) > 50, f"too little traffic in the window: {len(expected)} events"
    missing = sorted(set(expected) - set(got))
    assert not missing, (f"{len(missing)} of {len(expected)} events of the file backend never reached the lake "
                         f"through serve (e.g. {missing[:3]}); serve log: {log.read_text()[-1500:]}")
    twice = {k: n for k, n in got.items() if n != 1}
    assert not twice, f"events written more than once: {list(twice.items())[:5]}"
    extra = set(got) - set(expected)
    assert not extra, f"lake rows the file backend does not have: {sorted(extra)[:5]}"
    print(f"webhook: {len(expected)} events from {lo:%H:%M:%S} to {hi:%H:%M:%S} across a kill -9 of serve, "
          f"each once in the lake", file=sys.stderr)
    assert hi - lo > timedelta(seconds=10)

"""``ztaudit serve`` on the command line: what it refuses to start with (exit 2, or 4 for a lake it
cannot create), its ``[serve]`` settings, and Ctrl-C. Run as real subprocesses, stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and its key."""
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "server.key", "-out", "server.crt", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=d, check=True, capture_output=True)
    return d / "server.crt", d / "server.key"


def ztaudit(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ztaudit.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd, check=False)


def serve_args(cert: tuple[Path, Path], lake: Path, *extra: str) -> list[str]:
    return ["serve", "--lake", str(lake), "--listen", "127.0.0.1:0", "--tls-cert", str(cert[0]),
            "--tls-key", str(cert[1]), *extra]


def test_refusals_are_usage_errors(cert: tuple[Path, Path], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    tokens = tmp_path / "tokens"
    tokens.write_text("a" * 32 + "\n")
    tokens.chmod(0o600)
    cases = {
        "certificate and key are required": ["serve", "--lake", str(lake), "--token-file", str(tokens),
                                             "--cluster", "prod"],
        "no way to authenticate": serve_args(cert, lake, "--cluster", "prod"),
        "no cluster name for posts authenticated by client certificate": serve_args(cert, lake, "--client-ca",
                                                                                    str(cert[0])),
        "name no cluster": serve_args(cert, lake, "--token-file", str(tokens)),
        "cannot read": serve_args(cert, lake, "--token-file", str(tmp_path / "missing"), "--cluster", "prod"),
        "cannot load": ["serve", "--lake", str(lake), "--tls-cert", str(cert[1]), "--tls-key", str(cert[1]),
                        "--token-file", str(tokens), "--cluster", "prod"],
        "is not HOST:PORT": [*serve_args(cert, lake, "--token-file", str(tokens), "--cluster", "prod"),
                             "--listen", "8443"],
    }
    for needle, args in cases.items():
        proc = ztaudit(*args)
        assert proc.returncode == 2, (needle, proc.stderr)
        assert needle in proc.stderr, (needle, proc.stderr)
        assert "a" * 32 not in proc.stderr
    proc = ztaudit(*serve_args(cert, lake, "--token-file", str(tokens), "--cluster", "prod"),
                   env={"ZTAUDIT_SERVE_MAX_CONCURRENT": "0"})
    assert proc.returncode == 2 and "serve.max_concurrent" in proc.stderr
    assert not lake.exists()


def test_a_busy_port_is_a_usage_error_and_an_unwritable_lake_exit_4(cert: tuple[Path, Path], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a" * 32 + ",prod\n")
    tokens.chmod(0o600)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = serve_args(cert, tmp_path / "lake", "--token-file", str(tokens))
        args[args.index("127.0.0.1:0")] = f"127.0.0.1:{port}"
        proc = ztaudit(*args)
    assert proc.returncode == 2 and "cannot listen on 127.0.0.1" in proc.stderr, proc.stderr
    (tmp_path / "afile").write_text("x")
    proc = ztaudit(*serve_args(cert, tmp_path / "afile" / "lake", "--token-file", str(tokens)))
    assert proc.returncode == 4, proc.stderr


def test_settings_and_help() -> None:
    proc = ztaudit("serve", "-h")
    assert proc.returncode == 0
    for flag in ("--lake", "--cluster", "--listen", "--tls-cert", "--tls-key", "--client-ca", "--token-file",
                 "--max-body-bytes", "--max-concurrent"):
        assert flag in proc.stdout
    proc = ztaudit("config", "check", "--defaults")
    assert proc.returncode == 0, proc.stderr
    for key in ("serve.listen", "serve.max_body_bytes", "serve.max_concurrent", "serve.token_file"):
        assert key in proc.stdout


def test_ctrl_c_stops_it_with_exit_0(cert: tuple[Path, Path], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a" * 32 + ",prod\n")
    tokens.chmod(0o600)
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ztaudit.cli.main",
                                 *serve_args(cert, tmp_path / "lake", "--token-file", str(tokens))],
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"listening on https://127\.0\.0\.1:\d+", log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "serve: stopped: 0 posts" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

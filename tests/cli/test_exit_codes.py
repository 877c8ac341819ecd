"""Documented exit codes instead of tracebacks (README "Usage"): 2 for a bad option, 4 for a lake
that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztaudit.cli.main import main

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("since", ["99999999999999999999d", "999999999w", "3650000d"])
def test_a_relative_time_beyond_the_calendar_is_a_usage_error(tmp_path: Path, since: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lake" / "_state").mkdir(parents=True)  # a lake with no table written yet
    with pytest.raises(SystemExit) as exit_:
        main(["report", "summary", "--lake", str(tmp_path / "lake"), "--since", since])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["ingest", str(ROOT / "sample_logs" / "k8s_audit"), "--cluster", "x"]])
def test_a_lake_that_cannot_be_created_exits_4(tmp_path: Path, command: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--lake", str(not_a_dir / "lake")])
    assert exit_.value.code == 4
    err = capsys.readouterr().err
    assert f"cannot create {not_a_dir / 'lake'}" in err and "Traceback" not in err


# A full disk while writing --out (issue 11, items 18 and 20). Two ways to make a real write fail
# without root: RLIMIT_FSIZE in a child process (write(2) then fails with EFBIG, setrlimit(2); the
# child ignores SIGXFSZ so it gets the error instead of the signal), and ENOSPC injected at fsync,
# where a full disk also shows up on file systems that allocate late.

_FSIZE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
from ztaudit.cli.main import main
main(sys.argv[1:])
"""


def _small_lake(path: Path) -> Path:
    from datetime import UTC, datetime

    import pyarrow as pa

    from ztaudit.core.sink import LakeSink

    LakeSink(path).write("k8s_audit", pa.table({
        "audit_id": ["a"], "request_received_at": pa.array([datetime(2026, 3, 1, tzinfo=UTC)],
                                                            pa.timestamp("us", "UTC"))}), "k")
    return path


@pytest.mark.parametrize("command", [
    ["catalog", "--out", "{out}"],
    ["sql", "SELECT repeat('x', 200000) AS big", "--format", "csv", "--out", "{out}"],
])
def test_a_write_that_the_disk_refuses_during_out_exits_4_and_leaves_nothing_behind(
        tmp_path: Path, command: list[str]) -> None:
    import subprocess
    import sys

    lake = _small_lake(tmp_path / "lake")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "result"
    out.write_text("the previous result")
    args = [a.replace("{out}", str(out)) for a in command]
    proc = subprocess.run([sys.executable, "-c", _FSIZE_LIMITED, *args, "--lake", str(lake)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4, proc.stderr
    assert f"cannot write {out}" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["result"]  # no temp file, no .wal, no temp dir
    assert out.read_text() == "the previous result"


@pytest.mark.parametrize("command", [["catalog"], ["sql", "SELECT 1 AS one"], ["report", "summary"]])
def test_no_space_left_during_out_exits_4_with_the_reason(tmp_path: Path, command: list[str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import errno
    import os

    lake = _small_lake(tmp_path / "lake")
    out = tmp_path / "out" / "result"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--lake", str(lake), "--out", str(out)])
    assert exit_.value.code == 4
    err = capsys.readouterr().err
    assert f"cannot write {out}: No space left on device" in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []

"""Terminal output in a real pseudo-terminal: table width and colour, progress with ETA (issue 15, items 7, 8).

Each test runs the installed ``ztaudit`` on a pty made by python's ``pty``/``os.openpty`` with a
known size (:func:`run_pty`), as a user's shell would: ``isatty()``, the terminal's size and
``NO_COLOR`` are what change the output, and only a real pty gives the first two. The same commands
with pipes (not a terminal) or ``--quiet`` must print no colour and no progress.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from support.lakes import build_lake

from ztaudit.detectors.registry import DETECTORS
from ztaudit.reports.formats import ANSI_COLORS, ANSI_RESET

ZTAUDIT = str(Path(sys.executable).with_name("ztaudit"))
SAMPLE_LOGS = Path(__file__).resolve().parents[2] / "sample_logs"
SGR = re.compile(r"\x1b\[[0-9;]*m")
CSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the variables that change terminal output, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "ZTAUDIT_LAKE", "ZTAUDIT_CONFIG")}
    env.update(extra)
    return env


def run_pty(args: list[str], *, cols: int = 80, rows: int = 24, env: dict[str, str] | None = None,
            timeout: float = 300.0) -> tuple[int, str]:
    """Run ``ztaudit ARGS`` with stdin, stdout and stderr on a new pty of ``cols`` x ``rows``.

    The size is set before the process starts, so it sees it from its first ``get_terminal_size``.
    Returns the exit code and everything the terminal received, escape sequences included.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([ZTAUDIT, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env if env is not None else clean_env(), start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ztaudit {' '.join(args)} did not finish in {timeout} s")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed the terminal (it exited)
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.decode("utf-8", "replace").replace("\r\n", "\n")


def run_piped(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ztaudit ARGS`` with stdout and stderr on pipes (a script, a CronJob): not a terminal."""
    return subprocess.run([ZTAUDIT, *args], capture_output=True, text=True, env=env or clean_env(), timeout=300,
                          check=False)


def column_width(text: str, header: str) -> int:
    """The width of column ``header`` in the first table of ``text`` (from its ``───`` rule line)."""
    lines = SGR.sub("", text).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("severity") and header in line)
    start = lines[i].index(header)
    rule = lines[i + 1]
    return len(rule[start:].split("  ")[0])


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("tty") / "lake")


# --- item 7: tables that fit, identities cut in the middle, colour on a terminal --------------------

def test_findings_table_fits_the_terminal_and_colours_severity(story: Path) -> None:
    for cols in (80, 200):
        code, out = run_pty(["report", "findings", "--lake", str(story)], cols=cols)
        assert code == 0, out
        plain = SGR.sub("", out)
        assert max(len(line) for line in plain.splitlines()) <= cols, (cols, plain)
        # severity in its palette colour, reset right after the word
        assert f"{ANSI_COLORS['critical']}critical{ANSI_RESET}" in out
        assert f"{ANSI_COLORS['high']}high{ANSI_RESET}" in out
    narrow = run_pty(["report", "findings", "--lake", str(story)], cols=80)[1]
    wide = run_pty(["report", "findings", "--lake", str(story)], cols=200)[1]
    assert column_width(wide, "actor") > column_width(narrow, "actor")
    assert "o'brien\"; DROP TABLE findings; --@example.com" in wide  # whole at 200 columns
    assert "…@example.com" in SGR.sub("", narrow)  # cut in the middle at 80: the domain stays


def test_revocation_status_is_coloured_with_the_chart_palette(story: Path) -> None:
    code, out = run_pty(["report", "revocation", "--lake", str(story)], cols=160)
    assert code == 0, out
    assert f"{ANSI_COLORS['not_enforced']}not_enforced{ANSI_RESET}" in out
    assert f"{ANSI_COLORS['enforced']}enforced{ANSI_RESET}" in out
    assert ANSI_COLORS["not_enforced"] != ANSI_COLORS["enforced"]


def test_no_color_and_pipes_and_other_formats_get_no_escape_codes(story: Path) -> None:
    args = ["report", "findings", "--lake", str(story)]
    code, out = run_pty(args, cols=120, env=clean_env(NO_COLOR="1"))
    assert code == 0 and "critical" in out and not SGR.search(out), out
    piped = run_piped(args)
    assert piped.returncode == 0 and "critical" in piped.stdout
    assert "\x1b" not in piped.stdout + piped.stderr
    for fmt in ("markdown", "csv", "json"):
        code, out = run_pty([*args, "--format", fmt], cols=120)
        assert code == 0 and "critical" in out and not SGR.search(out), (fmt, out)


def test_columns_env_sets_the_width_of_piped_output(story: Path) -> None:
    def actor_width(columns: str) -> int:
        res = run_piped(["report", "findings", "--lake", str(story)], env=clean_env(COLUMNS=columns))
        assert res.returncode == 0, res.stderr
        assert max(len(line) for line in res.stdout.splitlines()) <= int(columns)
        return column_width(res.stdout, "actor")

    assert actor_width("200") > actor_width("80")
    res = run_piped(["report", "findings", "--lake", str(story), "--width", "60"], env=clean_env(COLUMNS="200"))
    assert max(len(line) for line in res.stdout.splitlines()) <= 60  # --width wins


# --- item 8: progress with ETA on a terminal, silent otherwise ----------------------------------------

def frames(out: str, what: str) -> list[str]:
    """The progress line's frames for command ``what`` (each starts after an erase-line)."""
    return [CSI.sub("", f).strip() for f in out.split("\x1b[2K") if f.startswith(what + "  ")]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tty-gen") / "gen"
    res = run_piped(["generate", "--out", str(out), "--days", "2", "--scale", "0.05", "--clusters", "prod", "-q"])
    assert res.returncode == 0, res.stderr
    return out


def test_generate_shows_hours_done_and_an_eta_on_a_terminal(tmp_path: Path) -> None:
    code, out = run_pty(["generate", "--out", str(tmp_path / "g"), "--days", "12", "--scale", "0.1",
                         "--clusters", "prod"], cols=120)
    assert code == 0, out
    shown = frames(out, "generate")
    assert shown, out
    assert all(re.search(r"\d+%  \d+/288 hours  2026-11-\d\d  ETA ", f) for f in shown), shown
    assert any(re.search(r"ETA \d+(s|m\d\ds)", f) for f in shown), shown  # a number once the rate is known
    assert CSI.sub("", out).rstrip().splitlines()[-2].startswith("wrote "), out  # the summary on a clean line
    assert all(len(f) <= 119 for f in shown)


def test_ingest_shows_bytes_with_eta_and_detect_shows_its_steps(generated: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    env = clean_env(ZTAUDIT_INGEST_CHUNK_BYTES=str(1 << 20))  # several chunks, several frames
    code, out = run_pty(["ingest", str(generated), "--lake", str(lake), "--config",
                         str(generated / ".ztaudit" / "ztaudit.toml")], cols=160, env=env)
    assert code == 0, out
    shown = frames(out, "ingest")
    assert len(shown) >= 2, out
    assert all(re.search(r"\d+%  [\d.]+ (KiB|MiB)/[\d.]+ MiB  [\d,]+ records", f) and "ETA" in f for f in shown)
    assert "accounted:" in out
    code, out = run_pty(["detect", "--lake", str(lake)], cols=160)
    assert code == 0, out
    shown = frames(out, "detect")
    # the step being run: a derived table, then detector ids (frames are drawn at most every 0.2 s)
    assert any("table:" in f for f in shown) and any(d in f for f in shown for d in DETECTORS), shown
    assert all(re.search(r"\d+%  \d+/\d+ steps", f) for f in shown), shown
    assert "total:" in out


def test_no_progress_when_quiet_or_not_a_terminal(generated: Path, tmp_path: Path) -> None:
    code, out = run_pty(["ingest", str(generated), "--lake", str(tmp_path / "a"), "-q"], cols=120)
    assert code == 0 and "ETA" not in out and "\x1b" not in out, out
    code, out = run_pty(["generate", "--out", str(tmp_path / "g"), "--days", "1", "--scale", "0.01", "-q"])
    assert code == 0 and out.strip() == "", out
    code, out = run_pty(["detect", "--lake", str(tmp_path / "a"), "-q"])
    assert code == 0 and out.strip() == "", out
    piped = run_piped(["ingest", str(generated), "--lake", str(tmp_path / "b")])
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "\x1b" not in piped.stderr, piped.stderr
    piped = run_piped(["detect", "--lake", str(tmp_path / "b")])
    assert piped.returncode == 0 and "ETA" not in piped.stderr + piped.stdout and "\x1b" not in piped.stderr


def test_the_terminal_helper_really_is_a_terminal_of_that_size() -> None:
    """The other tests mean something only if the child sees a TTY of the size set."""
    code, out = run_pty_python("import os,shutil,sys; print(sys.stdout.isatty(), shutil.get_terminal_size().columns)",
                               cols=137)
    assert code == 0 and out.strip().endswith("True 137"), out
    assert shutil.which(ZTAUDIT) or Path(ZTAUDIT).exists()


def run_pty_python(code: str, *, cols: int) -> tuple[int, str]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=clean_env())
    os.close(slave)
    out = b""
    while select.select([master], [], [], 10)[0]:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    os.close(master)
    return proc.wait(timeout=30), out.decode()

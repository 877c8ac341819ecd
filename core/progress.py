"""A one-line progress display with rate and ETA for the long commands: :class:`ProgressLine`.

Used by ``ztaudit ingest``, ``generate`` and ``detect``. The library functions behind them
(:func:`ztaudit.pipeline.ingest.ingest_paths`, :func:`ztaudit.synth.engine.generate`,
:func:`ztaudit.detectors.run.run_detectors`) take a :data:`ProgressCallback` (or, for ingest, a flag)
and print nothing themselves; the CLI passes a :class:`ProgressLine`. It lives in ``core`` because
every package of ours may import ``core`` and nothing else shared (dependencies run one way:
core <- pipeline, detectors, synth <- cli).

Shown only when the stream (stderr) is a terminal and the command is not ``--quiet``: a pipe, a
log file or a CronJob sees nothing, so stdout and stderr stay clean for scripts. The line is
redrawn at most every ``min_interval`` seconds, cut to the terminal's width (a wrapped line would
defeat ``\\r``), and erased when the work ends, so the command's summary follows on a clean line.

Failure: a write to a stream that went away (a closed terminal) switches the line off; progress
never fails the run.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

#: ``progress(done, total, label)``: ``done`` units of ``total`` (``None`` when unknown) are finished;
#: ``label`` names what is being worked on now (a day, a detector id). Called from the worker's own
#: thread between units of work; it must be cheap and must not raise.
ProgressCallback = Callable[[float, float | None, str], None]

_CLEAR = "\r\x1b[2K"


def duration(seconds: float) -> str:
    """``seconds`` as a short human duration: ``9s``, ``1m05s``, ``2h03m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def amount(value: float, unit: str) -> str:
    """``value`` of ``unit``: bytes in KiB/MiB/GiB, anything else as a grouped integer."""
    if unit == "bytes":
        for name, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{int(value)} B"
    return f"{int(value):,}"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the average rate so far, or ``None`` while unknown (no total, nothing done)."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


class ProgressLine:
    """``what  42%  12.0/29.3 MiB  label  3.1 MiB/s  ETA 5s`` on one self-erasing terminal line.

    Call it as a :data:`ProgressCallback` (``line(done, total, label)``); :meth:`close` (or leaving
    the ``with`` block) erases it. ``unit`` names what ``done`` counts (``bytes`` is shown in
    KiB/MiB/GiB; anything else is shown after the numbers, e.g. ``hours``, ``steps``).
    """

    def __init__(self, what: str, *, stream: TextIO | None = None, enabled: bool = True, unit: str = "",
                 min_interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.unit = unit
        self.min_interval = min_interval
        self.clock = clock
        self.started = clock()
        self._last_draw: float | None = None
        self._shown = False

    @classmethod
    def auto(cls, what: str, *, quiet: bool, stream: TextIO | None = None, unit: str = "") -> ProgressLine:
        """A line that is on only when ``stream`` (default stderr) is a terminal and not ``quiet``."""
        stream = stream if stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        try:
            tty = bool(isatty and isatty())
        except (OSError, ValueError):
            tty = False
        return cls(what, stream=stream, enabled=tty and not quiet, unit=unit)

    def text(self, done: float, total: float | None, label: str = "", *, now: float | None = None) -> str:
        """The line for ``done`` of ``total`` (no width limit, no control characters)."""
        elapsed = (self.clock() if now is None else now) - self.started
        parts = [self.what]
        unit = "" if self.unit in ("", "bytes") else f" {self.unit}"
        if total:
            parts.append(f"{min(100.0, 100.0 * done / total):3.0f}%")
            parts.append(f"{amount(done, self.unit)}/{amount(total, self.unit)}{unit}")
        else:
            parts.append(f"{amount(done, self.unit)}{unit}")
        if label:
            parts.append(label)
        if self.unit == "bytes" and elapsed >= 0.5:
            parts.append(f"{amount(done / elapsed, 'bytes')}/s")
        eta = eta_seconds(done, total, elapsed)
        if total:
            parts.append(f"ETA {duration(eta)}" if eta is not None and elapsed >= 0.5 else "ETA …")
        parts.append(f"{duration(elapsed)} elapsed")
        return "  ".join(parts)

    def __call__(self, done: float, total: float | None = None, label: str = "") -> None:
        """Redraw the line (at most every ``min_interval`` seconds; the first call always draws)."""
        if not self.enabled:
            return
        now = self.clock()
        if self._last_draw is not None and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        line = self.text(done, total, label, now=now)
        if len(line) > width:
            line = line[: width - 1] + "…"
        self._write(_CLEAR + line)
        self._shown = True

    def close(self) -> None:
        """Erase the line (if it was drawn); the next output starts on a clean line."""
        if self._shown:
            self._write(_CLEAR)
            self._shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing, keep working
            self.enabled = False

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""Hostile-input benchmark (issue 11, items 16 and 17): time and peak RSS, not a test.

    .venv/bin/python bench/hostile.py                # masking 64 KiB..1 MiB; 256 MiB of blank lines
    .venv/bin/python bench/hostile.py --mib 32       # a smaller blank-line file
    .venv/bin/python bench/hostile.py --only mask

Contenders, each in its own subprocess (peak RSS is that child's ``ru_maxrss`` from ``os.wait4``):

* ``mask-<size>``: the redaction of docs/redaction.md on ``"a=b&" + "token" * N`` (the query an
  attacker sends through a proxy): one column value (``mask_texts``, the central step's path),
  the same string as a Pomerium line's quarantined raw (``scrub_raw``), and ``ingest_paths`` of a
  file of five such Pomerium lines. Linear time means the 1 MiB row costs ~16x the 64 KiB row
  (the old backtracking pattern: 22 s for five 60 KB lines, quadratic).
* ``blank``: ``ingest_paths`` of ``--mib`` MiB of ``\\n`` (item 17: must stay under 1 GiB RSS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

SIZES = {"64KiB": 64 * 1024, "256KiB": 256 * 1024, "1MiB": 1024 * 1024}


def hostile_query(n: int) -> str:
    return "a=b&" + "token" * (n // 5)


def run_mask(size: str, work: Path) -> None:
    import pyarrow as pa

    from ztaudit.pipeline.ingest import ingest_paths
    from ztaudit.pipeline.redact import mask_texts, scrub_raw

    q = hostile_query(SIZES[size])
    line = {"level": "info", "service": "authorize", "message": "authorize check", "time": "2026-03-02T09:00:00Z",
            "allow": True, "path": "/api/v1/pods", "query": q}
    mask_texts(pa.array(["warm up: token=x"], pa.large_string()))  # pyarrow's one-time kernel setup
    t0 = time.perf_counter()
    mask_texts(pa.array([q], pa.large_string()))
    t1 = time.perf_counter()
    scrub_raw(orjson.dumps(line))
    t2 = time.perf_counter()
    src = work / "pomerium.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(line) for _ in range(5)) + b"\n")
    ingest_paths([src], work / "lake", max_record_bytes=4 * 1024 * 1024)
    t3 = time.perf_counter()
    print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}")


def run_blank(mib: int, work: Path) -> None:
    from ztaudit.pipeline.ingest import ingest_paths

    src = work / "blank.log"
    block = b"\n" * (1024 * 1024)
    with open(src, "wb") as f:
        for _ in range(mib):
            f.write(block)
    t0 = time.perf_counter()
    ingest_paths([src], work / "lake")
    print(f"{time.perf_counter() - t0:.4f}")


def measure(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, the child's stdout) of one contender in a fresh subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--run", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{args[0]} failed (status {status})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="size of the blank-line file (default 256)")
    ap.add_argument("--only", default="mask,blank", help="mask, blank or both (comma-separated)")
    ap.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        kind, param, work = a.run
        if kind == "mask":
            run_mask(param, Path(work))
        else:
            run_blank(int(param), Path(work))
        return
    only = set(a.only.split(","))
    print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} (shared machine: times are noisy)\n")
    if "mask" in only:
        print("| hostile query | mask_texts s | scrub_raw s | ingest 5 lines s | child wall s | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|")
        for size in SIZES:
            with tempfile.TemporaryDirectory() as work:
                wall, rss, out = measure(["mask", size, work])
            m, s, i = out.split()
            print(f"| {size} | {m} | {s} | {i} | {wall:.2f} | {rss:.0f} |")
        print()
    if "blank" in only:
        print("| blank lines | ingest s | child wall s | peak RSS MiB |")
        print("|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as work:
            wall, rss, out = measure(["blank", str(a.mib), work])
        print(f"| {a.mib} MiB | {out} | {wall:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()

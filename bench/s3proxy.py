"""Benchmark: S3Proxy (``scripts/s3proxy``), the S3-compatible store of the tests, against the local disk.

Measures, and prints one line each:

* ``fetch``: ``scripts/s3proxy fetch`` when cached; with ``--cold-fetch`` also from nothing (an
  empty jar cache *and* an empty Maven repository, as on a new CI machine: ~90 MB from Maven
  Central);
* ``start``: ``scripts/s3proxy start`` until a signed ListBuckets answers (JVM start included);
* ``write``/``read``: one Parquet file of ``--mb`` MB (default 100, incompressible int64 columns, no
  compression, so the bytes on the wire are the file size) written and read back whole with pyarrow,
  through ``S3FileSystem`` (multipart upload, path-style, http on 127.0.0.1) and on the local file
  system of the same disk; best of ``--repeat`` runs, MB/s = file size / wall time.

S3Proxy's filesystem backend writes to the same disk, so the gap is the cost of HTTP, SigV4 and
the JVM in between, not of a network. The local read is served from the page cache after the
first run, like S3Proxy's own reads of its backend files.

    .venv/bin/python bench/s3proxy.py                   # needs `scripts/s3proxy fetch` done once
    .venv/bin/python bench/s3proxy.py --cold-fetch --mb 100 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "s3proxy"
BUCKET = "ztaudit-bench"


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt


def measure_fetch(cold: bool) -> None:
    if cold:
        with tempfile.TemporaryDirectory(prefix="ztaudit-bench-s3fetch-") as tmp:
            env = dict(os.environ, ZTAUDIT_S3PROXY_CACHE=f"{tmp}/cache",
                       MAVEN_OPTS=f"{os.environ.get('MAVEN_OPTS', '')} -Dmaven.repo.local={tmp}/m2".strip())
            dt = _timed([sys.executable, str(SCRIPT), "fetch"], env)
            size = sum(p.stat().st_size for p in Path(tmp, "cache").rglob("*.jar"))
            print(f"fetch cold (empty jar cache and Maven repository): {dt:6.1f} s  ({size / 1e6:.0f} MB of jars)")
    print(f"fetch warm (cached): {_timed([sys.executable, str(SCRIPT), 'fetch']):6.2f} s")


def table_of(mb: int) -> pa.Table:
    rows = mb * 1_000_000 // (4 * 8)
    rng = np.random.default_rng(1)
    return pa.table({f"c{i}": rng.integers(0, 2**62, rows, dtype=np.int64) for i in range(4)})


def best(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_io(s3: fs.FileSystem, local_dir: Path, mb: int, repeat: int) -> None:
    table = table_of(mb)
    local = str(local_dir / "bench.parquet")
    remote = f"{BUCKET}/bench/bench.parquet"
    opts = {"compression": "none", "row_group_size": 1 << 20}
    w_local = best(repeat, lambda: pq.write_table(table, local, **opts))
    w_s3 = best(repeat, lambda: pq.write_table(table, remote, filesystem=s3, **opts))
    size = os.path.getsize(local)
    assert s3.get_file_info(remote).size == size, "the object on S3 differs in size from the local file"
    r_local = best(repeat, lambda: pq.read_table(local))
    r_s3 = best(repeat, lambda: pq.read_table(remote, filesystem=s3))
    assert pq.read_table(remote, filesystem=s3).equals(table)
    mbs = size / 1e6
    print(f"parquet file: {mbs:.0f} MB, {table.num_rows:,} rows, best of {repeat}")
    print(f"write  local {w_local:6.2f} s {mbs / w_local:7.0f} MB/s   s3proxy {w_s3:6.2f} s {mbs / w_s3:7.0f} MB/s"
          f"   (s3proxy {w_s3 / w_local:.1f}x the time)")
    print(f"read   local {r_local:6.2f} s {mbs / r_local:7.0f} MB/s   s3proxy {r_s3:6.2f} s {mbs / r_s3:7.0f} MB/s"
          f"   (s3proxy {r_s3 / r_local:.1f}x the time)")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cold-fetch", action="store_true", help="also time a fetch from nothing (~90 MB download)")
    ap.add_argument("--mb", type=int, default=100, help="Parquet file size in MB (default 100)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    measure_fetch(a.cold_fetch)
    with tempfile.TemporaryDirectory(prefix="ztaudit-bench-s3-") as tmp:
        d = Path(tmp) / "s3proxy"
        try:
            started = _timed([sys.executable, str(SCRIPT), "start", "--dir", str(d)])
            print(f"start (until a signed ListBuckets answers): {started:6.2f} s")
            _timed([sys.executable, str(SCRIPT), "mb", "--dir", str(d), BUCKET])
            s3 = fs.S3FileSystem(access_key=(d / "access_key").read_text().strip(),
                                 secret_key=(d / "secret_key").read_text().strip(),
                                 endpoint_override=(d / "endpoint").read_text().strip(), scheme="http",
                                 region="us-east-1", force_virtual_addressing=False)
            measure_io(s3, Path(tmp), a.mb, a.repeat)
        finally:
            subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", str(d)], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: DuckDB over Parquet on S3 (S3Proxy) through ``duckdb_fs.attach``, against local disk.

    .venv/bin/python bench/s3_read.py                       # 1,000,000 rows in 10 files; starts S3Proxy itself
    scripts/with-s3proxy .venv/bin/python bench/s3_read.py --rows 4000000 --files 40   # or its store

Writes ``--rows`` audit-shaped rows (audit_id, actor, verb, namespace, resource strings, a UTC
timestamp, code, latency and seq ints) as ``--files`` Parquet files
``k8s_audit/dt=2026-03-02/part-NNNN.parquet``, once under a local directory and once on the store,
then times three DuckDB queries over ``read_parquet([...the explicit list...])``:

* ``count``: ``count(*)`` (footers only);
* ``group``: ``count(*), avg(latency_ms)`` grouped by verb and namespace (three columns of nine);
* ``filter``: one actor's 403s (two columns scanned, most row groups pruned by seq).

Each contender (``local``, ``s3``) runs in its own subprocess (peak RSS is that child's
``VmHWM``). ``cold`` is a fresh connection per query, as one CLI command
sees it (DuckDB keeps what it read from an object in its external file cache, so a query repeated
on one connection reads nothing from the store: that is ``warm``); best of ``--repeat``. The
queries start ``FRESH_SECONDS`` after the last write: DuckDB does not cache an object modified in
the last ~10 s (it re-reads it on every query, in blocks of up to 2 MB), and a lake's files are
older than that. The S3
client goes through a counting relay (``tests/support/tcp_count.py``), so ``MB`` and ``HEAD``/``GET``
are what crossed the wire, to be compared with the files' total size. S3Proxy's filesystem
backend is on the same disk and the local files are in the page cache: the ratio is the cost of
HTTP, SigV4, the JVM and the Python filesystem layer, not of a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "s3proxy"
sys.path.insert(0, str(ROOT / "tests"))
from support.tcp_count import CountingRelay  # noqa: E402

BUCKET = "ztaudit-bench"
DAY = "2026-03-02"
FRESH_SECONDS = 12
QUERIES = {
    "count": "SELECT count(*) FROM {src}",
    "group": "SELECT verb, namespace, count(*), avg(latency_ms) FROM {src} GROUP BY verb, namespace",
    "filter": "SELECT count(*), max(ts) FROM {src} WHERE actor = 'user7@example.com' AND code = 403 "
              "AND seq >= {lo}",
}


def events(rows: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    seq = np.arange(rows, dtype=np.int64)
    actors = np.array([f"user{i}@example.com" for i in range(200)]
                      + [f"system:serviceaccount:ns{i % 12}:sa-{i}" for i in range(800)])
    verbs = np.array(["get", "list", "watch", "create", "update", "patch", "delete"])
    namespaces = np.array([f"ns{i}" for i in range(12)] + ["kube-system", "default"])
    resources = np.array(["pods", "secrets", "configmaps", "deployments", "leases", "events", "services"])
    t0 = np.datetime64(f"{DAY}T00:00:00", "us")
    return pa.table({
        "audit_id": pa.array(np.char.add("a-", seq.astype(str))),
        "ts": pa.array(t0 + (seq * 86_400_000_000 // max(rows, 1)).astype("timedelta64[us]"),
                       pa.timestamp("us", tz="UTC")),
        "actor": pa.array(actors[rng.integers(0, len(actors), rows)]),
        "verb": pa.array(verbs[rng.integers(0, len(verbs), rows)]),
        "namespace": pa.array(namespaces[rng.integers(0, len(namespaces), rows)]),
        "resource": pa.array(resources[rng.integers(0, len(resources), rows)]),
        "code": pa.array(np.where(rng.random(rows) < 0.03, 403, 200).astype(np.int32)),
        "latency_ms": pa.array(rng.gamma(2.0, 15.0, rows).astype(np.int64)),
        "seq": pa.array(seq),
    })


def s3_filesystem(endpoint: str, access_key: str, secret_key: str) -> fs.S3FileSystem:
    return fs.S3FileSystem(access_key=access_key, secret_key=secret_key, endpoint_override=endpoint,
                           scheme="http", region="us-east-1", force_virtual_addressing=False)


def best(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def child(args: argparse.Namespace) -> int:
    """One contender: times every query cold and warm, prints one JSON object."""
    import duckdb

    from ztaudit.core.duckdb_fs import attach

    spec = json.loads(Path(args.child).read_text())
    relay = None
    filesystem = None
    if spec["engine"] == "s3":
        relay = CountingRelay(spec["endpoint"])
        filesystem = s3_filesystem(relay.endpoint, Path(spec["access_key_file"]).read_text().strip(),
                                   Path(spec["secret_key_file"]).read_text().strip())
    src = "read_parquet([" + ", ".join(f"'{u}'" for u in spec["uris"]) + "])"

    def connect() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        if filesystem is not None:
            attach(con, filesystem)
        return con

    out: dict[str, Any] = {}
    for name, sql in QUERIES.items():
        q = sql.format(src=src, lo=spec["rows"] // 2)
        if relay is not None:
            relay.reset()
        cold, result = best(spec["repeat"], lambda q=q: connect().sql(q).fetchall())  # type: ignore[misc]
        wire = relay.snapshot() if relay is not None else ({}, 0)
        con = connect()
        con.sql(q).fetchall()
        if relay is not None:
            relay.reset()
        warm, _ = best(spec["repeat"], lambda q=q, con=con: con.sql(q).fetchall())  # type: ignore[misc]
        warm_wire = relay.snapshot()[1] if relay is not None else 0
        out[name] = {"cold_s": cold, "warm_s": warm, "rows": len(result),  # type: ignore[arg-type]
                     "digest": str(sorted(result))[:200],  # type: ignore[call-overload]
                     "requests": {k: v // spec["repeat"] for k, v in wire[0].items()},
                     "mb": wire[1] / spec["repeat"] / 1e6, "warm_mb": warm_wire / spec["repeat"] / 1e6}
    if relay is not None:
        relay.close()
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from the parent (which holds the
    # generated table) would report the parent's pages as its own peak.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
    print(json.dumps(out))
    return 0


def run_child(spec: dict[str, Any], work: Path) -> tuple[dict[str, Any], float]:
    """(results per query, peak RSS MiB) of one contender in a fresh process."""
    path = work / f"spec-{spec['engine']}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{spec['engine']} run failed ({proc.returncode})")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out, float(out.pop("peak_rss_mib"))


def start_store(work: Path) -> dict[str, str]:
    """The store of ``scripts/with-s3proxy`` if set, else one started here (stopped by the caller)."""
    if os.environ.get("ZTAUDIT_TEST_S3_ENDPOINT"):
        return {"endpoint": os.environ["ZTAUDIT_TEST_S3_ENDPOINT"],
                "bucket": os.environ.get("ZTAUDIT_TEST_S3_BUCKET", "ztaudit-test"),
                "access_key_file": os.environ["ZTAUDIT_TEST_S3_ACCESS_KEY_FILE"],
                "secret_key_file": os.environ["ZTAUDIT_TEST_S3_SECRET_KEY_FILE"]}
    d = work / "s3proxy"
    for cmd in (["start", "--dir", str(d)], ["mb", "--dir", str(d), BUCKET]):
        p = subprocess.run([sys.executable, str(SCRIPT), *cmd], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"scripts/s3proxy {cmd[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return {"endpoint": (d / "endpoint").read_text().strip(), "bucket": BUCKET,
            "access_key_file": str(d / "access_key"), "secret_key_file": str(d / "secret_key"), "dir": str(d)}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    work = Path(tempfile.mkdtemp(prefix="ztaudit-bench-s3read-"))
    store: dict[str, str] = {}
    try:
        store = start_store(work)
        s3 = s3_filesystem(store["endpoint"], Path(store["access_key_file"]).read_text().strip(),
                           Path(store["secret_key_file"]).read_text().strip())
        t0 = time.perf_counter()
        table = events(a.rows)
        per = -(-a.rows // a.files)
        prefix = f"{store['bucket']}/bench-{os.getpid()}/k8s_audit/dt={DAY}"
        local_uris, s3_uris, size = [], [], 0
        for n in range(a.files):
            part = table.slice(n * per, per)
            local = work / "lake" / "k8s_audit" / f"dt={DAY}" / f"part-{n:04d}.parquet"
            local.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, local, row_group_size=128 * 1024)
            pq.write_table(part, f"{prefix}/part-{n:04d}.parquet", filesystem=s3, row_group_size=128 * 1024)
            size += local.stat().st_size
            local_uris.append(str(local))
            s3_uris.append(f"s3://{prefix}/part-{n:04d}.parquet")
        print(f"{a.rows:,} rows in {a.files} files, {size / 1e6:.1f} MB, written locally and to S3Proxy in "
              f"{time.perf_counter() - t0:.1f} s; best of {a.repeat}; {os.cpu_count()} cores")
        # DuckDB's external file cache does not trust an object modified in the last ~10 s (it may still
        # be being written) and re-reads it; the lake's files are older than that when a query runs.
        time.sleep(FRESH_SECONDS)
        common = {"rows": a.rows, "repeat": a.repeat}
        local_r, local_rss = run_child({**common, "engine": "local", "uris": local_uris}, work)
        s3_r, s3_rss = run_child({**common, "engine": "s3", "uris": s3_uris, "endpoint": store["endpoint"],
                                  "access_key_file": store["access_key_file"],
                                  "secret_key_file": store["secret_key_file"]}, work)
        print(f"{'query':<7} {'local cold':>10} {'s3 cold':>9} {'ratio':>6} {'Mrows/s s3':>10} {'s3 MB':>7} "
              f"{'of files':>8} {'HEAD':>5} {'GET':>5} {'local warm':>10} {'s3 warm':>8} {'s3 warm MB':>10}")
        for q in QUERIES:
            lo, so = local_r[q], s3_r[q]
            if lo["digest"] != so["digest"]:
                sys.exit(f"{q}: S3 and local results differ:\n  {lo['digest']}\n  {so['digest']}")
            print(f"{q:<7} {lo['cold_s']:>9.3f}s {so['cold_s']:>8.3f}s {so['cold_s'] / lo['cold_s']:>5.1f}x "
                  f"{a.rows / so['cold_s'] / 1e6:>10.1f} {so['mb']:>7.2f} {so['mb'] * 1e6 / size:>7.1%} "
                  f"{so['requests'].get('HEAD', 0):>5} {so['requests'].get('GET', 0):>5} "
                  f"{lo['warm_s']:>9.3f}s {so['warm_s']:>7.3f}s {so['warm_mb']:>10.2f}")
        print(f"peak RSS: local {local_rss:.0f} MiB, s3 {s3_rss:.0f} MiB ({s3_rss / local_rss:.2f}x); "
              "results identical")
    finally:
        if "dir" in store:
            subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", store["dir"]], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

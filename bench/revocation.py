"""Benchmark ``report revocation``'s judgement on a shared NAT address (the attribution worst case).

Run by ``python bench/revocation.py``. Every revoked person's last allowed request came from one
corporate egress address, from which hundreds of other people keep working and thousands of
anonymous denials arrive: the lake has N revocations, 5·N anonymous denials and 50·N identified
decisions from that address. Attributing anonymous denials must stay linear in that (a join of
every denial with every decision of the address is quadratic; a review measured 21 GiB and 50 GB of
spill at N = 1000 with that plan). Each size is written and judged in a fresh child process, which
prints wall time and peak RSS; the last line is the growth ratio, which should stay near the size
ratio.

Failure: a failing child aborts the benchmark with its exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.revocation_status import revocation_status

NAT = "203.0.113.1"
T = datetime(2026, 11, 20, 8, tzinfo=UTC)


def _write(lake: Path, table: str, rows: list[dict[str, object]]) -> None:
    keys = {k for r in rows for k in r}
    schema = pa.schema([f for f in TABLES[table] if f.name in keys])
    LakeSink(lake).write(table, pa.Table.from_pylist(rows, schema=schema), "bench")


def synthesize(lake: Path, n: int) -> None:
    """N revocations, 5N anonymous denials and 50N identified decisions from one address."""
    idp, proxy = [], []
    for i in range(n):
        t0 = T + timedelta(seconds=20 * i)
        idp.append({"occurred_at": t0, "idp": "okta", "event_type": "user.lifecycle.suspend",
                    "is_revocation": True, "subject_id": f"00u{i}", "subject_login": f"u{i}@example.com",
                    "origin": f"bench:i{i}"})
        proxy.append({"decided_at": t0 - timedelta(seconds=30), "request_id": f"a{i}", "email": f"u{i}@example.com",
                      "user_id": f"00u{i}", "session_id": f"s{i}", "is_allowed": True, "client_ip": NAT,
                      "proxy": "pomerium", "method": "GET", "path": "/api", "origin": f"bench:a{i}"})
    for j in range(5 * n):
        proxy.append({"decided_at": T + timedelta(seconds=4 * j + 1), "request_id": f"d{j}", "email": "",
                      "user_id": "", "is_allowed": False, "client_ip": NAT, "proxy": "pomerium", "method": "GET",
                      "path": "/api", "origin": f"bench:d{j}"})
    for k in range(50 * n):
        proxy.append({"decided_at": T + timedelta(seconds=0.4 * k + 0.2), "request_id": f"o{k}",
                      "email": f"o{k % 300}@example.com", "user_id": f"00uo{k % 300}", "is_allowed": True,
                      "client_ip": NAT, "proxy": "pomerium", "method": "GET", "path": "/api", "origin": f"bench:o{k}"})
    _write(lake, "idp_event", idp)
    _write(lake, "proxy_decision", proxy)


def judge(lake: Path) -> None:
    """Child: judge every revocation of ``lake``; print one JSON line of figures."""
    t0 = time.perf_counter()
    con = open_lake(lake)
    rows = revocation_status(con, Config())
    con.close()
    print(json.dumps({"revocations": rows.num_rows, "judge_s": round(time.perf_counter() - t0, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--judge-only":
        judge(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,4000")
    ap.add_argument("--dir", default=os.environ.get("ZTAUDIT_BENCH_DIR", "/tmp/ztaudit-bench-revocation"))
    args = ap.parse_args()
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        lake = Path(args.dir) / f"lake-{n}"
        shutil.rmtree(lake, ignore_errors=True)
        synthesize(lake, n)
        out = subprocess.run([sys.executable, __file__, "--judge-only", str(lake)], check=True,
                             capture_output=True, text=True).stdout
        r = {"n": n, **json.loads(out.strip().splitlines()[-1])}
        results.append(r)
        print(f"N={n:>6}: {r['revocations']} revocations, {5 * n} anonymous denials, {50 * n} decisions from one "
              f"address: judged in {r['judge_s']:.2f} s, peak RSS {r['peak_rss_mib']} MiB", flush=True)
        shutil.rmtree(lake, ignore_errors=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"growth: {b['n'] / a['n']:.1f}x size -> {b['judge_s'] / max(a['judge_s'], 1e-9):.2f}x time")


if __name__ == "__main__":
    main()

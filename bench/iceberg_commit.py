"""Cost of one Iceberg commit as a table's history grows, at the bound the commits keep and at a baseline.

    .venv/bin/python bench/iceberg_commit.py                  # bounds 20 (ours) and 100 (the old one)
    .venv/bin/python bench/iceberg_commit.py --commits 300 --bounds 20,100,1000

For each bound (:data:`ztaudit.core.iceberg_publish.MAX_SNAPSHOTS`), in its own subprocess (so each starts
with pyiceberg cold and the same caches): a new Iceberg lake, then ``--commits`` rounds of one small
``proxy_decision`` file each (50 rows, three days in turn), published through :class:`LakeSink`
with a consumer round's offsets summary (four partitions) as ``consume`` does. Prints the time to
make the lake (pyiceberg's and SQLAlchemy's imports included), the median commit time per block of
20 commits, and for the steady state (the second half) the median, mean (which carries the commits
that also expire snapshots, every 10th) and p95 against the first bound's, plus peak RSS. A consumer
commits once per flush round per table it wrote, so the mean is the Iceberg overhead per round that
``bench/consume.py`` sees in aggregate. The lake is local with its SQLite catalog whatever
``ZTAUDIT_LAKE_*`` says (those variables are cleared for the runs).

Why the history matters: each read of pyiceberg 0.12's ``Transaction.table_metadata`` deep-copies the
whole table metadata, snapshot list included, and an append reads it about 18 times.
Not a test: numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
BLOCK = 20


def _decisions(n: int, start: int, day: int) -> pa.Table:
    return pa.table({
        "request_id": [f"r{start + i}" for i in range(n)],
        "decided_at": [T0 + timedelta(days=day, seconds=i) for i in range(n)],
        "email": ["alice@example.com"] * n,
        "is_allowed": [True] * n,
    })


def one(bound: int, commits: int) -> dict[str, object]:
    """Run in the child: a new lake, ``commits`` publishes with ``MAX_SNAPSHOTS = bound``."""
    from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot
    from ztaudit.core.sink import LakeSink

    iceberg_publish.MAX_SNAPSHOTS = bound  # type: ignore[misc]  # the knob under measurement
    summary = iceberg_snapshot.offsets_summary({("audit", p): 1000 * p for p in range(4)},
                                               {("audit", p): 0 for p in range(4)})
    with tempfile.TemporaryDirectory(prefix="ztaudit-bench-commit-") as tmp:
        lake = Path(tmp) / "lake"
        t0 = time.perf_counter()
        sink = LakeSink(lake, table_format="iceberg")
        create_s = time.perf_counter() - t0
        times = []
        for i in range(commits):
            sink.write("proxy_decision", _decisions(50, 100 * i, i % 3), f"k{i}")
            t0 = time.perf_counter()
            sink.publish(summary=summary)
            times.append(time.perf_counter() - t0)
        snaps = len(iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision")).snapshots())
    import resource

    return {"bound": bound, "create_s": create_s, "times": times, "snapshots": snaps,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--bounds", default="20,100", help="MAX_SNAPSHOTS values; the second and later are "
                                                      "compared with the first")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(one(a.child, a.commits)))
        return 0
    bounds = [int(b) for b in a.bounds.split(",")]
    results = []
    for b in bounds:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZTAUDIT_LAKE_")}
        out = subprocess.run([sys.executable, __file__, "--child", str(b), "--commits", str(a.commits)],
                             check=True, capture_output=True, text=True, env={**env, "PYTHONHASHSEED": "0"})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    half = a.commits // 2
    print(f"bench/iceberg_commit: {a.commits} commits of one 50-row proxy_decision file each, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'commits':>9} " + " ".join(f"{'bound ' + str(r['bound']):>12}" for r in results) + "   (median ms)")
    for s in range(0, a.commits, BLOCK):
        cells = " ".join(f"{statistics.median(r['times'][s:s + BLOCK]) * 1000:>12.1f}" for r in results)
        print(f"{s:>4}-{min(s + BLOCK, a.commits) - 1:<4} {cells}")
    base = statistics.fmean(results[0]["times"][half:])
    for r in results:
        steady = sorted(r["times"][half:])
        mean = statistics.fmean(steady)
        p95 = steady[int(0.95 * (len(steady) - 1))]
        print(f"bound {r['bound']:>5}: new lake {r['create_s']:.2f} s (imports included); commits {half}-"
              f"{a.commits - 1}: median {statistics.median(steady) * 1000:.1f} ms, mean {mean * 1000:.1f} ms "
              f"({mean / base:.2f}x bound {results[0]['bound']}), p95 {p95 * 1000:.1f} "
              f"ms; {r['snapshots']} snapshots at the end, peak RSS {r['rss_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: reach features + scoring on lakes of 1,000,000 and 4,000,000 audit events.

Usage: ``python bench/reach.py [--sizes 1000000,4000000] [--workdir DIR] [--keep]``

Each lake is synthesized with DuckDB straight to Parquet (``LAKE/k8s_audit/dt=.../*.parquet``, the
k8s_audit schema): 30 days, 4 clusters, ~2,000 actors (service accounts, people, nodes, control
plane) with skewed activity, 120 namespaces, secrets reads, exec, 403s. The measured step runs in a
fresh subprocess (so peak RSS is its own): open the catalog, ``build_reach_table`` (the derived
table ``detect`` writes) and ``reach.anomalous`` over the whole month (features, baselines, model
training on the baseline, scoring, explanations), sharing one DetectContext as ``detect`` does. Prints
a table of rows, wall time, CPU time, peak RSS and the 4M/1M growth ratios (target: < 30 s and < 4 GiB
at 4M, growth close to linear, i.e. ≈ 4).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

DAYS = 30

_SYNTH = """
COPY (
WITH g AS (SELECT i, CAST(hash(i) % 1000000007 AS BIGINT) AS h1,
                  CAST(hash(i * 7919 + 13) % 4000000000000000 AS BIGINT) AS h2,
                  CAST(hash(i * 104729 + 7) % 1000000007 AS BIGINT) AS h3
           FROM range({n}) t(i)),
a AS (
  SELECT i, h1, h2, h3,
         -- actor id: skewed (a few busy controllers, many quiet apps)
         CAST(floor(pow((h1 % 1000000) / 1000000.0, 2.2) * 2000) AS BIGINT) AS aid,
         TIMESTAMPTZ '2026-03-01 00:00:00+00' + to_microseconds(CAST((h2 % ({days} * 86400000000)) AS BIGINT))
             AS ts
  FROM g
)
SELECT
  'b-' || i AS audit_id,
  'c' || (aid % 4) AS cluster,
  'ResponseComplete' AS stage, 'Metadata' AS level,
  ts AS request_received_at, ts AS stage_at,
  (['get','list','watch','get','get','create','update','patch','delete','list'])[1 + h3 % 10] AS verb,
  '/api' AS request_uri,
  CASE WHEN aid < 1500 THEN 'system:serviceaccount:ns' || (aid % 120) || ':sa' || aid
       WHEN aid < 1800 THEN 'user' || aid || '@example.com'
       WHEN aid < 1960 THEN 'system:node:node' || aid
       ELSE 'system:kube-controller-manager' || aid END AS user_name,
  NULL::VARCHAR AS user_uid, ['system:authenticated'] AS user_groups,
  CASE WHEN aid < 1500 THEN 'JTI=' || aid || '-' || (epoch(ts)::BIGINT // 2880)
       WHEN aid >= 1800 THEN 'X509SHA256=' || aid END AS credential_id,
  CASE WHEN aid < 1500 THEN 'jti' WHEN aid >= 1800 THEN 'x509' ELSE 'none' END AS credential_kind,
  false AS is_legacy_token, NULL::VARCHAR AS issued_credential_id,
  CASE WHEN aid < 1500 THEN 'ns' || (aid % 120) END AS sa_namespace,
  CASE WHEN aid < 1500 THEN 'sa' || aid END AS sa_name,
  CASE WHEN aid < 1500 THEN 'pod-' || aid || '-' || (h3 % 3) END AS pod_name,
  CASE WHEN aid < 1500 THEN 'node' || (1800 + aid % 160) WHEN aid BETWEEN 1800 AND 1959 THEN 'node' || aid END
      AS node_name,
  NULL::VARCHAR AS impersonator, NULL::VARCHAR AS impersonated_user,
  CASE WHEN aid BETWEEN 1500 AND 1799 THEN ['team-' || (aid % 12)] END AS impersonated_groups,
  CASE WHEN aid < 1500 THEN 'system:serviceaccount:ns' || (aid % 120) || ':sa' || aid
       WHEN aid < 1800 THEN 'user' || aid || '@example.com'
       WHEN aid < 1960 THEN 'system:node:node' || aid
       ELSE 'system:kube-controller-manager' || aid END AS actor,
  CASE WHEN aid < 1500 THEN 'service_account' WHEN aid < 1800 THEN 'human' WHEN aid < 1960 THEN 'node'
       ELSE 'system' END AS actor_kind,
  '10.' || (aid % 4) || '.' || (aid % 250) || '.' || (h3 % 3 + 2) AS source_ip,
  ['10.' || (aid % 4) || '.' || (aid % 250) || '.' || (h3 % 3 + 2)] AS source_ips,
  'client/' || (aid % 17) AS user_agent,
  (['pods','configmaps','secrets','deployments','services','endpoints','leases','events','nodes','jobs'])
      [1 + (h3 // 10) % 10] AS resource,
  CASE WHEN h3 % 997 = 0 THEN 'exec' END AS subresource,
  CASE WHEN aid >= 1960 OR h3 % 5 = 0 THEN 'ns' || ((aid + h3 // 100) % 120) ELSE 'ns' || (aid % 120) END
      AS namespace,
  'obj' || (h3 % 50) AS name, '' AS api_group, 'v1' AS api_version,
  CASE WHEN h3 % 200 = 0 THEN 403 ELSE 200 END::INTEGER AS response_code,
  CASE WHEN h3 % 200 = 0 THEN 'forbid' ELSE 'allow' END AS decision,
  NULL::VARCHAR AS authz_reason, MAP {{}}::MAP(VARCHAR, VARCHAR) AS annotations,
  'bench' AS origin, ts AS ingested_at,
  strftime(ts, '%Y-%m-%d') AS dt
FROM a
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), COMPRESSION zstd, ROW_GROUP_SIZE 122880)
"""


def synthesize(lake: Path, n: int) -> float:
    """Write an ``n``-event k8s_audit lake; returns seconds taken."""
    t0 = time.perf_counter()
    out = lake / "k8s_audit"
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(_SYNTH.format(n=int(n), days=DAYS, out=str(out).replace("'", "''")))
    con.close()
    return time.perf_counter() - t0


_MEASURE = r"""
import json, resource, sys, time
from datetime import datetime, UTC
t0 = time.perf_counter()
from ztaudit.core.lake import open_lake
from ztaudit.core.config import load_config
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.reach import AnomalousReach, build_reach_table
lake = sys.argv[1]
con = open_lake(lake, must_exist=False)
con.execute("SET enable_progress_bar = false")
cfg = load_config(None, env={})
t1 = time.perf_counter()
ctx = DetectContext(con, cfg, None, None, lake)  # one context for the run, as in `ztaudit detect`
table = build_reach_table(ctx)
t2 = time.perf_counter()
findings = AnomalousReach().run(ctx)
t3 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"reach_rows": table.num_rows, "findings": len(findings), "build_s": t2 - t1,
                  "detect_s": t3 - t2, "total_s": t3 - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mib": ru.ru_maxrss / 1024}))
"""


def measure(lake: Path) -> dict[str, float]:
    """Run the measured step in a fresh interpreter; its own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(lake)], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"reach_rows"')][-1]
    out: dict[str, float] = json.loads(line)
    out["wall_s"] = wall
    out["child_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,4000000")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ztaudit-bench-reach-"))
    results = []
    try:
        for n in sizes:
            lake = work / f"lake-{n}"
            if not (lake / "k8s_audit").exists():
                synth = synthesize(lake, n)
                print(f"synthesized {n:,} events in {synth:.1f} s -> {lake}", flush=True)
            r = measure(lake)
            r["events"] = n
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'events':>10} {'reach rows':>10} {'build s':>8} {'detect s':>9} {'wall s':>7} {'CPU s':>7} "
          f"{'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['events']:>10,} {int(r['reach_rows']):>10,} {r['build_s']:>8.1f} {r['detect_s']:>9.1f} "
              f"{r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['peak_rss_mib']:>13.0f}")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"growth x{b['events'] / a['events']:.1f} events: wall x{b['wall_s'] / a['wall_s']:.2f}, "
              f"CPU x{b['cpu_s'] / a['cpu_s']:.2f}, peak RSS x{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

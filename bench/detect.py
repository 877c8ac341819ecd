"""Benchmark ``ztaudit detect`` (impersonation + revocation detectors) at 1M and 4M audit events.

Run by ``make bench`` (or ``python bench/detect.py``). Synthesises the lakes directly with DuckDB
(much faster than the generator; the detectors only see Parquet): N audit events (90 % impersonated
by the Pomerium service account, each with its allowed proxy decision logged at second precision,
repeated identical requests included; 10 % control-plane traffic) and N proxy decisions (the 90 %
plus 10 % denied), with a 0.1 % sprinkle of unmatched rows on both sides, a few direct human
requests and a few revocations. Then runs ``ztaudit detect`` in a fresh process per lake and
reports wall time, peak RSS (``getrusage`` of the child) and the growth ratio.

Targets (issue): 4M events < 30 s and < 4 GiB on 2 cores; time roughly linear in N.
Failure: a failing ``detect`` aborts the benchmark with its exit code and stderr.
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
from pathlib import Path

import duckdb

from ztaudit.core.catalog import _duck_type
from ztaudit.core.schema import TABLES
from ztaudit.detectors.findings_store import RUN_COLUMNS

SA = "system:serviceaccount:pomerium:pomerium-authorize"
DETECTORS = ["impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
             "impersonation.unapproved_impersonator", "revocation.not_enforced"]


def _full_select(table: str, given: dict[str, str]) -> str:
    cols = []
    for f in TABLES[table]:
        expr = given.get(f.name, "NULL")
        cols.append(f"CAST({expr} AS {_duck_type(f.type)}) AS \"{f.name}\"")
    return ", ".join(cols)


def synthesize(lake: Path, n: int) -> None:
    """Write a lake of ``n`` audit events and ``n`` proxy decisions over one day."""
    if lake.exists():
        shutil.rmtree(lake)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    day = "2026-11-20"
    for t in ("k8s_audit", "proxy_decision", "idp_event"):
        (lake / t / f"dt={day}").mkdir(parents=True)
    step_us = 86_400_000_000 // n
    con.execute(f"""
        CREATE TABLE base AS
        SELECT i, TIMESTAMPTZ '{day} 00:00:00+00' + to_microseconds(i * {step_us} + (hash(i) % 400000)::BIGINT) AS t,
               'user' || (hash(i, 'u') % 2000) || '@example.com' AS who,
               (hash(i, 'p') % 200) AS pth, (hash(i, 'v') % 10) AS v,
               'c' || (hash(i, 'c') % 3) AS cluster,
               hash(i, 'kind') % 1000 AS r
        FROM range({n}) r(i)
    """)
    verb = "CASE WHEN v < 6 THEN 'list' WHEN v < 8 THEN 'get' WHEN v = 8 THEN 'create' ELSE 'delete' END"
    method = "CASE WHEN v < 8 THEN 'GET' WHEN v = 8 THEN 'POST' ELSE 'DELETE' END"
    path = "'/api/v1/namespaces/ns' || (pth % 20) || '/pods' || CASE WHEN v < 6 THEN '' ELSE '/p' || pth END"
    # r < 900: impersonated via proxy; 900 <= r < 1000: control plane. r == 0: audit without decision
    # (unbrokered); r == 1: decision without audit (unobserved); hash(i) % 50000 == 7: direct human.
    audit = _full_select("k8s_audit", {
        "audit_id": "uuid()::VARCHAR", "cluster": "cluster", "stage": "'ResponseComplete'", "level": "'Metadata'",
        "request_received_at": "t", "stage_at": "t + INTERVAL 20 MILLISECOND", "verb": verb,
        "request_uri": path + " || CASE WHEN v < 6 THEN '?limit=500' ELSE '' END",
        "user_name": f"CASE WHEN hash(i) % 50000 = 7 THEN who WHEN r < 900 THEN '{SA}' "
                     "ELSE 'system:kube-controller-manager' END",
        "impersonator": f"CASE WHEN hash(i) % 50000 = 7 THEN NULL WHEN r < 900 THEN '{SA}' END",
        "impersonated_user": "CASE WHEN hash(i) % 50000 = 7 THEN NULL WHEN r < 900 THEN who END",
        "actor": "CASE WHEN r < 900 THEN who ELSE 'system:kube-controller-manager' END",
        "response_code": "200", "source_ip": "'10.0.0.' || (pth % 250)", "user_agent": "'kubectl/v1.31.0'",
        "resource": "'pods'", "namespace": "'ns' || (pth % 20)", "decision": "'allow'",
        "origin": "'bench:' || i", "credential_id": "'JTI=' || (hash(cluster) % 1000)",
    })
    con.execute(f"""COPY (SELECT {audit} FROM base WHERE r <> 1 ORDER BY t)
                    TO '{lake}/k8s_audit/dt={day}/bench.parquet' (FORMAT parquet, ROW_GROUP_SIZE 122880)""")
    proxy = _full_select("proxy_decision", {
        "decided_at": "date_trunc('second', t - INTERVAL 40 MILLISECOND)", "proxy": "'pomerium'",
        "request_id": "'req-' || i", "check_request_id": "'req-' || i", "session_id": "'s-' || who",
        "user_id": "'00u' || hash(who) % 100000", "email": "who", "method": method,
        "host": "'k8s-' || cluster || '.example.com'", "path": path, "is_allowed": "r < 900",
        "cluster": "cluster", "record_type": "'authorize'", "origin": "'bench:p:' || i",
    })
    con.execute(f"""COPY (SELECT {proxy} FROM base WHERE r <> 0 ORDER BY t)
                    TO '{lake}/proxy_decision/dt={day}/bench.parquet' (FORMAT parquet, ROW_GROUP_SIZE 122880)""")
    idp = _full_select("idp_event", {
        "occurred_at": "TIMESTAMPTZ '2026-11-20 12:00:00+00' + to_minutes(i::BIGINT)", "idp": "'okta'",
        "event_type": "'user.lifecycle.deactivate'", "is_revocation": "true",
        "subject_login": "'user' || i || '@example.com'",
        "subject_id": "'00u' || hash('user' || i || '@example.com') % 100000",
        "origin": "'bench:i:' || i",
    })
    con.execute(f"""COPY (SELECT {idp} FROM range(20) r(i))
                    TO '{lake}/idp_event/dt={day}/bench.parquet' (FORMAT parquet)""")
    con.close()


#: On Spark (``--engine spark``): the same detectors (revocation.not_enforced runs there since its
#: statements were written portably, docs/development.md "Spark SQL").
SPARK_DETECTORS = DETECTORS


def _tree_usage(proc: subprocess.Popen[str]) -> tuple[float, float]:
    """(CPU s, peak RSS MiB) of ``proc`` and every process under it (the JVM that PySpark starts is a
    grandchild that ``wait4`` does not account), polled every 0.2 s until it exits: the CPU of each
    process as last seen (up to 0.2 s of a process's end is missed), the peak of the summed RSS."""
    import psutil

    cpu: dict[int, float] = {}
    peak = 0
    root = psutil.Process(proc.pid)
    # waitid with WNOWAIT sees the exit without reaping the child (wait4 reaps it for its rusage)
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for p in procs:
            try:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, rss)
        time.sleep(0.2)
    return sum(cpu.values()), peak / 2**20


def spark_startup(lake: Path) -> float:
    """Seconds to open a Spark engine over ``lake`` (JVM start, Iceberg catalog, the lake's views, as
    ``detect --engine spark`` does before its first statement) and stop it, in a fresh process."""
    code = ("import time; t0 = time.perf_counter()\n"
            "from ztaudit.detectors.spark_engine import SparkEngine\n"
            f"e = SparkEngine.open({str(lake)!r}); t1 = time.perf_counter(); e.close()\n"
            "print(f'{t1 - t0:.2f}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_detect(lake: Path, engine: str = "duckdb") -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, stdout) of one ``ztaudit detect`` in a fresh process.

    CPU seconds (user + system of the child) are reported too because the wall time on a shared
    host depends on what else runs; CPU time does much less so.
    """
    cmd = [sys.executable, "-c", "from ztaudit.cli.main import main; main()", "detect", "--lake", str(lake),
           "--no-tables", "--config", os.devnull, "--engine", engine]
    for d in SPARK_DETECTORS if engine == "spark" else DETECTORS:
        cmd += ["--detector", d]
    t0 = time.perf_counter()
    tree: tuple[float, float] | None = None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        if engine == "spark":
            tree = _tree_usage(proc)  # returns when the child has exited (not reaped: wait4 below)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over every child,
        # including the synthesiser)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.stderr.write(stderr)
        raise SystemExit(proc.returncode)
    cpu = usage.ru_utime + usage.ru_stime
    if tree is not None:  # the Python process and its JVM together, as polled
        return wall, max(cpu, tree[0]), tree[1], stdout
    return wall, cpu, usage.ru_maxrss / 1024.0, stdout


def findings_of(lake: Path) -> dict[str, dict[str, object]]:
    """The lake's findings by ``finding_id``, without the columns that say when a run wrote them
    (read in a child process, so this process stays small for the detect children it forks)."""
    code = ("import json, sys; from ztaudit.core.lake import open_lake\n"
            "con = open_lake(sys.argv[1])\n"
            "t = con.execute('SELECT * FROM findings').to_arrow_table()\n"
            "print(json.dumps(t.to_pylist(), default=str))")
    out = subprocess.run([sys.executable, "-c", code, str(lake)], capture_output=True, text=True, check=True)
    return {r["finding_id"]: {k: v for k, v in r.items() if k not in RUN_COLUMNS}
            for r in json.loads(out.stdout.strip().splitlines()[-1])}


def compare_findings(spark: dict[str, dict[str, object]], duck: dict[str, dict[str, object]]) -> str:
    """One line per difference between the two engines' findings (ids only one has; per shared id, the
    fields that differ with both values), headed by the counts."""
    only_s, only_d = sorted(spark.keys() - duck.keys()), sorted(duck.keys() - spark.keys())
    lines = [f"findings: Spark {len(spark)}, DuckDB {len(duck)}; only Spark {len(only_s)}, only DuckDB {len(only_d)}"]
    lines += [f"  only Spark: {spark[i]['detector']} {i} {spark[i]['summary']}" for i in only_s[:10]]
    lines += [f"  only DuckDB: {duck[i]['detector']} {i} {duck[i]['summary']}" for i in only_d[:10]]
    differ = [i for i in sorted(spark.keys() & duck.keys()) if spark[i] != duck[i]]
    lines.append(f"  same id, other fields: {len(differ)}")
    for i in differ[:10]:
        fields = [k for k in spark[i] if spark[i][k] != duck[i].get(k)]
        lines.append(f"  {duck[i]['detector']} {i}: " + "; ".join(
            f"{k}: Spark {str(spark[i][k])[:300]!r} vs DuckDB {str(duck[i].get(k))[:300]!r}" for k in fields))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--synthesize-only":
        synthesize(Path(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,4000000")
    ap.add_argument("--dir", default=os.environ.get("ZTAUDIT_BENCH_DIR", "/tmp/ztaudit-bench-detect"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                    help="spark: migrate each lake to Iceberg, then time DuckDB and Spark (local[2]) on it in the "
                         "same run; Spark's CPU and peak RSS are those of the Python process and its JVM together, "
                         "its startup (session, catalog, views) is timed alone first")
    args = ap.parse_args()
    root = Path(args.dir)
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        lake = root / f"lake-{n}"
        t0 = time.perf_counter()
        # synthesise in a child process: a child forked from a large parent would report the parent's
        # pages in its ru_maxrss (fork copies the RSS before exec), inflating detect's peak RSS
        subprocess.run([sys.executable, __file__, "--synthesize-only", str(lake), str(n)], check=True)
        gen = time.perf_counter() - t0
        if args.engine == "spark":
            t1 = time.perf_counter()
            # in a child, as the synthesis: migrating in this process grew it to GiBs at 4M, and a detect
            # child forked from it reported those pages as its own peak RSS (ru_maxrss survives exec)
            subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from ztaudit.pipeline.maintain import migrate; migrate(Path(sys.argv[1]))", str(lake)],
                           check=True)
            mig = time.perf_counter() - t1
            start = spark_startup(lake)
            swall, scpu, srss, sout = run_detect(lake, "spark")
            print(f"N={n:>9,}  migrate {mig:5.1f}s  spark startup {start:5.1f}s  spark detect {swall:6.2f}s wall, "
                  f"{scpu:6.1f}s CPU (Python + JVM, start included)  peak RSS {srss:7.0f} MiB (Python + JVM)",
                  flush=True)
            print(sout, flush=True)
            spark_found = findings_of(lake)
        load = os.getloadavg()[0]
        wall, cpu, rss, out = run_detect(lake)
        if args.engine == "spark":
            print(compare_findings(spark_found, findings_of(lake)), flush=True)
        results.append({"audit_events": n, "proxy_decisions": n, "synth_s": round(gen, 1),
                        "detect_s": round(wall, 2), "detect_cpu_s": round(cpu, 1), "peak_rss_mib": round(rss),
                        "load_avg_before": round(load, 1), "summary": out.strip()})
        print(f"N={n:>9,}  synth {gen:6.1f}s  detect {wall:6.2f}s wall, {cpu:6.1f}s CPU  peak RSS {rss:7.0f} MiB"
              f"  (load average {load:.1f} on {os.cpu_count()} CPUs)", flush=True)
        print(out, flush=True)
        if not args.keep:
            shutil.rmtree(lake)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        ratio = b["detect_s"] / a["detect_s"]
        cpu_ratio = b["detect_cpu_s"] / max(a["detect_cpu_s"], 1e-9)
        print(f"growth: {b['audit_events'] / a['audit_events']:.1f}x events -> {ratio:.2f}x wall time, "
              f"{cpu_ratio:.2f}x CPU time")
    print(json.dumps([{k: v for k, v in r.items() if k != "summary"} for r in results]))


if __name__ == "__main__":
    main()

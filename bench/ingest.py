"""Ingest benchmark: ztaudit vs a naive baseline vs DuckDB's own read_json, in one run.

    .venv/bin/python bench/ingest.py                 # 1,000,000 events
    .venv/bin/python bench/ingest.py --events 200000 --keep /tmp/bench

Generates (itself, in a few seconds) a JSON-lines file of realistic Kubernetes audit events of
about 1.4 KB each (service accounts with bound-token JTI, pod and node extras; humans through an
impersonating proxy; kubelets; control-plane components; watches with query strings; a few 403s),
then runs each contender in its own subprocess and reads that child's peak RSS (``ru_maxrss``
from ``os.wait4``):

* ``ztaudit``: ``ingest_paths([file], lake)`` -- decode, normalize, write the lake;
* ``naive``: ``json.loads`` per line -> ``pandas.DataFrame`` -> ``to_parquet`` (the 5x target);
* ``duckdb``: ``COPY (SELECT * FROM read_json(file)) TO out.parquet`` (the "within 2x" target).

Targets (issue "Lake foundation"): ztaudit >= 5x naive, >= 0.5x DuckDB, peak RSS < 1 GiB.
On a small shared machine the numbers are noisy; the table says how many cores there were.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from s3warehouse import s3_warehouse

NAMESPACES = ["default", "payments", "checkout", "search", "kube-system", "monitoring", "ingress", "data"]
RESOURCES = [("pods", "", "v1"), ("configmaps", "", "v1"), ("secrets", "", "v1"), ("services", "", "v1"),
             ("deployments", "apps", "v1"), ("leases", "coordination.k8s.io", "v1"),
             ("endpointslices", "discovery.k8s.io", "v1"), ("events", "", "v1")]
VERBS = ["get", "list", "watch", "update", "patch", "create", "delete"]
HUMANS = [f"user{i}@example.com" for i in range(40)]
PROXY = "system:serviceaccount:pomerium:pomerium-authorize"


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(rng: random.Random, t: datetime) -> dict[str, object]:
    """One realistic audit Event (Metadata level, like most production policies)."""
    kind = rng.random()
    ns = rng.choice(NAMESPACES)
    res, group, ver = rng.choice(RESOURCES)
    verb = rng.choice(VERBS)
    user: dict[str, object]
    imp = None
    if kind < 0.55:
        sa = f"{rng.choice(['controller', 'operator', 'agent', 'exporter'])}-{rng.randint(1, 30)}"
        node = f"ip-10-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}.ec2.internal"
        user = {"username": f"system:serviceaccount:{ns}:{sa}", "uid": str(uuid.UUID(int=rng.getrandbits(128))),
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.UUID(int=rng.getrandbits(128))}"],
                          "authentication.kubernetes.io/node-name": [node],
                          "authentication.kubernetes.io/node-uid": [str(uuid.UUID(int=rng.getrandbits(128)))],
                          "authentication.kubernetes.io/pod-name": [f"{sa}-{rng.getrandbits(32):08x}-x2k9q"],
                          "authentication.kubernetes.io/pod-uid": [str(uuid.UUID(int=rng.getrandbits(128)))]}}
        ua = f"{sa}/v1.4.{rng.randint(0, 9)} (linux/amd64) kubernetes/$Format"
        ip = f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    elif kind < 0.8:
        user = {"username": PROXY, "uid": "6258bd11-9713-442b-bbed-2587a76975d9",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:pomerium", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.UUID(int=rng.getrandbits(128))}"]}}
        imp = {"username": rng.choice(HUMANS), "groups": ["developers", "system:authenticated"]}
        ua = "kubectl/v1.33.4 (linux/amd64) kubernetes/74cdb42"
        ip = f"10.1.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    elif kind < 0.95:
        node = f"ip-10-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}.ec2.internal"
        user = {"username": f"system:node:{node}", "groups": ["system:nodes", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [f"X509SHA256={rng.getrandbits(256):064x}"]}}
        ua = "kubelet/v1.33.4 (linux/amd64) kubernetes/74cdb42"
        ip = f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    else:
        user = {"username": "system:kube-controller-manager", "groups": ["system:authenticated"]}
        ua = "kube-controller-manager/v1.33.4 (linux/amd64) kubernetes/74cdb42/leader-election"
        ip = "127.0.0.1"
    name = f"{res[:-1]}-{rng.getrandbits(24):06x}"
    base = f"/api/{ver}" if group == "" else f"/apis/{group}/{ver}"
    if verb in ("list", "watch", "create"):
        uri = f"{base}/namespaces/{ns}/{res}"
        if verb == "watch":
            uri += f"?allowWatchBookmarks=true&resourceVersion={rng.randint(1, 10**7)}&timeout=7m4s&watch=true"
        elif verb == "list":
            uri += "?limit=500"
        obj: dict[str, object] = {"resource": res, "namespace": ns, "apiGroup": group, "apiVersion": ver}
    else:
        uri = f"{base}/namespaces/{ns}/{res}/{name}"
        obj = {"resource": res, "namespace": ns, "name": name, "apiGroup": group, "apiVersion": ver}
    code = 403 if rng.random() < 0.02 else (201 if verb == "create" else 200)
    start = t
    end = t + timedelta(microseconds=rng.randint(500, 90000))
    ev: dict[str, object] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": str(uuid.UUID(int=rng.getrandbits(128))), "stage": "ResponseComplete",
        "requestURI": uri, "verb": verb, "user": user,
    }
    if imp:
        ev["impersonatedUser"] = imp
    ev.update({
        "sourceIPs": [ip], "userAgent": ua, "objectRef": obj,
        "responseStatus": {"metadata": {}, "code": code} if code < 400 else {
            "metadata": {}, "status": "Failure", "message": f'{res} is forbidden: User cannot {verb} resource',
            "reason": "Forbidden", "details": {"kind": res}, "code": code},
        "requestReceivedTimestamp": _ts(start), "stageTimestamp": _ts(end),
        "annotations": {"authorization.k8s.io/decision": "allow" if code < 400 else "forbid",
                        "authorization.k8s.io/reason": (f'RBAC: allowed by ClusterRoleBinding "{ns}-readers" of '
                                                        f'ClusterRole "view" to Group "system:serviceaccounts:{ns}"')
                        if code < 400 else "",
                        "apiserver.latency.k8s.io/etcd": f"{rng.randint(200, 9000)}.{rng.randint(0, 999)}µs",
                        "apiserver.latency.k8s.io/total": f"{rng.randint(1, 90)}.{rng.randint(0, 999)}ms"},
    })
    return ev


def generate(path: Path, n: int, seed: int = 7) -> float:
    """Write ``n`` events to ``path``; returns the mean event size in bytes."""
    rng = random.Random(seed)
    t = datetime(2026, 11, 20, tzinfo=UTC)
    total = 0
    with open(path, "wb", buffering=8 * 1024 * 1024) as fh:
        for i in range(n):
            t += timedelta(microseconds=rng.randint(100, 20000))
            line = orjson.dumps(make_event(rng, t)) + b"\n"
            total += len(line)
            fh.write(line)
            if i % 200_000 == 0 and i:
                print(f"  generated {i:,}", file=sys.stderr)
    return total / max(n, 1)


# --- contenders (each runs in a fresh subprocess: `bench/ingest.py --run NAME FILE OUT`) -------

def run_ztaudit(src: str, out: str) -> None:
    from ztaudit.pipeline.ingest import ingest_paths

    stats = ingest_paths([src], out, source=None, cluster="bench")
    assert stats.quarantined_total == 0, stats.summary()


def run_ztaudit_iceberg(src: str, out: str) -> None:
    """The same ingest into an Iceberg lake (issue 16): same files, plus the catalog and one commit per
    table every ``lake.publish_seconds`` and at the end."""
    from dataclasses import replace

    from ztaudit.core.config import Config, LakeSettings
    from ztaudit.pipeline.ingest import ingest_paths

    cfg = replace(Config(), lake=LakeSettings(format="iceberg"))
    stats = ingest_paths([src], out, source=None, cluster="bench", config=cfg)
    assert stats.quarantined_total == 0, stats.summary()


def run_naive(src: str, out: str) -> None:
    import json

    import pandas as pd

    with open(src, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    # pd.DataFrame(rows) keeps nested dicts, and pyarrow cannot write the empty struct
    # responseStatus.metadata ({}); json_normalize (flatten to dotted columns) is the usual fix.
    pd.json_normalize(rows).to_parquet(out + ".parquet")


def run_duckdb(src: str, out: str) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_json('{src}')) TO '{out}.parquet' (FORMAT parquet)")


CONTENDERS = {"ztaudit": run_ztaudit, "ztaudit-iceberg": run_ztaudit_iceberg,
              # the same Iceberg ingest, its warehouse on S3Proxy: main() starts the store and puts
              # lake.warehouse and the credentials in the environment the subprocess inherits
              "ztaudit-iceberg-s3": run_ztaudit_iceberg, "naive": run_naive, "duckdb": run_duckdb}


def measure(name: str, src: Path, work: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one contender in a fresh subprocess (``os.wait4`` gives that
    child's own ``ru_maxrss``, so contenders do not mask each other's peaks)."""
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--run", name, str(src), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders to run")
    ap.add_argument("--run", nargs=3, metavar=("NAME", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        CONTENDERS[args.run[0]](args.run[1], args.run[2])
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="ztaudit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"audit-{args.events}.jsonl"
    if not src.exists():
        t0 = time.perf_counter()
        mean = generate(src, args.events)
        print(f"generated {args.events:,} events, {mean:,.0f} B mean, {src.stat().st_size / 1e6:,.0f} MB "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # Warm the page cache so the first contender does not pay for the disk.
    with open(src, "rb") as fh:
        while fh.read(64 * 1024 * 1024):
            pass
    order = [c for c in ("ztaudit", "ztaudit-iceberg", "ztaudit-iceberg-s3", "duckdb", "naive")
             if c in args.only.split(",")]
    results: dict[str, tuple[float, float, float]] = {}
    for name in order:
        print(f"running {name} ...", file=sys.stderr)
        with s3_warehouse(work, f"ingest-{os.getpid()}") if name.endswith("-s3") else contextlib.nullcontext():
            results[name] = measure(name, src, work)
    z = results.get("ztaudit")
    load = os.getloadavg()[0]
    print(f"\n{args.events:,} events, {src.stat().st_size / 1e6:,.0f} MB, {os.cpu_count()} CPU(s), "
          f"load average {load:.1f} at the end (shared machine: wall times are noisy, CPU seconds less so)\n")
    print("| contender | wall s | events/s | CPU s | peak RSS MiB | ztaudit speed-up (wall) | (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (secs, rss, cpu) in results.items():
        ratio = f"{secs / z[0]:.2f}x" if z else "-"
        cratio = f"{cpu / z[2]:.2f}x" if z else "-"
        print(f"| {name} | {secs:,.1f} | {args.events / secs:,.0f} | {cpu:,.1f} | {rss:,.0f} | {ratio} | {cratio} |")
    if z:
        print()
        if "naive" in results:
            r = results["naive"][0] / z[0]
            print(f"ztaudit vs naive: {r:.1f}x faster (target >= 5x): {'PASS' if r >= 5 else 'FAIL'}")
        if "duckdb" in results:
            r = z[0] / results["duckdb"][0]
            print(f"ztaudit time / DuckDB time: {r:.2f} (target <= 2): {'PASS' if r <= 2 else 'FAIL'}")
        print(f"ztaudit peak RSS {z[1]:,.0f} MiB (target < 1024): {'PASS' if z[1] < 1024 else 'FAIL'}")
        if "ztaudit-iceberg" in results:
            r = results["ztaudit-iceberg"][0] / z[0]
            print(f"Iceberg lake time / plain lake time: {r:.2f} (target <= 1.10): {'PASS' if r <= 1.10 else 'FAIL'}")
        if "ztaudit-iceberg-s3" in results:
            r = results["ztaudit-iceberg-s3"][0] / z[0]
            print(f"Iceberg lake on S3Proxy time / plain lake time: {r:.2f} (no target: alongside)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: every ``ztaudit report`` and ``ztaudit catalog`` over 1M and 10M audit events.

The lakes are synthesized directly as hive-partitioned Parquet with DuckDB (running the generator
and ingest for 10M events would take far longer and measure something else): 14 UTC days, three
clusters, ~2,000 identities (people through the proxy, service accounts with bound tokens, a few
legacy tokens, nodes, control plane), two audit stages per request, realistic verbs, resources,
namespaces, codes, IPs and user agents, plus proxy decisions for the people's requests, IdP
events with revocations, findings and quarantine rows. Each file DuckDB wrote is then written again
by the lake's own writer (``write_parquet_atomic``: row groups, dictionaries, statistics and bloom
filters as ``ingest`` and ``consume`` write them), so the reports read the files a real lake holds.

Each report runs in a fresh DuckDB connection (no warm cache from the previous report) and is
rendered as JSON; "all" = the whole lake, "24h" = ``--since`` the last day (partition pruning).

    .venv/bin/python bench/report.py                # 1M and 10M (10M takes a minute or two to build)
    .venv/bin/python bench/report.py --sizes 1000000 --keep

Targets: every report < 3 s at 10M, catalog < 5 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from ztaudit.cli.catalog import write_catalog
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.reports import REPORTS, run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import render

DAYS = 14
START = datetime(2026, 11, 1, tzinfo=UTC)
ROW_GROUP = 122_880
BUSY_HUMAN = "user7@example.com"
#: Left in a synthesized lake once its files were written again by the lake's writer.
REWRITTEN = ".bench-lake-writer"

K8S_SQL = """
COPY (
  WITH r AS (
    SELECT i,
           (hash(i) % 2000)::INT AS a,
           TIMESTAMPTZ '{start}' + to_microseconds((hash(i * 3) % ({days} * 86400000000))::BIGINT) AS t,
           ['prod', 'staging', 'dev'][1 + (hash(i * 7) % 3)::INT] AS cluster,
           ['get', 'get', 'get', 'list', 'list', 'watch', 'create', 'update', 'patch', 'delete']
               [1 + (hash(i * 11) % 10)::INT] AS verb,
           -- deletes of service accounts, secrets and bindings are revocations: keep them rare
           CASE WHEN hash(i * 11) % 10 = 9 AND hash(i * 37) % 500 <> 0 THEN 'pods' ELSE
           ['pods', 'deployments', 'services', 'configmaps', 'secrets', 'events', 'nodes', 'leases',
            'serviceaccounts', 'rolebindings'][1 + (hash(i * 13) % 10)::INT] END AS resource,
           'ns-' || (hash(i * 17) % 200)::VARCHAR AS namespace
    FROM range({requests}) t(i)
  ), x AS (
    SELECT r.*,
      CASE WHEN a < 300 THEN 'user' || a || '@example.com'
           WHEN a < 1900 THEN 'system:serviceaccount:ns-' || (a % 200) || ':sa-' || a
           WHEN a < 1980 THEN 'system:node:node-' || a
           ELSE 'system:kube-controller-manager' END AS actor,
      CASE WHEN a < 300 THEN 'human' WHEN a < 1900 THEN 'service_account' WHEN a < 1980 THEN 'node'
           ELSE 'system' END AS actor_kind,
      CASE WHEN a < 300 AND hash(i * 19) % 50 <> 0 THEN 'system:serviceaccount:pomerium:pomerium-authorize'
           END AS impersonator,
      CASE WHEN a BETWEEN 300 AND 1899 AND a % 97 = 0 THEN 'SECRET=ns-' || (a % 200) || '/sa-' || a || '-token'
           WHEN a BETWEEN 300 AND 1899 THEN 'JTI=' || md5((a * 1000 + (epoch(t)::BIGINT // 3600))::VARCHAR)
           WHEN a < 300 THEN NULL
           ELSE 'X509SHA256=' || md5(a::VARCHAR) END AS credential_id,
      CASE WHEN hash(i * 23) % 40 = 0 THEN 403 WHEN verb = 'create' THEN 201 ELSE 200 END AS code
    FROM r
  )
  SELECT md5(i::VARCHAR) AS audit_id, cluster, stage, 'Metadata' AS level,
         t AS request_received_at, t + INTERVAL 3 MILLISECOND * s AS stage_at, verb,
         '/api/v1/namespaces/' || namespace || '/' || resource AS request_uri,
         coalesce(impersonator, actor) AS user_name, md5(actor) AS user_uid,
         ['system:authenticated'] AS user_groups, credential_id,
         CASE WHEN credential_id LIKE 'SECRET=%' THEN 'legacy_secret' WHEN credential_id LIKE 'JTI=%' THEN 'jti'
              WHEN credential_id LIKE 'X509%' THEN 'x509' ELSE 'none' END AS credential_kind,
         credential_id LIKE 'SECRET=%' AS is_legacy_token, NULL::VARCHAR AS issued_credential_id,
         CASE WHEN actor_kind = 'service_account' THEN split_part(actor, ':', 3) END AS sa_namespace,
         CASE WHEN actor_kind = 'service_account' THEN split_part(actor, ':', 4) END AS sa_name,
         NULL::VARCHAR AS pod_name, NULL::VARCHAR AS node_name, impersonator,
         CASE WHEN impersonator IS NOT NULL THEN actor END AS impersonated_user,
         CASE WHEN impersonator IS NOT NULL THEN ['oidc:engineers'] END AS impersonated_groups,
         actor, actor_kind,
         '10.' || (a % 250) || '.' || (hash(i * 29) % 250) || '.7' AS source_ip,
         ['10.' || (a % 250) || '.' || (hash(i * 29) % 250) || '.7'] AS source_ips,
         CASE WHEN actor_kind = 'human' THEN 'kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46'
              ELSE 'client-go/v0.31.0 (linux/amd64)' END AS user_agent,
         resource, NULL::VARCHAR AS subresource, namespace, 'obj-' || (hash(i * 31) % 5000) AS name,
         '' AS api_group, 'v1' AS api_version,
         CASE WHEN stage = 'RequestReceived' THEN NULL ELSE code END::INTEGER AS response_code,
         CASE WHEN code = 403 THEN 'forbid' ELSE 'allow' END AS decision,
         'RBAC: allowed by ClusterRoleBinding "view"' AS authz_reason,
         MAP {{'authorization.k8s.io/decision': CASE WHEN code = 403 THEN 'forbid' ELSE 'allow' END}} AS annotations,
         'file:/var/log/audit.log:' || i AS origin, t + INTERVAL 2 SECOND AS ingested_at,
         strftime(t, '%Y-%m-%d') AS dt
  FROM x, (VALUES (0, 'RequestReceived'), (1, 'ResponseComplete')) s(s, stage)
  ORDER BY request_received_at
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), ROW_GROUP_SIZE {rg}, COMPRESSION zstd, OVERWRITE_OR_IGNORE)
"""

PROXY_SQL = """
COPY (
  SELECT request_received_at - INTERVAL 300 MILLISECOND AS decided_at, 'pomerium' AS proxy,
         md5(audit_id || 'p') AS request_id, md5(audit_id || 'c') AS check_request_id,
         'sess-' || md5(actor)[1:8] AS session_id, 'uid-' || md5(actor)[1:10] AS user_id, actor AS email,
         NULL::VARCHAR AS service_account_id, upper(CASE verb WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET'
            WHEN 'watch' THEN 'GET' WHEN 'create' THEN 'POST' WHEN 'delete' THEN 'DELETE' ELSE 'PATCH' END) AS method,
         'k8s.' || cluster || '.example.com' AS host, request_uri AS path, NULL::VARCHAR AS query,
         'k8s-' || cluster AS route_id, '203.0.113.' || (hash(actor) % 250) AS client_ip, true AS is_allowed,
         ['groups: oidc:engineers'] AS allow_reasons, []::VARCHAR[] AS deny_reasons, cluster,
         user_agent, NULL::INTEGER AS response_code, 'authorize' AS record_type,
         'file:/var/log/pomerium.log:' || row_number() OVER () AS origin, ingested_at,
         strftime(request_received_at, '%Y-%m-%d') AS dt
  FROM read_parquet('{k8s}/*/*.parquet', hive_partitioning = true)
  WHERE stage = 'ResponseComplete' AND impersonator IS NOT NULL
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), ROW_GROUP_SIZE {rg}, COMPRESSION zstd, OVERWRITE_OR_IGNORE)
"""

IDP_SQL = """
COPY (
  SELECT TIMESTAMPTZ '{start}' + to_microseconds((i * 604800000)::BIGINT % ({days} * 86400000000)) AS occurred_at,
         'okta' AS idp,
         CASE WHEN i % 10 = 0 THEN 'user.lifecycle.deactivate' ELSE 'user.session.start' END AS event_type,
         i % 10 = 0 AS is_revocation, 'uid-' || md5('user' || (i % 300) || '@example.com')[1:10] AS subject_id,
         'user' || (i % 300) || '@example.com' AS subject_login, NULL::VARCHAR AS session_id,
         'admin@example.com' AS actor, 'SUCCESS' AS outcome,
         CASE WHEN i % 10 = 0 THEN 'identity' END AS revocation_scope,
         'file:okta.jsonl:' || i AS origin, TIMESTAMPTZ '{start}' AS ingested_at,
         strftime(TIMESTAMPTZ '{start}' + to_microseconds((i * 604800000)::BIGINT % ({days} * 86400000000)),
                  '%Y-%m-%d') AS dt
  FROM range(2000) t(i)
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), COMPRESSION zstd, OVERWRITE_OR_IGNORE)
"""

FINDINGS_SQL = """
COPY (
  SELECT md5(i::VARCHAR) AS finding_id,
         ['impersonation.proxy_bypass', 'credential.stale', 'credential.shared', 'reach.anomalous',
          'revocation.not_enforced'][1 + i % 5] AS detector,
         ['low', 'medium', 'high', 'critical'][1 + i % 4] AS severity,
         CASE WHEN i % 3 = 0 THEN 'user' || (i % 300) || '@example.com'
              ELSE 'system:serviceaccount:ns-' || (i % 200) || ':sa-' || (300 + i % 1600) END AS actor,
         NULL::VARCHAR AS credential_id, ['prod', 'staging', 'dev'][1 + i % 3] AS cluster,
         'ns-' || (i % 200) AS namespace,
         TIMESTAMPTZ '{start}' + to_microseconds((i * 97000000000)::BIGINT % ({days} * 86400000000)) AS first_seen,
         TIMESTAMPTZ '{start}' + to_microseconds((i * 97000000000)::BIGINT % ({days} * 86400000000))
             + INTERVAL 1 HOUR AS last_seen,
         'synthetic finding ' || i AS summary, ['k8s_audit:prod/' || md5(i::VARCHAR)] AS evidence,
         (i % 100) / 100.0 AS score, '{{"n": 1}}' AS context, TIMESTAMPTZ '{start}' AS detected_at,
         strftime(TIMESTAMPTZ '{start}' + to_microseconds((i * 97000000000)::BIGINT % ({days} * 86400000000)),
                  '%Y-%m-%d') AS dt
  FROM range(5000) t(i)
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), COMPRESSION zstd, OVERWRITE_OR_IGNORE)
"""

QUARANTINE_SQL = """
COPY (
  SELECT TIMESTAMPTZ '{start}' + to_microseconds((i * 3600000000)::BIGINT % ({days} * 86400000000)) AS quarantined_at,
         'file:/var/log/audit.log:' || i AS origin, 'k8s_audit' AS source_guess,
         ['invalid_json', 'truncated', 'unknown_shape'][1 + i % 3] AS reason, 'synthetic' AS detail,
         100 AS raw_size, 'not json'::BLOB AS raw, false AS raw_truncated,
         strftime(TIMESTAMPTZ '{start}' + to_microseconds((i * 3600000000)::BIGINT % ({days} * 86400000000)),
                  '%Y-%m-%d') AS dt
  FROM range(1000) t(i)
) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), COMPRESSION zstd, OVERWRITE_OR_IGNORE)
"""


def build_lake(lake: Path, events: int) -> float:
    """Synthesize a lake of ``events`` audit rows (two stages per request); returns seconds."""
    t0 = time.perf_counter()
    lake.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    fmt = {"start": START.isoformat(), "days": DAYS, "rg": ROW_GROUP}
    con.execute(K8S_SQL.format(**fmt, requests=events // 2, out=lake / "k8s_audit"))
    con.execute(PROXY_SQL.format(**fmt, k8s=lake / "k8s_audit", out=lake / "proxy_decision"))
    for table, sql in (("idp_event", IDP_SQL), ("findings", FINDINGS_SQL), ("quarantine", QUARANTINE_SQL)):
        con.execute(sql.format(**fmt, out=lake / table))
    con.close()
    return time.perf_counter() - t0


def rewrite_as_lake_files(lake: Path) -> float:
    """Write every Parquet file of ``lake`` again with the lake's writer (module docstring); seconds.

    DuckDB's ``COPY`` writes bloom filters on dictionary-encoded columns and its own row groups: a lake
    of such files is faster to query by identity than one ``ingest`` writes, which flattered the
    figures before (171 MB read instead of 1 MB for one statement of ``report revocation``)."""
    import pyarrow.parquet as pq

    from ztaudit.core.files import write_parquet_atomic

    t0 = time.perf_counter()
    for path in sorted(lake.glob("*/dt=*/*.parquet")):
        write_parquet_atomic(pq.ParquetFile(path).read(), path)
    return time.perf_counter() - t0


def _rbac_item(kind: str, name: str, ns: str | None = None, **kw: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, **kw}


def rbac_snapshot() -> dict[str, Any]:
    """An RBAC snapshot for the synthesized lake's identities (the same for each cluster): a Role and
    RoleBinding per service account in its own namespace, a ``view``-like ClusterRole for every fifth,
    cluster-admin for every fiftieth, a reader Role per namespace bound to its
    ``system:serviceaccounts:<ns>`` group, the ``system:discovery`` default and the proxy's impersonation."""
    read = ["get", "list", "watch"]
    items = [
        _rbac_item("ClusterRole", "cluster-admin", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        _rbac_item("ClusterRole", "view", rules=[
            {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "events"], "verbs": read},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": read}]),
        _rbac_item("ClusterRole", "system:discovery", rules=[
            {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version"], "verbs": ["get"]}]),
        _rbac_item("ClusterRoleBinding", "system:discovery",
                   roleRef={"kind": "ClusterRole", "name": "system:discovery"},
                   subjects=[{"kind": "Group", "name": "system:authenticated"}]),
        _rbac_item("ClusterRole", "pomerium-impersonation", rules=[
            {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]),
        _rbac_item("ClusterRoleBinding", "pomerium-impersonation",
                   roleRef={"kind": "ClusterRole", "name": "pomerium-impersonation"},
                   subjects=[{"kind": "ServiceAccount", "name": "pomerium-authorize", "namespace": "pomerium"}]),
    ]
    for n in range(200):
        ns = f"ns-{n}"
        items += [_rbac_item("Role", "reader", ns, rules=[{"apiGroups": [""], "resources": ["events"], "verbs": read}]),
                  _rbac_item("RoleBinding", "reader", ns, roleRef={"kind": "Role", "name": "reader"},
                             subjects=[{"kind": "Group", "name": f"system:serviceaccounts:{ns}"}])]
    for a in range(300, 1900):
        ns, name = f"ns-{a % 200}", f"sa-{a}"
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        items += [_rbac_item("Role", name, ns, rules=[
                      {"apiGroups": [""], "resources": ["pods", "configmaps", "services"], "verbs": read},
                      {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [f"{name}-tls"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "patch"]}]),
                  _rbac_item("RoleBinding", name, ns, roleRef={"kind": "Role", "name": name}, subjects=subject)]
        if a % 5 == 0:
            items.append(_rbac_item("ClusterRoleBinding", f"{name}-view",
                                    roleRef={"kind": "ClusterRole", "name": "view"}, subjects=subject))
        if a % 50 == 0:
            items.append(_rbac_item("ClusterRoleBinding", f"{name}-admin",
                                    roleRef={"kind": "ClusterRole", "name": "cluster-admin"}, subjects=subject))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def build_rbac(lake: Path) -> float:
    """Ingest :func:`rbac_snapshot` for each cluster, as ``ztaudit ingest rbac.json --cluster C`` would."""
    from ztaudit.core.sink import LakeSink
    from ztaudit.pipeline.normalize.base import NormalizeContext
    from ztaudit.pipeline.normalize.registry import get

    t0 = time.perf_counter()
    norm = get("rbac_snapshot")
    snapshot = norm.unwrap(rbac_snapshot()) or []
    for cluster in ("prod", "staging", "dev"):
        ctx = NormalizeContext(cluster=cluster, ingested_at=START + timedelta(days=DAYS))
        table, rejected = norm.to_table(snapshot, [f"file:rbac-{cluster}.json:1"], ctx)
        if rejected:
            raise RuntimeError(f"the synthesized RBAC snapshot was rejected: {rejected[0]}")
        LakeSink(lake).write("rbac_snapshot", table, f"bench-{cluster}")
    return time.perf_counter() - t0


def build_derived(lake: Path) -> float:
    """Build the ``credentials`` and ``reach`` tables as ``detect`` would (detect's cost, timed apart)."""
    from ztaudit.core.sink import LakeSink
    from ztaudit.detectors.base import DetectContext
    from ztaudit.detectors.credentials import inventory
    from ztaudit.detectors.reach import build_reach_table

    t0 = time.perf_counter()
    con = open_lake(lake)
    try:
        LakeSink(lake).write("credentials", inventory(con, None, None), "bench")
        LakeSink(lake).write("reach", build_reach_table(DetectContext(con=con, config=Config())), "bench")
    finally:
        con.close()
    return time.perf_counter() - t0


def time_report(lake: Path, name: str, filters: Filters) -> tuple[float, int]:
    """Seconds for open + run + render JSON of one report in a fresh connection; primary row count."""
    t0 = time.perf_counter()
    con = open_lake(lake)
    try:
        ctx = ReportContext(con=con, config=Config(), filters=filters, limit=50, lake=str(lake),
                            options={"subject": BUSY_HUMAN if REPORTS[name].needs_subject else None})
        result = run_report(name, ctx)
        render(result, "json")
    finally:
        con.close()
    return time.perf_counter() - t0, len(result.primary.rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated audit event counts")
    ap.add_argument("--dir", help="where to build the lakes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthesized lakes")
    ap.add_argument("--no-rbac", action="store_true", help="leave the RBAC snapshot out of the synthesized lakes")
    ap.add_argument("--json", dest="json_out", help="also write results as JSON here")
    ap.add_argument("--reports", default=",".join(REPORTS), help="comma-separated report names to time")
    ap.add_argument("--formats", default="parquet",
                    help="comma-separated lake formats: parquet, iceberg (a copy of the plain lake, migrated)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="ztaudit-bench-"))
    results = []
    for size, fmt in [(int(s), f) for s in args.sizes.split(",") for f in args.formats.split(",")]:
        lake = base / f"lake-{size}"
        if not (lake / "k8s_audit").exists():
            secs = build_lake(lake, size)
            print(f"built {size:,} audit events in {secs:.1f} s at {lake}", file=sys.stderr)
        if not (lake / REWRITTEN).exists():  # also a lake kept (--keep) by an earlier version of this bench
            secs = rewrite_as_lake_files(lake)
            (lake / REWRITTEN).touch()
            print(f"wrote its files again with the lake's writer in {secs:.1f} s", file=sys.stderr)
        if not (lake / "reach").exists():
            secs = build_derived(lake)
            print(f"built the derived credentials and reach tables (detect's job) in {secs:.1f} s",
                  file=sys.stderr)
        if not args.no_rbac and not (lake / "rbac_snapshot").exists():
            print(f"ingested an RBAC snapshot per cluster in {build_rbac(lake):.1f} s", file=sys.stderr)
        if fmt == "iceberg":
            plain, lake = lake, base / f"lake-{size}-iceberg"
            if not (lake / "_iceberg").exists():
                from ztaudit.pipeline.maintain import migrate

                shutil.rmtree(lake, ignore_errors=True)
                shutil.copytree(plain, lake)
                t0 = time.perf_counter()
                done = migrate(lake)
                print(f"migrated a copy to Iceberg in {time.perf_counter() - t0:.1f} s: {done.summary()}",
                      file=sys.stderr)
        size_label = size if fmt == "parquet" else f"{size} iceberg"
        last_day = START + timedelta(days=DAYS - 1)
        for name in [r for r in args.reports.split(",") if r in REPORTS]:
            for label, filters in (("all", Filters()), ("24h", Filters(since=last_day))):
                secs, rows = time_report(lake, name, filters)
                results.append({"events": size_label, "report": name, "range": label, "seconds": round(secs, 2),
                                "rows": rows})
                print(f"{size_label!s:>18}  {name:<14} {label:<4} {secs:6.2f} s  {rows:>6} rows", file=sys.stderr)
        t0 = time.perf_counter()
        write_catalog(lake, base / f"catalog-{size}-{fmt}.duckdb")
        secs = time.perf_counter() - t0
        results.append({"events": size_label, "report": "catalog", "range": "-", "seconds": round(secs, 2),
                        "rows": 0})
        print(f"{size_label!s:>18}  {'catalog':<14} -    {secs:6.2f} s", file=sys.stderr)
    sizes = list(dict.fromkeys(r["events"] for r in results))
    print("\n| report | range | " + " | ".join(f"{s:,} events" if isinstance(s, int) else f"{s} events"
                                            for s in sizes) + " |")
    print("|---|---|" + "---:|" * len(sizes))
    for key in dict.fromkeys((r["report"], r["range"]) for r in results):
        cells = [next((f"{r['seconds']:.2f} s" for r in results if (r["report"], r["range"]) == key
                       and r["events"] == s), "") for s in sizes]
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small hand-made lake with a known story, for the report, format, SQL and catalog tests.

Written through the real :class:`LakeSink` (so schemas and partitioning are the production ones),
independent of ingest and detect. The story (times UTC, 2026-11-20 .. 2026-11-22):

* alice@example.com works through the proxy (Pomerium impersonation) on prod and staging;
* bob@example.com reaches prod directly (proxy bypass);
* HOSTILE (a quote-laden name) works through the proxy; a finding names HOSTILE;
* carol@example.com is deactivated in Okta at 2026-11-21 12:00 and is still allowed 30 min later
  (not enforced); dave@example.com is deactivated and only denied afterwards (enforced);
* system:serviceaccount:apps:web uses a JTI token from two IPs at once (shared);
* system:serviceaccount:ci:deployer uses a legacy secret token SECRET=ci/deployer-token;
* two quarantined records; five findings.

:func:`build_lake` also builds the derived ``reach`` and ``credentials`` tables with detect's own
builders (not its detectors: the story's findings are hand-made), as ``ztaudit detect`` leaves a lake.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink

HOSTILE = "o'brien\"; DROP TABLE findings; --@example.com"
PROXY_SA = "system:serviceaccount:pomerium:pomerium-authorize"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
REVOKED_AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def count_rows(lake: Path, table: str = "proxy_decision") -> int:
    """Rows of ``table`` as a reader of ``lake`` sees them now (a new :func:`open_lake` connection)."""
    con = open_lake(lake)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def _ts(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


_n = 0


def audit(actor: str, at: datetime, *, verb: str = "get", resource: str = "pods", namespace: str | None = "default",
          name: str | None = "web-1", cluster: str = "prod", via_proxy: bool = False, impersonator: str | None = None,
          kind: str = "human", code: int = 200, credential_id: str | None = None, legacy: bool = False,
          source_ip: str = "10.0.0.5", user_agent: str = "kubectl/v1.31.0", request_uri: str | None = None,
          stages: tuple[str, ...] = ("RequestReceived", "ResponseComplete")) -> list[dict[str, Any]]:
    """Rows (one per stage) of one Kubernetes request."""
    global _n
    _n += 1
    imp = impersonator or (PROXY_SA if via_proxy else None)
    out = []
    for st in stages:
        out.append({
            "audit_id": f"aid-{_n:05d}", "cluster": cluster, "stage": st, "level": "Metadata",
            "request_received_at": at, "stage_at": at + timedelta(milliseconds=5 if st != "RequestReceived" else 0),
            "verb": verb, "request_uri": request_uri or f"/api/v1/namespaces/{namespace}/{resource}/{name or ''}",
            "user_name": imp or actor, "user_groups": ["system:authenticated"],
            "credential_id": credential_id,
            "credential_kind": ("legacy_secret" if legacy else "jti") if credential_id else "none",
            "is_legacy_token": legacy, "impersonator": imp, "impersonated_user": actor if imp else None,
            "actor": actor, "actor_kind": kind, "source_ip": source_ip, "source_ips": [source_ip],
            "user_agent": user_agent, "resource": resource, "namespace": namespace, "name": name,
            "api_group": "", "api_version": "v1", "response_code": None if st == "RequestReceived" else code,
            "decision": "allow" if code < 400 else "forbid", "origin": f"file:test.jsonl:{_n}",
            "ingested_at": datetime(2026, 11, 23, tzinfo=UTC),
        })
    return out


def decision(email: str, at: datetime, *, allowed: bool = True, path: str = "/api/v1/namespaces/default/pods",
             cluster: str = "prod", session: str | None = "sess-1", user_id: str | None = None,
             user_agent: str = "kubectl/v1.31.0") -> dict[str, Any]:
    """One Pomerium authorize decision."""
    global _n
    _n += 1
    return {"decided_at": at, "proxy": "pomerium", "request_id": f"rid-{_n:05d}", "session_id": session,
            "user_id": user_id or f"uid-{email.split('@')[0]}", "email": email, "method": "GET",
            "host": f"k8s.{cluster}.example.com", "path": path, "is_allowed": allowed, "cluster": cluster,
            "client_ip": "203.0.113.7", "user_agent": user_agent, "record_type": "authorize",
            "origin": f"file:pomerium.log:{_n}", "ingested_at": datetime(2026, 11, 23, tzinfo=UTC)}


def finding(detector: str, severity: str, actor: str, first: datetime, last: datetime, summary: str,
            credential_id: str | None = None, cluster: str | None = "prod") -> dict[str, Any]:
    """One findings row (id is a fixed fake hash of the detector and actor)."""
    import hashlib

    fid = hashlib.sha256(f"{detector}|{actor}".encode()).hexdigest()[:32]
    return {"finding_id": fid, "detector": detector, "severity": severity, "actor": actor,
            "credential_id": credential_id, "cluster": cluster, "namespace": "default", "first_seen": first,
            "last_seen": last, "summary": summary, "evidence": [f"k8s_audit:{actor}:1"], "score": 0.9,
            "context": '{"why": "test"}', "detected_at": datetime(2026, 11, 23, tzinfo=UTC)}


def story_rows() -> dict[str, list[dict[str, Any]]]:
    """The rows of every table in the story (see module docstring)."""
    k8s: list[dict[str, Any]] = []
    px: list[dict[str, Any]] = []
    for day in range(3):
        base = day * 24 * 60
        for i in range(4):
            at = _ts(base + 10 * i)
            k8s += audit("alice@example.com", at, via_proxy=True, namespace=["default", "web"][i % 2])
            px.append(decision("alice@example.com", at - timedelta(milliseconds=300)))
        k8s += audit("alice@example.com", _ts(base + 50), via_proxy=True, cluster="staging", verb="list")
        k8s += audit("bob@example.com", _ts(base + 60), verb="delete", namespace="kube-system", name="coredns")
        k8s += audit(HOSTILE, _ts(base + 70), via_proxy=True, verb="get", resource="secrets", name="db")
        px.append(decision(HOSTILE, _ts(base + 70) - timedelta(milliseconds=200), session="sess-h"))
        k8s += audit("system:serviceaccount:apps:web", _ts(base + 80), kind="service_account", namespace="apps",
                     credential_id="JTI=11111111-aaaa", source_ip="10.1.0.4")
        k8s += audit("system:serviceaccount:apps:web", _ts(base + 80.5), kind="service_account", namespace="apps",
                     credential_id="JTI=11111111-aaaa", source_ip="10.9.9.9")
        k8s += audit("system:serviceaccount:ci:deployer", _ts(base + 90), kind="service_account", namespace="ci",
                     verb="patch", resource="deployments", credential_id="SECRET=ci/deployer-token", legacy=True)
    # carol: revoked, still allowed 30 min later at proxy and API (past the 15 min grace)
    k8s += audit("carol@example.com", REVOKED_AT - timedelta(hours=1), via_proxy=True)
    px.append(decision("carol@example.com", REVOKED_AT - timedelta(hours=1), session="sess-c"))
    k8s += audit("carol@example.com", REVOKED_AT + timedelta(minutes=30), via_proxy=True)
    px.append(decision("carol@example.com", REVOKED_AT + timedelta(minutes=30), session="sess-c"))
    # dave: revoked, then only denied
    px.append(decision("dave@example.com", REVOKED_AT - timedelta(minutes=30), session="sess-d"))
    px.append(decision("dave@example.com", REVOKED_AT + timedelta(minutes=2), allowed=False, session="sess-d"))
    idp = [
        {"occurred_at": REVOKED_AT, "idp": "okta", "event_type": "user.lifecycle.deactivate", "is_revocation": True,
         "subject_id": "uid-carol", "subject_login": "carol@example.com", "actor": "admin@example.com",
         "outcome": "SUCCESS", "revocation_scope": "identity", "origin": "file:okta.json:1",
         "ingested_at": datetime(2026, 11, 23, tzinfo=UTC)},
        {"occurred_at": REVOKED_AT, "idp": "okta", "event_type": "user.lifecycle.deactivate", "is_revocation": True,
         "subject_id": "uid-dave", "subject_login": "dave@example.com", "actor": "admin@example.com",
         "outcome": "SUCCESS", "revocation_scope": "identity", "origin": "file:okta.json:2",
         "ingested_at": datetime(2026, 11, 23, tzinfo=UTC)},
        {"occurred_at": _ts(5), "idp": "okta", "event_type": "user.session.start", "is_revocation": False,
         "subject_id": "uid-alice", "subject_login": "alice@example.com", "actor": "alice@example.com",
         "outcome": "SUCCESS", "origin": "file:okta.json:3", "ingested_at": datetime(2026, 11, 23, tzinfo=UTC)},
    ]
    findings = [
        finding("impersonation.proxy_bypass", "high", "bob@example.com", _ts(60), _ts(2 * 1440 + 60),
                "bob@example.com reached the API server directly 3 times"),
        finding("revocation.not_enforced", "critical", "carol@example.com", REVOKED_AT,
                REVOKED_AT + timedelta(minutes=30), "carol@example.com still allowed 30 min after deactivation"),
        finding("credential.legacy_token", "medium", "system:serviceaccount:ci:deployer", _ts(90),
                _ts(2 * 1440 + 90), "legacy secret token in use", credential_id="SECRET=ci/deployer-token"),
        finding("credential.shared", "medium", "system:serviceaccount:apps:web", _ts(80), _ts(2 * 1440 + 80),
                "JTI used from two IPs at once", credential_id="JTI=11111111-aaaa"),
        finding("reach.anomalous", "low", HOSTILE, _ts(70), _ts(2 * 1440 + 70), f"{HOSTILE} read secrets"),
    ]
    quarantine = [
        {"quarantined_at": datetime(2026, 11, 23, 1, tzinfo=UTC), "origin": "file:bad.jsonl:3",
         "source_guess": "k8s_audit", "reason": "invalid_json", "detail": "Expecting value: line 1 column 1",
         "raw_size": 9, "raw": b"not json\n", "raw_truncated": False},
        {"quarantined_at": datetime(2026, 11, 23, 1, tzinfo=UTC), "origin": "file:bad.jsonl:7",
         "source_guess": "k8s_audit", "reason": "missing_field", "detail": "no requestReceivedTimestamp",
         "raw_size": 20, "raw": b'{"kind":"Event"}', "raw_truncated": False},
    ]
    return {"k8s_audit": k8s, "proxy_decision": px, "idp_event": idp, "findings": findings,
            "quarantine": quarantine}


def write_rows(lake: Path, rows: dict[str, list[dict[str, Any]]], key: str = "fixture") -> Path:
    """Write ``rows`` (table -> list of row dicts) into ``lake`` with the production sink."""
    sink = LakeSink(lake)
    for table, items in rows.items():
        if items:
            sink.write(table, pa.Table.from_pylist(items, schema=_loose(table, items)), key)
    return lake


def _loose(table: str, items: list[dict[str, Any]]) -> pa.Schema:
    names = {k for r in items for k in r}
    return pa.schema([f for f in TABLES[table] if f.name in names])


def build_derived_tables(lake: Path) -> Path:
    """Build and write detect's derived tables (``reach``, ``credentials``) for ``lake`` with the real
    builders (:func:`ztaudit.detectors.run.build_derived`), without running any detector."""
    from ztaudit.core.config import Config
    from ztaudit.core.lake import open_lake
    from ztaudit.detectors.base import DetectContext
    from ztaudit.detectors.run import RunResult, build_derived

    result = RunResult()
    con = open_lake(lake)
    try:
        build_derived(DetectContext(con=con, config=Config(), lake=str(lake)), lake, result)
    finally:
        con.close()
    assert not result.errors, result.errors
    return lake


def build_lake(lake: Path, *, derived: bool = True) -> Path:
    """Write the story lake at ``lake`` (with detect's derived tables unless ``derived`` is False)."""
    write_rows(lake, story_rows())
    return build_derived_tables(lake) if derived else lake


def build_sample_lake(lake: Path, samples: Path, *, detect: bool = True) -> Path:
    """Ingest ``samples/<source kind>/`` with the real ingest, then run every detector (real detect)."""
    from ztaudit.core.config import Config
    from ztaudit.core.schema import SOURCE_KINDS
    from ztaudit.detectors.run import run_detectors
    from ztaudit.pipeline.ingest import ingest_paths

    cfg = Config()
    for kind in SOURCE_KINDS:
        if (samples / kind).is_dir():
            ingest_paths([samples / kind], lake, source=kind, config=cfg)
    if not detect:
        return lake
    result = run_detectors(lake, cfg)
    assert not result.errors, result.errors
    return lake


def ingest_generated(out: Path, lake: Path) -> Config:
    """Ingest what ``ztaudit generate --out OUT`` wrote, as its manifest says (per cluster, with its
    config); returns that config (environment ignored)."""
    import json

    from ztaudit.core.config import load_config
    from ztaudit.pipeline.ingest import ingest_paths

    how = json.loads((out / ".ztaudit" / "manifest.json").read_text())["ingest"]
    cfg = load_config(out / how["config"], env={})
    for cluster, pattern in how["k8s_audit"].items():
        ingest_paths(sorted(out.glob(pattern)), lake, source="k8s_audit", cluster=cluster, config=cfg)
    for kind in ("proxy_decision", "idp_event"):
        ingest_paths(sorted(out.glob(how[kind])), lake, source=kind, config=cfg)
    return cfg


def build_generated_lake(tmp: Path, *, events: int = 6000, days: int = 2, seed: int = 5) -> tuple[Path, Path]:
    """``ztaudit generate`` with every incident, then ingest and detect; returns (lake, labels.jsonl)."""
    from click.testing import CliRunner

    from ztaudit.cli.main import cli
    from ztaudit.detectors.run import run_detectors

    out = tmp / "generated"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", str(days), "--events", str(events),
                                   "--seed", str(seed), "--incidents", "all"])
    assert res.exit_code == 0, res.output
    lake = tmp / "genlake"
    cfg = ingest_generated(out, lake)
    result = run_detectors(lake, cfg)
    assert not result.errors, result.errors
    return lake, out / ".ztaudit" / "labels.jsonl"


def audit_day_checksum(lake: Path, day: str = "2026-11-20") -> tuple[int, str]:
    """(row count, sha256 of all rows sorted) over one day's k8s_audit files, every column: equal
    before and after a rewrite (compaction) that kept exactly the same rows."""
    import hashlib

    import duckdb

    glob = str(lake / "k8s_audit" / f"dt={day}" / "*.parquet")
    con = duckdb.connect()
    try:
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()]
        rows = con.execute(f"SELECT * FROM read_parquet('{glob}') ORDER BY origin, audit_id, stage").fetchall()
    finally:
        con.close()
    h = hashlib.sha256(repr(cols).encode())
    for r in rows:
        h.update(repr(r).encode())
    return len(rows), h.hexdigest()

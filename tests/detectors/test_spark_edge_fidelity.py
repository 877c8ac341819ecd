"""Fidelity of ``detect --engine spark`` on edge cases (issue 17, "What must be shown"), not only on the demo lake.

An adversarial Iceberg lake is built here (``LakeSink(lake, table_format="iceberg")``): every case file of
``tests/cases`` (all twelve detectors have some) plus named edge cases on 2026-06-10/11, each with its own
identities so a divergence points at its case:

* ``dup_audit_id``: the same audit event twice (two files) at two stages with different stage times,
  direct (proxy bypass) and through the proxy;
* ``window_edges``: whole-second proxy decisions with requests exactly at the tier B/C window edges
  (``[D - 3 s, D + 4 s]`` for a decision logged in second ``D``, 3 s being ``correlation.match_window_seconds``)
  and 1 µs either side, a µs-precision decision at ±3 s (±1 µs), tier A at ±300 s (±1 µs);
* ``nulls``: NULL user, impersonated user, groups, verb, request_uri, source address, audit cluster; proxy
  lines with NULL email, address, ids, path, method, host; IdP events with NULL subject;
* ``day_edges``: requests at 23:59:59.999999 and 00:00:00.000000, a pair across midnight, a revocation
  at ``t`` with a request and an allowed decision at ``t``;
* ``hash_collision``: requests at one µs whose audit ids make Spark's own 32-bit ``hash()`` of the request
  key collide (searched when the test runs): two unpaired proxied requests of two people per pair;
* ``map_keys``: legacy tokens whose ``annotations`` map is NULL, empty, lacks the Secret-name keys, holds
  one with a NULL or empty value, both keys, a key in other case, a stale-token key with NULL or empty
  value (the credential detectors read ``annotations[key]``; Spark 3.4+ gives NULL for a missing key
  like DuckDB, SPARK-40066);
* ``ties``: two requests of one tier C key at the same µs for one decision; two allowed decisions of a
  revoked subject in one second from two addresses; two anonymous denials in one second; another identity
  at the subject's address in the subject's last second (ASOF lookups on equal times).

``detect`` runs on DuckDB (in process) and on Spark (a child process with its own JVM, as
``test_spark_fidelity.py``); findings must be equal by ``finding_id`` and, per finding, detector, severity,
identity, first/last seen and evidence (as sets). DuckDB with ``threads=1`` and ``threads=2`` must agree too.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pytest
from support.cases import CASES, load_case
from support.lakes import PROXY_SA
from support.spark import spark_jars

from ztaudit.core.config import Config, load_config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors.engine import DuckDBEngine
from ztaudit.detectors.run import RunResult, run_detectors

pytestmark = [pytest.mark.spark, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:"
                                         "pytest.PytestUnraisableExceptionWarning")]

D0: Final = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)
MIDNIGHT: Final = datetime(2026, 6, 11, tzinfo=UTC)
US: Final = timedelta(microseconds=1)
S: Final = timedelta(seconds=1)
INGESTED: Final = datetime(2026, 6, 12, tzinfo=UTC)

#: Fields compared per finding (``evidence`` as a set); ``identity`` is actor, cluster, credential and namespace.
FIELDS: Final = ("detector", "severity", "actor", "cluster", "credential_id", "namespace", "first_seen", "last_seen")

#: Edge case -> the identities (finding actors, lower case) it owns.
EDGE_ACTORS: Final[dict[str, tuple[str, ...]]] = {
    "dup_audit_id": ("dup-direct@example.com", "dup-proxy@example.com", "dup-stream@example.com"),
    "window_edges": tuple(f"edge-{n}@example.com" for n in ("c", "b", "a", "us")),
    "nulls": ("null-direct@example.com", "null-proxy@example.com", "null-rev@example.com"),
    "day_edges": ("day-direct@example.com", "day-proxy@example.com", "day-rev@example.com"),
    "tier_c_tie": ("tie-c@example.com",),
    "asof_last_use_tie": ("tie-ip@example.com",),
    "asof_denial_tie": ("tie-dn@example.com",),
    "asof_seen_tie": ("tie-seen@example.com",),
    "hash_collision": ("coll-a@example.com", "coll-b@example.com"),
    "map_keys": tuple(f"system:serviceaccount:mapk:{n}" for n in (
        "null-map", "empty-map", "other-keys", "null-auto", "both", "case", "empty-value", "stale-null",
        "stale-empty")),
}

#: Not covered here, found while building this lake: two different requests logged under the same
#: (cluster, Audit-ID, request time), e.g. a client-chosen Audit-ID reused by another user in the same
#: µs. Every detector groups stages by that key and reads identity columns with ``any_value``, so the
#: actor of such a "request" depends on DuckDB's thread schedule (threads=1 and threads=2 named
#: different users for ``impersonation.unbrokered``) and may differ on Spark.
KNOWN_GAPS: Final = ("audit_id collision with different content: any_value over one request's stages",)

_n = 0


def _audit(actor: str | None, at: datetime, *, via_proxy: bool = False, path: str = "/api/v1/namespaces/edge/pods",
           verb: str | None = "get", audit_id: str | None = None, cluster: str | None = "prod",
           stages: tuple[str, ...] = ("RequestReceived", "ResponseComplete"), code: int = 200,
           source_ip: str | None = "10.0.0.5", session: str | None = None, **over: Any) -> list[dict[str, Any]]:
    """The rows (one per stage, ResponseComplete 5 ms later) of one request."""
    global _n
    _n += 1
    imp = PROXY_SA if via_proxy else None
    out = []
    for st in stages:
        r: dict[str, Any] = {
            "audit_id": audit_id or f"edge-{_n:05d}", "cluster": cluster, "stage": st, "level": "Metadata",
            "request_received_at": at,
            "stage_at": at + (timedelta(milliseconds=5) if st != "RequestReceived" else timedelta(0)),
            "verb": verb, "request_uri": path, "user_name": imp or actor, "user_groups": ["system:authenticated"],
            "credential_kind": "none", "impersonator": imp, "impersonated_user": actor if imp else None,
            "actor": actor, "actor_kind": "human", "source_ip": source_ip,
            "source_ips": [source_ip] if source_ip else None, "user_agent": "kubectl/v1.31.0",
            "resource": "pods", "namespace": "edge", "api_group": "", "api_version": "v1",
            "response_code": None if st == "RequestReceived" else code,
            "decision": "allow" if code < 400 else "forbid", "proxy_session_id": session,
            "origin": f"file:edge-audit.jsonl:{_n}", "ingested_at": INGESTED}
        r.update(over)
        out.append(r)
    return out


def _decision(email: str | None, at: datetime, *, path: str | None = "/api/v1/namespaces/edge/pods",
              allowed: bool = True, ip: str | None = "203.0.113.7", session: str | None = None,
              request_id: str | None = None, user_id: str | None = None, **over: Any) -> dict[str, Any]:
    global _n
    _n += 1
    r: dict[str, Any] = {
        "decided_at": at, "proxy": "pomerium", "request_id": request_id or f"edge-rid-{_n:05d}", "session_id": session,
        "user_id": user_id if user_id is not None else (f"uid-{email.split('@')[0]}" if email else None),
        "email": email, "method": "GET", "host": "k8s.example.com", "path": path, "is_allowed": allowed,
        "cluster": "prod", "client_ip": ip, "user_agent": "kubectl/v1.31.0", "record_type": "authorize",
        "origin": f"file:edge-pomerium.log:{_n}", "ingested_at": INGESTED}
    r.update(over)
    return r


def _anon_denial(at: datetime, ip: str, request_id: str) -> dict[str, Any]:
    return _decision("", at, allowed=False, ip=ip, request_id=request_id, user_id="", allow_reasons=None,
                     deny_reasons=["user-unauthenticated"])


def _revoke(at: datetime, login: str | None, subject_id: str | None, origin: str) -> dict[str, Any]:
    return {"occurred_at": at, "idp": "okta", "event_type": "user.lifecycle.deactivate", "is_revocation": True,
            "revocation_scope": "identity", "subject_id": subject_id, "subject_login": login, "actor": "hr@example.com",
            "outcome": "SUCCESS", "origin": origin, "ingested_at": INGESTED}


def edge_rows() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Edge case -> table -> rows (module docstring)."""
    cases: dict[str, dict[str, list[dict[str, Any]]]] = {}

    # 1. duplicate Audit-IDs: written twice (see build_lake), two stages with different stage times
    t = D0
    w = t + timedelta(hours=2)  # a watch opened before a revocation, its stages logged twice
    watch = {"via_proxy": True, "verb": "watch", "audit_id": "dup-w", "path": "/api/v1/namespaces/edge/pods?watch=true"}
    cases["dup_audit_id"] = {
        "k8s_audit": [*_audit("dup-direct@example.com", t, verb="delete", audit_id="dup-1"),
                      *_audit("dup-proxy@example.com", t + 10 * S, via_proxy=True, audit_id="dup-2"),
                      *_audit("dup-proxy@example.com", t + 70 * S, via_proxy=True, audit_id="dup-3",
                              path="/api/v1/namespaces/edge/pods/unpaired"),
                      *_audit("dup-stream@example.com", w, stages=("RequestReceived",), **watch),
                      *_audit("dup-stream@example.com", w, stages=("ResponseStarted",), **watch,
                              stage_at=w + timedelta(milliseconds=100)),
                      *_audit("dup-stream@example.com", w, stages=("ResponseComplete",), **watch,
                              stage_at=w + timedelta(minutes=40))],
        "proxy_decision": [_decision("dup-proxy@example.com", t + 10 * S),
                           _decision("dup-stream@example.com", w - timedelta(minutes=1))],
        "idp_event": [_revoke(w + timedelta(minutes=1), "dup-stream@example.com", "uid-dup-stream", "o-dup-stream")],
    }

    # 2. window edges: decision at whole second D pairs requests in [D - 3 s, D + 4 s] (tiers B and C)
    k8s, px = [], []
    offsets = {"lo-1us": -3 * S - US, "lo": -3 * S, "lo+1us": -3 * S + US,
               "hi-1us": 4 * S - US, "hi": 4 * S, "hi+1us": 4 * S + US}
    for i, (name, off) in enumerate(offsets.items()):
        d = D0 + timedelta(minutes=10 + i)
        path = f"/api/v1/namespaces/edge/pods/c-{name}"
        px.append(_decision("edge-c@example.com", d, path=path))
        k8s += _audit("edge-c@example.com", d + off, via_proxy=True, path=path)
        # tier B: the session id on both sides, the user not impersonated
        path = f"/api/v1/namespaces/edge/pods/b-{name}"
        px.append(_decision("edge-b@example.com", d + 30 * S, path=path, session="s-edge-b"))
        k8s += _audit("edge-b@example.com", d + 30 * S + off, path=path, session="s-edge-b")
        # tier A: the request id as audit id, 300 s either side
        rid = f"edge-a-{name}"
        a_off = (-300 * S if name.startswith("lo") else 300 * S) + (off - (-3 * S if name.startswith("lo") else 4 * S))
        path = f"/api/v1/namespaces/edge/pods/a-{name}"
        px.append(_decision("edge-a@example.com", d + 45 * S, path=path, request_id=rid))
        k8s += _audit("edge-a@example.com", d + 45 * S + a_off, via_proxy=True, path=path, audit_id=rid)
    for i, off in enumerate((-3 * S - US, -3 * S, 3 * S, 3 * S + US)):  # a µs-precision decision: |a - d| <= 3 s
        d = D0 + timedelta(minutes=20 + i, microseconds=250_000)
        path = f"/api/v1/namespaces/edge/pods/us-{i}"
        px.append(_decision("edge-us@example.com", d, path=path))
        k8s += _audit("edge-us@example.com", d + off, via_proxy=True, path=path)
    cases["window_edges"] = {"k8s_audit": k8s, "proxy_decision": px}

    # 3. NULLs in the columns of IN / NOT IN / anti-join predicates
    t = D0 + timedelta(hours=1)
    k8s = [*_audit("null-direct@example.com", t, user_groups=None, source_ip=None, user_agent=None),
           *_audit("null-direct@example.com", t + S, verb=None, path=None),  # NULL verb and request_uri
           *_audit("null-direct@example.com", t + 2 * S, user_name=None),  # NULL user_name
           *_audit("null-proxy@example.com", t + 3 * S, via_proxy=True, impersonated_user=None),
           *_audit("null-proxy@example.com", t + 4 * S, via_proxy=True, cluster=None),
           *_audit("null-proxy@example.com", t + 5 * S, via_proxy=True, session="s-null"),
           *_audit("null-proxy@example.com", t + 6 * S, via_proxy=True, impersonated_groups=None, user_groups=None,
                   path="/api/v1/namespaces/edge/pods/n6"),
           *_audit("null-rev@example.com", t + timedelta(minutes=40), via_proxy=True, source_ip=None)]
    px = [_decision(None, t + 5 * S), _decision("null-proxy@example.com", t + 6 * S, ip=None, request_id=None,
                                                path="/api/v1/namespaces/edge/pods/n6"),
          _decision("null-proxy@example.com", t + 7 * S, path=None, method=None, host=None, origin=None),
          _decision("null-proxy@example.com", t + 8 * S, session="s-null", check_request_id=None, proxy=None),
          _decision("null-rev@example.com", t - timedelta(minutes=5), ip=None),
          _decision("null-rev@example.com", t + timedelta(minutes=40), ip=None, user_id=None)]
    idp = [_revoke(t, "null-rev@example.com", None, "o-null-1"), _revoke(t, None, None, "o-null-2")]
    cases["nulls"] = {"k8s_audit": k8s, "proxy_decision": px, "idp_event": idp}

    # 4. UTC day edges, and a revocation at t with a use at t
    last = MIDNIGHT - US
    rev = MIDNIGHT + timedelta(hours=2)
    cases["day_edges"] = {
        "k8s_audit": [*_audit("day-direct@example.com", last), *_audit("day-direct@example.com", MIDNIGHT),
                      *_audit("day-proxy@example.com", MIDNIGHT, via_proxy=True),
                      *_audit("day-proxy@example.com", last, via_proxy=True, path="/api/v1/namespaces/edge/pods/x"),
                      *_audit("day-rev@example.com", rev, via_proxy=True),
                      *_audit("day-rev@example.com", rev + timedelta(minutes=20), via_proxy=True)],
        "proxy_decision": [_decision("day-proxy@example.com", MIDNIGHT - S),
                           _decision("day-rev@example.com", rev - timedelta(minutes=30)),
                           _decision("day-rev@example.com", rev),
                           _decision("day-rev@example.com", rev + timedelta(minutes=20))],
        "idp_event": [_revoke(rev, "day-rev@example.com", "uid-day-rev", "o-day-1"),
                      _revoke(last, "day-direct@example.com", "uid-day-direct", "o-day-2")],
    }

    # 5. ties
    t = D0 + timedelta(hours=3)
    k8s, px = [], []
    for i in range(8):  # per key: two requests in the same µs and one decision; two decisions in one second
        path = f"/api/v1/namespaces/edge/pods/tie-{i}"
        at = t + timedelta(minutes=i, milliseconds=200)
        k8s += [*_audit("tie-c@example.com", at, via_proxy=True, audit_id=f"tie-c-{i}-a", path=path),
                *_audit("tie-c@example.com", at, via_proxy=True, audit_id=f"tie-c-{i}-b", path=path)]
        px.append(_decision("tie-c@example.com", at.replace(microsecond=0), path=path))
        path = f"/api/v1/namespaces/edge/pods/tie-p{i}"
        at = t + timedelta(minutes=i, seconds=30)
        px += [_decision("tie-c@example.com", at, path=path, request_id=f"tie-p-{i}-a"),
               _decision("tie-c@example.com", at, path=path, request_id=f"tie-p-{i}-b")]
        k8s += _audit("tie-c@example.com", at + timedelta(milliseconds=100), via_proxy=True, path=path)
    cases["tier_c_tie"] = {"k8s_audit": k8s, "proxy_decision": px}
    t = D0 + timedelta(hours=4)
    cases["asof_last_use_tie"] = {  # last allowed decisions in one second from two addresses; denials from one
        "proxy_decision": [_decision("tie-ip@example.com", t - timedelta(minutes=10), ip="198.51.100.20"),
                           _decision("tie-ip@example.com", t - timedelta(minutes=1), ip="198.51.100.20"),
                           _decision("tie-ip@example.com", t - timedelta(minutes=1), ip="198.51.100.21"),
                           _anon_denial(t + timedelta(minutes=2), "198.51.100.20", "tie-ip-dn1"),
                           _anon_denial(t + timedelta(minutes=3), "198.51.100.21", "tie-ip-dn2"),
                           _decision("tie-ip@example.com", t + timedelta(minutes=30), ip="198.51.100.22")],
        "k8s_audit": _audit("tie-ip@example.com", t + timedelta(minutes=30), via_proxy=True),
        "idp_event": [_revoke(t, "tie-ip@example.com", "uid-tie-ip", "o-tie-ip")],
    }
    t = D0 + timedelta(hours=5)
    cases["asof_denial_tie"] = {  # anonymous denials in one second: at the revocation, after the last allowed use
        "proxy_decision": [_decision("tie-dn@example.com", t - timedelta(minutes=1), ip="198.51.100.30"),
                           _anon_denial(t, "198.51.100.30", "tie-dn-b"),
                           _anon_denial(t, "198.51.100.30", "tie-dn-a"),
                           _decision("tie-dn@example.com", t + timedelta(minutes=20), ip="198.51.100.31"),
                           _anon_denial(t + timedelta(minutes=20), "198.51.100.30", "tie-dn-d"),
                           _anon_denial(t + timedelta(minutes=20), "198.51.100.30", "tie-dn-c"),
                           _anon_denial(t + timedelta(minutes=40), "198.51.100.30", "tie-dn-e")],
        "k8s_audit": _audit("tie-dn@example.com", t + timedelta(minutes=20), via_proxy=True),
        "idp_event": [_revoke(t, "tie-dn@example.com", "uid-tie-dn", "o-tie-dn")],
    }
    t = D0 + timedelta(hours=6)
    cases["asof_seen_tie"] = {  # another identity at the subject's address in the subject's last second
        "proxy_decision": [_decision("tie-seen@example.com", t - timedelta(minutes=1), ip="198.51.100.40"),
                           _decision("zed-other@example.com", t - timedelta(minutes=1), ip="198.51.100.40"),
                           _decision("aaa-other@example.com", t - timedelta(minutes=1), ip="198.51.100.40"),
                           _anon_denial(t + timedelta(minutes=1), "198.51.100.40", "tie-seen-dn1"),
                           _anon_denial(t + timedelta(minutes=40), "198.51.100.40", "tie-seen-dn2"),
                           _decision("bbb-other@example.com", t + timedelta(minutes=45), ip="198.51.100.40"),
                           _anon_denial(t + timedelta(minutes=45), "198.51.100.40", "tie-seen-dn4"),
                           _anon_denial(t + timedelta(minutes=45), "198.51.100.40", "tie-seen-dn3"),
                           _decision("tie-seen@example.com", t + timedelta(minutes=30), ip="198.51.100.41")],
        "k8s_audit": _audit("tie-seen@example.com", t + timedelta(minutes=30), via_proxy=True),
        "idp_event": [_revoke(t, "tie-seen@example.com", "uid-tie-seen", "o-tie-seen")],
    }

    # 6. map keys: the annotations the credential detectors look up, absent, NULL, empty or doubled
    t = D0 + timedelta(hours=7)
    auto = "authentication.k8s.io/legacy-token-autogenerated-secret"
    manual = "authentication.k8s.io/legacy-token-manual-secret"
    stale = "authentication.k8s.io/stale-token"
    maps: dict[str, list[tuple[str, str | None]] | None] = {
        "null-map": None, "empty-map": [], "other-keys": [("authentication.k8s.io/legacy-token", "x")],
        "null-auto": [(auto, None), (manual, "manual-tok")], "both": [(auto, "auto-tok"), (manual, "manual-tok")],
        "case": [(auto.upper(), "upper-tok")], "empty-value": [(auto, "")],
        "stale-null": [(manual, "m2"), (stale, None)], "stale-empty": [(manual, "m3"), (stale, "")]}
    k8s = []
    for i, (name, notes) in enumerate(maps.items()):
        sa = f"system:serviceaccount:mapk:{name}"
        k8s += _audit(sa, t + i * S, actor_kind="service_account", is_legacy_token=True,
                      credential_kind="legacy_secret", annotations=notes)
    cases["map_keys"] = {"k8s_audit": k8s}
    return cases


#: When the ``hash_collision`` requests are made (their audit ids collide at this instant).
COLLIDE_AT: Final = D0 + timedelta(hours=8)


def collision_rows(pairs: list[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """The ``hash_collision`` case: per pair of audit ids whose request key ``hash('prod', id,
    COLLIDE_AT)`` collides under Spark's 32-bit ``hash()`` (found by :func:`support.spark.hash_collisions`),
    two proxied requests of two people at the same µs that no decision explains. Both reach the audit
    side's ``GROUP BY hash(cluster, audit_id, request_received_at)`` (correlate_queries.AUDIT_SIDE):
    merged, as Spark's own hash would, one of the pair would vanish from the unpaired requests and from
    the evidence (:func:`test_colliding_requests_are_each_in_the_evidence`)."""
    k8s: list[dict[str, Any]] = []
    for a, b in pairs:
        k8s += _audit("coll-a@example.com", COLLIDE_AT, via_proxy=True, audit_id=a,
                      path=f"/api/v1/namespaces/edge/pods/{a}")
        k8s += _audit("coll-b@example.com", COLLIDE_AT, via_proxy=True, audit_id=b,
                      path=f"/api/v1/namespaces/edge/pods/{b}")
    return {"k8s_audit": k8s}


def _write(sink: LakeSink, table: str, rows: list[dict[str, Any]], key: str) -> None:
    names = {k for r in rows for k in r}
    schema = pa.schema([f for f in TABLES[table] if f.name in names])
    sink.write(table, pa.Table.from_pylist(rows, schema=schema), key)


def _own_ids(row: dict[str, Any], case: str) -> dict[str, Any]:
    """``row`` of a case file with its audit and proxy request ids prefixed by the case's name. The case
    files were written for a lake each and reuse ids (``x-1``, ``w-1``) at equal times for other users:
    two *different* requests under one (cluster, Audit-ID, time) are one request to every detector,
    whose columns ``any_value`` then takes from either (see :data:`KNOWN_GAPS`)."""
    out = dict(row)
    for col in ("audit_id", "request_id", "check_request_id"):
        if out.get(col) is not None:
            out[col] = f"{case}/{out[col]}"
    return out


def build_lake(lake: Path, collisions: list[tuple[str, str]]) -> None:
    """The adversarial Iceberg lake: every case file of tests/cases, then the edge cases (the duplicate
    Audit-IDs' rows in a second file too), and the ``hash_collision`` case for ``collisions``."""
    sink = LakeSink(lake, table_format="iceberg")
    for table, rows in collision_rows(collisions).items():
        _write(sink, table, rows, "edge-hash_collision")
    for path in sorted(CASES.glob("*/*/*.jsonl")):
        case = load_case(path)
        for table, rows in case.rows().items():
            _write(sink, table, [_own_ids(r, case.name) for r in rows], f"case-{path.parent.name}-{case.name}")
    for name, tables in EDGE.items():
        for table, rows in tables.items():
            _write(sink, table, rows, f"edge-{name}")
    # the duplicate Audit-ID rows again, in another file: what a rotated log read twice leaves
    again = [{**r, "origin": str(r["origin"]).replace("edge-audit", "edge-audit-rotated")}
             for r in EDGE["dup_audit_id"]["k8s_audit"]]
    _write(sink, "k8s_audit", again, "edge-dup-again")
    sink.publish()


#: The edge cases' rows, made once (the ids count up).
EDGE: Final = edge_rows()


def config() -> Config:
    """Defaults, with tier B on (the session extra key of the case files that need it)."""
    return load_config(os.devnull, env={}, overrides={"correlation": {"session_extra_key": "pomerium.io/sid"}})


def _findings(result: RunResult) -> dict[str, dict[str, Any]]:
    return {r["finding_id"]: {k: v for k, v in r.items() if k != "detected_at"} for r in result.rows}


_SPARK_RUN = """
import logging, pickle, sys
from dataclasses import replace
from pathlib import Path
from ztaudit.detectors.run import run_detectors
logging.getLogger("sqlglot").setLevel(logging.ERROR)
cfg = pickle.loads(Path(sys.argv[2]).read_bytes())
r = run_detectors(Path(sys.argv[1]), cfg, engine="spark", write=False)
Path(sys.argv[3]).write_bytes(pickle.dumps(r))
"""


def _spark_run(lake: Path, cfg: Config, tmp: Path) -> RunResult:
    (tmp / "cfg.pickle").write_bytes(pickle.dumps(cfg))
    args = [sys.executable, "-c", _SPARK_RUN, str(lake), str(tmp / "cfg.pickle"), str(tmp / "run.pickle")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: RunResult = pickle.loads((tmp / "run.pickle").read_bytes())  # our own child wrote it
    return result


def _duck_run(lake: Path, cfg: Config, threads: int) -> RunResult:
    engine = DuckDBEngine(open_lake(lake, threads=threads))
    try:
        return run_detectors(lake, cfg, con=engine, write=False)
    finally:
        engine.close()


def spark_collisions() -> list[tuple[str, str]]:
    """Three pairs of audit ids that collide under Spark's own ``hash()`` at :data:`COLLIDE_AT`,
    searched on a plain Spark session (its JVM ended before the fidelity runs start theirs)."""
    from support.spark import end_jvm, hash_collisions, plain_session

    spark = plain_session()  # skips locally / fails in CI without PySpark
    try:
        pairs = hash_collisions(spark, "prod", COLLIDE_AT)[:3]
    finally:
        end_jvm()
    assert len(pairs) == 3, pairs
    return pairs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from dataclasses import replace

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    jars = spark_jars()  # skips locally / fails in CI without PySpark or the jars
    lake = tmp_path_factory.mktemp("edge") / "lake"
    collisions = spark_collisions()
    build_lake(lake, collisions)
    base = config()
    cfg = replace(base, detect=replace(base.detect, spark_jars=":".join(str(j) for j in jars)))
    t0 = time.perf_counter()
    duck1 = _duck_run(lake, cfg, 1)
    duck2 = _duck_run(lake, cfg, 2)
    t1 = time.perf_counter()
    spark = _spark_run(lake, cfg, tmp_path_factory.mktemp("edge-run"))
    t2 = time.perf_counter()
    print(f"\ndetect on the edge lake: duckdb x2 {t1 - t0:.1f} s, spark {t2 - t1:.1f} s (session start included)")
    return {"duck1": duck1, "duck2": duck2, "spark": spark, "lake": lake, "collisions": collisions}


def _view(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {fid: (*(r[k] for k in FIELDS), frozenset(r["evidence"] or ())) for fid, r in rows.items()}


def _diff(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> list[str]:
    out = [f"only duckdb: {a[f]}" for f in sorted(set(a) - set(b))]
    out += [f"only spark: {b[f]}" for f in sorted(set(b) - set(a))]
    out += [f"differ: {a[f]} / {b[f]}" for f in sorted(set(a) & set(b)) if a[f] != b[f]]
    return out


def _of(rows: dict[str, dict[str, Any]], actors: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in rows.items() if str(v["actor"]).lower() in actors}


def test_both_engines_run_every_detector(runs: dict[str, Any]) -> None:
    for name in ("duck1", "spark"):
        assert not runs[name].errors, runs[name].errors
    assert sum(1 for c in runs["duck1"].counts.values() if c) >= 10


@pytest.mark.parametrize("case", sorted(EDGE_ACTORS))
def test_edge_case_findings_are_the_same_on_both_engines(runs: dict[str, Any], case: str) -> None:
    """Per edge case: the same findings, and in each every field but ``detected_at`` (evidence as a set).
    Without the tie-breaks of this issue ``tier_c_tie`` (the requests and decisions left unpaired) and
    ``dup_audit_id`` (the stream's stage origins, in the context) failed."""
    duck = _of(_findings(runs["duck1"]), EDGE_ACTORS[case])
    spark = _of(_findings(runs["spark"]), EDGE_ACTORS[case])
    assert duck, f"{case}: no finding to compare"
    assert not _diff(_view(duck), _view(spark)), "\n".join(_diff(_view(duck), _view(spark)))
    bad = [f"{duck[f]['detector']} {duck[f]['actor']} {k}: {duck[f][k]!r} / {spark[f][k]!r}"
           for f in duck for k in duck[f] if k != "evidence" and duck[f][k] != spark[f][k]]
    assert not bad, "\n".join(bad)


def test_every_finding_is_the_same_on_both_engines(runs: dict[str, Any]) -> None:
    duck, spark = _view(_findings(runs["duck1"])), _view(_findings(runs["spark"]))
    assert not _diff(duck, spark), "\n".join(_diff(duck, spark))


def test_every_field_is_the_same_on_both_engines(runs: dict[str, Any]) -> None:
    duck, spark = _findings(runs["duck1"]), _findings(runs["spark"])
    assert sorted(duck) == sorted(spark)
    bad = [f"{fid} {k}: {duck[fid][k]!r} / {spark[fid][k]!r}" for fid in duck for k in duck[fid]
           if duck[fid][k] != spark[fid][k]]
    assert not bad, "\n".join(bad)


def test_colliding_requests_are_each_in_the_evidence(runs: dict[str, Any]) -> None:
    """Every audit id of the hash_collision pairs is evidence of its person's finding on both engines
    (the pairs' ids collide under Spark's own hash: a merge would drop one of each pair)."""
    ids = {a for pair in runs["collisions"] for a in pair}
    assert len(ids) == 6
    for name in ("duck1", "spark"):
        found = _of(_findings(runs[name]), EDGE_ACTORS["hash_collision"])
        refs = {e for f in found.values() for e in f["evidence"] or ()}
        assert {f"k8s_audit:prod/{i}" for i in ids} <= refs, (name, sorted(refs))


def test_a_legacy_token_keys_on_a_secret_name_only_when_one_is_logged(runs: dict[str, Any]) -> None:
    """The credential key of the map_keys tokens (both engines agree, above): an empty, NULL or
    other-case Secret-name annotation falls back to the holder, the autogenerated key wins over the
    manual one, and an empty value never makes a ``SECRET=ns/`` key."""
    keys = {str(f["actor"]).rsplit(":", 1)[1]: f["credential_id"] for f in _findings(runs["duck1"]).values()
            if f["detector"] == "credential.legacy_token" and str(f["actor"]).startswith("system:serviceaccount:mapk:")}
    fallback = {n: f"TOKEN?=legacy:system:serviceaccount:mapk:{n}"
                for n in ("null-map", "empty-map", "other-keys", "case", "empty-value")}
    assert keys == {**fallback, "null-auto": "SECRET=mapk/manual-tok", "both": "SECRET=mapk/auto-tok",
                    "stale-null": "SECRET=mapk/m2", "stale-empty": "SECRET=mapk/m3"}


def test_duckdb_one_thread_and_two_give_the_same_findings(runs: dict[str, Any]) -> None:
    assert _findings(runs["duck1"]) == _findings(runs["duck2"])


# --- the dialect rules added for these cases: DuckDB and Spark on the same rows ---------------------
# (after the fidelity tests: their Spark run is a child process that has ended by now, so this module
# never has two JVMs at once)

URIS: Final = ["/api/v1/pods?watch=true", "/api/v1/pods?watch=0", "/api/v1/pods?watch=FALSE&watch=1",
               "/api/v1/pods?wat%63h=1", "/api/v1/pods?watch", "/api/v1/pods?watch=", "/api/v1/pods?x=1&watch=fal%73e",
               "/api/v1/pods?watch=%zz", "/api/v1/pods?%zzwatch=1", "/api/v1/pods?watch=false+", "/api/v1/pods",
               "/api/v1/pods?a=b?watch=1", "/api/v1/pods?=&&watch=no", None]


def test_stream_parameters_and_list_index_are_read_alike_on_both_engines() -> None:
    import duckdb
    from support.spark import end_jvm, plain_session

    from ztaudit.detectors.revocation_stream import _param_true
    from ztaudit.detectors.spark_dialect import idioms, transpile

    sql = (f"SELECT q.request_uri, {_param_true('watch')} AS watch, "
           "[kv FOR kv IN string_split(coalesce(q.request_uri, ''), '?') IF kv <> ''][2] AS second, "
           "string_split(coalesce(q.request_uri, ''), '?')[1] AS first, "
           "string_split(coalesce(q.request_uri, ''), '?')[9] AS past_end FROM q")
    assert {"list_index", "try_url_decode"} <= set(idioms(sql))
    table = pa.table({"request_uri": pa.array(URIS, pa.string())})
    con = duckdb.connect()
    con.register("q", table)
    want = sorted(map(tuple, con.sql(sql).fetchall()), key=repr)
    con.close()
    spark = plain_session()  # skips locally / fails in CI without PySpark
    try:
        spark.createDataFrame(table).createOrReplaceTempView("q")
        got = sorted((tuple(r) for r in spark.sql(transpile(sql)).collect()), key=repr)
    finally:
        end_jvm()
    assert got == want
    assert [r[1] for r in want if r[0] is not None and r[0].endswith("watch=true")] == [True]

"""Proxy ↔ audit correlation (docs/proxy-and-idp.md §0): tiers, time window, multiset pairing.

Every test checks both paths: the analyst view ``proxy_audit_match`` and the materialized tables the
detectors use (``correlate.ensure``), which must agree.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from ztaudit.core.config import Config, replace
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.core.window import Window
from ztaudit.detectors import correlate
from ztaudit.detectors.base import DetectContext

SA = "system:serviceaccount:pomerium:pomerium-authorize"
T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)


def _decision(i: int, at: datetime, *, email: str = "alice@example.com", method: str = "GET",
              path: str = "/api/v1/namespaces/web/pods", host: str = "k8s.example.com",
              cluster: str | None = "prod", allowed: bool = True, rid: str | None = None) -> dict[str, Any]:
    return {"decided_at": at, "request_id": rid or f"p{i}", "email": email, "method": method, "path": path,
            "host": host, "cluster": cluster, "is_allowed": allowed, "record_type": "authorize",
            "origin": f"test:p:{i}"}


def _request(i: str | int, at: datetime, *, user: str = "alice@example.com", verb: str = "list",
             uri: str = "/api/v1/namespaces/web/pods?limit=500", cluster: str | None = "prod") -> dict[str, Any]:
    return {"audit_id": f"a{i}", "cluster": cluster, "stage": "ResponseComplete", "request_received_at": at,
            "stage_at": at, "verb": verb, "request_uri": uri, "user_name": SA, "impersonator": SA,
            "impersonated_user": user, "actor": user, "response_code": 200, "origin": f"test:a:{i}"}


def _write(lake: Path, proxy: list[dict[str, Any]], audit: list[dict[str, Any]], cluster: str | None = "prod") -> None:
    # a late unrelated row on each side so nothing is "pending" at the data's end
    late = T0 + timedelta(hours=1)
    proxy = [*proxy, _decision(999, late, email="zed@example.com", allowed=False, cluster=cluster)]
    audit = [*audit, {"audit_id": "late", "cluster": cluster, "request_received_at": late, "user_name": "system:x",
                      "verb": "get", "request_uri": "/healthz", "origin": "test:late"}]
    sink = LakeSink(lake)
    for table, rows in (("proxy_decision", proxy), ("k8s_audit", audit)):
        keys = {k for r in rows for k in r}
        schema = pa.schema([f for f in TABLES[table] if f.name in keys])
        sink.write(table, pa.Table.from_pylist(rows, schema=schema), "t")


def _sides(lake: Path, cfg: Config | None = None) -> dict[str, int]:
    cfg = cfg or Config()
    con = open_lake(lake, must_exist=False)
    correlate.install_config(con, cfg)
    view = dict(con.execute("SELECT side, count(*) FROM proxy_audit_match GROUP BY side").fetchall())
    corr = correlate.ensure(DetectContext(con, cfg))
    summary = con.execute("SELECT sum(matched_tier_a + matched_tier_b + matched_tier_c), sum(unmatched_proxy), "
                          f"sum(unmatched_audit) FROM {corr.summary}").fetchone()
    assert summary is not None
    both, proxy, audit = (int(x or 0) for x in summary)
    assert (view.get("both", 0), view.get("proxy", 0), view.get("audit", 0)) == (both, proxy, audit), view
    detailed = con.execute(f"SELECT * FROM {corr.summary} ORDER BY ALL").fetchall()
    # the report's summary-only plan (no detail tables, unmatched rows taken from the matching
    # tables) must count exactly what the detect plan counts
    lean = open_lake(lake, must_exist=False)
    correlate.run_plan(lean, cfg, Window(), correlate.SUMMARY_PLAN)
    assert lean.execute(f"SELECT * FROM {correlate.SUMMARY_ONLY} ORDER BY ALL").fetchall() == detailed
    assert not lean.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'zt_unmatched_proxy'"
                            ).fetchall()[0][0]
    return {"both": both, "proxy": proxy, "audit": audit}


def test_identical_requests_pair_as_multiset(lake: Path) -> None:
    # 30 identical GETs one second apart; the 10th and 20th never reached the API server
    proxy = [_decision(i, T0 + timedelta(seconds=i)) for i in range(30)]
    audit = [_request(i, T0 + timedelta(seconds=i, milliseconds=200)) for i in range(30) if i not in (10, 20)]
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 28, "proxy": 2, "audit": 0}


def test_unaudited_path_is_left_out_by_both_plans(lake: Path) -> None:
    """An impersonated ``GET /version`` that an audit policy did log (a catch-all Metadata rule) is on an
    unaudited path: neither the detect plan nor the report's summary plan counts it (``_sides`` compares
    them; the summary plan counted it as unmatched audit)."""
    proxy = [_decision(1, T0)]
    audit = [_request(1, T0 + timedelta(milliseconds=200)),
             _request(2, T0 + timedelta(seconds=5), verb="get", uri="/version?timeout=32s")]
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 1, "proxy": 0, "audit": 0}


def test_burst_in_one_second(lake: Path) -> None:
    proxy = [_decision(i, T0) for i in range(6)]  # six GET /apis logged in the same whole second
    audit = [_request(i, T0 + timedelta(milliseconds=100 + 90 * i), verb="get", uri="/apis?timeout=32s")
             for i in range(6)]
    for p in proxy:
        p["path"] = "/apis"
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 6, "proxy": 0, "audit": 0}


def test_window_edges_second_precision(lake: Path) -> None:
    # decided_at 10:00:05 stands for [10:00:05, 10:00:06); with a 3 s window: [10:00:02, 10:00:09]
    cases = [("in-late", 8.9, True), ("out-late", 9.2, False), ("in-early", 2.1, True), ("out-early", 1.8, False)]
    proxy, audit = [], []
    for n, (name, sec, _) in enumerate(cases):
        path = f"/api/v1/namespaces/{name}/pods"
        proxy.append(_decision(n, T0 + timedelta(minutes=n, seconds=5), path=path))
        audit.append(_request(name, T0 + timedelta(minutes=n, seconds=sec), uri=path))
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 2, "proxy": 2, "audit": 2}
    wide = replace(Config(), "correlation", match_window_seconds=4.0)
    assert _sides(lake, wide) == {"both": 4, "proxy": 0, "audit": 0}


def test_method_must_fit_verb(lake: Path) -> None:
    proxy = [_decision(1, T0, method="GET"), _decision(2, T0 + timedelta(minutes=1), method="DELETE"),
             _decision(3, T0 + timedelta(minutes=2), method="GET", path="/metrics"),
             _decision(4, T0 + timedelta(minutes=3), method="GET")]
    audit = [_request(1, T0 + timedelta(milliseconds=300), verb="watch"),
             _request(2, T0 + timedelta(minutes=1, milliseconds=300), verb="deletecollection"),
             _request(3, T0 + timedelta(minutes=2, milliseconds=300), verb="get", uri="/metrics"),
             _request(4, T0 + timedelta(minutes=3, milliseconds=300), verb="create")]  # POST, not GET
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 3, "proxy": 1, "audit": 1}


def test_identity_cluster_and_host(lake: Path) -> None:
    proxy = [_decision(1, T0, email="Alice@Example.com"),                       # case-insensitive match
             _decision(2, T0 + timedelta(minutes=1), host="grafana.example.com"),  # not a Kubernetes host
             _decision(3, T0 + timedelta(minutes=2), cluster=None, host="K8S-DEV.example.com:443")]
    audit = [_request(1, T0 + timedelta(milliseconds=300), user="alice@example.com"),
             _request(3, T0 + timedelta(minutes=2, milliseconds=300), cluster="dev")]
    _write(lake, proxy, audit)
    cfg = replace(Config(), "impersonation", proxy_hosts={"k8s.example.com": "prod", "k8s-dev.example.com": "dev"})
    assert _sides(lake, cfg) == {"both": 2, "proxy": 0, "audit": 0}


def test_a_host_spelled_twice_in_the_config_pairs_each_decision_once(lake: Path) -> None:
    """Two spellings of one host (one entry after host_key) and an IPv6 route: each decision once, in its
    cluster. Before, ``K8S-DEV.example.com:443`` and ``k8s-dev.example.com`` were two rows of the host
    map, so every dev decision was joined twice, and ``[::1]:6443`` was cut to ``[``."""
    proxy = [_decision(1, T0, cluster=None, host="k8s-dev.example.com"),
             _decision(2, T0 + timedelta(minutes=1), cluster=None, host="[::1]:6443")]
    audit = [_request(1, T0 + timedelta(milliseconds=300), cluster="dev"),
             _request(2, T0 + timedelta(minutes=1, milliseconds=300), cluster="v6")]
    _write(lake, proxy, audit)
    cfg = replace(Config(), "impersonation", proxy_hosts={
        "K8S-DEV.example.com:443": "dev", "k8s-dev.example.com": "dev", "[::1]": "v6"})
    assert _sides(lake, cfg) == {"both": 2, "proxy": 0, "audit": 0}


def test_tier_a_exact_id(lake: Path) -> None:
    # clocks 20 s apart: only the exact Audit-ID join pairs them; a wrong user is still tier A
    proxy = [_decision(1, T0, rid="6f1c2b4a-0000-4000-8000-00000000000a")]
    audit = [_request("x", T0 + timedelta(seconds=20))]
    audit[0]["audit_id"] = "6f1c2b4a-0000-4000-8000-00000000000a"
    _write(lake, proxy, audit)
    con = open_lake(lake, must_exist=False)
    rows = con.execute("SELECT tier, side FROM proxy_audit_match").fetchall()
    assert rows == [("A", "both")]
    assert _sides(lake) == {"both": 1, "proxy": 0, "audit": 0}


def test_unapproved_impersonator_is_not_on_the_audit_side(lake: Path) -> None:
    audit = [_request(1, T0)]
    audit[0].update(user_name="system:admin", impersonator="system:admin")
    _write(lake, [], audit)
    assert _sides(lake) == {"both": 0, "proxy": 0, "audit": 0}


def _has_table(con: Any, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0])


def test_ensure_builds_once_per_run_and_report_keeps_its_own_table(lake: Path) -> None:
    proxy = [_decision(i, T0 + timedelta(seconds=i)) for i in range(5)]
    audit = [_request(i, T0 + timedelta(seconds=i, milliseconds=200)) for i in range(4)]
    _write(lake, proxy, audit)
    con = open_lake(lake, must_exist=False)
    ctx = DetectContext(con, Config())
    corr = correlate.ensure(ctx)
    assert con.execute(f"SELECT count(*) FROM {corr.unmatched_proxy}").fetchall() == [(1,)]
    # the second detector of the run reuses the tables (the cache slot says what they hold) ...
    con.execute(f"DROP TABLE {corr.unmatched_audit}")
    correlate.ensure(ctx)
    assert not _has_table(con, corr.unmatched_audit)
    # ... a new run (new context: the lake may have grown) builds them again
    correlate.ensure(DetectContext(con, Config()))
    assert _has_table(con, corr.unmatched_audit)
    # the report's plan writes its own table and leaves the detectors' tables alone
    before = con.execute(f"SELECT * FROM {corr.summary} ORDER BY ALL").fetchall()
    correlate.impersonation_summary(con, Config(), T0 + timedelta(seconds=2), T0 + timedelta(seconds=3))
    assert con.execute(f"SELECT * FROM {corr.summary} ORDER BY ALL").fetchall() == before
    assert _has_table(con, corr.unmatched_proxy) and _has_table(con, correlate.SUMMARY_ONLY)
    # no intermediate table is left behind
    assert not [t for t in ("zt_p", "zt_a", "zt_pairs", "zt_r", "zt_lp", "zt_la") if _has_table(con, t)]


def _jwt_request(i: int, at: datetime, session: str, *, user: str = "alice@example.com") -> dict[str, Any]:
    """Pomerium-JWT mode: the API server authenticated the proxy's JWT itself (no impersonation) and
    mapped its ``sid`` claim into user.extra, ingested as ``proxy_session_id`` (tier B)."""
    req = _request(i, at, user=user)
    req.update(user_name=user, impersonator=None, impersonated_user=None, proxy_session_id=session)
    return req


def test_tier_b_pairs_by_proxy_session(lake: Path) -> None:
    # the same person in two sessions (laptop, CI runner) making the same request in the same second:
    # the session ids decide which decision caused which request
    proxy = [{**_decision(1, T0), "session_id": "s-laptop"}, {**_decision(2, T0), "session_id": "s-runner"},
             {**_decision(3, T0 + timedelta(minutes=1)), "session_id": "s-laptop"}]
    audit = [_jwt_request(1, T0 + timedelta(milliseconds=300), "s-runner"),
             _jwt_request(2, T0 + timedelta(milliseconds=500), "s-laptop"),
             # a request carrying a session id the proxy never decided for in that minute
             _jwt_request(3, T0 + timedelta(minutes=1, milliseconds=200), "s-stolen")]
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 2, "proxy": 1, "audit": 1}
    con = open_lake(lake, must_exist=False)
    pairs = con.execute("SELECT request_id, audit_id, tier FROM proxy_audit_match WHERE side = 'both' "
                        "ORDER BY request_id").fetchall()
    assert pairs == [("p1", "a2", "B"), ("p2", "a1", "B")]
    unmatched = con.execute("SELECT actor, audit_id FROM proxy_audit_match WHERE side = 'audit'").fetchall()
    assert unmatched == [("alice@example.com", "a3")]


def test_without_session_ids_tier_c_as_before(lake: Path) -> None:
    proxy = [{**_decision(1, T0), "session_id": "s-laptop"}]
    audit = [_request(1, T0 + timedelta(milliseconds=300))]  # impersonated, no proxy session id
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 1, "proxy": 0, "audit": 0}
    con = open_lake(lake, must_exist=False)
    assert con.execute("SELECT tier FROM proxy_audit_match WHERE side = 'both'").fetchall() == [("C",)]


PEOPLE = ("alice@example.com", "bob@example.com", "carol@example.com")


def _skewed(offset_s: float, n: int = 24, cluster: str | None = "prod") -> tuple[list[dict[str, Any]],
                                                                                list[dict[str, Any]]]:
    """``n`` requests of three people on 8 paths, 7 s apart, each decided by a proxy whose clock runs
    ``offset_s`` behind the API server's and logs whole seconds."""
    proxy, audit = [], []
    for i in range(n):
        at = T0 + timedelta(seconds=7 * i, milliseconds=300)
        path = f"/api/v1/namespaces/web/pods/p{i % 8}"
        logged = (at - timedelta(seconds=offset_s)).replace(microsecond=0)
        proxy.append(_decision(i, logged, path=path, email=PEOPLE[i % 3], cluster=cluster))
        audit.append(_request(i, at, verb="get", uri=path, user=PEOPLE[i % 3], cluster=cluster))
    return proxy, audit


def test_a_proxy_clock_seconds_behind_is_measured_and_its_requests_paired(lake: Path) -> None:
    """A proxy host without NTP, 4.5 s behind: no request paired within the 3 s window, so each was
    "unobserved" (a false finding per request). The offset is measured on what is left unpaired and
    the requests are paired with it; one request that no decision asked for stays unpaired."""
    proxy, audit = _skewed(4.5)
    audit.append(_request("bypass", T0 + timedelta(seconds=3, milliseconds=700), verb="delete",
                          uri="/api/v1/namespaces/web/secrets/db"))
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 24, "proxy": 0, "audit": 1}
    con = open_lake(lake)
    correlate.run_plan(con, Config(), Window(), correlate.SUMMARY_PLAN)
    # the request at :00.300 was logged at the proxy in the whole second 4.5 s earlier, :55 -> 4.8 s
    assert correlate.clock_offsets(con) == [
        "the proxy's clock for cluster prod is 4.8 s behind the API server's (measured on 24 request pairs): its "
        "decisions were paired with that offset; fix the proxy host's time sync "
        "(correlation.max_clock_skew_seconds, docs/proxy-and-idp.md §0)"]
    assert _sides(lake, replace(Config(), "correlation", max_clock_skew_seconds=0)) == {
        "both": 0, "proxy": 24, "audit": 25}


def test_unrelated_leftovers_give_no_clock_offset(lake: Path) -> None:
    """Decisions and requests of the same keys that are far apart at varying distances (a proxy
    that only sometimes reached the API server, and requests made around it) give no consistent
    offset: nothing is paired by it."""
    proxy, audit = [], []
    for i in range(24):
        path = f"/api/v1/namespaces/web/pods/p{i % 8}"
        proxy.append(_decision(i, T0 + timedelta(seconds=30 * i), path=path))
        audit.append(_request(i, T0 + timedelta(seconds=30 * i + 5 + 7 * (i % 5), milliseconds=300),
                              verb="get", uri=path))
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 0, "proxy": 24, "audit": 24}


def test_one_persons_late_logged_requests_make_no_offset_to_hide_an_attack(lake: Path) -> None:
    """A hostile review: one person's 12 watches, shipped as Envoy access lines stamped at the stream's
    end (60 s after the request), looked like a clock 60 s ahead; the offset then paired an attacker's
    DELETE (bob impersonated with a stolen proxy token, 59.5 s before an unaudited decision of bob's)
    with that decision, and the bypass vanished. An offset needs three people and three keys now."""
    proxy, audit = [], []
    path = "/apis/apps/v1/namespaces/ci/deployments"
    for i in range(12):
        start = T0 + timedelta(minutes=2 * i, milliseconds=200)
        audit.append(_request(f"w{i}", start, user="ci@example.com", verb="watch", uri=path + "?watch=1"))
        access = _decision(i, (start + timedelta(seconds=60)).replace(microsecond=0), email="ci@example.com",
                           path=path)
        proxy.append({**access, "record_type": "access"})
    unaudited = T0 + timedelta(minutes=40)
    secret = "/api/v1/namespaces/prod/secrets/db"
    proxy.append(_decision(100, unaudited, email="bob@example.com", method="DELETE", path=secret))
    audit.append(_request("attack", unaudited - timedelta(seconds=59, milliseconds=500), user="bob@example.com",
                          verb="delete", uri=secret))
    _write(lake, proxy, audit)
    assert _sides(lake) == {"both": 0, "proxy": 13, "audit": 13}


def test_a_lake_without_cluster_names_gets_its_clock_offset_too(lake: Path) -> None:
    """A hostile review: the offset was joined on cluster equality, never true for NULL."""
    proxy, audit = _skewed(4.5, cluster=None)
    _write(lake, proxy, audit, cluster=None)
    con = open_lake(lake)
    assert con.execute("SELECT count(*) FROM k8s_audit WHERE cluster IS NOT NULL").fetchall() == [(0,)]
    assert _sides(lake) == {"both": 24, "proxy": 0, "audit": 0}

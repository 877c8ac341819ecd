"""Pair proxy decisions with the Kubernetes audit requests they caused.

Called by the impersonation detectors (``impersonation.unobserved``, ``impersonation.unbrokered``),
by :func:`impersonation_summary` (``ztaudit report impersonation``) and, through the
``proxy_audit_match`` view, by analysts in DuckDB. Everything runs as DuckDB SQL over the lake
views; nothing loops over rows in Python.

The SQL is a set of named statements (module constants, values always bound as parameters) in
:mod:`ztaudit.detectors.correlate_queries`, which also describes the join tiers
(docs/proxy-and-idp.md §0) and which decisions and requests take part. This module holds the
plans (tuples of :mod:`ztaudit.detectors.sql` steps) and what runs them on the run's engine
(:mod:`ztaudit.detectors.engine`). Two plans run the statements in order: :data:`DETECT_PLAN` (the
detectors: unmatched rows in detail and the per-day summary) and :data:`SUMMARY_PLAN` (the report:
the summary only). The analyst view ``proxy_audit_match`` (``core/views/proxy_audit_match.sql``) is
:data:`VIEW_SQL`, the same pieces without time bounds; ``tests/core/test_views.py`` fails if the
file and :data:`VIEW_SQL` drift. Public functions: :func:`install_config`, :func:`ensure` (the
detectors), :func:`impersonation_summary` (the report) and :func:`run_plan`.

Failure: SQL errors propagate (a broken lake is an error, not an empty result). An empty lake or
a lake without proxy data gives empty results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.proxy_hosts import host_map
from ztaudit.core.window import Window
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.correlate_queries import (
    AUDIT_MATCH_COLUMNS,
    AUDIT_REQUESTS,
    AUDIT_SIDE,
    AUDIT_SIDE_WITH_ALL_STAGES,
    CLOCK_SKEW,
    MATCHING,
    PER_REQUEST,
    PROXY_DECISIONS,
    PROXY_MATCH_COLUMNS,
    PROXY_SIDE,
    PROXY_SIDE_WITH_ACTOR,
    SKEWED_DECISIONS,
    SKEWED_PAIRS,
    SKEWED_REQUESTS,
    SUMMARY_SQL,
    TIER_A,
    TIER_B,
    TIER_C_BURSTS,
    TIER_C_RANKS,
    UNMATCHED_AUDIT,
    UNMATCHED_AUDIT_FROM_MATCHING,
    UNMATCHED_PROXY,
    UNMATCHED_PROXY_FROM_MATCHING,
    VERB_METHOD_SQL,
    tier_c_view,
)
from ztaudit.detectors.engine import Session, as_engine
from ztaudit.detectors.sql import Drop, Step, Table, View, run_all

log = logging.getLogger(__name__)

#: The config views the correlation reads. :func:`install_config` replaces them per connection.
CONFIG_VIEWS: Final = ("zt_approved_impersonators", "zt_proxy_hosts", "zt_correlation_settings")


# --------------------------------------------------------------------------------------------
# configuration as relations
# --------------------------------------------------------------------------------------------

#: :func:`install_config`'s statements, in order, after the (cluster, user) and (host, cluster) pair
#: tables (:func:`_pairs_sql`): the configuration in force as temp tables (every value bound), then the
#: config views pointed at them. ``single_cluster`` names the lake's cluster when it
#: has exactly one (decisions and requests without a cluster belong to it).
_INSTALL_CONFIG: Final[tuple[Step, ...]] = (
    Table("zt_cfg_settings", """
       SELECT CAST($window_us AS BIGINT) AS window_us, CAST($exact_window_us AS BIGINT) AS exact_window_us,
              CAST($max_skew_us AS BIGINT) AS max_skew_us,
              CAST($has_hosts AS BOOLEAN) AS has_hosts, CAST($unaudited AS VARCHAR[]) AS unaudited_paths,
              CAST((SELECT CASE WHEN count(DISTINCT cluster) = 1 THEN min(cluster) END FROM k8s_audit) AS VARCHAR)
                  AS single_cluster"""),
    View("zt_approved_impersonators", "SELECT * FROM zt_cfg_approved"),
    View("zt_proxy_hosts", "SELECT * FROM zt_cfg_hosts"),
    View("zt_correlation_settings", "SELECT * FROM zt_cfg_settings"),
)


def install_config(con: Session, cfg: Config) -> None:
    """Point the config views (:data:`CONFIG_VIEWS`) of engine ``con`` at ``cfg``; every value is bound.

    Called before any query that reads the config views: by :func:`run_plan` and by the impersonation
    detectors. ``con`` is the run's engine, or an :func:`ztaudit.core.lake.open_lake` connection (it has
    the ``zt_*`` views this replaces and the UTC session time zone every day boundary relies on).
    Idempotent; raises the engine's error on a broken lake.
    """
    approved = [(c, u) for c, users in cfg.impersonation.approved_impersonators.items() for u in users]
    hosts = sorted(host_map(cfg.impersonation.proxy_hosts)[0].items())  # one row per host: the join doubles none
    params: dict[str, Any] = {
        "window_us": int(cfg.correlation.match_window_seconds * 1_000_000),
        "exact_window_us": int(cfg.correlation.exact_id_window_seconds * 1_000_000),
        "max_skew_us": int(cfg.correlation.max_clock_skew_seconds * 1_000_000),
        "has_hosts": bool(hosts), "unaudited": list(cfg.correlation.unaudited_paths),
    }
    approved_sql = _pairs_sql(("cluster", "username"), approved, "ap", params)
    hosts_sql = _pairs_sql(("host", "cluster"), hosts, "hp", params)
    steps = (Table("zt_cfg_approved", approved_sql), Table("zt_cfg_hosts", hosts_sql), *_INSTALL_CONFIG)
    run_all(as_engine(con), steps, params)


def _pairs_sql(names: tuple[str, str], pairs: list[tuple[str, str]], prefix: str, params: dict[str, Any]) -> str:
    """A SELECT of two string columns ``names`` holding ``pairs``, as a VALUES list of parameters bound
    in ``params`` (``$<prefix><i>a``, ``$<prefix><i>b``): the same rows on DuckDB and Spark. (Two
    ``unnest``s of two lists in one SELECT zip on DuckDB but make a cross product on Spark: every proxy
    host was mapped to every cluster there; see spark_dialect's ``parallel_unnest``.)"""
    a, b = names
    if not pairs:
        return f"SELECT CAST(NULL AS VARCHAR) AS {a}, CAST(NULL AS VARCHAR) AS {b} WHERE false"
    values = []
    for i, (x, y) in enumerate(pairs):
        params[f"{prefix}{i}a"], params[f"{prefix}{i}b"] = x, y
        values.append(f"(CAST(${prefix}{i}a AS VARCHAR), CAST(${prefix}{i}b AS VARCHAR))")
    return f"SELECT {a}, {b} FROM (VALUES {', '.join(values)}) AS v({a}, {b})"


# --------------------------------------------------------------------------------------------
# the analyst view
# --------------------------------------------------------------------------------------------

#: The ``proxy_audit_match`` view (``core/views/proxy_audit_match.sql``): every matched pair and every
#: unmatched row of both sides, over all time, with the columns an analyst reads.
VIEW_SQL: Final = f"""
    WITH zt_p AS MATERIALIZED (
    SELECT {PROXY_MATCH_COLUMNS}, lower(d.email) AS who, upper(d.method) AS method, d.path, d.decided_at,
           d.request_id, d.check_request_id, d.session_id, d.user_id, d.host
    {PROXY_DECISIONS}
    ),
         zt_a AS MATERIALIZED (
    SELECT {AUDIT_MATCH_COLUMNS}, any_value(r.impersonator) AS impersonator, any_value(r.verb) AS verb,
           {VERB_METHOD_SQL.format(v='any_value(r.verb)')} AS method,
           split_part(any_value(r.request_uri), '?', 1) AS path, any_value(r.audit_id) AS audit_id,
           any_value(r.request_received_at) AS request_received_at, max(r.response_code) AS response_code
    {AUDIT_REQUESTS}
    {PER_REQUEST}
    ),
         zt_pa0 AS MATERIALIZED ({TIER_A}),
         zt_pb AS MATERIALIZED ({TIER_B.format(paired="zt_pa0")}),
         zt_pa AS MATERIALIZED (SELECT * FROM zt_pa0 UNION ALL SELECT * FROM zt_pb),
         zt_c0 AS MATERIALIZED (
             {tier_c_view(TIER_C_RANKS, "zt_pa")}),
         zt_x0 AS MATERIALIZED (SELECT * FROM zt_pa UNION ALL SELECT * FROM zt_c0),
         zt_c1 AS MATERIALIZED ({tier_c_view(TIER_C_BURSTS, "zt_x0")}),
         zt_x1 AS MATERIALIZED (SELECT * FROM zt_x0 UNION ALL SELECT * FROM zt_c1),
         zt_c2 AS MATERIALIZED ({tier_c_view(TIER_C_BURSTS, "zt_x1")}),
         zt_x2 AS MATERIALIZED (SELECT * FROM zt_x1 UNION ALL SELECT * FROM zt_c2),
         zt_skew AS MATERIALIZED ({CLOCK_SKEW.format(decisions="zt_p", requests="zt_a", paired="zt_x2")}),
         zt_sp AS MATERIALIZED ({SKEWED_DECISIONS.format(decisions="zt_p", skew="zt_skew", paired="zt_x2")}),
         zt_sa AS MATERIALIZED ({SKEWED_REQUESTS.format(requests="zt_a", skew="zt_skew", paired="zt_x2")}),
         zt_c3 AS MATERIALIZED ({SKEWED_PAIRS.format(pairs=tier_c_view(TIER_C_BURSTS, "zt_x2", "zt_sp", "zt_sa"))}),
         zt_pairs AS MATERIALIZED (SELECT * FROM zt_x2 UNION ALL SELECT * FROM zt_c3)
    SELECT a.cluster, a.who AS actor, x.tier, p.decided_at, a.request_received_at, p.method, a.verb,
           p.path, p.request_id, p.check_request_id, p.session_id, p.user_id, a.audit_id, a.impersonator,
           a.response_code, true AS matched, 'both' AS side,
           (a.r_us - p.d_us) / 1e6 AS delta_seconds
    FROM zt_pairs x JOIN zt_p p ON p.pk = x.p_pk JOIN zt_a a ON a.pk = x.a_pk
    UNION ALL
    SELECT p.cluster, p.who, NULL, p.decided_at, NULL, p.method, NULL, p.path, p.request_id,
           p.check_request_id, p.session_id, p.user_id, NULL, NULL, NULL, false, 'proxy', NULL
    FROM zt_p p WHERE p.pk NOT IN (SELECT p_pk FROM zt_pairs)
    UNION ALL
    SELECT a.cluster, a.who, NULL, NULL, a.request_received_at, a.method, a.verb, a.path, NULL, NULL,
           NULL, NULL, a.audit_id, a.impersonator, a.response_code, false, 'audit', NULL
    FROM zt_a a WHERE a.pk NOT IN (SELECT a_pk FROM zt_pairs)
    """


# --------------------------------------------------------------------------------------------
# the plans
# --------------------------------------------------------------------------------------------

#: The intermediate tables of both plans: dropped at the end so the next detector has their memory.
_INTERMEDIATE: Final = ("zt_p", "zt_a", "zt_pairs", "zt_pairs2", "zt_r", "zt_lp", "zt_la", "zt_sp", "zt_sa",
                        "zt_unpaired_a", "zt_unpaired_p", "zt_proxy_marks", "zt_audit_marks")
_DROP_INTERMEDIATE: Final = tuple(Drop(t) for t in _INTERMEDIATE)


@dataclass(frozen=True)
class Correlation:
    """Names of the tables :data:`DETECT_PLAN` writes on a connection.

    ``unmatched_proxy`` / ``unmatched_audit`` hold the detail rows of each side's unmatched events
    in the judged window with a ``judgeable`` flag (false near the data's end, where the other side
    may still arrive, or in a cluster with no data at all on the other side); ``summary`` holds
    matched and unmatched counts per (cluster, actor, day).
    """

    unmatched_proxy: str = "zt_unmatched_proxy"
    unmatched_audit: str = "zt_unmatched_audit"
    summary: str = "zt_match_summary"


#: The table :data:`SUMMARY_PLAN` writes (its own name, so a report never replaces a detect run's tables).
SUMMARY_ONLY: Final = "zt_match_summary_only"

_DETECT: Final = Correlation()

#: The detectors' plan: both sides, matching, unmatched rows in detail, summary.
DETECT_PLAN: Final[tuple[Step, ...]] = (
    Table("zt_p", PROXY_SIDE),
    Table("zt_a", AUDIT_SIDE),
    *MATCHING,
    UNMATCHED_PROXY,
    UNMATCHED_AUDIT,
    Table(_DETECT.summary, SUMMARY_SQL.format(unmatched_proxy=_DETECT.unmatched_proxy,
                                              unmatched_audit=_DETECT.unmatched_audit)),
    *_DROP_INTERMEDIATE,
)

#: The report's plan: the summary only. Its unmatched counts come from the matching tables themselves
#: (same events, clusters, actors, times and judgeability as the detail tables), which saves a second
#: read of every decision and every impersonated audit event (~0.5 s at 10M events).
SUMMARY_PLAN: Final[tuple[Step, ...]] = (
    Table("zt_p", PROXY_SIDE_WITH_ACTOR),
    Table("zt_a", AUDIT_SIDE_WITH_ALL_STAGES),
    *MATCHING,
    Table(SUMMARY_ONLY, SUMMARY_SQL.format(unmatched_proxy=UNMATCHED_PROXY_FROM_MATCHING,
                                           unmatched_audit=UNMATCHED_AUDIT_FROM_MATCHING)),
    *_DROP_INTERMEDIATE,
)

def run_plan(con: Session, cfg: Config, window: Window, plan: tuple[Step, ...]) -> None:
    """Run ``plan`` (:data:`DETECT_PLAN` or :data:`SUMMARY_PLAN`) for ``window`` on engine ``con``.

    Events are read with a margin around the window (the widest tolerance + 2 s) so pairs
    straddling its edges are found; only rows inside it are reported. Called by :func:`ensure` and
    :func:`impersonation_summary`; ``con`` is the run's engine or an ``open_lake`` connection. Raises on
    SQL errors, after which the plan's tables may be partly written.
    """
    engine = as_engine(con)
    install_config(engine, cfg)
    margin = timedelta(seconds=max(cfg.correlation.match_window_seconds, cfg.correlation.exact_id_window_seconds,
                                   cfg.correlation.max_clock_skew_seconds) + 2)
    params = {**window.widened(margin, margin).params(), **window.params("j")}
    run_all(engine, plan, params)


#: The one cache of this module, a slot of :attr:`DetectContext.cache`: the (window, correlation
#: settings) that :data:`DETECT_PLAN`'s tables on the context's connection were built for.
_BUILT_FOR: Final = ("correlate.detect_tables",)


def ensure(ctx: DetectContext) -> Correlation:
    """The correlation tables for ``ctx``'s window and config; built on ``ctx.engine`` by the first call.

    Called by ``impersonation.unobserved`` and ``impersonation.unbrokered``; the second caller of a
    run reuses the tables. Cache: the slot ``ctx.cache[("correlate.detect_tables",)]`` holds the
    window and settings the fixed-name tables on ``ctx.engine`` were built for, so a hit is exact; it
    lives as long as the context (one detect run: a new run starts empty and rebuilds, because the
    lake may have grown). Raises on SQL errors (the slot is then not set).
    """
    window = Window(ctx.since, ctx.until)
    built_for = (window, ctx.config.impersonation.approved_impersonators, ctx.config.impersonation.proxy_hosts,
                 ctx.config.correlation)
    if ctx.cache.get(_BUILT_FOR) != built_for:
        run_plan(ctx.engine, ctx.config, window, DETECT_PLAN)
        ctx.cache[_BUILT_FOR] = built_for
        for note in clock_offsets(ctx.engine):
            log.warning("%s", note)
    return _DETECT


def clock_offsets(con: Session) -> list[str]:
    """One sentence per cluster whose proxy clock the last plan run on ``con`` found off the API
    server's (:data:`~ztaudit.detectors.correlate_queries.CLOCK_SKEW`, table ``zt_skew``, which the plans
    keep): how far, on how many pairs, and that its requests were paired with it. Called after a plan
    by :func:`ensure` (a warning of ``detect``) and by ``report impersonation`` (a note)."""
    rows = as_engine(con).query("SELECT cluster, offset_us, pairs FROM zt_skew ORDER BY cluster").to_pylist()
    return [f"the proxy's clock for cluster {r['cluster'] or '(unnamed)'} is {abs(r['offset_us']) / 1e6:.1f} s "
            f"{'behind' if r['offset_us'] > 0 else 'ahead of'} the API server's (measured on {r['pairs']} "
            "request pairs): its decisions were paired with that offset; fix the proxy host's time sync "
            "(correlation.max_clock_skew_seconds, docs/proxy-and-idp.md §0)" for r in rows]


#: Per (cluster, actor) over a summary table (``{table}``: :data:`SUMMARY_ONLY` or the detect plan's).
_SUMMARY_REPORT_SQL: Final = """
    SELECT * FROM (
    SELECT cluster, actor, sum(matched_tier_a)::BIGINT AS matched_tier_a,
           sum(matched_tier_b)::BIGINT AS matched_tier_b,
           sum(matched_tier_c)::BIGINT AS matched_tier_c, sum(unmatched_proxy)::BIGINT AS unmatched_proxy,
           sum(unmatched_audit)::BIGINT AS unmatched_audit, sum(pending)::BIGINT AS pending,
           round((sum(matched_tier_a) + sum(matched_tier_b) + sum(matched_tier_c))
                 / nullif(sum(matched_tier_a) + sum(matched_tier_b) + sum(matched_tier_c)
                          + sum(unmatched_proxy) + sum(unmatched_audit), 0), 4) AS match_rate,
           min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM {table} GROUP BY cluster, actor
    ) ORDER BY unmatched_proxy + unmatched_audit DESC, cluster, actor
"""


def impersonation_summary(con: Session, config: Config, since: datetime | None = None,
                          until: datetime | None = None, *, detect_tables: bool = False) -> pa.Table:
    """Matched and unmatched proxy/audit counts per identity (for ``ztaudit report impersonation``).

    Returns a ``pyarrow.Table``: cluster, actor, matched_tier_a, matched_tier_b, matched_tier_c, unmatched_proxy
    (allowed decisions with no impersonated request), unmatched_audit (impersonated requests with
    no decision), pending (too close to the data's end to judge), match_rate, first_seen,
    last_seen. Called by ``ztaudit report impersonation`` with an ``open_lake`` connection (or an
    engine); runs :data:`SUMMARY_PLAN` on every call (no cache), unless ``detect_tables`` says that
    :data:`DETECT_PLAN`'s tables for the same window and config are on ``con`` (the report's
    ``proxy_own_traffic`` built them): their summary counts what the summary plan counts
    (tests/detectors/test_correlate.py), so it is read instead of running a second plan. Raises on SQL
    errors.
    """
    engine = as_engine(con)
    if detect_tables:
        return engine.query(_SUMMARY_REPORT_SQL.format(table=_DETECT.summary))
    run_plan(engine, config, Window(since, until), SUMMARY_PLAN)
    return engine.query(_SUMMARY_REPORT_SQL.format(table=SUMMARY_ONLY))

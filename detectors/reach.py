"""Identity reach: the ``reach`` table and the ``reach.anomalous`` detector.

Reach (docs/design.md question 3; docs/detection-background.md §1.9 and §2 "Identity reach / blast radius"):
per effective actor (impersonated user if any, docs/kubernetes-audit.md §6) and per window (config
``reach.window``: hour or day, UTC), how many namespaces, resources, verbs, API groups, clusters
and secrets it touched, its write/delete/forbidden shares, exec/attach/port-forward count,
namespaces it never touched in its rolling history, and distinct source IPs / user agents /
credentials. Computed in one DuckDB pass over ``k8s_requests`` (one row per request).

Baselines (docs/detection-background.md "What NONE of them has": per-identity *and* peer-group
baselines):

* **history**: the actor's own previous windows within ``reach.baseline_days`` (a rolling frame,
  so batch and streaming judge a window the same way);
* **peers**: the other actors of its peer group in the same window. Peer groups, most specific
  first, used when they hold at least :data:`MIN_PEER_GROUP` actors: service accounts by SA
  namespace, then by SA name across namespaces (one workload's pods share an SA); humans by their
  IdP group set (``impersonated_groups`` through the proxy, else ``user_groups``); nodes as one
  group per cluster; otherwise the actor kind.

Control-plane and node identities have huge legitimate reach, so they are not excluded but
judged on features that stay small for them: ``foreign_secret_namespaces`` counts namespaces
where a node read secrets although none of its pods runs there (pods of a node are known from
pod-bound tokens carrying ``node-name``, docs/kubernetes-audit.md §3, and from the kubelet's
TokenRequests, §4), or where a service account read secrets outside its own namespace.

Identity: people are one identity across clusters (``clusters`` is one of their features);
service accounts, nodes and control-plane users are per cluster (an SA of the same name in another
cluster has its own UID and tokens), so their rows are keyed by (actor, cluster).

Scoring: :class:`~ztaudit.detectors.ml.ReachModel` (Isolation Forest) ranks every actor-window on
raw features and their excess over history and peers; a finding needs the model to rank the
window among the top ``reach.model_top_share`` of the baseline's actor-windows **and** at least
one reach feature above ``max(usual max, peers' max)`` by an absolute margin and a ratio
(:data:`GATES`). The margins are what keeps near-misses quiet: a
team's first namespace adds 1 new namespace (margin 3), a scale-out adds requests, IPs and
credentials (not gate features), quiet weekends only lower values (only excess is judged).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ztaudit.core.columns import TS, conform
from ztaudit.core.config import Config
from ztaudit.core.derived_tables import REACH
from ztaudit.core.window import EARLIEST, LATEST, Window
from ztaudit.detectors.base import DetectContext, Finding, Severity

#: A peer group is used only with at least this many actors (else the next, broader one).
MIN_PEER_GROUP: Final = 3

#: Count-like features, in table order (the model also sees their excess over history/peers).
COUNT_FEATURES: Final = (
    "requests", "namespaces", "resources", "verbs", "api_groups", "clusters",
    "secret_reads", "secret_namespaces", "secret_cluster_lists", "foreign_secret_namespaces",
    "exec_count", "new_namespaces", "forbidden_requests", "source_ips", "user_agents", "credentials",
)
SHARE_FEATURES: Final = ("write_share", "delete_share", "forbidden_share")


@dataclass(frozen=True)
class Gate:
    """A reach feature that can raise a finding: value ≥ base + margin and value ≥ ratio × base."""

    margin: float
    ratio: float
    phrase: str  # "{v}" is the observed value
    severity: Severity


#: Feature -> gate. Margins are absolute counts chosen so the generator's near-misses (one new team
#: namespace, scale-out, daily rhythm) stay below them while a credential abused for discovery
#: (secrets in several namespaces, a node reading outside its pods) clears them.
GATES: Final[dict[str, Gate]] = {
    "foreign_secret_namespaces": Gate(2, 2.0, "read secrets in {v} namespaces outside its own (or its "
                                      "pods') namespaces", Severity.HIGH),
    "secret_namespaces": Gate(3, 2.0, "read secrets in {v} namespaces", Severity.HIGH),
    "secret_cluster_lists": Gate(2, 2.0, "listed/watched secrets cluster-wide {v} times", Severity.HIGH),
    "new_namespaces": Gate(3, 2.0, "touched {v} namespaces it never used before", Severity.MEDIUM),
    "namespaces": Gate(4, 2.0, "touched {v} namespaces", Severity.MEDIUM),
    "resources": Gate(6, 2.0, "used {v} resource types", Severity.MEDIUM),
    "exec_count": Gate(5, 3.0, "ran {v} exec/attach/port-forward requests", Severity.MEDIUM),
    "clusters": Gate(1, 2.0, "reached {v} clusters", Severity.MEDIUM),
    "forbidden_requests": Gate(20, 3.0, "was denied {v} times", Severity.LOW),
}

def window_seconds(config: Config) -> int:
    """Seconds per reach window (config ``reach.window``)."""
    return 3600 if config.reach.window == "hour" else 86400


def _floor(ts: datetime, seconds: int) -> datetime:
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def _requests_ctes(columns: tuple[str, ...]) -> str:
    """CTEs ending in ``req``: the ``k8s_requests`` view's rows with request_received_at in [$lo, $hi)
    (day partitions outside it skipped: :meth:`Window.sql`), only ``columns`` (names from this module,
    never from data).

    Same rows as the view (pipeline/views.py), computed without sorting every row: the view's window
    function over all stages of all requests carries every column through a partitioned sort, which
    was most of the cost at millions of events. Requests are keyed the same way (cluster, audit_id,
    request_received_at; the time bound is on a key column, so bounding before de-duplicating is the
    same as after). A key seen once (most requests: one stage logged) is its own row; only keys seen
    more than once go through the view's row_number with the view's order (ResponseComplete > Panic >
    ResponseStarted > RequestReceived, then latest stage_at, then origin). Keys are found by a 64-bit
    hash of the key: rows of one key share the hash, and a collision only sends a single-stage request
    through the (exact) slow path.
    """
    key = ("cluster", "audit_id", "request_received_at", "stage", "stage_at", "origin")
    span_cols = ", ".join(dict.fromkeys((*columns, *key)))
    cols = ", ".join(columns)
    return f"""
span AS NOT MATERIALIZED (
    SELECT {span_cols}, hash(cluster, audit_id, request_received_at) AS key_hash
    FROM k8s_audit
    WHERE {Window.sql("request_received_at")}
),
multi AS (SELECT key_hash FROM span GROUP BY key_hash HAVING count(*) > 1),
req AS (
    SELECT {cols} FROM span WHERE key_hash NOT IN (SELECT key_hash FROM multi)
    UNION ALL
    SELECT {cols} FROM span WHERE key_hash IN (SELECT key_hash FROM multi)
    QUALIFY row_number() OVER (
        PARTITION BY cluster, audit_id, request_received_at
        ORDER BY stage_rank(stage) DESC, stage_at DESC, origin
    ) = 1
)"""


# One pass over the requests (``req``, see :func:`_requests_ctes`). Every log value stays inside SQL
# (no string building from data); the only parameters are the time bounds (:meth:`Window.params`), the
# window length and the baseline length.
_FEATURES_SQL = "WITH " + _requests_ctes((
    "actor", "actor_kind", "cluster", "namespace", "resource", "subresource", "verb", "api_group",
    "source_ip", "user_agent", "credential_id", "sa_namespace", "sa_name", "node_name", "response_code",
    "decision", "impersonated_groups", "user_groups", "request_received_at")) + """,
base AS MATERIALIZED (
    SELECT actor, actor_kind, cluster, namespace, resource, subresource, verb, api_group,
           source_ip, user_agent, credential_id, sa_namespace, sa_name, node_name,
           (response_code = 403 OR decision = 'forbid') AS denied,
           (resource = 'secrets' AND subresource IS NULL AND verb IN ('get', 'list', 'watch')) AS secret_read,
           CASE WHEN actor_kind = 'human' THEN array_to_string(list_sort(list_filter(
                coalesce(impersonated_groups, user_groups), lambda g: NOT starts_with(g, 'system:'))), ',')
           END AS groups_key,
           -- machine identities are per cluster (an SA or node of another cluster is another
           -- identity with its own UID and credentials); people are one identity everywhere
           CASE WHEN actor_kind IN ('service_account', 'node', 'system') THEN cluster END AS scope,
           to_timestamp(floor(epoch(request_received_at) / $w) * $w) AS w
    FROM req
    WHERE actor IS NOT NULL
),
home AS (  -- namespaces of the pods on each node (pod-bound tokens; kubelet TokenRequests)
    SELECT DISTINCT cluster, node_name, sa_namespace AS ns, w FROM base
    WHERE actor_kind = 'service_account' AND node_name IS NOT NULL AND sa_namespace IS NOT NULL
    UNION
    SELECT DISTINCT cluster, node_name, namespace AS ns, w FROM base
    WHERE actor_kind = 'node' AND resource = 'serviceaccounts' AND subresource = 'token'
      AND namespace IS NOT NULL
),
sec AS (
    SELECT actor, scope, w, actor_kind, cluster, node_name, sa_namespace, namespace FROM base WHERE secret_read
),
foreign_sec AS (
    SELECT s.actor, s.scope, s.w, count(DISTINCT coalesce(s.namespace, '*')) AS foreign_secret_namespaces
    FROM sec s
    WHERE (s.actor_kind = 'service_account' AND (s.namespace IS NULL OR s.namespace <> s.sa_namespace))
       OR (s.actor_kind = 'node' AND (s.namespace IS NULL OR NOT EXISTS (
              SELECT 1 FROM home h
              WHERE h.cluster = s.cluster AND h.node_name = s.node_name AND h.ns = s.namespace
                AND h.w BETWEEN s.w - to_seconds($w) AND s.w)))
    GROUP BY s.actor, s.scope, s.w
),
sec_ns AS (
    SELECT actor, scope, w,
           list(DISTINCT coalesce(namespace, '*') ORDER BY coalesce(namespace, '*'))[1:50] AS lst
    FROM sec GROUP BY actor, scope, w
),
ans AS (SELECT DISTINCT actor, scope, namespace, w FROM base WHERE namespace IS NOT NULL),
first_w AS (SELECT actor, scope, min(w) AS first_w FROM base GROUP BY actor, scope),
ans_prev AS (
    SELECT actor, scope, namespace, w, lag(w) OVER (PARTITION BY actor, scope, namespace ORDER BY w) AS prev
    FROM ans
),
new_ns AS (
    SELECT a.actor, a.scope, a.w, count(*) AS new_namespaces,
           list(a.namespace ORDER BY a.namespace)[1:50] AS lst
    FROM ans_prev a JOIN first_w f ON f.actor = a.actor AND f.scope IS NOT DISTINCT FROM a.scope
    WHERE a.w > f.first_w AND (a.prev IS NULL OR a.w - a.prev > to_days($baseline_days))
    GROUP BY a.actor, a.scope, a.w
),
agg AS (
    SELECT actor, scope, w,
           -- actor_kind and sa_* are functions of the actor name: any value is the value
           any_value(actor_kind) AS actor_kind, coalesce(scope, mode(cluster ORDER BY cluster)) AS cluster,
           any_value(sa_namespace) AS sa_namespace, any_value(sa_name) AS sa_name,
           max(groups_key) AS groups_key,
           count(*) AS requests,
           count(DISTINCT namespace) AS namespaces,
           count(DISTINCT resource || coalesce('/' || subresource, '')) AS resources,
           count(DISTINCT verb) AS verbs,
           count(DISTINCT api_group) AS api_groups,
           count(DISTINCT cluster) AS clusters,
           count(*) FILTER (WHERE secret_read) AS secret_reads,
           count(DISTINCT coalesce(namespace, '*')) FILTER (WHERE secret_read) AS secret_namespaces,
           count(*) FILTER (WHERE secret_read AND namespace IS NULL AND verb IN ('list', 'watch'))
               AS secret_cluster_lists,
           count(*) FILTER (WHERE subresource IN ('exec', 'attach', 'portforward')) AS exec_count,
           count(*) FILTER (WHERE denied) AS forbidden_requests,
           count(DISTINCT source_ip) AS source_ips,
           count(DISTINCT user_agent) AS user_agents,
           count(DISTINCT credential_id) AS credentials,
           avg(CASE WHEN verb IN ('create', 'update', 'patch') THEN 1.0 ELSE 0.0 END) AS write_share,
           avg(CASE WHEN verb IN ('delete', 'deletecollection') THEN 1.0 ELSE 0.0 END) AS delete_share,
           avg(CASE WHEN denied THEN 1.0 ELSE 0.0 END) AS forbidden_share
    FROM base GROUP BY actor, scope, w
)
SELECT a.*, coalesce(f.foreign_secret_namespaces, 0) AS foreign_secret_namespaces,
       coalesce(n.new_namespaces, 0) AS new_namespaces,
       coalesce(s.lst, []) AS secret_namespace_list, coalesce(n.lst, []) AS new_namespace_list
FROM agg a
LEFT JOIN foreign_sec f ON f.actor = a.actor AND f.scope IS NOT DISTINCT FROM a.scope AND f.w = a.w
LEFT JOIN new_ns n ON n.actor = a.actor AND n.scope IS NOT DISTINCT FROM a.scope AND n.w = a.w
LEFT JOIN sec_ns s ON s.actor = a.actor AND s.scope IS NOT DISTINCT FROM a.scope AND s.w = a.w
"""

# Peer groups and rolling baselines over the (small) actor-window table.
_BASELINE_SQL = """
WITH f AS (SELECT * FROM feat),
cand AS (
    SELECT *,
        CASE actor_kind
            WHEN 'service_account' THEN 'sa-ns:' || cluster || '/' || coalesce(sa_namespace, '?')
            WHEN 'human' THEN CASE WHEN coalesce(groups_key, '') <> '' THEN 'idp:' || groups_key END
            WHEN 'node' THEN 'nodes:' || cluster
        END AS c1,
        CASE WHEN actor_kind = 'service_account' THEN 'sa-name:' || coalesce(sa_name, '?') END AS c2,
        'kind:' || coalesce(actor_kind, '?') AS c3
    FROM f
),
sizes AS (
    SELECT c, count(DISTINCT ident) AS n FROM (
        SELECT c1 AS c, actor || '@' || coalesce(scope, '') AS ident FROM cand
        UNION ALL SELECT c2, actor || '@' || coalesce(scope, '') FROM cand
    ) WHERE c IS NOT NULL GROUP BY c
),
grouped AS (
    SELECT cand.* EXCLUDE (c1, c2, c3),
        CASE WHEN s1.n >= $min_peer THEN c1 WHEN s2.n >= $min_peer THEN c2 ELSE c3 END AS peer_group
    FROM cand LEFT JOIN sizes s1 ON s1.c = cand.c1 LEFT JOIN sizes s2 ON s2.c = cand.c2
),
peer_top AS (  -- per peer group and window: max, how many hold it, and the runner-up (peers exclude self)
    SELECT peer_group, w, count(*) AS members, {top_cols} FROM grouped GROUP BY peer_group, w
),
peer_second AS (
    SELECT g.peer_group, g.w, {second_cols}
    FROM grouped g JOIN peer_top t ON t.peer_group = g.peer_group AND t.w = g.w
    GROUP BY g.peer_group, g.w
)
SELECT g.*,
    count(*) OVER hist AS history_windows,
    t.members - 1 AS peers,
    {hist_cols},
    {peer_cols}
FROM grouped g
JOIN peer_top t ON t.peer_group = g.peer_group AND t.w = g.w
JOIN peer_second s2 ON s2.peer_group = g.peer_group AND s2.w = g.w
-- the previous windows within the baseline (segment-tree friendly: no EXCLUDE)
WINDOW hist AS (PARTITION BY g.actor, g.scope ORDER BY g.w RANGE BETWEEN to_days($baseline_days) PRECEDING
                AND to_seconds(1) PRECEDING)
"""

ALL_FEATURES: Final = (*COUNT_FEATURES, *SHARE_FEATURES)


def _baseline_sql() -> str:
    """History (rolling min/max) and peers' max excluding the actor itself, for every count feature.

    Peers' max without self is computed from per-group aggregates (max, count holding it, runner-up)
    instead of a window with EXCLUDE CURRENT ROW, which is quadratic in the group size (the
    all-service-accounts group has thousands of members per window).
    """
    hist = ", ".join([f"max(g.{f}) OVER hist AS hist_max_{f}" for f in COUNT_FEATURES]
                     + [f"min(g.{f}) OVER hist AS hist_min_{f}" for f in GATES])
    top = ", ".join(f"max({f}) AS m_{f}" for f in COUNT_FEATURES)
    second = ", ".join(f"max(g.{f}) FILTER (WHERE g.{f} < t.m_{f}) AS s_{f}, "
                       f"count(*) FILTER (WHERE g.{f} = t.m_{f}) AS c_{f}" for f in COUNT_FEATURES)
    peer = ", ".join(f"CASE WHEN t.members <= 1 THEN NULL WHEN g.{f} = t.m_{f} AND s2.c_{f} = 1 THEN s2.s_{f} "
                     f"ELSE t.m_{f} END AS peer_max_{f}" for f in COUNT_FEATURES)
    return _BASELINE_SQL.format(hist_cols=hist, peer_cols=peer, top_cols=top, second_cols=second)


def compute_reach(con: duckdb.DuckDBPyConnection, config: Config, since: datetime | None,
                  until: datetime | None, cache: dict[tuple[Any, ...], Any] | None = None) -> pd.DataFrame:
    """Actor-window features with history and peer ranges, for windows overlapping [since, until).

    Loads ``reach.baseline_days`` of lookback before ``since`` so history and new-namespace
    features are the same in batch and streaming runs. Returns a DataFrame (column ``w`` = window
    start); rows of lookback windows are dropped.

    ``cache`` (a :attr:`DetectContext.cache`) keeps the result for the run: the ``reach`` table
    builder and ``reach.anomalous`` then compute the features once when they load the same span
    (batch runs over the whole lake). Each call returns its own frame.
    """
    wsec = window_seconds(config)
    baseline_days = int(config.reach.baseline_days)
    lo = EARLIEST if since is None else _floor(since, wsec) - timedelta(days=baseline_days)
    hi = LATEST if until is None else until
    key = ("reach.features", wsec, baseline_days, lo, hi)
    df: pd.DataFrame
    if cache is not None and key in cache:
        df = cache[key]
    else:
        df = _compute_features(con, wsec, baseline_days, lo, hi)
        if cache is not None:
            cache[key] = df
    if since is not None and len(df):
        df = df[df["w"] >= pd.Timestamp(_floor(since, wsec))]
    return df.sort_values(["w", "actor", "cluster"]).reset_index(drop=True)


def _compute_features(con: duckdb.DuckDBPyConnection, wsec: int, baseline_days: int, lo: datetime,
                      hi: datetime) -> pd.DataFrame:
    """Features and baselines of every actor-window in [lo, hi) (lookback rows included)."""
    # The catalog's views are TEMP views of ``con`` itself, so no cursor: a uniquely named
    # registered relation is dropped again in ``finally``.
    name = f"_reach_feat_{uuid.uuid4().hex[:12]}"
    feat = con.sql(_FEATURES_SQL, params={"w": wsec, "baseline_days": baseline_days,
                                          **Window(lo, hi).params()}).to_arrow_table()
    con.register(name, feat)
    try:
        df = con.execute(_baseline_sql().replace("FROM feat", f"FROM {name}"),
                         {"min_peer": MIN_PEER_GROUP, "baseline_days": baseline_days}).df()
    finally:
        con.unregister(name)
    return df


def reach_rows_table(df: pd.DataFrame, config: Config) -> pa.Table:
    """The ``reach`` table (registered schema) for a :func:`compute_reach` frame."""
    wsec = window_seconds(config)
    if len(df) == 0:
        return REACH.empty_table()
    out = df[[c for c in REACH.names if c in df.columns]].copy()
    out["window_start"] = df["w"]
    out["window_end"] = df["w"] + pd.Timedelta(seconds=wsec)
    out["window"] = config.reach.window
    return conform(pa.Table.from_pandas(out, preserve_index=False), REACH)


def build_reach_table(ctx: DetectContext) -> pa.Table:
    """Derived-table builder for ``detect`` (detectors/tables.py): reach rows for [since, until)."""
    return reach_rows_table(compute_reach(ctx.con, ctx.config, ctx.since, ctx.until, ctx.cache), ctx.config)


# --- model -------------------------------------------------------------------------------------

def model_feature_names() -> list[str]:
    """Model inputs: log1p of each count, its excess (log1p, clipped at 0) over the actor's history
    max and over its peers' max; the three shares."""
    names = []
    for f in COUNT_FEATURES:
        names += [f"log_{f}", f"hist_excess_{f}", f"peer_excess_{f}"]
    names += list(SHARE_FEATURES)
    return names


def model_inputs(df: pd.DataFrame) -> dict[str, Any]:
    """Model input columns (see :func:`model_feature_names`) for a :func:`compute_reach` frame."""
    cols: dict[str, Any] = {}
    for f in COUNT_FEATURES:
        v = np.log1p(df[f].astype(float).to_numpy())
        h = np.log1p(df[f"hist_max_{f}"].astype(float).to_numpy())
        p = np.log1p(df[f"peer_max_{f}"].astype(float).to_numpy())
        cols[f"log_{f}"] = v
        # Excess is clipped at 0: only *more* reach than usual is suspicious (a quiet weekend is
        # not), and without clipping the forest spends its splits on ordinary ups and downs.
        cols[f"hist_excess_{f}"] = np.where(np.isnan(h), 0.0, np.clip(v - h, 0.0, None))
        cols[f"peer_excess_{f}"] = np.where(np.isnan(p), 0.0, np.clip(v - p, 0.0, None))
    for f in SHARE_FEATURES:
        cols[f] = df[f].astype(float).to_numpy()
    return cols


def _fit_or_load(df_all: pd.DataFrame, ctx: DetectContext) -> tuple[Any, dict[str, Any]]:
    """The reach model for this run: retrained on the baseline windows, reused when persisted."""
    from ztaudit.detectors import ml  # scikit-learn is imported only when reach runs

    cfg = ctx.config.reach
    names = model_feature_names()
    since = ctx.since
    # Baseline = whole windows before the judged one, so streaming runs within one window reuse the
    # persisted model instead of retraining on every flush.
    cut = None if since is None else pd.Timestamp(_floor(since, window_seconds(ctx.config)))
    train = df_all[df_all["w"] < cut] if cut is not None else df_all
    if len(train) < 50:  # too little baseline: fit on everything in view (documented fallback)
        train = df_all
    meta = {
        "features": names, "window": cfg.window, "baseline_days": cfg.baseline_days,
        "contamination": cfg.contamination, "random_state": cfg.random_state,
        "trained_from": str(train["w"].min()), "trained_until": str(train["w"].max()),
        "train_rows": len(train),
    }
    if ctx.lake:
        loaded = ml.load_model(ctx.lake, meta)
        if loaded is not None:
            return loaded, meta
    model = ml.ReachModel(contamination=cfg.contamination, random_state=cfg.random_state)
    model.fit(ml.feature_matrix(model_inputs(train), names))
    if ctx.lake:
        try:
            ml.save_model(model, ctx.lake, meta)
        except OSError:
            pass  # a read-only lake still gets findings; the model is simply not cached
    return model, meta


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _as_float(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def _fmt(v: float | None) -> str:
    if v is None:
        return "?"
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def explain(row: pd.Series, min_history: int) -> list[dict[str, Any]]:
    """Gate features whose value clears ``max(usual, peers)`` by margin and ratio, strongest first.

    Each item: feature, observed, usual_min/usual_max (None without history), peers_max (None
    without peers), base, excess (observed / max(base, 1)), text.
    """
    hist_n = int(row.get("history_windows") or 0)
    peer_n = int(row.get("peers") or 0)
    out = []
    for f, gate in GATES.items():
        v = _num(row[f]) or 0.0
        if f == "new_namespaces" and hist_n < min_history:
            continue  # every namespace is "new" to an actor without history
        hist_max = _num(row[f"hist_max_{f}"]) if hist_n > 0 else None
        peer_max = _num(row[f"peer_max_{f}"]) if peer_n >= MIN_PEER_GROUP - 1 else None
        if hist_n < min_history and str(row.get("peer_group", "")).startswith("kind:"):
            # Without history, only a specific peer group (same SA namespace or name, same IdP groups,
            # nodes of the cluster) is comparable; "all service accounts" is not (a cert-manager is unique).
            peer_max = None
        bases = [b for b in (hist_max, peer_max) if b is not None]
        if not bases or (hist_n < min_history and peer_max is None):
            continue  # nothing to compare with: judged once history or peers exist
        base = max(bases)
        if v >= base + gate.margin and v >= gate.ratio * base:
            usual_min = _num(row[f"hist_min_{f}"]) if hist_n > 0 else None
            usual = (f"usual {_fmt(usual_min)}" if usual_min == hist_max else
                     f"usual {_fmt(usual_min)}-{_fmt(hist_max)}") if hist_max is not None else "no history"
            peers = f"peers at most {_fmt(peer_max)}" if peer_max is not None else "no peers"
            out.append({
                "feature": f, "observed": v, "usual_min": usual_min, "usual_max": hist_max,
                "peers_max": peer_max, "base": base, "excess": v / max(base, 1.0),
                "severity": str(gate.severity),
                "text": f"{gate.phrase.format(v=_fmt(v))}; {usual}; {peers}",
            })
    rank = {"high": 0, "medium": 1, "low": 2}
    out.sort(key=lambda d: (rank[str(d["severity"])], -_as_float(d["excess"]), str(d["feature"])))
    return out


# Evidence of many actor-windows in one query: the first 20 requests of each (secrets first, then by
# time, then by cluster and audit id so the same data always gives the same evidence), as the
# k8s_requests view would give them. Only requests with a stage row of a judged actor in
# its window are de-duplicated (all stages of such a request share its key hash, so the view's choice
# among them is the same), instead of every request in the span.
_EVIDENCE_SQL = f"""
WITH span AS NOT MATERIALIZED (
    SELECT cluster, audit_id, request_received_at, stage, stage_at, origin, actor, resource,
           hash(cluster, audit_id, request_received_at) AS key_hash
    FROM k8s_audit
    WHERE {Window.sql("request_received_at")}
),
touched AS (
    SELECT DISTINCT s.key_hash FROM span s JOIN {{keys}} k
      ON s.actor = k.actor AND (k.scope IS NULL OR s.cluster = k.scope)
     AND s.request_received_at >= k.start AND s.request_received_at < k."end"
),
req AS (
    SELECT * FROM span WHERE key_hash IN (SELECT key_hash FROM touched)
    QUALIFY row_number() OVER (
        PARTITION BY cluster, audit_id, request_received_at
        ORDER BY stage_rank(stage) DESC, stage_at DESC, origin
    ) = 1
)
SELECT k.i, r.cluster, r.audit_id
FROM req r JOIN {{keys}} k
  ON r.actor = k.actor AND (k.scope IS NULL OR r.cluster = k.scope)
 AND r.request_received_at >= k.start AND r.request_received_at < k."end"
QUALIFY row_number() OVER (PARTITION BY k.i ORDER BY (r.resource = 'secrets') DESC, r.request_received_at,
                                                     r.cluster, r.audit_id) <= 20
ORDER BY k.i, (r.resource = 'secrets') DESC, r.request_received_at, r.cluster, r.audit_id
"""


def _evidence(con: duckdb.DuckDBPyConnection,
              windows: list[tuple[str, str | None, datetime, datetime]]) -> list[list[str]]:
    """Event references for each (actor, scope, start, end): up to 20 of its requests in [start, end),
    secret requests first, then by time (one query for all windows)."""
    if not windows:
        return []
    keys = pa.table({
        "i": pa.array(range(len(windows)), pa.int64()),
        "actor": pa.array([w[0] for w in windows], pa.string()),
        "scope": pa.array([w[1] for w in windows], pa.string()),
        "start": pa.array([w[2] for w in windows], TS),
        "end": pa.array([w[3] for w in windows], TS),
    })
    name = f"_reach_ev_{uuid.uuid4().hex[:12]}"
    con.register(name, keys)
    try:
        span = Window(min(w[2] for w in windows), max(w[3] for w in windows))
        rows = con.execute(_EVIDENCE_SQL.format(keys=name), span.params()).fetchall()
    finally:
        con.unregister(name)
    out: list[list[str]] = [[] for _ in windows]
    for i, cluster, audit_id in rows:
        out[i].append(f"k8s_audit:{cluster}/{audit_id}")
    return out


class AnomalousReach:
    """``reach.anomalous``: an identity's reach is unusual for itself and its peers."""

    id: ClassVar[str] = "reach.anomalous"
    description: ClassVar[str] = ("an identity's reach (namespaces, secrets, resources, clusters) is unusual "
                                  "for its own history and its peer group; the finding names the features")

    def run(self, ctx: DetectContext) -> list[Finding]:
        cfg = ctx.config.reach
        wsec = window_seconds(ctx.config)
        # Lookback for training: one more baseline before the judged window.
        train_since = None if ctx.since is None else ctx.since - timedelta(days=cfg.baseline_days)
        df_all = compute_reach(ctx.con, ctx.config, train_since, ctx.until, ctx.cache)
        if len(df_all) == 0:
            return []
        model, meta = _fit_or_load(df_all, ctx)
        judged = df_all if ctx.since is None else df_all[df_all["w"] >= pd.Timestamp(_floor(ctx.since, wsec))]
        if len(judged) == 0:
            return []
        from ztaudit.detectors.ml import MODEL_VERSION as ml_version
        from ztaudit.detectors.ml import feature_matrix

        scores = model.score_samples(feature_matrix(model_inputs(judged), model_feature_names()))
        threshold = model.threshold_for(cfg.model_top_share)
        top = scores >= threshold
        hits: list[tuple[pd.Series, float, list[dict[str, Any]]]] = []
        for (_, row), score in zip(judged[top].iterrows(), scores[top], strict=True):
            reasons = explain(row, cfg.min_history_windows)
            if reasons:
                hits.append((row, float(score), reasons))
        windows = []
        for row, _, _ in hits:
            start = row["w"].to_pydatetime()
            windows.append((str(row["actor"]), None if pd.isna(row["scope"]) else str(row["scope"]), start,
                            start + timedelta(seconds=wsec)))
        evidence = _evidence(ctx.con, windows)
        findings: list[Finding] = []
        for (row, score, reasons), (actor, scope, start, end), refs in zip(hits, windows, evidence, strict=True):
            sev = Severity.HIGH if any(r["severity"] == "high" for r in reasons) else Severity.MEDIUM
            summary = (f"{actor} ({row['actor_kind']}, peer group {row['peer_group']}) in the {cfg.window} "
                       f"from {start:%Y-%m-%d %H:%M} UTC: " + "; ".join(r["text"] for r in reasons[:3])
                       + ". Check what this identity did and whether its credential was taken.")
            context = {
                "window": cfg.window, "window_start": start.isoformat(), "peer_group": row["peer_group"],
                "peers": int(row["peers"]), "history_windows": int(row["history_windows"]),
                "model_score": score, "model_threshold": threshold,
                "model_top_share": cfg.model_top_share,
                "model": {"version": ml_version, "trained_from": meta["trained_from"],
                          "trained_until": meta["trained_until"]},
                "features": reasons,
                "secret_namespaces": list(row["secret_namespace_list"])[:50],
                "new_namespaces": list(row["new_namespace_list"])[:50],
            }
            findings.append(Finding(
                detector=self.id, key=(actor, scope, start.isoformat(), cfg.window), severity=sev, actor=actor,
                summary=summary, first_seen=start, last_seen=end, evidence=tuple(refs),
                cluster=_str_or_none(row["cluster"]), score=score,
                context=json.loads(json.dumps(context, default=str)),
            ))
        return findings



def _str_or_none(value: object) -> str | None:
    """pandas gives NaN for a null string cell (events without a cluster); findings want None."""
    return value if isinstance(value, str) and value else None

# --- report ------------------------------------------------------------------------------------

REACH_REPORT: Final = pa.schema([
    ("actor", pa.string()), ("actor_kind", pa.string()), ("peer_group", pa.string()), ("windows", pa.int64()),
    ("first_window", TS), ("last_window", TS), ("requests", pa.int64()), ("clusters", pa.int64()),
    ("max_namespaces", pa.int64()), ("max_resources", pa.int64()), ("max_secret_namespaces", pa.int64()),
    ("max_foreign_secret_namespaces", pa.int64()), ("new_namespaces", pa.int64()), ("exec_count", pa.int64()),
    ("forbidden_requests", pa.int64()), ("growth", pa.float64()),
])


def _as_int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) else 0


def reach_report(con: duckdb.DuckDBPyConnection, config: Config, since: datetime | None,
                 until: datetime | None, granted: bool = False) -> pa.Table:
    """``ztaudit report reach``: per actor, its reach over [since, until) (largest first).

    ``growth`` = namespaces in the last window / median namespaces over the period (> 1 means the
    blast radius grew). With ``granted``, the granted-vs-used table of
    :func:`ztaudit.detectors.rbac.granted_vs_used` instead (needs an ``rbac_snapshot`` ingest).
    """
    if granted:
        from ztaudit.detectors.rbac import granted_vs_used

        return granted_vs_used(con, since, until)
    df = compute_reach(con, config, since, until)
    if len(df) == 0:
        return REACH_REPORT.empty_table()
    rows = []
    for (actor, _scope), g in df.sort_values("w").groupby(["actor", "scope"], sort=False, dropna=False):
        med = float(g["namespaces"].median())
        rows.append({
            "actor": actor, "actor_kind": g["actor_kind"].iloc[-1], "peer_group": g["peer_group"].iloc[-1],
            "windows": len(g), "first_window": g["w"].iloc[0].to_pydatetime(),
            "last_window": g["w"].iloc[-1].to_pydatetime(), "requests": int(g["requests"].sum()),
            "clusters": int(g["clusters"].max()), "max_namespaces": int(g["namespaces"].max()),
            "max_resources": int(g["resources"].max()), "max_secret_namespaces": int(g["secret_namespaces"].max()),
            "max_foreign_secret_namespaces": int(g["foreign_secret_namespaces"].max()),
            "new_namespaces": int(g["new_namespaces"].sum()), "exec_count": int(g["exec_count"].sum()),
            "forbidden_requests": int(g["forbidden_requests"].sum()),
            "growth": float(g["namespaces"].iloc[-1]) / med if med > 0 else None,
        })
    rows.sort(key=lambda r: (-_as_int(r["max_secret_namespaces"]), -_as_int(r["max_namespaces"]), str(r["actor"])))
    return pa.Table.from_pylist(rows, schema=REACH_REPORT)

"""Reach scoring: peer groups, rolling baselines, the model's inputs and the explainable gates.

Holds :func:`compute_reach` (:data:`~ztaudit.detectors.reach_features.FEATURES_SQL` plus each
actor-window's history and peer-group ranges), the peer-group rule (:data:`MIN_PEER_GROUP`), the
Isolation Forest's inputs (:func:`model_feature_names`, :func:`model_inputs`) and its training
(:func:`fit_or_load`), and the gates that turn a ranked window into named reasons (:data:`GATES`,
:func:`explain`). The method is described in :mod:`ztaudit.detectors.reach`. Called by
:mod:`ztaudit.detectors.reach` (the ``reach.anomalous`` detector and the ``reach`` table builder) and
by the reach and model tests.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ztaudit.core.config import Config
from ztaudit.core.window import EARLIEST, LATEST, Window
from ztaudit.detectors.base import DetectContext, Severity
from ztaudit.detectors.engine import Engine, Session, as_engine
from ztaudit.detectors.reach_features import (
    COUNT_FEATURES,
    FEATURES_SQL,
    SHARE_FEATURES,
    floor_to,
    window_seconds,
)

if TYPE_CHECKING:  # pandas is imported where a frame is made (detectors/reach.py)
    import pandas as pd

#: A peer group is used only with at least this many actors (else the next, broader one).
MIN_PEER_GROUP: Final = 3

#: The population of an actor's kind in its cluster (people: everywhere) is a base for an actor with
#: thin history only when it holds at least this many other actors in the window.
MIN_POPULATION: Final = 5


@dataclass(frozen=True)
class Gate:
    """A reach feature that can raise a finding: value ≥ base + margin and value ≥ ratio × base."""

    margin: float
    ratio: float
    phrase: str  # "{v}" is the observed value
    severity: Severity


#: Feature -> gate. The phrases say "requested": the features count requests whatever their answer
#: (a credential probing for secrets it is refused is also news), so a refused one is not said "read".
#: Margins are absolute counts chosen so the generator's near-misses (one new team
#: namespace, scale-out, daily rhythm) stay below them while a credential abused for discovery
#: (secrets in several namespaces, a node reading outside its pods) clears them.
GATES: Final[dict[str, Gate]] = {
    "foreign_secret_namespaces": Gate(2, 2.0, "requested secrets in {v} namespaces outside its own (or "
                                      "its pods') namespaces", Severity.HIGH),
    "secret_namespaces": Gate(3, 2.0, "requested secrets in {v} namespaces", Severity.HIGH),
    "secret_cluster_lists": Gate(2, 2.0, "requested secrets cluster-wide (list/watch) {v} times", Severity.HIGH),
    "new_namespaces": Gate(3, 2.0, "touched {v} namespaces it never used before", Severity.MEDIUM),
    "namespaces": Gate(4, 2.0, "touched {v} namespaces", Severity.MEDIUM),
    "resources": Gate(6, 2.0, "used {v} resource types", Severity.MEDIUM),
    "exec_count": Gate(5, 3.0, "requested {v} exec/attach/port-forward", Severity.MEDIUM),
    "clusters": Gate(1, 2.0, "reached {v} clusters", Severity.MEDIUM),
    "forbidden_requests": Gate(20, 3.0, "was denied {v} times", Severity.LOW),
}


@dataclass(frozen=True)
class Rule:
    """A fixed rule: ``feature`` ≥ ``threshold`` is risky in itself, for the actor kinds listed, when it is
    also new to the actor (≥ its own usual maximum + ``margin`` over at least one earlier window)."""

    feature: str
    threshold: float
    margin: float
    kinds: tuple[str, ...]
    phrase: str  # "{v}" is the observed value
    severity: Severity


#: Rule id -> rule. Judged with any own history (one earlier window is enough), without peers or the
#: model's rank (docs/detection-background.md §2.4). Control-plane identities are not judged by rules.
RULES: Final[dict[str, Rule]] = {
    "secrets_across_namespaces": Rule("foreign_secret_namespaces", 5, 2, ("service_account",),
                                      "requested secrets in {v} namespaces other than its own", Severity.HIGH),
    "exec_other_namespaces": Rule("foreign_exec_namespaces", 1, 1, ("service_account",),
                                  "requested exec/attach/port-forward in pods of {v} namespace(s) other than its own",
                                  Severity.HIGH),
}

#: Features only rules judge (not model inputs): their history is kept for the rules.
RULE_ONLY_FEATURES: Final = tuple(sorted({r.feature for r in RULES.values()} - set(COUNT_FEATURES)))


# Peer groups and rolling baselines over the (small) actor-window table.
_BASELINE_SQL = """
WITH f AS (SELECT * FROM feat),
cand AS (
    SELECT *,
        CASE WHEN control_plane THEN NULL ELSE CASE actor_kind
            WHEN 'service_account' THEN 'sa-ns:' || cluster || '/' || coalesce(sa_namespace, '?')
            WHEN 'human' THEN CASE WHEN coalesce(groups_key, '') <> '' THEN 'idp:' || groups_key END
            WHEN 'node' THEN 'nodes:' || cluster
        END END AS c1,
        CASE WHEN actor_kind = 'service_account' AND NOT control_plane THEN 'sa-name:' || coalesce(sa_name, '?')
        END AS c2,
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
        -- the controller manager's per-controller accounts are one component split by controller: each
        -- has its own bootstrap role, so they are no peers of each other or of the namespace's workloads
        CASE WHEN control_plane THEN 'control-plane:' || cluster
             WHEN s1.n >= $min_peer THEN c1 WHEN s2.n >= $min_peer THEN c2 ELSE c3 END AS peer_group,
        CASE WHEN control_plane THEN NULL
             WHEN actor_kind = 'service_account' THEN 'service_account:' || cluster
             WHEN actor_kind = 'human' THEN 'human' END AS population_group
    FROM cand LEFT JOIN sizes s1 ON s1.c = cand.c1 LEFT JOIN sizes s2 ON s2.c = cand.c2
),
pop_top AS (  -- the population of the same kind in the cluster (people: everywhere), per window
    SELECT population_group, w, count(*) AS members, {pop_top_cols} FROM grouped
    WHERE population_group IS NOT NULL GROUP BY population_group, w
),
pop_second AS (
    SELECT g.population_group, g.w, {pop_second_cols}
    FROM grouped g JOIN pop_top t ON t.population_group = g.population_group AND t.w = g.w
    GROUP BY g.population_group, g.w
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
    coalesce(pt.members - 1, 0) AS population,
    {hist_cols},
    {peer_cols},
    {pop_cols}
FROM grouped g
JOIN peer_top t ON t.peer_group = g.peer_group AND t.w = g.w
JOIN peer_second s2 ON s2.peer_group = g.peer_group AND s2.w = g.w
LEFT JOIN pop_top pt ON pt.population_group = g.population_group AND pt.w = g.w
LEFT JOIN pop_second ps ON ps.population_group = g.population_group AND ps.w = g.w
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
    hist = ", ".join([f"max(g.{f}) OVER hist AS hist_max_{f}" for f in (*COUNT_FEATURES, *RULE_ONLY_FEATURES)]
                     + [f"min(g.{f}) OVER hist AS hist_min_{f}" for f in (*GATES, *RULE_ONLY_FEATURES)])
    top = ", ".join(f"max({f}) AS m_{f}" for f in COUNT_FEATURES)
    second = ", ".join(f"max(g.{f}) FILTER (WHERE g.{f} < t.m_{f}) AS s_{f}, "
                       f"count(*) FILTER (WHERE g.{f} = t.m_{f}) AS c_{f}" for f in COUNT_FEATURES)
    peer = ", ".join(f"CASE WHEN t.members <= 1 THEN NULL WHEN g.{f} = t.m_{f} AND s2.c_{f} = 1 THEN s2.s_{f} "
                     f"ELSE t.m_{f} END AS peer_max_{f}" for f in COUNT_FEATURES)
    # The population's max without self, the same way, for the gate features only.
    pop_top = ", ".join(f"max({f}) AS m_{f}" for f in GATES)
    pop_second = ", ".join(f"max(g.{f}) FILTER (WHERE g.{f} < t.m_{f}) AS s_{f}, "
                           f"count(*) FILTER (WHERE g.{f} = t.m_{f}) AS c_{f}" for f in GATES)
    pop = ", ".join(f"CASE WHEN coalesce(pt.members, 0) <= 1 THEN NULL WHEN g.{f} = pt.m_{f} AND ps.c_{f} = 1 "
                    f"THEN ps.s_{f} ELSE pt.m_{f} END AS pop_max_{f}" for f in GATES)
    return _BASELINE_SQL.format(hist_cols=hist, peer_cols=peer, top_cols=top, second_cols=second,
                                pop_top_cols=pop_top, pop_second_cols=pop_second, pop_cols=pop)


def compute_reach(con: Session, config: Config, since: datetime | None,
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
    lo = EARLIEST if since is None else floor_to(since, wsec) - timedelta(days=baseline_days)
    hi = LATEST if until is None else until
    key = ("reach.features", wsec, baseline_days, lo, hi)
    df: pd.DataFrame
    if cache is not None and key in cache:
        df = cache[key]
    else:
        df = _compute_features(as_engine(con), wsec, baseline_days, lo, hi)
        if cache is not None:
            cache[key] = df
    if since is not None and len(df):
        import pandas as pd

        df = df[df["w"] >= pd.Timestamp(floor_to(since, wsec))]
    return df.sort_values(["w", "actor", "cluster"]).reset_index(drop=True)


def _compute_features(engine: Engine, wsec: int, baseline_days: int, lo: datetime,
                      hi: datetime) -> pd.DataFrame:
    """Features and baselines of every actor-window in [lo, hi) (lookback rows included)."""
    # The catalog's views belong to the engine's session, so no second session: a uniquely named
    # registered relation is dropped again in ``finally``.
    name = f"_reach_feat_{uuid.uuid4().hex[:12]}"
    feat = engine.query(FEATURES_SQL, {"w": wsec, "baseline_days": baseline_days, **Window(lo, hi).params()})
    engine.register_arrow(name, feat)
    try:
        df = engine.frame(_baseline_sql().replace("FROM feat", f"FROM {name}"),
                          {"min_peer": MIN_PEER_GROUP, "baseline_days": baseline_days})
    finally:
        engine.drop(name)
    return df


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


def fit_or_load(df_all: pd.DataFrame, ctx: DetectContext) -> tuple[Any, dict[str, Any]]:
    """The reach model for this run: retrained on the baseline windows, reused when persisted."""
    import pandas as pd

    from ztaudit.detectors import ml  # scikit-learn is imported only when reach runs

    cfg = ctx.config.reach
    names = model_feature_names()
    since = ctx.since
    # Baseline = whole windows before the judged one, so streaming runs within one window reuse the
    # persisted model instead of retraining on every flush.
    cut = None if since is None else pd.Timestamp(floor_to(since, window_seconds(ctx.config)))
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
    """Gate features whose value clears every base it has, and fixed rules that trip; strongest first.

    Bases (docs/detection-background.md §2.4): the actor's own usual maximum over its earlier windows (any
    number of them), its specific peer group's maximum, and, while its own history is thin (fewer than
    ``min_history`` windows) and it has no specific peers, the maximum of the population of its kind in
    its cluster (at least :data:`MIN_POPULATION` others). A gate fires when the value clears the largest
    base by margin and ratio; with thin history and neither peers nor a population it is not judged.
    Rules (:data:`RULES`) need one earlier window and nothing else.

    Each item: feature, observed, usual_min/usual_max (None without history), peers_max (None without
    peers), population_max (None unless used), base, excess (observed / max(base, 1)), severity, signals
    (``history``, ``peers``, ``population``, ``rule``), rule (its id, or None), text.
    """
    hist_n = int(row.get("history_windows") or 0)
    peer_n = int(row.get("peers") or 0)
    group = str(row.get("peer_group", ""))
    established = hist_n >= min_history
    # Without history only a specific peer group (same SA namespace or name, same IdP groups, nodes of the
    # cluster) is comparable; "all service accounts" is not (a cert-manager is unique), nor are the
    # controller manager's controllers comparable with each other.
    broad = group.startswith(("kind:", "control-plane:"))
    use_peers = peer_n >= MIN_PEER_GROUP - 1 and (established or not broad)
    use_population = (not established and hist_n > 0 and not use_peers
                      and int(row.get("population") or 0) >= MIN_POPULATION)
    out: list[dict[str, Any]] = []
    for f, gate in GATES.items():
        v = _num(row[f]) or 0.0
        if f == "new_namespaces" and not established:
            continue  # every namespace is "new" to an actor without history
        hist_max = _num(row[f"hist_max_{f}"]) if hist_n > 0 else None
        peer_max = _num(row[f"peer_max_{f}"]) if use_peers else None
        pop_max = _num(row.get(f"pop_max_{f}")) if use_population else None
        bases = [b for b in (hist_max, peer_max, pop_max) if b is not None]
        if not bases or (not established and peer_max is None and pop_max is None):
            continue  # nothing to compare with: judged once history, peers or a population exist
        base = max(bases)
        if v >= base + gate.margin and v >= gate.ratio * base:
            signals = [name for name, b in (("history", hist_max), ("peers", peer_max), ("population", pop_max))
                       if b is not None]
            out.append(_item(row, f, v, hist_n, hist_max, peer_max, pop_max, base, gate.severity, signals, None,
                             gate.phrase))
    if not group.startswith("control-plane:") and hist_n > 0:
        for rid, rule in RULES.items():
            if str(row.get("actor_kind")) not in rule.kinds:
                continue
            v = _num(row.get(rule.feature)) or 0.0
            usual = _num(row.get(f"hist_max_{rule.feature}")) or 0.0
            if v < rule.threshold or v < usual + rule.margin:
                continue
            same = next((d for d in out if d["feature"] == rule.feature), None)
            if same is not None:  # the gate already names it: the rule corroborates it
                same["signals"].append("rule")
                same["rule"] = rid
                continue
            out.append(_item(row, rule.feature, v, hist_n, usual, None, None, usual, rule.severity,
                             ["history", "rule"], rid, rule.phrase))
    rank = {"high": 0, "medium": 1, "low": 2}
    out.sort(key=lambda d: (rank[str(d["severity"])], -_as_float(d["excess"]), str(d["feature"])))
    return out


def _item(row: pd.Series, f: str, v: float, hist_n: int, hist_max: float | None, peer_max: float | None,
          pop_max: float | None, base: float, severity: Severity, signals: list[str], rule: str | None,
          phrase: str) -> dict[str, Any]:
    """One explanation item (see :func:`explain`)."""
    usual_min = _num(row.get(f"hist_min_{f}")) if hist_n > 0 else None
    if hist_max is None:
        usual = "no history"
    else:
        span = _fmt(usual_min) if usual_min == hist_max else f"{_fmt(usual_min)}-{_fmt(hist_max)}"
        usual = f"usual {span}" + (f" over {hist_n} earlier window{'s' if hist_n != 1 else ''}"
                                   if rule is not None or pop_max is not None else "")
    parts = [phrase.format(v=_fmt(v)), usual]
    if rule is not None:
        parts.append(f"fixed rule {rule}")
    elif pop_max is not None:
        who = ("people" if row.get("actor_kind") == "human" else
               f"service accounts of cluster {row.get('cluster')}")
        parts.append(f"no peers; the {int(row.get('population') or 0)} other {who} at most {_fmt(pop_max)}")
    else:
        parts.append(f"peers at most {_fmt(peer_max)}" if peer_max is not None else "no peers")
    return {
        "feature": f, "observed": v, "usual_min": usual_min, "usual_max": hist_max, "peers_max": peer_max,
        "population_max": pop_max, "base": base, "excess": v / max(base, 1.0), "severity": str(severity),
        "signals": signals, "rule": rule, "text": "; ".join(parts),
    }


def confidence(row: pd.Series, reasons: list[dict[str, Any]], min_history: int) -> str:
    """How much a finding's bases can carry: ``high`` with an established baseline (``min_history``
    windows of its own, or a specific peer group), ``medium`` on thin history corroborated by the
    population of its kind or a fixed rule."""
    if int(row.get("history_windows") or 0) >= min_history or any("peers" in r["signals"] for r in reasons):
        return "high"
    return "medium"

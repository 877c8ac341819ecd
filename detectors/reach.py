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
  first, used when they hold at least :data:`~ztaudit.detectors.reach_scoring.MIN_PEER_GROUP`
  actors: service accounts by SA namespace, then by SA name across namespaces (one workload's pods
  share an SA); humans by their IdP group set (``impersonated_groups`` through the proxy, else
  ``user_groups``); nodes as one group per cluster; otherwise the actor kind.

Cold start (docs/detection-background.md §2.4): with fewer than ``reach.min_history_windows`` earlier
windows and no specific peer group, an actor-window is judged against its thin history *and* the
population of its kind in its cluster; fixed rules (secrets read across namespaces, exec into other
namespaces by a service account) need one earlier window and not the model's rank. Each finding names
the signals it rests on and a confidence. The controller manager's per-controller service accounts
(tokens minted by the control plane itself) are judged as control plane (peer group
``control-plane:<cluster>``).

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
(:data:`~ztaudit.detectors.reach_scoring.GATES`). The margins are what keeps near-misses quiet: a
team's first namespace adds 1 new namespace (margin 3), a scale-out adds requests, IPs and
credentials (not gate features), quiet weekends only lower values (only excess is judged).

The code is in three modules, each importing only the ones before it:
:mod:`ztaudit.detectors.reach_features` (the features SQL), :mod:`ztaudit.detectors.reach_scoring`
(peer groups, baselines, the model's inputs and the gates) and this one: the ``reach.anomalous``
detector (:class:`AnomalousReach`), the ``reach`` table builder (:func:`build_reach_table`, called by
detectors/tables.py). ``ztaudit report reach`` reads the ``reach`` table.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ztaudit.core.columns import TS, conform
from ztaudit.core.config import Config
from ztaudit.core.derived_tables import REACH
from ztaudit.core.window import Window
from ztaudit.detectors.base import DetectContext, Finding, Severity, audit_ref
from ztaudit.detectors.engine import Engine
from ztaudit.detectors.reach_features import floor_to, window_seconds
from ztaudit.detectors.reach_scoring import (
    RULES,
    compute_reach,
    confidence,
    explain,
    fit_or_load,
    model_feature_names,
    model_inputs,
)

if TYPE_CHECKING:  # pandas costs ~0.2 s to import: only building the reach table and the model need it
    import pandas as pd


def reach_rows_table(df: pd.DataFrame, config: Config) -> pa.Table:
    """The ``reach`` table (registered schema) for a :func:`compute_reach` frame."""
    import pandas as pd

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
    return reach_rows_table(compute_reach(ctx.engine, ctx.config, ctx.since, ctx.until, ctx.cache), ctx.config)


# --- detector ----------------------------------------------------------------------------------

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


def _evidence(engine: Engine,
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
    engine.register_arrow(name, keys)
    try:
        span = Window(min(w[2] for w in windows), max(w[3] for w in windows))
        rows = engine.rows(_EVIDENCE_SQL.format(keys=name), span.params())
    finally:
        engine.drop(name)
    out: list[list[str]] = [[] for _ in windows]
    for i, cluster, audit_id in rows:
        out[i].append(audit_ref(cluster, audit_id))
    return out


class AnomalousReach:
    """``reach.anomalous``: an identity's reach is unusual for itself and its peers."""

    id: ClassVar[str] = "reach.anomalous"
    description: ClassVar[str] = ("an identity's reach (namespaces, secrets, resources, clusters) is unusual "
                                  "for its own history and its peer group; the finding names the features")

    def run(self, ctx: DetectContext) -> list[Finding]:
        import pandas as pd

        cfg = ctx.config.reach
        wsec = window_seconds(ctx.config)
        # Lookback for training: one more baseline before the judged window.
        train_since = None if ctx.since is None else ctx.since - timedelta(days=cfg.baseline_days)
        df_all = compute_reach(ctx.engine, ctx.config, train_since, ctx.until, ctx.cache)
        if len(df_all) == 0:
            return []
        model, meta = fit_or_load(df_all, ctx)
        judged = df_all if ctx.since is None else df_all[df_all["w"] >= pd.Timestamp(floor_to(ctx.since, wsec))]
        if len(judged) == 0:
            return []
        from ztaudit.detectors.ml import MODEL_VERSION as ml_version
        from ztaudit.detectors.ml import feature_matrix

        scores = model.score_samples(feature_matrix(model_inputs(judged), model_feature_names()))
        threshold = model.threshold_for(cfg.model_top_share)
        top = scores >= threshold
        # Fixed rules do not need the model's rank (docs/detection-background.md §2.4): rows that could trip
        # one are explained too, and kept only for a rule reason.
        ruled = np.zeros(len(judged), dtype=bool)
        for rule in RULES.values():
            ruled |= (judged["actor_kind"].isin(rule.kinds).to_numpy(dtype=bool)
                      & (judged[rule.feature].to_numpy(dtype=float) >= rule.threshold))
        ruled &= judged["history_windows"].to_numpy(dtype=float) > 0
        hits: list[tuple[pd.Series, float, list[dict[str, Any]]]] = []
        pick = top | ruled
        for (_, row), score, ranked in zip(judged[pick].iterrows(), scores[pick], top[pick], strict=True):
            reasons = explain(row, cfg.min_history_windows)
            if not ranked:
                reasons = [r for r in reasons if r["rule"] is not None]
            if reasons:
                hits.append((row, float(score), reasons))
        windows = []
        for row, _, _ in hits:
            start = row["w"].to_pydatetime()
            windows.append((str(row["actor"]), None if pd.isna(row["scope"]) else str(row["scope"]), start,
                            start + timedelta(seconds=wsec)))
        evidence = _evidence(ctx.engine, windows)
        findings: list[Finding] = []
        for (row, score, reasons), (actor, scope, start, end), refs in zip(hits, windows, evidence, strict=True):
            sev = Severity.HIGH if any(r["severity"] == "high" for r in reasons) else Severity.MEDIUM
            signals = sorted({sig for r in reasons for sig in r["signals"]})
            conf = confidence(row, reasons, cfg.min_history_windows)
            rules = sorted({str(r["rule"]) for r in reasons if r["rule"] is not None})
            # the features count requests whatever their answer: say how many were refused
            refused = int(row["forbidden_requests"]) if "forbidden_requests" in row else 0
            summary = (f"{actor} ({row['actor_kind']}, peer group {row['peer_group']}) in the {cfg.window} "
                       f"from {start:%Y-%m-%d %H:%M} UTC: " + "; ".join(r["text"] for r in reasons[:3])
                       + (f" ({refused} of its {int(row['requests'])} requests in the {cfg.window} refused)"
                          if refused else "")
                       + f". Rests on {', '.join(signals)} ({int(row['history_windows'])} earlier "
                       f"{cfg.window}s of its own); confidence {conf}."
                       " Check what this identity did and who acted as it: its credential, or someone "
                       "impersonating it (the evidence names the impersonator).")
            context = {
                "window": cfg.window, "window_start": start.isoformat(), "peer_group": row["peer_group"],
                "peers": int(row["peers"]), "history_windows": int(row["history_windows"]),
                "signals": signals, "confidence": conf, "rules": rules,
                "population": int(row["population"]), "population_group": _str_or_none(row["population_group"]),
                "model_score": score, "model_threshold": threshold,
                "model_top_share": cfg.model_top_share,
                "model": {"version": ml_version, "trained_from": meta["trained_from"],
                          "trained_until": meta["trained_until"]},
                "features": reasons,
                "requests": int(row["requests"]), "refused_requests": refused,
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

"""Impersonation checks: every human request should arrive as the proxy impersonating that human.

Four detectors (docs/design.md "Detector ids"; docs/detection-background.md "What NONE of them has";
docs/kubernetes-audit.md §6; docs/proxy-and-idp.md §1.5, §4 "Pitfalls"). Each is called by
``ztaudit detect`` and the streaming hook with a :class:`DetectContext`; each reads the lake
through the context's engine (:mod:`ztaudit.detectors.engine`), returns findings grouped per actor
per cluster per UTC day (so a busy day is one finding, with counts and up to ``detect.max_evidence``
event references), and raises on SQL errors (a broken lake is an error, never a silent "no
findings").

Human, break-glass and system identities come from ``[identities]`` / ``[impersonation]`` in the
config at detect time (not from ``actor_kind`` fixed at ingest), so changing the config and
re-running ``detect`` re-judges old data. Patterns are regular expressions evaluated by DuckDB
(RE2 syntax); ``ztaudit config check`` verifies they compile there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from ztaudit.core.config import Config
from ztaudit.core.window import Window
from ztaudit.detectors import correlate
from ztaudit.detectors.base import DetectContext, Finding, Severity, audit_ref
from ztaudit.detectors.correlate_queries import (
    AUDIT_TIE_SQL,
    PROXY_HOST_KEY,
    PROXY_TIE_SQL,
    TIER_C_BURSTS,
    TIER_C_PAIRS,
    TIER_C_RANKS,
    VERB_METHOD_SQL,
    approved_predicate,
)
from ztaudit.detectors.engine import Session, as_engine
from ztaudit.detectors.sql import Drop, EmptyTable, Insert, Step, Table, run_all


def _any_pattern(patterns: Sequence[str]) -> str | None:
    """One RE2 alternation of ``patterns`` (None when the list is empty)."""
    return "|".join(f"(?:{p})" for p in patterns) if patterns else None


def _window(ctx: DetectContext) -> dict[str, Any]:
    """Bound parameters of :meth:`Window.sql` for the context's window (open ends are far sentinels)."""
    return Window(ctx.since, ctx.until).params()


def _fmt(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "?"


_ACTION = "verb || ' ' || coalesce(resource, '')"


def _dl(col: str, n: int) -> str:
    """SQL: up to ``n`` distinct non-null values of ``col`` (an empty list, never NULL)."""
    return f"coalesce(list(DISTINCT {col} ORDER BY {col}) FILTER (WHERE {col} IS NOT NULL), [])[1:{n}]"


def _cl(cluster: str | None) -> str:
    return cluster if cluster else "(unnamed; ingest with --cluster)"


def _ips(ips: Sequence[str] | None) -> str:
    return ", ".join(ips) if ips else "an unlogged address"


def _audit_refs(cluster: str | None, ids: Sequence[str], cap: int) -> tuple[str, ...]:
    return tuple(audit_ref(cluster, i) for i in list(ids)[:cap])


#: Predicate: the row's authenticated user is a person. The lake's own classification first: a row
#: that impersonates no one and whose ``actor_kind`` is ``human`` (ingest calls every identity that is
#: not a service account, node, ``system:*`` or a ``system_user_patterns`` match a person, e.g.
#: OpenShift's ``kube:admin``), so this detector, the lake and ``report impersonation`` agree; then the
#: config's patterns, which also catch a person who impersonates (the patterns are bound: ``$human``,
#: ``$hgroups``, ``$system``, each one RE2 alternation or NULL).
_HUMAN: Final = ("((impersonator IS NULL AND actor_kind = 'human') OR "
                 "($human IS NOT NULL AND regexp_matches(user_name, $human)) OR "
                 "($hgroups IS NOT NULL AND len(list_filter(coalesce(user_groups, []), "
                 "lambda g: regexp_matches(g, $hgroups))) > 0)) AND "
                 "NOT ($system IS NOT NULL AND regexp_matches(user_name, $system))")


def _identity_params(cfg: Config) -> dict[str, Any]:
    """Bound values of :data:`_HUMAN` and ``$breakglass`` (a list) from ``[identities]`` / ``[impersonation]``."""
    return {"human": _any_pattern(cfg.identities.human_user_patterns),
            "hgroups": _any_pattern(cfg.identities.human_group_patterns),
            "system": _any_pattern(cfg.identities.system_user_patterns),
            "breakglass": list(cfg.impersonation.break_glass)}


#: impersonation.proxy_bypass: requests in the window whose authenticated user is a human or break-glass
#: identity, per (cluster, identity, UTC day); evidence ordered by time then audit id.
_PROXY_BYPASS_SQL: Final = f"""
    WITH req AS (
        SELECT cluster, audit_id, request_received_at, any_value(user_name) AS user_name,
               max(response_code) AS response_code, any_value(source_ip) AS source_ip,
               any_value(user_agent) AS user_agent, any_value(credential_id) AS credential_id,
               any_value(verb) AS verb, any_value(resource) AS resource,
               max(impersonated_user) AS impersonated_user
        FROM k8s_audit
        WHERE {Window.sql("request_received_at")}
          AND user_name IS NOT NULL
          -- the API server authenticated a proxy-minted JWT carrying a session id the proxy issued to
          -- this person (tier B, Pomerium-JWT mode): the person came through the proxy, not around it.
          -- A session id the proxy never logged for this person (forged, someone else's) exempts nothing.
          AND (proxy_session_id IS NULL OR proxy_session_id || chr(0) || lower(user_name) NOT IN (
               SELECT session_id || chr(0) || lower(email) FROM proxy_decision
               WHERE session_id IS NOT NULL AND session_id <> '' AND email IS NOT NULL))
          AND (list_contains($breakglass::VARCHAR[], user_name)
               OR (user_name NOT LIKE 'system:%' AND {_HUMAN}))
        GROUP BY cluster, audit_id, request_received_at
    )
    SELECT cluster, user_name, CAST(request_received_at AS DATE) AS day,
           list_contains($breakglass::VARCHAR[], user_name) AS break_glass,
           count(*) AS requests, count(*) FILTER (WHERE response_code IN (401, 403)) AS denied,
           min(request_received_at) AS first_seen, max(request_received_at) AS last_seen,
           {_dl('source_ip', 5)} AS source_ips,
           {_dl('user_agent', 3)} AS user_agents,
           {_dl('credential_id', 5)} AS credential_ids,
           {_dl('impersonated_user', 5)} AS impersonated,
           {_dl(_ACTION, 10)} AS actions,
           list(audit_id ORDER BY request_received_at, audit_id)[1:$cap] AS audit_ids
    FROM req GROUP BY ALL ORDER BY cluster, user_name, day
"""

#: impersonation.unobserved, shape 1: judgeable unmatched allowed decisions per (cluster, user, day).
_UNMATCHED_DECISIONS_SQL: Final = f"""
    SELECT cluster, actor, CAST(decided_at AS DATE) AS day, count(*) AS decisions,
           min(decided_at) AS first_seen, max(decided_at) AS last_seen,
           list(DISTINCT coalesce(method, '?') || ' ' || coalesce(path, '?')
                ORDER BY coalesce(method, '?') || ' ' || coalesce(path, '?'))[1:10] AS requests,
           {_dl('client_ip', 5)} AS client_ips, {_dl('user_id', 3)} AS user_ids,
           list(coalesce(request_id, origin) ORDER BY decided_at, coalesce(request_id, origin))[1:$cap] AS refs
    FROM {correlate.Correlation().unmatched_proxy} WHERE judgeable GROUP BY ALL ORDER BY cluster, actor, day
"""

#: impersonation.unobserved, shape 2: an approved impersonator's requests without impersonation, each
#: paired (or not) with a person's allowed proxy decision that no impersonated request explained. Run
#: after ``correlate.ensure`` (reads ``zt_unmatched_proxy``) by :func:`classify_raw_proxy_requests`, in
#: order. Pairing is tier C of :mod:`~ztaudit.detectors.correlate_queries` (same templates, the same
#: multiset passes) with the key (cluster, method, path without query): the decision's person in place
#: of an impersonated user, since a route that skipped impersonation sends the proxy's own token.
_RAW_PREPARE: Final[tuple[Step, ...]] = (
    # the raw requests: one row per request (docs/kubernetes-audit.md §9), no stage impersonated
    Table("zt_raw_a", f"""
    SELECT hash(r.cluster, r.audit_id, r.request_received_at) AS pk, {AUDIT_TIE_SQL} AS tb,
           hash(any_value(coalesce(r.cluster, s.single_cluster)), {VERB_METHOD_SQL.format(v='any_value(r.verb)')},
                split_part(any_value(r.request_uri), '?', 1)) AS k,
           epoch_us(any_value(r.request_received_at)) AS r_us, CAST(NULL AS UBIGINT) AS kb,
           any_value(coalesce(r.cluster, s.single_cluster)) AS cluster, any_value(r.audit_id) AS audit_id,
           any_value(r.request_received_at) AS request_received_at, any_value(r.user_name) AS user_name,
           max(r.response_code) AS response_code, any_value(r.source_ip) AS source_ip,
           any_value(r.user_agent) AS user_agent, any_value(r.credential_id) AS credential_id,
           any_value(r.verb) AS verb, any_value(r.resource) AS resource, any_value(r.namespace) AS namespace
    FROM k8s_audit r CROSS JOIN zt_correlation_settings s
    WHERE {Window.sql("request_received_at", "r")}
      AND {approved_predicate('r.user_name', 'coalesce(r.cluster, s.single_cluster)')}
    GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)
    HAVING bool_and(r.impersonator IS NULL)"""),
    # the decisions a raw request may explain: allowed, for a person, paired with no impersonated request
    Table("zt_raw_p", f"""
    SELECT hash(origin, request_id, check_request_id, decided_at) AS pk, {PROXY_TIE_SQL.replace('d.', '')} AS tb,
           hash(cluster, upper(method), path) AS k, epoch_us(decided_at) AS d_us,
           CASE WHEN epoch_us(decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           CAST(NULL AS UBIGINT) AS kb, coalesce(request_id, origin) AS ref
    FROM zt_unmatched_proxy"""),
    EmptyTable("zt_raw_pairs", "p_pk UBIGINT, a_pk UBIGINT, tier VARCHAR"),
    *(step for ranks in (TIER_C_RANKS, TIER_C_BURSTS, TIER_C_BURSTS)
      for step in (Table("zt_raw_r", ranks.format(decisions="zt_raw_p", requests="zt_raw_a", paired="zt_raw_pairs")),
                   Insert("zt_raw_pairs", TIER_C_PAIRS.format(ranked="zt_raw_r")))),
    # the newest decision per cluster (any decision shows the proxy log was flowing), as in MATCHING
    Table("zt_raw_marks", """
    SELECT coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster, max(epoch_us(d.decided_at)) AS max_p
    FROM proxy_decision d CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_hosts h ON h.host = """ + PROXY_HOST_KEY + """
    GROUP BY 1"""),
    # ``kind``: ``route`` (paired with a person's decision: a route that skipped impersonation),
    # ``secrets`` (unpaired, reads secrets outside the identity's own namespace: a proxy reads at most
    # its own TLS/config secrets, so this is its token in someone's hands), ``pending`` (unpaired but too
    # close to the end of the proxy data, or no proxy data in the cluster: its decision may not be
    # logged yet), ``own`` (unpaired: the proxy's own housekeeping, config maps, ingresses, leases).
    Table("zt_raw_proxy", """
    SELECT a.* EXCLUDE (pk, tb, k, r_us, kb), x.ref,
           CASE WHEN x.ref IS NOT NULL THEN 'route'
                WHEN a.resource = 'secrets' AND a.verb IN ('get', 'list', 'watch')
                     AND a.namespace IS DISTINCT FROM
                         CASE WHEN a.user_name LIKE 'system:serviceaccount:%' THEN split_part(a.user_name, ':', 3) END
                     THEN 'secrets'
                WHEN m.max_p IS NULL OR a.r_us + s.window_us + 1000000 >= m.max_p THEN 'pending'
                ELSE 'own' END AS kind
    FROM zt_raw_a a CROSS JOIN zt_correlation_settings s
    LEFT JOIN (SELECT q.a_pk, any_value(p.ref) AS ref FROM zt_raw_pairs q JOIN zt_raw_p p ON p.pk = q.p_pk
               GROUP BY q.a_pk) x ON x.a_pk = a.pk
    LEFT JOIN zt_raw_marks m ON m.cluster = a.cluster"""),
    Drop("zt_raw_a"), Drop("zt_raw_p"), Drop("zt_raw_r"), Drop("zt_raw_pairs"), Drop("zt_raw_marks"),
)

#: impersonation.unobserved, shape 2 findings: the ``route`` and ``secrets`` rows of ``zt_raw_proxy`` per
#: (cluster, identity, day), with the audit events and the paired proxy decisions.
_RAW_PROXY_IDENTITY_SQL: Final = f"""
    SELECT cluster, user_name, CAST(request_received_at AS DATE) AS day, count(*) AS requests,
           count(*) FILTER (WHERE kind = 'route') AS paired, count(*) FILTER (WHERE kind = 'secrets') AS secrets,
           count(*) FILTER (WHERE response_code = 403) AS forbidden,
           min(request_received_at) AS first_seen, max(request_received_at) AS last_seen,
           {_dl('source_ip', 5)} AS source_ips, {_dl('user_agent', 3)} AS user_agents,
           {_dl('credential_id', 5)} AS credential_ids,
           {_dl(_ACTION, 10)} AS actions,
           list(audit_id ORDER BY request_received_at, audit_id)[1:$cap] AS audit_ids,
           coalesce(list(ref ORDER BY request_received_at, ref) FILTER (WHERE ref IS NOT NULL), [])[1:$cap]
               AS decision_refs
    FROM zt_raw_proxy WHERE kind IN ('route', 'secrets') GROUP BY ALL ORDER BY cluster, user_name, day
"""

#: ``report impersonation``'s ``proxy_own_traffic``: the ``own`` rows of ``zt_raw_proxy`` per (cluster,
#: identity).
_OWN_TRAFFIC_SQL: Final = f"""
    SELECT cluster, user_name AS identity, count(*) AS requests,
           count(*) FILTER (WHERE response_code = 403) AS forbidden,
           {_dl(_ACTION, 20)} AS actions, {_dl('namespace', 20)} AS namespaces,
           min(request_received_at) AS first_seen, max(request_received_at) AS last_seen
    FROM zt_raw_proxy WHERE kind = 'own' GROUP BY ALL ORDER BY cluster, identity
"""

#: Is there any stage of a non-impersonated request by an approved impersonator in the window? The rows
#: ``zt_raw_a`` (:data:`_RAW_PREPARE`) groups are a subset of these, so "none" means no own traffic.
_ANY_RAW_SQL: Final = f"""
    SELECT 1 FROM k8s_audit r CROSS JOIN zt_correlation_settings s
    WHERE {Window.sql("request_received_at", "r")} AND r.impersonator IS NULL
      -- implied by the next line; a plain IN the engine pushes into the Parquet scan
      AND r.user_name IN (SELECT username FROM zt_approved_impersonators)
      AND {approved_predicate('r.user_name', 'coalesce(r.cluster, s.single_cluster)')}
    LIMIT 1
"""

OWN_TRAFFIC_COLUMNS: Final = ("cluster", "identity", "requests", "forbidden", "actions", "namespaces",
                              "first_seen", "last_seen")


def classify_raw_proxy_requests(con: Session, window: Window) -> None:
    """Write ``zt_raw_proxy`` on engine ``con``: each non-impersonated request of an approved impersonator in
    ``window``, with the decision it paired with and its ``kind`` (see :data:`_RAW_PREPARE`).

    Called by :class:`Unobserved` and :func:`proxy_own_traffic` after ``correlate``'s detect plan
    built ``zt_unmatched_proxy`` for the same window on ``con``. Raises on SQL errors.
    """
    run_all(as_engine(con), _RAW_PREPARE, window.params())


@dataclass(frozen=True)
class OwnTraffic:
    """What :func:`proxy_own_traffic` found: ``rows`` (:data:`OWN_TRAFFIC_COLUMNS`), and whether it left
    the correlation's detect-plan tables for its window and config on the connection
    (``detect_tables``: :func:`~ztaudit.detectors.correlate.impersonation_summary` can then read them)."""

    rows: list[dict[str, Any]]
    detect_tables: bool


def proxy_own_traffic(con: Session, config: Config, since: datetime | None = None,
                      until: datetime | None = None) -> OwnTraffic:
    """The proxy identities' own traffic (raw requests that pair with no person's decision), per
    (cluster, identity): :data:`OWN_TRAFFIC_COLUMNS`. Called by ``ztaudit report impersonation`` with an
    ``open_lake`` connection; runs the correlation's detect plan (no cache) unless the window holds no
    such request at all (then there is nothing to pair: a cheap check saves the plan, ~2 s at 10M
    events); raises on SQL errors."""
    window = Window(since, until)
    engine = as_engine(con)
    correlate.install_config(engine, config)
    if not engine.rows(_ANY_RAW_SQL, window.params()):
        return OwnTraffic([], detect_tables=False)
    correlate.run_plan(engine, config, window, correlate.DETECT_PLAN)
    classify_raw_proxy_requests(engine, window)
    return OwnTraffic(engine.records(_OWN_TRAFFIC_SQL), detect_tables=True)


#: impersonation.unbrokered: judgeable unmatched impersonated requests per (cluster, impersonated user,
#: day). ``min`` picks one spelling of the user when the log has several cases of it (deterministic).
_UNMATCHED_REQUESTS_SQL: Final = f"""
    SELECT cluster, actor, min(impersonated_user) AS impersonated_user,
           CAST(request_received_at AS DATE) AS day, count(*) AS requests,
           min(request_received_at) AS first_seen, max(request_received_at) AS last_seen,
           list(DISTINCT impersonator ORDER BY impersonator)[1:3] AS impersonators,
           {_dl('credential_id', 5)} AS credential_ids,
           {_dl('source_ip', 5)} AS source_ips, {_dl('user_agent', 3)} AS user_agents,
           list(DISTINCT verb || ' ' || path ORDER BY verb || ' ' || path)[1:10] AS requests_seen,
           list(audit_id ORDER BY request_received_at, audit_id)[1:$cap] AS audit_ids
    FROM {correlate.Correlation().unmatched_audit}
    -- a request that carries a proxy session id (tier B) without a decision is counted in the report's
    -- matching section; it impersonated no one, so it is not this detector's finding
    WHERE judgeable AND impersonator IS NOT NULL GROUP BY cluster, actor, day
    ORDER BY cluster, actor, day
"""

#: impersonation.unapproved_impersonator: impersonated requests whose impersonator is not approved for
#: the cluster, per (cluster, impersonator, day).
_UNAPPROVED_SQL: Final = f"""
    WITH req AS (
        SELECT cluster, audit_id, request_received_at, any_value(impersonator) AS impersonator,
               any_value(impersonated_user) AS impersonated_user, max(response_code) AS response_code,
               any_value(source_ip) AS source_ip, any_value(credential_id) AS credential_id
        FROM k8s_audit r
        WHERE {Window.sql("request_received_at", "r")} AND impersonator IS NOT NULL
          AND NOT {approved_predicate('r.impersonator', 'r.cluster')}
        GROUP BY cluster, audit_id, request_received_at
    )
    SELECT cluster, impersonator, CAST(request_received_at AS DATE) AS day, count(*) AS requests,
           count(*) FILTER (WHERE response_code = 403) AS forbidden,
           min(request_received_at) AS first_seen, max(request_received_at) AS last_seen,
           list(DISTINCT impersonated_user ORDER BY impersonated_user)[1:10] AS targets,
           {_dl('source_ip', 5)} AS source_ips, {_dl('credential_id', 5)} AS credential_ids,
           list(audit_id ORDER BY request_received_at, audit_id)[1:$cap] AS audit_ids
    FROM req GROUP BY ALL ORDER BY cluster, impersonator, day
"""


class ProxyBypass:
    """``impersonation.proxy_bypass``: a human (or break-glass identity) reached the API directly.

    The authenticated identity (``user.username``) itself is a person: a kubeconfig with an OIDC
    token or client certificate, not the proxy. A person who then impersonates someone else
    (``kubectl --as``) bypassed the proxy too; that is also reported by
    ``impersonation.unapproved_impersonator``.
    """

    id: ClassVar[str] = "impersonation.proxy_bypass"
    description: ClassVar[str] = ("a human identity reached the API server directly, not through an approved "
                                  "impersonator")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """Requests whose ``user.username`` is a human or break-glass identity, per (cluster, identity,
        day). Break-glass use is severity low; anyone else high."""
        params = {**_window(ctx), **_identity_params(ctx.config), "cap": ctx.config.detect.max_evidence}
        rows = ctx.engine.records(_PROXY_BYPASS_SQL, params)
        out = []
        for r in rows:
            bg = bool(r["break_glass"])
            what = (f"{r['requests']} request(s) ({r['denied']} denied) from {_ips(r['source_ips'])} "
                    f"between {_fmt(r['first_seen'])} and {_fmt(r['last_seen'])}")
            if r["impersonated"]:
                what += f", impersonating {', '.join(r['impersonated'])}"
            if bg:
                summary = (f"Break-glass identity {r['user_name']} used the API server directly in cluster "
                           f"{_cl(r['cluster'])}: {what}. Confirm the emergency was declared and rotate the "
                           "break-glass credential afterwards.")
            else:
                summary = (f"Human identity {r['user_name']} reached the API server of cluster {_cl(r['cluster'])} "
                           f"directly, not through the identity-aware proxy: {what}. Find and revoke the "
                           "credential it used (kubeconfig, client certificate, OIDC token) and route access "
                           "through the proxy.")
            out.append(Finding(
                detector=self.id, key=(r["cluster"], r["user_name"], str(r["day"])),
                severity=Severity.LOW if bg else Severity.HIGH, actor=r["user_name"], summary=summary,
                first_seen=r["first_seen"], last_seen=r["last_seen"],
                evidence=_audit_refs(r["cluster"], r["audit_ids"], ctx.config.detect.max_evidence),
                credential_id=(r["credential_ids"] or [None])[0], cluster=r["cluster"],
                score=float(r["requests"]),
                context={"break_glass": bg, "requests": r["requests"], "denied": r["denied"],
                         "source_ips": r["source_ips"], "user_agents": r["user_agents"],
                         "credential_ids": r["credential_ids"], "impersonated": r["impersonated"],
                         "actions": r["actions"]},
            ))
        return out


class Unobserved:
    """``impersonation.unobserved``: the proxy allowed a request the API server never saw as the user.

    Two shapes: (1) an allowed proxy decision with no matching impersonated audit request after the
    match window (``correlate``); (2) the misconfiguration where an approved proxy identity reaches
    the API with no ``impersonatedUser`` at all — the raw service-account token in use, so the human
    behind it is unobservable (docs/proxy-and-idp.md §1.6 "Expected combinations", §4 "Pitfalls").
    Shape 2 is judged only for raw requests that pair with an otherwise unexplained allowed decision
    for a person (a route that skipped impersonation), or that read secrets outside the identity's
    own namespace (its token in someone's hands). Raw requests that pair with no person's decision
    are the proxy's own housekeeping (config maps, ingresses, leases): ``report impersonation`` lists
    them (:func:`proxy_own_traffic`); near the end of the proxy data they are not judged at all.
    """

    id: ClassVar[str] = "impersonation.unobserved"
    description: ClassVar[str] = ("the proxy allowed a Kubernetes request but no matching impersonated audit "
                                  "event exists")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """Unmatched allowed decisions per (cluster, user, day) plus raw proxy-identity use per
        (cluster, identity, day), with the audit events and the paired decisions as evidence.
        Decisions too close to the end of the audit data, and unpaired raw requests too close to the
        end of the proxy data, are not judged."""
        cap = ctx.config.detect.max_evidence
        correlate.ensure(ctx)
        out: list[Finding] = []
        for r in ctx.engine.records(_UNMATCHED_DECISIONS_SQL, {"cap": cap}):
            summary = (f"The proxy allowed {r['decisions']} Kubernetes request(s) for {r['actor']} to cluster "
                       f"{_cl(r['cluster'])} between {_fmt(r['first_seen'])} and {_fmt(r['last_seen'])} "
                       f"(e.g. {', '.join(r['requests'][:3])}) but no audit event shows them arriving as that "
                       "user. Check that the route impersonates (kubernetes_service_account_token), that the "
                       "audit policy logs the proxy's service account, and that the API server behind the "
                       "route is the audited one.")
            out.append(Finding(
                detector=self.id, key=("decision", r["cluster"], r["actor"], str(r["day"])),
                severity=Severity.MEDIUM, actor=r["actor"], summary=summary,
                first_seen=r["first_seen"], last_seen=r["last_seen"],
                evidence=tuple(f"proxy_decision:{x}" for x in r["refs"]), cluster=r["cluster"],
                score=float(r["decisions"]),
                context={"shape": "decision_without_audit", "decisions": r["decisions"],
                         "requests": r["requests"], "client_ips": r["client_ips"], "user_ids": r["user_ids"]},
            ))
        classify_raw_proxy_requests(ctx.engine, Window(ctx.since, ctx.until))
        for r in ctx.engine.records(_RAW_PROXY_IDENTITY_SQL, {"cap": cap}):
            why = []
            if r["paired"]:
                why.append(f"{r['paired']} of them pair with the proxy's allowed decisions for people (same "
                           "method, path and time): a route forwards with the proxy's own token instead of "
                           "impersonating, so no person is accountable for them. Set the route's "
                           "kubernetes_service_account_token and impersonation")
            if r["secrets"]:
                why.append(f"{r['secrets']} read secrets outside the identity's own namespace with no person's "
                           "decision behind them: the proxy's token is being used directly. Rotate it and find "
                           "who holds it")
            summary = (f"Approved impersonator {r['user_name']} made {r['requests']} request(s) to cluster "
                       f"{_cl(r['cluster'])} without impersonating anyone ({r['forbidden']} forbidden), from "
                       f"{_ips(r['source_ips'])} between {_fmt(r['first_seen'])} and "
                       f"{_fmt(r['last_seen'])}; " + "; ".join(why) + ".")
            evidence = (_audit_refs(r["cluster"], r["audit_ids"], cap)
                        + tuple(f"proxy_decision:{x}" for x in r["decision_refs"]))
            out.append(Finding(
                detector=self.id, key=("raw_identity", r["cluster"], r["user_name"], str(r["day"])),
                severity=Severity.HIGH, actor=r["user_name"], summary=summary,
                first_seen=r["first_seen"], last_seen=r["last_seen"], evidence=evidence,
                credential_id=(r["credential_ids"] or [None])[0], cluster=r["cluster"],
                score=float(r["requests"]),
                context={"shape": "proxy_identity_without_impersonation", "requests": r["requests"],
                         "paired_with_decisions": r["paired"], "secrets_outside_own_namespace": r["secrets"],
                         "forbidden": r["forbidden"], "source_ips": r["source_ips"],
                         "user_agents": r["user_agents"], "actions": r["actions"]},
            ))
        return out


class Unbrokered:
    """``impersonation.unbrokered``: an approved impersonator impersonated someone with no proxy
    decision behind it — the proxy's credential used outside the proxy."""

    id: ClassVar[str] = "impersonation.unbrokered"
    description: ClassVar[str] = ("an approved impersonator's credential impersonated someone with no proxy "
                                  "decision behind it")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """Unmatched impersonated requests per (cluster, impersonated user, day); requests too close
        to the end of the proxy data, or in a cluster with no proxy data, are not judged."""
        cap = ctx.config.detect.max_evidence
        correlate.ensure(ctx)
        out: list[Finding] = []
        for r in ctx.engine.records(_UNMATCHED_REQUESTS_SQL, {"cap": cap}):
            imps = ", ".join(map(str, r["impersonators"]))
            summary = (f"{imps} impersonated {r['impersonated_user']} in cluster {_cl(r['cluster'])} for "
                       f"{r['requests']} request(s) between {_fmt(r['first_seen'])} and {_fmt(r['last_seen'])} "
                       f"(from {_ips(r['source_ips'])}) with no proxy decision behind them: the "
                       "proxy's credential is being used outside the proxy. Rotate it "
                       f"(credential {', '.join(map(str, r['credential_ids'])) or 'unknown'}) and find the "
                       "client.")
            out.append(Finding(
                detector=self.id, key=(r["cluster"], r["actor"], str(r["day"])),
                severity=Severity.HIGH, actor=r["impersonated_user"], summary=summary,
                first_seen=r["first_seen"], last_seen=r["last_seen"],
                evidence=_audit_refs(r["cluster"], r["audit_ids"], cap),
                credential_id=(r["credential_ids"] or [None])[0], cluster=r["cluster"],
                score=float(r["requests"]),
                context={"impersonators": r["impersonators"], "requests": r["requests"],
                         "source_ips": r["source_ips"], "user_agents": r["user_agents"],
                         "requests_seen": r["requests_seen"], "credential_ids": r["credential_ids"]},
            ))
        return out


class UnapprovedImpersonator:
    """``impersonation.unapproved_impersonator``: impersonation by an identity not approved for the
    cluster (``impersonation.approved_impersonators``, '*' lists apply to every cluster)."""

    id: ClassVar[str] = "impersonation.unapproved_impersonator"
    description: ClassVar[str] = "an identity that is not an approved impersonator used impersonation"

    def run(self, ctx: DetectContext) -> list[Finding]:
        """Impersonated requests whose impersonator is not approved, per (cluster, impersonator, day)."""
        cap = ctx.config.detect.max_evidence
        correlate.install_config(ctx.engine, ctx.config)
        out: list[Finding] = []
        for r in ctx.engine.records(_UNAPPROVED_SQL, {**_window(ctx), "cap": cap}):
            targets = ", ".join(map(str, r["targets"]))
            summary = (f"{r['impersonator']} is not an approved impersonator for cluster {_cl(r['cluster'])} but "
                       f"impersonated {targets} in {r['requests']} request(s) ({r['forbidden']} forbidden by "
                       f"RBAC) between {_fmt(r['first_seen'])} and {_fmt(r['last_seen'])}. Remove its "
                       "'impersonate' permission, or add it to impersonation.approved_impersonators if it is "
                       "a sanctioned proxy.")
            out.append(Finding(
                detector=self.id, key=(r["cluster"], r["impersonator"], str(r["day"])),
                severity=Severity.HIGH, actor=r["impersonator"], summary=summary,
                first_seen=r["first_seen"], last_seen=r["last_seen"],
                evidence=_audit_refs(r["cluster"], r["audit_ids"], cap),
                credential_id=(r["credential_ids"] or [None])[0], cluster=r["cluster"],
                score=float(r["requests"]),
                context={"impersonated": r["targets"], "requests": r["requests"], "forbidden": r["forbidden"],
                         "source_ips": r["source_ips"], "credential_ids": r["credential_ids"]},
            ))
        return out


__all__ = ["ProxyBypass", "UnapprovedImpersonator", "Unbrokered", "Unobserved", "impersonation_summary"]

impersonation_summary = correlate.impersonation_summary

"""Revocation status: the evidence chain of each revocation, from the IdP to the proxy to the API server.

Holds :func:`build` (the temp table ``zt_rev_status``: one row per revocation with its evidence
chain, ``status``, ``reason`` and latencies) and :func:`revocation_status` (those rows, columns
:data:`STATUS_COLUMNS`). Called by ``revocation.not_enforced`` (:mod:`ztaudit.detectors.revocation`,
through :func:`build`) and by ``ztaudit report revocation`` through :func:`revocation_status`. All
work is DuckDB SQL; values from config and time bounds are bound parameters. Which events are
revocations: :mod:`ztaudit.detectors.revocations_view`; the statuses and their rules for readers:
docs/revocation.md.

One row per revocation: the same fact logged twice is folded (:data:`DEDUP_SECONDS`, the extra
lines in ``duplicates``), and a proxy session deletion (Pomerium ``identity_manager`` "... deleting
session") that follows an IdP revocation of the same subject within ``revocation.notice_window_hours``
is that revocation's *notice* (§1.4, §4 step 2), not a revocation of its own.

Identity bridges (docs/proxy-and-idp.md §0, §3), named per row in ``bridge``: IdP login (email / UPN
/ login) ↔ proxy ``email`` ↔ audit ``actor`` (case-insensitive); IdP subject id ↔ proxy
``user_id`` (and, when the IdP event names no login, the email the proxy logged for that user id);
session id ↔ proxy ``session_id`` and, with tier B (``correlation.session_extra_key``), the audit
event's ``proxy_session_id``; the client address of the subject's last allowed request for
anonymous denials (below).

Per revocation at T0: the proxy notice, attributable denials, the last allowed use before T0 and the
allowed uses after it (proxy and API server), up to a restoration (IdP activate / unsuspend / enable
of the same subject; re-creation of the same service account, secret or binding). ``status``:

* ``not_enforced``: an allowed use later than T0 + ``revocation.grace_seconds``;
* ``pending``: otherwise, when T0 + grace is after the lake's latest event (judged again later);
* ``enforced``: the proxy dropped the subject's session(s), or an attributable denial followed;
* ``quiet``: the subject was seen (before or after) but nothing of the above;
* ``not_applicable``: the subject was never seen at the proxy or the API server within
  ``revocation.activity_days`` of T0 (excluded from every rate).

Attributable denials: a denial naming the subject (proxy user id, email, session; an API 401/403 for
the actor) is ``exact``. Pomerium's denials after a session deletion carry no identity
(``user-unauthenticated``, ``user:""``, no session id: §1.4, real-stack.md §4): such a denial from the
address of the subject's last allowed proxy decision is attributed (``client_ip``) only if no other
identity made an identified decision from that address in between and the user agents, where both are
logged, agree; otherwise it is counted in ``anonymous_refused`` and the reason says why (the statements:
:mod:`ztaudit.detectors.revocation_attribution`).

Latencies: ``notice_latency_seconds`` (T0 → the proxy dropped the session), ``denial_latency_seconds``
(T0 → first attributable denial), ``exposure_seconds`` (T0 → last allowed use after T0);
``objective_met`` says whether an enforced revocation was enforced, and nothing allowed, within
``revocation.objective_seconds``.

Timing rules: API requests are judged by ``request_received_at`` (a watch or exec opened before
the revocation and closed after it is not a violation, §4 step 4). Proxy times have second
precision (§1.1): a decision logged at second S happened in ``[S, S+1 s)``, so "allowed after the
grace period" requires the *logged* time to be past it (never a false alarm from truncation), and a
denial or notice logged in the revocation's own second counts as after it, with latency clamped at 0.

Failure: SQL errors propagate; an empty lake gives an empty table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.window import EARLIEST, LATEST, Window, utc_day
from ztaudit.detectors.base import audit_ref_sql
from ztaudit.detectors.engine import Engine, Session, as_engine
from ztaudit.detectors.revocation_attribution import PROXY_BOUND, attribute_anonymous_denials
from ztaudit.detectors.revocations_view import REVOCATIONS_IN_WINDOW_SQL
from ztaudit.detectors.sql import EmptyTable, Insert, Table, run

#: ``violations`` references :func:`revocation_status` returns per revocation.
REPORT_VIOLATIONS = 20

#: Statuses, in the order the report counts them (``docs/revocation.md``).
STATUSES: Final = ("enforced", "not_enforced", "quiet", "pending", "not_applicable")

STATUS_COLUMNS = [
    "kind", "subject", "identity", "subject_id", "session_id", "cluster", "clusters", "source", "system",
    "event_type", "revoked_at", "revoked_by", "inferred_from", "restored_at", "bridge", "status", "reason",
    "notice_at", "notice_event", "first_denied_at", "attribution", "anonymous_refused", "last_allowed_before",
    "first_allowed_after", "last_allowed_after", "allowed_after_grace_proxy", "allowed_after_grace_api",
    "first_allowed_after_grace", "last_allowed_after_grace", "notice_latency_seconds", "denial_latency_seconds",
    "exposure_seconds", "objective_met", "evidence", "duplicates", "notices", "denials", "violations",
]

#: Most distinct subjects DuckDB may push into a scan as an IN filter while uses are collected.
_IN_FILTER_THRESHOLD: Final = 5000

#: The same fact logged twice (Pomerium's error line and its debug "deleting session" line, Keycloak's
#: REFRESH_TOKEN_ERROR logged twice 9 ms apart, an event delivered twice) is one revocation: a
#: revocation of the same subject by the same system within this many seconds of the previous one.
DEDUP_SECONDS: Final = 60

#: Revocation candidates (the ``revocations`` view's rows, read from a window widened by the notice
#: window in front, so a proxy deletion just inside the window finds an IdP revocation just before it),
#: numbered, with ``login`` falling back to the email the proxy logged for the subject id (``min``: one
#: deterministic choice when the proxy logged several spellings), else to the login the same IdP logged
#: for it in another event (a Keycloak admin disable names only the user id; the user's LOGIN events
#: carry ``username``, what she typed: an email is preferred, then the latest; a person who never
#: used the proxy is still looked for at the API server), and
#: duplicates folded into the first row of each run (:data:`DEDUP_SECONDS`). A Keycloak user ``LOGOUT``
#: (one SSO session, judged apart: :data:`_REVOKED_SQL`) is never folded with a revocation of all the
#: user's sessions (:data:`_KC_LOGOUT` in the run's partition).
_KC_LOGOUT: Final = "coalesce(system = 'keycloak' AND event_type = 'LOGOUT', false)"
_CANDIDATES_SQL: Final = Table("zt_rev_cand", f"""
        WITH v AS (
        -- a session or token, once cut, stays cut: only identities and grants are given back
        -- the view's columns written out, in its order (not `v.* REPLACE`: Spark SQL has no such star)
        SELECT v.source, v.system, v.cluster, v.kind, v.subject,
               coalesce(v.login, (SELECT min(lower(p.email)) FROM proxy_decision p
                                  WHERE p.user_id = v.subject_id AND p.email <> ''),
                        (SELECT arg_max(lower(e.subject_login), (e.subject_login LIKE '%@%', e.occurred_at))
                         FROM idp_event e
                         WHERE e.idp = v.system AND e.subject_id = v.subject_id AND e.subject_login <> '')) AS login,
               v.subject_id, v.session_id, v.revoked_at, v.revoked_by, v.event_type, v.evidence, v.inferred_from,
               CASE WHEN v.source = 'idp' AND v.kind IN ('session', 'token') THEN NULL
                    ELSE v.restored_at END AS restored_at
        FROM ({REVOCATIONS_IN_WINDOW_SQL}) v
    ), g AS (
        -- a new fact: the first line, more than {DEDUP_SECONDS} s after the previous one, or after the
        -- previous one was restored (suspend, unsuspend, deactivate within a minute are two revocations)
        SELECT *, sum(CASE WHEN prev IS NULL OR revoked_at - prev > INTERVAL {DEDUP_SECONDS} SECOND
                                OR prev_restored <= revoked_at THEN 1 ELSE 0 END)
                    OVER (PARTITION BY system, kind, subject, coalesce(cluster, ''), {_KC_LOGOUT}
                          ORDER BY revoked_at, evidence ROWS UNBOUNDED PRECEDING) AS grp
        FROM (SELECT *, lag(revoked_at) OVER w AS prev, lag(restored_at) OVER w AS prev_restored FROM v
              WINDOW w AS (PARTITION BY system, kind, subject, coalesce(cluster, ''), {_KC_LOGOUT}
                           ORDER BY revoked_at, evidence))
    )
    -- numbered in a total order, so every engine numbers alike: one IdP line can be two revocations of
    -- one subject equal in time, system and evidence but not kind (a Google Workspace activity listing
    -- REMOVE_GROUP_MEMBER and DELETE_USER: a grant and an identity)
    SELECT row_number() OVER (ORDER BY min(revoked_at), subject, system, min(evidence), kind,
                                       cluster IS NULL, coalesce(cluster, '')) AS cand_id,
           any_value(source) AS source, system, cluster, kind, subject,
           arg_min(login, (revoked_at, subject_id IS NULL, evidence)) AS login,
           arg_min(subject_id, (revoked_at, subject_id IS NULL, evidence)) AS subject_id,
           arg_min(session_id, (revoked_at, subject_id IS NULL, evidence)) AS session_id, min(revoked_at) AS revoked_at,
           arg_min(revoked_by, (revoked_at, subject_id IS NULL, evidence)) AS revoked_by,
           arg_min(event_type, (revoked_at, subject_id IS NULL, evidence)) AS event_type, min(evidence) AS evidence,
           arg_min(inferred_from, (revoked_at, subject_id IS NULL, evidence)) AS inferred_from,
           min(restored_at) AS restored_at,
           -- the other lines of the same fact (for an inferred revocation: the other confirmations)
           [x FOR x IN list_sort(list_distinct(list(evidence) || list(regexp_extract(inferred_from, '^[^ ]+'))))
              IF x <> min(evidence)
                 AND x <> coalesce(regexp_extract(arg_min(inferred_from, (revoked_at, subject_id IS NULL, evidence)),
                                                                     '^[^ ]+'), '')] AS duplicates
    FROM g GROUP BY system, cluster, kind, subject, {_KC_LOGOUT}, grp
""")

#: Proxy session deletions (Pomerium ``identity_manager``) that follow a revocation made elsewhere (the
#: IdP) for the same subject within the notice window and before any restoration: the proxy noticing
#: it (§1.4, §4 step 2). Bridges: the deletion's user id is the IdP subject id (Okta 00u..., Keycloak
#: UUID, real-stack.md §4), or the proxy logged the deletion's user id with the revoked login as email.
#: A deletion logged at whole second S happened in [S, S+1 s).
_NOTICES_SQL: Final = Table("zt_rev_notice", """
        SELECT r.cand_id, p.cand_id AS notice_id, p.revoked_at AS notice_at, p.event_type AS notice_event,
           p.evidence AS ref, p.duplicates AS refs,
           CASE WHEN p.subject_id = r.subject_id THEN 'IdP subject id = proxy user id'
                ELSE 'IdP login = proxy email of the proxy user id' END AS bridge
    FROM zt_rev_cand r JOIN zt_rev_cand p
      ON p.system = 'pomerium' AND p.source = 'idp' AND r.system <> 'pomerium' AND r.source = 'idp'
     AND (p.subject_id = r.subject_id OR (p.login IS NOT NULL AND p.login = r.login))
     AND p.revoked_at + INTERVAL 1 SECOND > r.revoked_at AND p.revoked_at <= r.revoked_at + $notice_window
     AND (r.restored_at IS NULL OR p.revoked_at < r.restored_at)
""")

#: The revocations judged: candidates revoked in the window, less the proxy deletions that are another
#: revocation's notice. ``by_sessions``: an IdP session revocation naming no session (Okta's "clear user
#: sessions" ends them all): judged by the identity's proxy sessions that existed before it (a new
#: login afterwards is legitimate). ``unjudged``: allowed use afterwards proves nothing, because the
#: IdP event cut something the lake cannot tie to the proxy: an application or group membership
#: (``grant``: which application is not recorded) or one IdP session (a Keycloak LOGOUT of one SSO
#: session, whose id the proxy's sessions do not carry). A Keycloak user ``LOGOUT`` is one session even
#: when the event lacks its ``sessionId`` (the corpus' idp/keycloak/logout.sekoia-test.json): which one
#: is then not said, which is no reason to judge it as every session (its admin "sign out" of all of a
#: user's sessions is ``admin:ACTION:USER``, users/<id>/logout).
_IDP_SESSION: Final = "c.kind = 'session' AND c.source = 'idp' AND c.system NOT IN ('pomerium', 'list')"
_ONE_IDP_SESSION: Final = (f"{_IDP_SESSION} AND (c.session_id IS NOT NULL "
                           "OR (c.system = 'keycloak' AND coalesce(c.event_type, '') = 'LOGOUT'))")
_REVOKED_SQL: Final = Table("zt_rev", f"""
        SELECT row_number() OVER (ORDER BY c.revoked_at, c.subject, c.source, c.evidence, c.cand_id) AS rev_id, c.*,
           {_IDP_SESSION} AND NOT ({_ONE_IDP_SESSION}) AS by_sessions,
           c.source = 'idp' AND (c.kind = 'grant' OR ({_ONE_IDP_SESSION})) AS unjudged
    FROM zt_rev_cand c
    WHERE c.revoked_at >= $lo AND c.revoked_at < $hi
      AND c.cand_id NOT IN (SELECT notice_id FROM zt_rev_notice)
""")

_USES_TABLE: Final = EmptyTable("zt_rev_use", """rev_id BIGINT, plane VARCHAR, ts TIMESTAMPTZ,
                        prec_us BIGINT, allowed BOOLEAN, ref VARCHAR, sess VARCHAR, ip VARCHAR, ua VARCHAR,
                        cluster VARCHAR, proxy VARCHAR, code INTEGER, how VARCHAR""")

#: Every scan of the big tables below is bounded like :data:`~.revocation_attribution.PROXY_BOUND`.
_PROXY_BOUND: Final = PROXY_BOUND
_AUDIT_BOUND: Final = ("request_received_at >= $ulo AND request_received_at < $until "
                       "AND CAST(dt AS VARCHAR) >= $ulo_day AND CAST(dt AS VARCHAR) <= $hi_day")

_IDENT_KINDS: Final = ("identity", "token", "grant", "session")
_PROXY_USE_COLUMNS: Final = """r.rev_id, 'proxy' AS plane, d.decided_at AS ts,
           CASE WHEN epoch_us(d.decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           d.is_allowed AS allowed, 'proxy_decision:' || coalesce(d.request_id, d.origin) AS ref,
           d.session_id AS sess, d.client_ip AS ip, d.user_agent AS ua, d.cluster AS cluster, d.proxy AS proxy,
           CAST(NULL AS INTEGER) AS code"""
_PROXY_USE_WINDOW: Final = f"d.decided_at >= r.revoked_at - $activity AND {_PROXY_BOUND}"
_API_USE_COLUMNS: Final = f"""r.rev_id, 'api' AS plane, q.request_received_at AS ts, 0 AS prec_us,
           q.response_code NOT IN (401, 403) AS allowed, {audit_ref_sql("q.cluster", "q.audit_id")} AS ref,
           NULL AS sess, q.ip, q.ua, q.cluster, q.response_code AS code"""

#: Uses of a revoked service account (by ``user_name``) or legacy token (by ``credential_id``) at the API
#: server (the rows to insert into ``zt_rev_use``), for ``{kind}`` / ``{column}``. Audit requests are
#: grouped per (cluster, audit_id, request_received_at) after filtering: the time bounds are on a group
#: key, so they drop whole requests, never stages of one.
_SUBJECT_API_USES: Final = f"""
    SELECT {_API_USE_COLUMNS}, '{{how}}' AS how
    FROM zt_rev r JOIN (
        SELECT cluster, audit_id, request_received_at, any_value({{column}}) AS subj,
               max(response_code) AS response_code, any_value(source_ip) AS ip, any_value(user_agent) AS ua
        FROM k8s_audit WHERE {{column}} IN (SELECT subject FROM zt_rev WHERE kind = '{{kind}}')
          AND {_AUDIT_BOUND}
        GROUP BY ALL) q ON q.subj = r.subject AND q.cluster IS NOT DISTINCT FROM r.cluster
    WHERE r.kind = '{{kind}}' AND q.response_code IS NOT NULL
      AND q.request_received_at >= r.revoked_at - $activity"""

#: The statements that collect the uses of revoked subjects into ``zt_rev_use``: name -> (kinds it
#: judges, INSERT). Each runs only when a kind it judges was revoked; each takes ``$until``, ``$ulo``,
#: ``$ulo_day``, ``$hi_day`` (bounds of its own kinds) and ``$activity``. Identity uses at the proxy
#: are matched on the proxy user id and on the email, each use once, naming the bridges that matched
#: (``how``). Binding uses: :func:`_binding_uses`.
_USE_SCANS: Final[dict[str, tuple[tuple[str, ...], Insert]]] = {
    "identity at the proxy": (_IDENT_KINDS, Insert("zt_rev_use", f"""
        SELECT rev_id, plane, ts, prec_us, allowed, ref, sess, ip, ua, cluster, proxy, code,
               CASE WHEN bool_or(by_id) AND bool_or(NOT by_id)
                    THEN 'IdP subject id = proxy user id, login = proxy email'
                    WHEN bool_or(by_id) THEN 'IdP subject id = proxy user id' ELSE 'login = proxy email' END AS how
        FROM (SELECT {_PROXY_USE_COLUMNS}, false AS by_id
              FROM zt_rev r JOIN proxy_decision d ON lower(d.email) = r.login
              WHERE r.kind IN {_IDENT_KINDS} AND (r.kind <> 'session' OR r.by_sessions OR r.unjudged)
                AND {_PROXY_USE_WINDOW}
              UNION ALL
              SELECT {_PROXY_USE_COLUMNS}, true AS by_id
              FROM zt_rev r JOIN proxy_decision d ON d.user_id = r.subject_id
              WHERE r.kind IN {_IDENT_KINDS} AND (r.kind <> 'session' OR r.by_sessions OR r.unjudged)
                AND {_PROXY_USE_WINDOW})
        GROUP BY rev_id, plane, ts, prec_us, allowed, ref, sess, ip, ua, cluster, proxy, code""", by_name=True)),
    # the actors whose lower case is a revoked login, or is one after a prefix an API server adds to
    # people's names (zt_rev_prefix: a direct login through the API server's own OIDC,
    # --oidc-username-prefix=oidc:), spelled as in the log (one row per login an actor can be): an IN
    # on the plain column lets DuckDB push the filter into the Parquet scan (lower(actor) IN ... cannot)
    "identity at the API server": (_IDENT_KINDS, Insert("zt_rev_use", f"""
        WITH acts AS MATERIALIZED (SELECT DISTINCT actor FROM k8s_audit WHERE {_AUDIT_BOUND}),
        who AS MATERIALIZED (
            SELECT DISTINCT actor, login FROM (
                SELECT actor, lower(actor) AS login FROM acts
                UNION ALL
                SELECT a.actor, substr(lower(a.actor), length(x.prefix) + 1) AS login
                FROM acts a JOIN zt_rev_prefix x ON substr(lower(a.actor), 1, length(x.prefix)) = x.prefix)
            WHERE login IN (SELECT login FROM zt_rev WHERE login IS NOT NULL))
        SELECT {_API_USE_COLUMNS},
               CASE WHEN lower(q.actor) = r.login THEN 'login = audit user'
                    ELSE 'login = audit user without its prefix' END AS how
        FROM zt_rev r JOIN (
            SELECT q.*, w.login AS who FROM (
                SELECT cluster, audit_id, request_received_at, any_value(actor) AS actor,
                       max(response_code) AS response_code, any_value(source_ip) AS ip, any_value(user_agent) AS ua
                FROM k8s_audit WHERE actor IN (SELECT actor FROM who) AND {_AUDIT_BOUND}
                GROUP BY ALL) q JOIN who w ON w.actor = q.actor) q ON q.who = r.login
        WHERE r.kind IN {_IDENT_KINDS} AND (r.kind <> 'session' OR r.by_sessions OR r.unjudged)
          AND q.response_code IS NOT NULL AND q.request_received_at >= r.revoked_at - $activity""", by_name=True)),
    "session at the proxy": (("session",), Insert("zt_rev_use", f"""
        SELECT {_PROXY_USE_COLUMNS}, 'session id' AS how
        FROM zt_rev r JOIN proxy_decision d ON d.session_id = r.session_id
        WHERE r.kind = 'session' AND NOT r.by_sessions AND NOT r.unjudged AND {_PROXY_USE_WINDOW}""", by_name=True)),
    # tier B (docs/proxy-and-idp.md §0): the API server mapped the proxy's session id into user.extra
    "session at the API server": (("session",), Insert("zt_rev_use", f"""
        SELECT {_API_USE_COLUMNS}, 'session id in audit user.extra (tier B)' AS how
        FROM zt_rev r JOIN (
            SELECT cluster, audit_id, request_received_at, any_value(proxy_session_id) AS sess,
                   max(response_code) AS response_code, any_value(source_ip) AS ip, any_value(user_agent) AS ua
            FROM k8s_audit
            WHERE proxy_session_id IN (SELECT session_id FROM zt_rev
                                       WHERE kind = 'session' AND NOT by_sessions AND NOT unjudged)
              AND {_AUDIT_BOUND}
            GROUP BY ALL) q ON q.sess = r.session_id
        WHERE r.kind = 'session' AND NOT r.by_sessions AND NOT r.unjudged AND q.response_code IS NOT NULL
          AND q.request_received_at >= r.revoked_at - $activity""", by_name=True)),
    "service account at the API server": (
        ("service_account",), Insert("zt_rev_use", _SUBJECT_API_USES.format(
            kind="service_account", column="user_name", how="service account = audit user"), by_name=True)),
    "legacy token at the API server": (
        ("legacy_token",), Insert("zt_rev_use", _SUBJECT_API_USES.format(
            kind="legacy_token", column="credential_id", how="secret = audit credential id"), by_name=True)),
}


# RBAC reason strings: 'RBAC: allowed by ClusterRoleBinding "NAME" of ...' and
# 'RBAC: allowed by RoleBinding "NAME/NS" of ...' (corpus: Pinniped sample).
_BINDING_RE: Final = (
    """regexp_extract({reason}, 'allowed by (ClusterRoleBinding|RoleBinding) "([^"]+)"', ['kind', 'ref'])""")
_BINDING_SUBJ: Final = """CASE WHEN {m}.kind = 'ClusterRoleBinding' THEN 'ClusterRoleBinding/' || {m}.ref
                        ELSE 'RoleBinding/' || split_part({m}.ref, '/', 2) || '/' || split_part({m}.ref, '/', 1)
                   END"""
_BINDING_SCOPE: Final = f"""authz_reason LIKE '%RoleBinding "%' AND {_AUDIT_BOUND}
                     AND coalesce(cluster, chr(0)) IN (SELECT coalesce(cluster, chr(0)) FROM zt_rev
                                                       WHERE kind = 'binding')"""

#: The few distinct RBAC reasons that name a revoked binding.
_BINDING_REASONS_SQL: Final = Table("zt_rev_reason", f"""
        SELECT authz_reason FROM (SELECT DISTINCT authz_reason FROM k8s_audit WHERE {_BINDING_SCOPE})
    WHERE {_BINDING_SUBJ.format(m=_BINDING_RE.format(reason='authz_reason'))}
          IN (SELECT subject FROM zt_rev WHERE kind = 'binding')
""")

#: The requests having a stage with such a reason.
_BINDING_REQUESTS_SQL: Final = Table("zt_rev_req", f"""
        SELECT DISTINCT cluster, audit_id, request_received_at FROM k8s_audit
    WHERE authz_reason IN (SELECT authz_reason FROM zt_rev_reason) AND {_BINDING_SCOPE}
""")

#: Those requests judged with all their stages, exactly as over the whole log.
_BINDING_USES_SQL: Final = Insert("zt_rev_use", f"""
    SELECT r.rev_id, 'api' AS plane, q.request_received_at AS ts, 0 AS prec_us, true AS allowed,
           {audit_ref_sql("q.cluster", "q.audit_id")} AS ref, q.cluster, 'binding named in the RBAC reason' AS how
    FROM zt_rev r JOIN (
        SELECT cluster, audit_id, request_received_at, {_BINDING_SUBJ.format(m='m')} AS subj
        FROM (SELECT a.cluster, a.audit_id, a.request_received_at,
                     {_BINDING_RE.format(reason='any_value(a.authz_reason)')} AS m
              FROM k8s_audit a SEMI JOIN zt_rev_req k
                ON a.cluster IS NOT DISTINCT FROM k.cluster AND a.audit_id IS NOT DISTINCT FROM k.audit_id
               AND a.request_received_at = k.request_received_at
              WHERE a.authz_reason LIKE '%RoleBinding "%' AND a.request_received_at >= $ulo
                AND a.request_received_at < $until AND CAST(a.dt AS VARCHAR) >= $ulo_day
                AND CAST(a.dt AS VARCHAR) <= $hi_day
              GROUP BY ALL HAVING max(a.response_code) BETWEEN 200 AND 399)) q
      ON q.subj = r.subject AND q.cluster IS NOT DISTINCT FROM r.cluster
    WHERE r.kind = 'binding' AND q.request_received_at >= r.revoked_at - $activity""", by_name=True)


def _binding_uses(engine: Engine, params: dict[str, Any]) -> None:
    """Insert the uses of revoked role bindings: requests whose RBAC reason names the binding.

    A request's binding is read from one of its stages' reasons (``any_value``), so the parse runs
    per request, not per distinct reason; but only a request with some stage whose reason names a
    revoked binding can match. So: parse the few distinct reasons, keep those naming a revoked
    binding, take the requests having such a stage, and judge only those requests, all their
    stages included, exactly as over the whole log.
    """
    run(engine, _BINDING_REASONS_SQL, params)
    row = engine.rows("SELECT count(*) FROM zt_rev_reason")
    if row and row[0][0]:
        run(engine, _BINDING_REQUESTS_SQL, params)
        run(engine, _BINDING_USES_SQL, params)
    engine.drop("zt_rev_req")
    engine.drop("zt_rev_reason")


def prefixes_table(prefixes: list[str]) -> tuple[Table, dict[str, Any]]:
    """The statement that writes ``zt_rev_prefix`` (one lower-cased ``prefix`` per non-empty entry of
    ``identities.username_prefixes``) and its bound parameters: a VALUES list of parameters, the same
    rows on DuckDB and Spark. Every prefix of an actor counts (``oidc:`` and ``oidc:corp:`` both), so
    their order does not matter. Called by :func:`build` before the identity scan."""
    params: dict[str, Any] = {}
    values = []
    for i, p in enumerate(dict.fromkeys(p.lower() for p in prefixes if p)):
        params[f"pfx{i}"] = p
        values.append(f"(CAST($pfx{i} AS VARCHAR))")
    if not values:
        return Table("zt_rev_prefix", "SELECT CAST(NULL AS VARCHAR) AS prefix WHERE false"), params
    return Table("zt_rev_prefix", f"SELECT prefix FROM (VALUES {', '.join(values)}) AS v(prefix)"), params


def _use_params(engine: Engine, kinds: tuple[str, ...], hi: datetime,
                activity: timedelta) -> dict[str, Any]:
    """Bounds for the use scans of revocations of ``kinds`` (see :data:`_PROXY_BOUND`)."""
    row = engine.rows("SELECT min(revoked_at) - $activity FROM zt_rev WHERE list_contains($kinds, kind)",
                      {"kinds": list(kinds), "activity": activity})
    ulo: datetime = row[0][0] if row and row[0][0] is not None else EARLIEST
    return {"until": hi, "ulo": ulo, "ulo_day": utc_day(ulo), "hi_day": utc_day(hi), "activity": activity}


#: Duration in words for reasons.
_DUR: Final = """CASE WHEN {s} IS NULL THEN '?' WHEN {s} < 120 THEN printf('%.0f s', {s})
                    WHEN {s} < 7200 THEN printf('%.1f min', {s} / 60) ELSE printf('%.1f h', {s} / 3600) END"""

#: One row per judged revocation into ``zt_rev_status``: notice, denials and uses before and after it,
#: the allowed uses after the grace period (from ``$vsince`` on), latencies, status and reason.
#: ``stop``: a restoration ends judgement. A proxy time at whole second S means [S, S+1 s): a use is
#: "after" the revocation only if its logged time is, a denial or notice in the revocation's own second
#: counts as after it (latency clamped at 0). Session revocations made at the IdP count only the
#: identity's proxy sessions that existed before them.
_STATUS_SQL: Final = Table("zt_rev_status", f"""
        WITH old_sess AS (
        SELECT DISTINCT u.rev_id, u.sess FROM zt_rev_use u JOIN zt_rev r USING (rev_id)
        WHERE r.by_sessions AND u.plane = 'proxy' AND coalesce(u.sess, '') <> '' AND u.ts <= r.revoked_at
    ), u AS (
        SELECT u.*, r.revoked_at, coalesce(r.restored_at, $forever) AS stop,
               greatest(r.revoked_at + $grace, $vsince) AS vfrom,
               NOT r.unjudged AND (NOT r.by_sessions OR (u.plane = 'proxy' AND o.sess IS NOT NULL)) AS counts
        FROM zt_rev_use u JOIN zt_rev r USING (rev_id)
        LEFT JOIN old_sess o ON o.rev_id = u.rev_id AND o.sess = u.sess
    ), agg AS (
        SELECT rev_id,
          max(ts) FILTER (WHERE allowed AND ts + to_microseconds(prec_us) <= revoked_at) AS last_allowed_before,
          min(ts) FILTER (WHERE allowed AND counts AND ts > revoked_at AND ts < stop) AS first_allowed_after,
          max(ts) FILTER (WHERE allowed AND counts AND ts > revoked_at AND ts < stop) AS last_allowed_after,
          min(ts) FILTER (WHERE NOT allowed AND (plane = 'proxy' OR code = 401)
                          AND ts + to_microseconds(prec_us) > revoked_at AND ts < stop) AS first_exact_denial,
          count(*) FILTER (WHERE ts <= revoked_at) AS uses_before,
          count(*) FILTER (WHERE ts > revoked_at) AS uses_after,
          count(*) FILTER (WHERE plane = 'api' AND code = 403 AND ts > revoked_at AND ts < stop) AS forbidden_after,
          count(*) FILTER (WHERE plane = 'proxy' AND allowed AND counts AND ts > vfrom AND ts < stop)
            AS allowed_after_grace_proxy,
          count(*) FILTER (WHERE plane = 'api' AND allowed AND counts AND ts > vfrom AND ts < stop)
            AS allowed_after_grace_api,
          min(ts) FILTER (WHERE allowed AND counts AND ts > vfrom AND ts < stop) AS first_allowed_after_grace,
          max(ts) FILTER (WHERE allowed AND counts AND ts > vfrom AND ts < stop) AS last_allowed_after_grace,
          list(DISTINCT cluster ORDER BY cluster) FILTER (WHERE cluster IS NOT NULL AND cluster <> '') AS clusters,
          list(DISTINCT how) FILTER (WHERE how IS NOT NULL) AS hows,
          -- the first $keep references in (ts, ref) order: a bounded heap per revocation instead of
          -- sorting every use; wrapped in a struct so NULL references are kept, as list() keeps them
          [x.r FOR x IN min_by({{'r': ref}}, (ts, ref), $keep)
                        FILTER (WHERE allowed AND counts AND ts > vfrom AND ts < stop)] AS viol,
          [x.r FOR x IN min_by({{'r': ref}}, (ts, ref), $keep)
                        FILTER (WHERE NOT allowed AND (plane = 'proxy' OR code = 401)
                                AND ts + to_microseconds(prec_us) > revoked_at AND ts < stop)] AS exact_denials
        FROM u GROUP BY rev_id
    ), anon AS (
        SELECT rev_id, first_anon, attributed, refused_shared + refused_ua AS refused, refused_shared,
               ip AS anon_ip, other_at, refs
        FROM zt_rev_anon
    ), notice AS (
        SELECT n.cand_id, min(n.notice_at) AS notice_at, arg_min(n.notice_event, n.notice_at) AS notice_event,
               arg_min(n.bridge, n.notice_at) AS bridge,
               list_sort(list_distinct(flatten(list([n.ref] || n.refs)))) AS refs
        FROM zt_rev_notice n GROUP BY n.cand_id
    ), j AS (
        SELECT r.*, a.*, an.* EXCLUDE (rev_id, refs), an.refs AS anon_refs, n.bridge AS n_bridge, n.refs AS n_refs,
               -- a proxy session deletion that is itself the revocation: the proxy acted at once
               CASE WHEN r.system = 'pomerium' AND r.source = 'idp' THEN r.revoked_at ELSE n.notice_at END
                 AS notice_at,
               CASE WHEN r.system = 'pomerium' AND r.source = 'idp' THEN r.event_type ELSE n.notice_event END
                 AS notice_event,
               least(a.first_exact_denial, an.first_anon) AS first_denied_at,
               coalesce(a.allowed_after_grace_proxy, 0) + coalesce(a.allowed_after_grace_api, 0) AS n_after_grace
        FROM zt_rev r LEFT JOIN agg a USING (rev_id) LEFT JOIN anon an USING (rev_id)
        LEFT JOIN notice n ON n.cand_id = r.cand_id
    ), k AS (
        SELECT j.*,
          CASE WHEN notice_at IS NOT NULL
               THEN greatest(0.0, epoch_us(notice_at) - epoch_us(revoked_at)) / 1e6 END AS notice_latency_seconds,
          CASE WHEN first_denied_at IS NOT NULL
               THEN greatest(0.0, epoch_us(first_denied_at) - epoch_us(revoked_at)) / 1e6 END
               AS denial_latency_seconds,
          CASE WHEN last_allowed_after IS NOT NULL
               THEN (epoch_us(last_allowed_after) - epoch_us(revoked_at)) / 1e6 END AS exposure_seconds,
          CASE WHEN n_after_grace > 0 THEN 'not_enforced'
               WHEN revoked_at + $grace > $latest THEN 'pending'
               WHEN notice_at IS NOT NULL OR first_denied_at IS NOT NULL THEN 'enforced'
               WHEN coalesce(uses_before, 0) + coalesce(uses_after, 0) + coalesce(refused, 0) > 0 THEN 'quiet'
               ELSE 'not_applicable' END AS status
        FROM j
    )
    SELECT kind, subject, coalesce(login, subject) AS identity, subject_id, session_id, cluster,
           coalesce(CASE WHEN cluster IS NOT NULL THEN [cluster] END, clusters, []) AS clusters,
           source, system, event_type, revoked_at, revoked_by, inferred_from, restored_at,
           -- list_concat, not `||`: sqlglot cannot parse a comprehension over a `||` (neither side is NULL)
           nullif(array_to_string(list_sort(list_distinct([x FOR x IN list_concat(
               [n_bridge, CASE WHEN attributed > 0 THEN 'client address of the last allowed request' END],
               flatten([string_split(h, ', ') FOR h IN coalesce(hows, [])])) IF x IS NOT NULL])), '; '), '')
             AS bridge,
           status,
           concat_ws('; ',
             CASE WHEN inferred_from IS NOT NULL THEN 'inferred from ' || inferred_from END,
             CASE WHEN unjudged AND kind = 'grant' THEN 'allowed use afterwards is not judged: the IdP removed an '
                       || 'application or group membership and the lake does not say which application'
                  WHEN unjudged THEN 'allowed use afterwards is not judged: the IdP ended one of its own sessions, '
                       || 'which the proxy''s sessions cannot be matched to' END,
             CASE status
               WHEN 'not_enforced' THEN concat_ws(' and ',
                    CASE WHEN allowed_after_grace_proxy > 0
                         THEN allowed_after_grace_proxy || ' allowed proxy decision(s)' END,
                    CASE WHEN allowed_after_grace_api > 0 THEN allowed_after_grace_api || ' allowed API request(s)' END)
                    || printf(' more than %d s after the revocation, the last %s after it', $grace_s,
                              {_DUR.format(s='exposure_seconds')})
               WHEN 'pending' THEN printf('the %d s grace period ends at %s, after the end of the logs read (%s): '
                    || 'judged again when later logs arrive', $grace_s,
                    strftime(revoked_at + $grace, '%Y-%m-%d %H:%M:%SZ'), strftime($latest, '%Y-%m-%d %H:%M:%SZ'))
               WHEN 'enforced' THEN concat_ws(', ',
                    CASE WHEN system = 'pomerium' AND source = 'idp' THEN 'the proxy deleted the session itself'
                         WHEN notice_at IS NOT NULL THEN 'the proxy dropped the session '
                              || {_DUR.format(s='notice_latency_seconds')} || ' after the revocation ('
                              || notice_event || ')' END,
                    CASE WHEN first_denied_at IS NOT NULL THEN 'first attributable denial '
                              || {_DUR.format(s='denial_latency_seconds')} || ' after it'
                              || CASE WHEN first_anon IS NOT NULL AND (first_exact_denial IS NULL
                                           OR first_anon < first_exact_denial)
                                      THEN ' (anonymous, from the subject''s address ' || anon_ip || ')'
                                      ELSE '' END END)
                    || ' and nothing allowed after the grace period'
               WHEN 'quiet' THEN CASE
                    WHEN by_sessions THEN 'the proxy sessions it had before were not used again, no attributable '
                         || 'denial and no proxy session deletion seen'
                         || CASE WHEN uses_after > 0 THEN ' (a new login followed)' ELSE '' END
                    ELSE CASE WHEN last_allowed_before IS NOT NULL
                              THEN 'active before (last allowed use '
                                   || strftime(last_allowed_before, '%Y-%m-%d %H:%M:%SZ') || '), '
                              ELSE 'seen around it, ' END
                         || CASE WHEN unjudged THEN '' ELSE 'nothing allowed after the grace period, ' END
                         || 'no attributable denial and no proxy session deletion seen' END
               ELSE printf('never seen at the proxy or the API server in the %d days before or after the '
                           || 'revocation', $activity_days)
             END,
             CASE WHEN refused_shared > 0 THEN printf('%d anonymous denial(s) from %s not attributed: another '
                  || 'identity used that address at %s, after the subject''s last allowed request', refused_shared,
                  anon_ip, strftime(other_at, '%Y-%m-%d %H:%M:%SZ')) END,
             CASE WHEN refused > coalesce(refused_shared, 0) THEN printf('%d anonymous denial(s) from the subject''s '
                  || 'address not attributed: another user agent', refused - coalesce(refused_shared, 0)) END,
             CASE WHEN forbidden_after > 0 THEN forbidden_after || ' request(s) after it still authenticated as the '
                  || 'subject (forbidden by RBAC, 403): the credential itself was not cut' END,
             CASE WHEN restored_at IS NOT NULL THEN 'restored at ' || strftime(restored_at, '%Y-%m-%d %H:%M:%SZ')
                  || ', judged until then' END) AS reason,
           notice_at, notice_event, first_denied_at,
           CASE WHEN first_denied_at IS NULL THEN NULL
                WHEN first_exact_denial IS NOT NULL AND first_exact_denial <= first_denied_at THEN 'exact'
                ELSE 'client_ip' END AS attribution,
           coalesce(refused, 0) AS anonymous_refused,
           last_allowed_before, first_allowed_after, last_allowed_after,
           coalesce(allowed_after_grace_proxy, 0) AS allowed_after_grace_proxy,
           coalesce(allowed_after_grace_api, 0) AS allowed_after_grace_api,
           first_allowed_after_grace, last_allowed_after_grace,
           notice_latency_seconds, denial_latency_seconds, exposure_seconds,
           CASE WHEN status = 'enforced'
                THEN least(coalesce(notice_latency_seconds, 1e18), coalesce(denial_latency_seconds, 1e18)) <= $objective
                     AND coalesce(exposure_seconds, 0) <= $objective
                WHEN status = 'not_enforced' THEN false END AS objective_met,
           evidence, duplicates, coalesce(n_refs, []) AS notices,
           list_sort(coalesce(exact_denials, []) || coalesce(anon_refs, []))[1:$keep] AS denials,
           coalesce(viol, []) AS violations
    FROM k
    ORDER BY revoked_at, subject, system, kind, evidence
""")


def _latest(engine: Engine, until: datetime | None) -> datetime:
    """The instant up to which the logs can tell what happened after a revocation: the earlier of the
    proxy's and the API server's latest event (a plane whose log lags would otherwise make a recent
    revocation look quiet rather than pending), capped at ``until``. A lake with neither gives the
    newest revocation."""
    (got,) = engine.rows(
        "SELECT (SELECT max(decided_at) FROM proxy_decision), "
        "(SELECT greatest(max(request_received_at), max(stage_at)) FROM k8s_audit), "
        "(SELECT max(revoked_at) FROM zt_rev)")
    planes = [t for t in (got or (None, None, None))[:2] if t is not None]
    newest = got[2] if got else None
    latest: datetime | None = min(planes) if planes else newest
    if latest is None:
        return until or LATEST
    return min(latest, until) if until else latest


def build(engine: Engine, cfg: Config, since: datetime | None,
          until: datetime | None, *, lookback: bool = False) -> str:
    """Build temp table ``zt_rev_status`` (one row per revocation) on ``engine``; return its name.

    Its ``violations`` holds the first max(:data:`REPORT_VIOLATIONS`, ``detect.max_evidence``)
    references of allowed uses after the grace period, oldest first (all that the report and the
    detector's evidence use); the counts cover every use.

    Revocations revoked in [since, until) — or, with ``lookback`` (the detector), in
    [since − revocation.lookback_days, until) — are judged against uses before ``until``; with
    ``lookback`` only uses at or after ``since`` count as violations, so a run over a later window
    reports only what happened in it. Called by :func:`revocation_status` and the detectors with the
    run's engine (UTC session); raises on SQL errors.
    """
    rc = cfg.revocation
    window = Window(since, until).widened(before=timedelta(days=rc.lookback_days if lookback else 0))
    notice_window = timedelta(hours=rc.notice_window_hours)
    activity = timedelta(days=rc.activity_days)
    vsince = since if (lookback and since) else EARLIEST
    run(engine, _CANDIDATES_SQL, window.widened(before=notice_window).params())
    run(engine, _NOTICES_SQL, {"notice_window": notice_window})
    run(engine, _REVOKED_SQL, window.params())
    kinds = {str(r[0]) for r in engine.rows("SELECT DISTINCT kind FROM zt_rev")}
    run(engine, _USES_TABLE)
    # A semi-join on a small set of subjects lets the engine push the set into the Parquet scan as an IN
    # filter, so row groups without any of them are skipped; DuckDB by default pushes only up to 50
    # values, too few for a lake with many revocations. Raised for these scans, then restored.
    with engine.wider_in_filters(_IN_FILTER_THRESHOLD):
        prefix_step, prefix_params = prefixes_table(cfg.identities.username_prefixes)
        run(engine, prefix_step, prefix_params)
        for judged, step in _USE_SCANS.values():
            if kinds & set(judged):
                run(engine, step, _use_params(engine, judged, window.hi, activity))
        if "binding" in kinds:
            _binding_uses(engine, _use_params(engine, ("binding",), window.hi, activity))
        attribute_anonymous_denials(engine, _use_params(engine, _IDENT_KINDS, window.hi, activity), notice_window,
                                    keep=max(REPORT_VIOLATIONS, cfg.detect.max_evidence))
    run(engine, _STATUS_SQL, {
        "grace": timedelta(seconds=rc.grace_seconds), "grace_s": rc.grace_seconds, "latest": _latest(engine, until),
        "vsince": vsince, "forever": LATEST, "keep": max(REPORT_VIOLATIONS, cfg.detect.max_evidence),
        "objective": float(rc.objective_seconds), "activity_days": rc.activity_days})
    return "zt_rev_status"


def revocation_status(con: Session, config: Config, since: datetime | None = None,
                      until: datetime | None = None) -> pa.Table:
    """One row per revocation with its status, reason, evidence chain and latencies
    (``ztaudit report revocation``, the revocation notebook).

    Columns: :data:`STATUS_COLUMNS` (``violations`` lists up to :data:`REPORT_VIOLATIONS` event
    references of allowed uses after the grace period). Raises on SQL errors; an empty lake gives
    an empty table.
    """
    engine = as_engine(con)
    table = build(engine, config, since, until)
    cols = ", ".join(c if c != "violations" else f"violations[1:{REPORT_VIOLATIONS}] AS violations"
                     for c in STATUS_COLUMNS)
    return engine.query(f"SELECT {cols} FROM {table}")

"""The named SQL statements that pair proxy decisions with Kubernetes audit requests.

Holds the pieces of the two sides (which decisions and requests take part, hashed to what matching
needs), the join tiers (:data:`TIER_A`, :data:`TIER_C_RANKS`, :data:`TIER_C_BURSTS`,
:data:`TIER_C_PAIRS`), the matching statements shared by both plans (:data:`MATCHING`), the detail
and summary statements, and :func:`approved_predicate`. Module constants only: values are always
bound as parameters. :mod:`ztaudit.detectors.correlate` assembles them into its plans and the
analyst view and runs them; :mod:`ztaudit.detectors.impersonation` uses :func:`approved_predicate`.

Join tiers (docs/proxy-and-idp.md §0):

* **A, exact**: ``audit_id == coalesce(check_request_id, request_id)`` of the proxy line, same
  cluster, within ``correlation.exact_id_window_seconds`` (the proxy must set ``Audit-ID``
  upstream; the API server adopts it verbatim, §1.6 "Kubernetes source for Audit-ID").
* **B, session**: the API server mapped the proxy's session id into ``user.extra[<key>]``
  (Pomerium-JWT mode: the ``AuthenticationConfiguration`` ``claimMappings.extra`` maps the JWT's
  ``sid`` claim, §0, §1.5), ingested as ``k8s_audit.proxy_session_id`` when
  ``correlation.session_extra_key`` names the key. A decision and a request pair when they carry the
  same session id, user (proxy email = the request's user), cluster, method (compatible with the
  verb) and path, within the match window, each side used once. Such requests are not impersonated
  (the user is the JWT's mapped claim), so
  the audit side also takes in every request that carries a proxy session id; its actor is its
  user name.
* **C, composite** (the default): the audit request was made by an approved impersonator for its
  cluster, ``lower(impersonated_user) == lower(proxy email)``, the HTTP method is compatible with
  the verb (GET→get/list/watch, POST→create, PUT→update, PATCH→patch, DELETE→delete/
  deletecollection; non-resource URLs: the lower-case method, docs/kubernetes-audit.md §2 and §1.6), the
  request path without its query equals the proxy ``path``, and the request time is inside the
  proxy second widened by the match window: Pomerium logs whole seconds with a local offset
  (§1.1), so a second-precision ``decided_at`` stands for ``[decided_at, decided_at + 1 s)``.

Repeated identical requests (discovery GETs, polling) make tier C many-to-many (§0 "Match as a
multiset"). They are paired as a multiset: the requests of one key (cluster, user, method,
path) from both sides are merged in time order and cut into bursts wherever two neighbours are
further apart than the widest tolerance, so no valid pair crosses a burst boundary; inside a
burst the k-th decision is paired with the k-th request and kept if within tolerance. A second
pass repeats this over what is left, which repairs most shifts caused by a missing request in a
long burst. N identical GETs with N decisions therefore pair 1:1.

Paths the audit policy does not log (``correlation.unaudited_paths``: ``/version``, ``/healthz*``...,
readable by everyone through the ``system:public-info-viewer`` ClusterRole and dropped by most audit
policies) are left out on both sides: kubectl asks ``/version`` before most commands, and the real
API server of real-stack.md logged none of them.

Proxy side: allowed decisions (``is_allowed``) that carry an email, for Kubernetes hosts
(``impersonation.proxy_hosts`` maps host → cluster; when the map is empty every decision belongs
to its own ``cluster`` column or, if that is null, to the lake's single cluster). Pomerium writes
both an authorize line and an Envoy access line per request (§1.2, §1.3); an access line whose
``request_id`` equals an authorize line's ``check_request_id`` is the same request and is dropped.
Audit side: one row per request (``cluster, audit_id, request_received_at``; docs/kubernetes-audit.md
§9) impersonated by an approved impersonator.
"""

from __future__ import annotations

from typing import Final

from ztaudit.core.proxy_hosts import host_key_sql
from ztaudit.core.window import Window
from ztaudit.detectors.sql import EmptyTable, Insert, Step, Table

#: HTTP method a Kubernetes verb is made with (the verb → method direction of §1.6's mapping), on ``{v}``.
VERB_METHOD_SQL: Final = (
    "CASE {v} WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET' WHEN 'watch' THEN 'GET' "
    "WHEN 'create' THEN 'POST' WHEN 'update' THEN 'PUT' WHEN 'patch' THEN 'PATCH' "
    "WHEN 'delete' THEN 'DELETE' WHEN 'deletecollection' THEN 'DELETE' ELSE upper({v}) END"
)


def approved_predicate(imp: str, cluster: str) -> str:
    """SQL predicate (never NULL): ``imp`` is an approved impersonator for ``cluster``.

    Written as two uncorrelated IN lists: a correlated EXISTS made DuckDB spend 8 s and 2 GB on 4M
    rows; the IN form takes 0.4 s. Pass alias-qualified column names (``r.cluster``), never values.
    """
    return (f"(coalesce({imp} IN (SELECT username FROM zt_approved_impersonators WHERE cluster = '*'), false) "
            f"OR coalesce(coalesce({cluster}, '') || chr(0) || {imp} IN "
            f"(SELECT cluster || chr(0) || username FROM zt_approved_impersonators), false))")


# --------------------------------------------------------------------------------------------
# the two sides
# --------------------------------------------------------------------------------------------

#: Tie-breaks of the pairing windows (``tb``), the same on both engines: ``pk`` is a ``hash()``, whose
#: values differ between DuckDB and Spark (``spark_dialect.rewrite_hash``), so ordering rows tied on
#: time by ``pk`` alone paired other rows on each engine (two requests of one tier C key in the same
#: µs, decisions of one key logged in the same second). The first 12 hex digits of the MD5 of the
#: row's identity (``md5`` is the same function on both) order such ties; ``pk`` stays the last key.
PROXY_TIE_SQL: Final = ("substr(md5(coalesce(d.origin, '') || chr(0) || coalesce(d.request_id, '') || chr(0) "
                        "|| coalesce(d.check_request_id, '')), 1, 12)")
#: The audit side's ``tb`` over alias ``r`` (an aggregate: one request is one (cluster, audit_id, time)).
AUDIT_TIE_SQL: Final = "substr(md5(coalesce(any_value(r.audit_id), '')), 1, 12)"

#: Proxy side, what matching needs of a decision, hashed so 4M decisions stay small in memory: its key
#: ``pk``, the composite key ``k`` (tier C), cluster, time in µs and precision (1 s when logged in whole
#: seconds) and the hash of the id an exact audit id would equal (tier A).
PROXY_MATCH_COLUMNS: Final = f"""hash(d.origin, d.request_id, d.check_request_id, d.decided_at) AS pk,
           {PROXY_TIE_SQL} AS tb,
           hash(coalesce(h.cluster, d.cluster, s.single_cluster), lower(d.email), upper(d.method), d.path) AS k,
           coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster,
           epoch_us(d.decided_at) AS d_us,
           CASE WHEN epoch_us(d.decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           hash(coalesce(d.check_request_id, d.request_id)) AS rid_h,
           CASE WHEN coalesce(d.session_id, '') <> ''
                THEN hash(coalesce(h.cluster, d.cluster, s.single_cluster), d.session_id, lower(d.email),
                          upper(d.method), d.path)
           END AS kb"""

#: A decision's logged route host as ``impersonation.proxy_hosts`` keys are compared
#: (:func:`ztaudit.core.proxy_hosts.host_key`: lower case, no port, ``[v6]`` kept whole).
PROXY_HOST_KEY: Final = host_key_sql("d.host")

#: Which decisions take part: allowed, with an email, for a Kubernetes host; the Envoy access line of a
#: request that also has its authorize line is dropped (the same request logged twice).
#:
#: The dropped access lines are found with an anti-join on an equality key (``LEFT JOIN`` of the distinct
#: authorize ``check_request_id``s, kept when nothing joined), not with ``request_id NOT IN (subquery)``
#: inside an ``OR``: Spark plans that as a null-aware existence join with no key, a nested loop over
#: every pair of decisions (it never finished at 1M), where the join hashes on both engines. Same rows:
#: the subquery held no NULL (``IS NOT NULL``) and a NULL ``request_id`` or a non-access line was kept,
#: which is what the join's ``ON`` (it matches only an access line whose ``request_id`` equals a
#: non-NULL id) gives; ``DISTINCT`` keeps one row per decision.
PROXY_DECISIONS: Final = """FROM proxy_decision d
    CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_hosts h ON h.host = """ + PROXY_HOST_KEY + """
    LEFT JOIN (SELECT DISTINCT x.check_request_id AS rid FROM proxy_decision x
               WHERE x.record_type = 'authorize' AND x.check_request_id IS NOT NULL) az
           ON az.rid = d.request_id AND coalesce(d.record_type, '') = 'access'
    WHERE d.is_allowed AND d.email IS NOT NULL AND d.email <> ''
      AND NOT coalesce(list_bool_or(list_transform(s.unaudited_paths, lambda g: d.path GLOB g)), false)
      AND (NOT s.has_hosts OR h.cluster IS NOT NULL OR (d.host IS NULL AND d.cluster IS NOT NULL))
      AND az.rid IS NULL"""

#: Proxy side of the detect plan: decisions in [$lo, $hi) (the judged window widened by the match
#: margin), whole day partitions outside it skipped. The detail of unmatched ones is read back later.
PROXY_SIDE: Final = f"""
    SELECT {PROXY_MATCH_COLUMNS}
    {PROXY_DECISIONS}
      AND {Window.sql("decided_at", "d")}
    """

#: Proxy side of the summary plan: the same decisions plus ``who``, the lower-cased email (the actor of
#: an unmatched decision), so the summary needs no second read of ``proxy_decision``.
PROXY_SIDE_WITH_ACTOR: Final = f"""
    SELECT {PROXY_MATCH_COLUMNS}, lower(d.email) AS who
    {PROXY_DECISIONS}
      AND {Window.sql("decided_at", "d")}
    """

#: An audit stage's tier C key (cluster, user, method, path without query) and tier B key (the same with the
#: proxy session id; null without one), over alias ``r``; ``{single}`` names the lake's single cluster.
#: The user is the impersonated one, or the authenticated one for a proxy-minted JWT (tier B).
_AUDIT_WHO: Final = "lower(coalesce(r.impersonated_user, r.user_name))"
_AUDIT_REQ: Final = f"{VERB_METHOD_SQL.format(v='r.verb')}, split_part(r.request_uri, '?', 1)"
_AUDIT_K: Final = f"hash(coalesce(r.cluster, {{single}}), {_AUDIT_WHO}, {_AUDIT_REQ})"
_AUDIT_KB: Final = (f"CASE WHEN r.proxy_session_id IS NOT NULL THEN hash(coalesce(r.cluster, {{single}}), "
                    f"r.proxy_session_id, {_AUDIT_WHO}, {_AUDIT_REQ}) END")

#: Audit side, what matching needs of a request: key, composite key, cluster, hash of its audit id,
#: impersonated user and time (µs). One row per request: grouping by one 64-bit hash of (cluster,
#: audit_id, request_received_at) is ~2x faster than by the columns.
AUDIT_MATCH_COLUMNS: Final = f"""hash(r.cluster, r.audit_id, r.request_received_at) AS pk, {AUDIT_TIE_SQL} AS tb,
           any_value({_AUDIT_K.format(single='s.single_cluster')}) AS k,
           any_value(coalesce(r.cluster, s.single_cluster)) AS cluster, any_value(hash(r.audit_id)) AS audit_h,
           lower(any_value(coalesce(r.impersonated_user, r.user_name))) AS who,
           epoch_us(any_value(r.request_received_at)) AS r_us,
           any_value({_AUDIT_KB.format(single='s.single_cluster')}) AS kb"""

#: The stage's path is none of ``correlation.unaudited_paths`` (left out on both sides: module
#: docstring), over aliases ``r`` and ``s``; never NULL.
_NOT_UNAUDITED: Final = ("NOT coalesce(list_bool_or(list_transform(s.unaudited_paths, "
                         "lambda g: split_part(r.request_uri, '?', 1) GLOB g)), false)")

#: Which requests take part: stages impersonated by an approved impersonator for their cluster, and
#: stages carrying a proxy session id (tier B).
AUDIT_REQUESTS: Final = f"""FROM k8s_audit r CROSS JOIN zt_correlation_settings s
    WHERE ((r.impersonator IS NOT NULL AND r.impersonated_user IS NOT NULL
            AND {approved_predicate('r.impersonator', 'coalesce(r.cluster, s.single_cluster)')})
           OR r.proxy_session_id IS NOT NULL)
      AND {_NOT_UNAUDITED}"""

PER_REQUEST: Final = "GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)"

#: Audit side of the detect plan: requests received in [$lo, $hi) (day partitions pruned).
AUDIT_SIDE: Final = f"""
    SELECT {AUDIT_MATCH_COLUMNS}
    {AUDIT_REQUESTS}
      AND {Window.sql("request_received_at", "r")}
    {PER_REQUEST}
    """

#: Audit side of the summary plan: the same requests with the same values (each taken over the
#: approved, impersonated stages only) plus ``who_all``, the lower-cased impersonated user over every
#: stage with an impersonator, which is the ``actor`` the detect plan's ``zt_unmatched_audit`` gives an
#: unmatched request; so the summary needs no second read of the audit log.
AUDIT_SIDE_WITH_ALL_STAGES: Final = f"""
    SELECT hash(r.cluster, r.audit_id, r.request_received_at) AS pk, {AUDIT_TIE_SQL} AS tb,
           any_value({_AUDIT_K.format(single='r.single_cluster')}) FILTER (WHERE r.lean) AS k,
           any_value(coalesce(r.cluster, r.single_cluster)) FILTER (WHERE r.lean) AS cluster,
           any_value(hash(r.audit_id)) FILTER (WHERE r.lean) AS audit_h,
           lower(any_value(coalesce(r.impersonated_user, r.user_name)) FILTER (WHERE r.lean)) AS who,
           epoch_us(any_value(r.request_received_at) FILTER (WHERE r.lean)) AS r_us,
           any_value({_AUDIT_KB.format(single='r.single_cluster')}) FILTER (WHERE r.lean) AS kb,
           lower(coalesce(any_value(r.impersonated_user), any_value(r.user_name))) AS who_all
    FROM (SELECT r.cluster, r.audit_id, r.request_received_at, r.impersonated_user, r.user_name, r.verb,
                 r.request_uri, r.proxy_session_id, s.single_cluster,
                 -- the stages AUDIT_REQUESTS takes (a request on an unaudited path is in neither plan)
                 ((r.impersonated_user IS NOT NULL
                   AND {approved_predicate('r.impersonator', 'coalesce(r.cluster, s.single_cluster)')})
                  OR r.proxy_session_id IS NOT NULL)
                 AND {_NOT_UNAUDITED} AS lean
          FROM k8s_audit r CROSS JOIN zt_correlation_settings s
          WHERE (r.impersonator IS NOT NULL OR r.proxy_session_id IS NOT NULL)
            AND {Window.sql("request_received_at", "r")}) r
    GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)
    HAVING bool_or(r.lean)
    """


# --------------------------------------------------------------------------------------------
# the tiers
# --------------------------------------------------------------------------------------------

#: Tier A over ``zt_p`` / ``zt_a``: exact id, same cluster, within the exact-id window; each side used once.
TIER_A: Final = """
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'A' AS tier
    FROM zt_p p JOIN zt_a a ON a.audit_h = p.rid_h AND a.cluster = p.cluster
    CROSS JOIN zt_correlation_settings s
    WHERE abs(a.r_us - p.d_us) <= s.exact_window_us
    QUALIFY row_number() OVER (PARTITION BY p.pk ORDER BY abs(a.r_us - p.d_us), a.tb, a.pk) = 1
        AND row_number() OVER (PARTITION BY a.pk ORDER BY abs(a.r_us - p.d_us), p.tb, p.pk) = 1
"""

#: Tier B over ``zt_p`` / ``zt_a``: the same proxy session id, cluster, method and path (``kb``), within the
#: match window around the decision's logged second; each side used once; rows paired in ``{paired}`` are
#: not offered again.
TIER_B: Final = """
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'B' AS tier
    FROM (SELECT * FROM zt_p WHERE kb IS NOT NULL) p JOIN (SELECT * FROM zt_a WHERE kb IS NOT NULL) a ON a.kb = p.kb
    CROSS JOIN zt_correlation_settings s
    WHERE abs(a.r_us - (p.d_us + p.prec_us // 2)) <= s.window_us + p.prec_us // 2
      AND p.pk NOT IN (SELECT p_pk FROM {paired}) AND a.pk NOT IN (SELECT a_pk FROM {paired})
    QUALIFY row_number() OVER (PARTITION BY p.pk ORDER BY abs(a.r_us - p.d_us), a.tb, a.pk) = 1
        AND row_number() OVER (PARTITION BY a.pk ORDER BY abs(a.r_us - p.d_us), p.tb, p.pk) = 1
"""

#: Rows of ``{decisions}`` / ``{requests}`` not paired in ``{paired}``, on one time line per key: a
#: proxy row's time is the middle of its logged second (``half`` = ½ s for second precision).
#: ``has_sid``: the row carries a proxy session id; a decision and a request that both do but were not
#: paired by tier B belong to different sessions, so tier C does not pair them either (a request with
#: a session id still pairs with a decision logged without one, e.g. an older log or an access line).
_UNPAIRED: Final = """
        SELECT pk, tb, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half, kb IS NOT NULL AS has_sid
        FROM {decisions} WHERE pk NOT IN (SELECT p_pk FROM {paired})
        UNION ALL
        SELECT pk, tb, true AS is_a, k, r_us AS t, 0 AS half, kb IS NOT NULL AS has_sid
        FROM {requests} WHERE pk NOT IN (SELECT a_pk FROM {paired})
    """

#: Tier C, cheap first pass: rank each side of a key by time over the whole range (one sort), so the
#: k-th decision meets the k-th request. Exact whenever a key lost nothing; after a missing request
#: the ranks shift, those pairs fail the time check and go on to the burst passes.
TIER_C_RANKS: Final = f"""
    WITH u AS ({_UNPAIRED})
    SELECT pk, is_a, k, t, half, has_sid, 0 AS grp, row_number() OVER (PARTITION BY k, is_a ORDER BY t, tb, pk) AS n
    FROM u
    """

#: Tier C, burst pass: burst (``grp``) and in-burst rank (``n``). Two sorts of (k, t): the first finds
#: burst starts (gap to the previous row of the key above the widest tolerance, window + ½ s) and
#: running counts per side; the second numbers bursts and takes each burst's starting counts, so
#: ``n`` = running count − count before the burst.
TIER_C_BURSTS: Final = f"""
    WITH u AS ({_UNPAIRED}), l1 AS (
        SELECT u.*,
               coalesce(t - lag(t) OVER w > (SELECT window_us + 500000 FROM zt_correlation_settings), true) AS brk,
               sum(CASE WHEN is_a THEN 0 ELSE 1 END) OVER w AS cp,
               sum(CASE WHEN is_a THEN 1 ELSE 0 END) OVER w AS ca
        FROM u WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    ), l2 AS (
        SELECT pk, tb, is_a, k, t, half, has_sid, cp, ca,
               sum(brk::INT) OVER w AS grp,
               max(CASE WHEN brk THEN cp - (CASE WHEN is_a THEN 0 ELSE 1 END) END) OVER w AS base_p,
               max(CASE WHEN brk THEN ca - (CASE WHEN is_a THEN 1 ELSE 0 END) END) OVER w AS base_a
        FROM l1 WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    )
    SELECT pk, is_a, k, t, half, has_sid, grp, CASE WHEN is_a THEN ca - base_a ELSE cp - base_p END AS n FROM l2
    """

#: Tier C pairs from ranked rows ``{ranked}``: same key, burst and rank, within the match window.
TIER_C_PAIRS: Final = """
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM {ranked} p JOIN {ranked} a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half AND NOT (p.has_sid AND a.has_sid)
"""


def tier_c_view(ranks: str, paired: str, decisions: str = "zt_p", requests: str = "zt_a") -> str:
    """One tier-C pass of the view as a single SELECT (``ranks``: :data:`TIER_C_RANKS` or
    :data:`TIER_C_BURSTS`) over ``decisions`` and ``requests`` without the pairs of ``paired``."""
    ranked = ranks.format(decisions=decisions, requests=requests, paired=paired)
    return f"WITH r AS MATERIALIZED ({ranked}) {TIER_C_PAIRS.format(ranked='r')}"


# --------------------------------------------------------------------------------------------
# a proxy clock off the API server's
# --------------------------------------------------------------------------------------------

#: Rank pairs a clock offset is measured on: at least this many per cluster, of at least
#: :data:`SKEW_MIN_SPREAD` people and as many keys among those that agree with it.
SKEW_MIN_PAIRS: Final = 10
SKEW_MIN_SPREAD: Final = 3

#: Per cluster, the offset of the proxy's clock from the API server's, measured on what the passes above
#: left unpaired (``{decisions}`` / ``{requests}`` without ``{paired}``): the k-th decision of a key (user,
#: method, path) against its k-th request, for keys with as many of each, within ``max_skew_us``; the
#: median difference (request time − middle of the decision's logged second) when at least
#: :data:`SKEW_MIN_PAIRS` pairs give it, 80 % of them lie within the match window of it, those come from
#: at least :data:`SKEW_MIN_SPREAD` people and keys (a clock moves everyone's times; one person's long
#: requests logged at their end do not, and must not make an offset under which an attack request pairs
#: with an unrelated decision), and it is wider than the window (a narrower one would have paired).
#: Empty when the clocks agree, which is the usual case: then nothing is left over but what truly has no
#: partner, and this reads only those rows. A host without NTP drifts seconds a day; Pomerium logs whole
#: seconds (module docstring), so a drift beyond the window made every request of a person "unobserved".
#: A lake without cluster names has one NULL cluster: it is compared IS NOT DISTINCT FROM.
CLOCK_SKEW: Final = f"""
    WITH lp AS (
        SELECT cluster, k, d_us + prec_us // 2 AS t,
               row_number() OVER (PARTITION BY k ORDER BY d_us, tb, pk) AS n, count(*) OVER (PARTITION BY k) AS c
        FROM {{decisions}} WHERE pk NOT IN (SELECT p_pk FROM {{paired}})
    ), la AS (
        SELECT k, who, r_us AS t,
               row_number() OVER (PARTITION BY k ORDER BY r_us, tb, pk) AS n, count(*) OVER (PARTITION BY k) AS c
        FROM {{requests}} WHERE pk NOT IN (SELECT a_pk FROM {{paired}})
    ), d AS (
        SELECT p.cluster, p.k, a.who, a.t - p.t AS diff
        FROM lp p JOIN la a ON a.k = p.k AND a.n = p.n AND a.c = p.c
        CROSS JOIN zt_correlation_settings s
        WHERE abs(a.t - p.t) <= s.max_skew_us
    ), m AS (
        -- the median (the lower of two), by rank: the engines' common SQL
        SELECT cluster, diff AS offset_us
        FROM (SELECT cluster, diff, row_number() OVER (PARTITION BY cluster ORDER BY diff) AS n,
                     count(*) OVER (PARTITION BY cluster) AS c FROM d)
        WHERE n = (c + 1) // 2 AND c >= {SKEW_MIN_PAIRS}
    ), j AS (
        SELECT m.cluster, m.offset_us, d.k, d.who, abs(d.diff - m.offset_us) <= s.window_us AS agrees
        FROM m JOIN d ON d.cluster IS NOT DISTINCT FROM m.cluster CROSS JOIN zt_correlation_settings s
        WHERE abs(m.offset_us) > s.window_us
    )
    SELECT cluster, offset_us, count(*) AS pairs
    FROM j
    GROUP BY cluster, offset_us
    HAVING 5 * count(CASE WHEN agrees THEN 1 END) >= 4 * count(*)
       AND count(DISTINCT CASE WHEN agrees THEN who END) >= {SKEW_MIN_SPREAD}
       AND count(DISTINCT CASE WHEN agrees THEN k END) >= {SKEW_MIN_SPREAD}
    """

#: The decisions left unpaired in a cluster with a measured offset (:data:`CLOCK_SKEW`), their time moved
#: onto the API server's clock; tier C pairs them again with the requests of :data:`SKEWED_REQUESTS`, as
#: tier ``S`` (:data:`SKEWED_PAIRS`: a pair that needed the offset is weaker evidence than one that did not).
SKEWED_DECISIONS: Final = """
    SELECT p.pk, p.tb, p.k, p.d_us + k.offset_us AS d_us, p.prec_us, p.kb
    FROM {decisions} p JOIN {skew} k ON k.cluster IS NOT DISTINCT FROM p.cluster
    WHERE p.pk NOT IN (SELECT p_pk FROM {paired})
    """
SKEWED_REQUESTS: Final = """
    SELECT a.pk, a.tb, a.k, a.r_us, a.kb
    FROM {requests} a
    WHERE coalesce(a.cluster, chr(0)) IN (SELECT coalesce(cluster, chr(0)) FROM {skew})
      AND a.pk NOT IN (SELECT a_pk FROM {paired})
    """
#: Tier C pairs of ``{pairs}`` (a :data:`TIER_C_PAIRS` over the skewed rows) relabelled tier ``S``.
SKEWED_PAIRS: Final = "SELECT p_pk, a_pk, 'S' AS tier FROM ({pairs}) sp"


# --------------------------------------------------------------------------------------------
# statements of the materialized plans (assembled in correlate.py)
# --------------------------------------------------------------------------------------------

#: Matching, shared by both plans, after ``zt_p`` and ``zt_a`` exist: tier A, tier B, then the multiset passes:
#: global ranks (cheap, settles nearly everything), then bursts twice over what is left (kept in the
#: small tables ``zt_lp`` / ``zt_la`` so those passes do not rescan everything); then what stays
#: unpaired, and the watermarks.
MATCHING: Final[tuple[Step, ...]] = (
    Table("zt_pairs", TIER_A),
    Insert("zt_pairs", TIER_B.format(paired="zt_pairs")),
    Table("zt_r", TIER_C_RANKS.format(decisions="zt_p", requests="zt_a", paired="zt_pairs")),
    Insert("zt_pairs", TIER_C_PAIRS.format(ranked="zt_r")),
    Table("zt_lp", "SELECT * FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_pairs)"),
    Table("zt_la", "SELECT * FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_pairs)"),
    EmptyTable("zt_pairs2", "p_pk UBIGINT, a_pk UBIGINT, tier VARCHAR"),
    *((Table("zt_r", TIER_C_BURSTS.format(decisions="zt_lp", requests="zt_la", paired="zt_pairs2")),
       Insert("zt_pairs2", TIER_C_PAIRS.format(ranked="zt_r"))) * 2),
    # a proxy clock off the API server's: what is left, paired again with the measured offset
    Table("zt_skew", CLOCK_SKEW.format(decisions="zt_lp", requests="zt_la", paired="zt_pairs2")),
    Table("zt_sp", SKEWED_DECISIONS.format(decisions="zt_lp", skew="zt_skew", paired="zt_pairs2")),
    Table("zt_sa", SKEWED_REQUESTS.format(requests="zt_la", skew="zt_skew", paired="zt_pairs2")),
    Table("zt_r", TIER_C_BURSTS.format(decisions="zt_sp", requests="zt_sa", paired="zt_pairs2")),
    Insert("zt_pairs2", SKEWED_PAIRS.format(pairs=TIER_C_PAIRS.format(ranked="zt_r"))),
    Insert("zt_pairs", "SELECT * FROM zt_pairs2"),
    Table("zt_unpaired_a", "SELECT pk FROM zt_la WHERE pk NOT IN (SELECT a_pk FROM zt_pairs2)"),
    Table("zt_unpaired_p", "SELECT pk FROM zt_lp WHERE pk NOT IN (SELECT p_pk FROM zt_pairs2)"),
    # Watermarks: the newest event of each side per cluster, over *all* its rows (a denied decision
    # or a controller's request also shows the log was flowing). A decision newer than the newest
    # audit request minus the window cannot be judged yet (its request may still be in flight), and
    # the same the other way round; a cluster with no data at all on the other side is not judged.
    # With a measured clock offset (zt_skew), each side's watermark is put on the other side's clock.
    Table("zt_proxy_marks", """
       SELECT m.cluster, m.max_p + coalesce(k.offset_us, 0) AS max_p FROM (
       SELECT coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster, max(epoch_us(d.decided_at)) AS max_p
       FROM proxy_decision d CROSS JOIN zt_correlation_settings s
       LEFT JOIN zt_proxy_hosts h ON h.host = """ + PROXY_HOST_KEY + """
       GROUP BY 1) m LEFT JOIN zt_skew k ON k.cluster IS NOT DISTINCT FROM m.cluster"""),
    Table("zt_audit_marks", """
       SELECT m.cluster, m.max_a - coalesce(k.offset_us, 0) AS max_a FROM (
       SELECT coalesce(cluster, s.single_cluster) AS cluster, max(epoch_us(request_received_at)) AS max_a
       FROM k8s_audit CROSS JOIN zt_correlation_settings s GROUP BY 1) m
       LEFT JOIN zt_skew k ON k.cluster IS NOT DISTINCT FROM m.cluster"""),
)

#: Detect plan: each unpaired decision in the judged window [$jlo, $jhi), in detail, read back from the
#: lake by its key (only the day partitions of the window are read).
UNMATCHED_PROXY: Final = Table("zt_unmatched_proxy", f"""
    SELECT p.cluster, lower(d.email) AS actor, d.email, d.decided_at, d.request_id, d.check_request_id,
           d.session_id, d.user_id, d.method, d.path, d.host, d.proxy, d.client_ip, d.origin,
           (am.max_a IS NOT NULL AND p.d_us + p.prec_us + s.window_us < am.max_a) AS judgeable
    FROM (SELECT * FROM zt_lp WHERE pk IN (SELECT pk FROM zt_unpaired_p)) p
    JOIN (SELECT * FROM proxy_decision
          WHERE hash(origin, request_id, check_request_id, decided_at) IN (SELECT pk FROM zt_unpaired_p)
            AND {Window.sql("decided_at", prefix="j")}) d
      ON hash(d.origin, d.request_id, d.check_request_id, d.decided_at) = p.pk
    CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_audit_marks am ON am.cluster = p.cluster
    """)

#: Detect plan: each unpaired impersonated request in the judged window, in detail.
UNMATCHED_AUDIT: Final = Table("zt_unmatched_audit", f"""
    SELECT r.*, (m.max_p IS NOT NULL AND epoch_us(r.request_received_at) + s.window_us + 1000000 < m.max_p)
                AS judgeable
    FROM (SELECT coalesce(any_value(cluster), any_value(s0.single_cluster)) AS cluster,
                 lower(coalesce(any_value(impersonated_user), any_value(user_name))) AS actor,
                 any_value(audit_id) AS audit_id, any_value(request_received_at) AS request_received_at,
                 any_value(verb) AS verb, split_part(any_value(request_uri), '?', 1) AS path,
                 max(response_code) AS response_code, any_value(impersonator) AS impersonator,
                 any_value(impersonated_user) AS impersonated_user, any_value(credential_id) AS credential_id,
                 any_value(source_ip) AS source_ip, any_value(user_agent) AS user_agent,
                 any_value(namespace) AS namespace
          FROM k8s_audit CROSS JOIN zt_correlation_settings s0
          WHERE (impersonator IS NOT NULL OR proxy_session_id IS NOT NULL)
            AND hash(cluster, audit_id, request_received_at) IN (SELECT pk FROM zt_unpaired_a)
            -- request_received_at is part of the group key, so this drops whole requests only
            AND {Window.sql("request_received_at", prefix="j")}
          GROUP BY hash(cluster, audit_id, request_received_at)) r
    CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_marks m ON m.cluster = r.cluster
    """)

#: Summary plan: what the summary reads of unmatched decisions, from the unpaired decisions of ``zt_lp``
#: (the same rows as ``zt_unmatched_proxy``: ``pk`` is the decision's key, ``who`` is lower(email),
#: ``d_us`` is decided_at).
UNMATCHED_PROXY_FROM_MATCHING: Final = """(
    SELECT p.cluster, p.who AS actor, make_timestamp(p.d_us)::TIMESTAMPTZ AS decided_at,
           (am.max_a IS NOT NULL AND p.d_us + p.prec_us + s.window_us < am.max_a) AS judgeable
    FROM zt_lp p CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_audit_marks am ON am.cluster = p.cluster
    WHERE p.pk IN (SELECT pk FROM zt_unpaired_p)
      AND p.d_us >= epoch_us($jlo) AND p.d_us < epoch_us($jhi))"""

#: Summary plan: what the summary reads of unmatched requests, from the unpaired requests of ``zt_la``:
#: cluster and request time are part of the request key, and ``who_all`` is the detail table's actor.
UNMATCHED_AUDIT_FROM_MATCHING: Final = """(
    SELECT a.cluster, a.who_all AS actor, make_timestamp(a.r_us)::TIMESTAMPTZ AS request_received_at,
           (pm.max_p IS NOT NULL AND a.r_us + s.window_us + 1000000 < pm.max_p) AS judgeable
    FROM zt_la a CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_marks pm ON pm.cluster = a.cluster
    WHERE a.pk IN (SELECT pk FROM zt_unpaired_a)
      AND a.r_us >= epoch_us($jlo) AND a.r_us < epoch_us($jhi))"""

#: Matched and unmatched counts per (cluster, actor, UTC day) in the judged window (the plans store it as
#: a temp table) from ``{unmatched_proxy}`` / ``{unmatched_audit}`` (tables, or the subqueries above).
SUMMARY_SQL: Final = """
    WITH m AS (
        -- aggregate on integers first (4M pairs), convert the few group results to times after
        SELECT a.cluster, a.who AS actor,
               CAST(DATE '1970-01-01' + CAST(a.r_us // 86400000000 AS INTEGER) AS DATE) AS day,
               count(*) FILTER (WHERE x.tier = 'A') AS matched_a, count(*) FILTER (WHERE x.tier = 'B') AS matched_b,
               count(*) FILTER (WHERE x.tier IN ('C', 'S')) AS matched_c,
               make_timestamp(min(a.r_us))::TIMESTAMPTZ AS first_at,
               make_timestamp(max(a.r_us))::TIMESTAMPTZ AS last_at
        FROM zt_pairs x JOIN zt_a a ON a.pk = x.a_pk
        WHERE a.r_us >= epoch_us($jlo) AND a.r_us < epoch_us($jhi)
        GROUP BY a.cluster, a.who, a.r_us // 86400000000
    ), u AS (
        SELECT cluster, actor, CAST(decided_at AS DATE) AS day, 'proxy' AS side, decided_at AS ts,
               judgeable FROM {unmatched_proxy}
        UNION ALL
        SELECT cluster, actor, CAST(request_received_at AS DATE), 'audit', request_received_at,
               judgeable FROM {unmatched_audit}
    )
    SELECT cluster, actor, day,
           sum(matched_a)::BIGINT AS matched_tier_a, sum(matched_b)::BIGINT AS matched_tier_b,
           sum(matched_c)::BIGINT AS matched_tier_c,
           sum(unmatched_proxy)::BIGINT AS unmatched_proxy, sum(unmatched_audit)::BIGINT AS unmatched_audit,
           sum(pending)::BIGINT AS pending, min(first_at) AS first_seen, max(last_at) AS last_seen
    FROM (
        SELECT cluster, actor, day, matched_a, matched_b, matched_c, 0 AS unmatched_proxy,
               0 AS unmatched_audit, 0 AS pending, first_at, last_at
        FROM m
        UNION ALL
        SELECT cluster, actor, day, 0, 0, 0,
               count(*) FILTER (WHERE side = 'proxy' AND judgeable),
               count(*) FILTER (WHERE side = 'audit' AND judgeable),
               count(*) FILTER (WHERE NOT judgeable), min(ts), max(ts)
        FROM u GROUP BY ALL
    ) GROUP BY ALL
    """

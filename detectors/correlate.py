"""Pair proxy decisions with the Kubernetes audit requests they caused.

Called by the impersonation detectors (``impersonation.unobserved``, ``impersonation.unbrokered``),
by :func:`impersonation_summary` (``ztaudit report impersonation``) and, through the
``proxy_audit_match`` view, by analysts in DuckDB. Everything runs as DuckDB SQL over the lake
views; nothing loops over rows in Python.

Join tiers (proxy-idp-formats.md §0):

* **A, exact**: ``audit_id == coalesce(check_request_id, request_id)`` of the proxy line, same
  cluster, within ``correlation.exact_id_window_seconds`` (the proxy must set ``Audit-ID``
  upstream; the API server adopts it verbatim, §1.5 "Kubernetes source for Audit-ID").
* **B, session**: needs ``user.extra[<key>] == session id`` (Pomerium-JWT mode). The
  ``k8s_audit`` table does not keep arbitrary ``user.extra`` keys, so tier B is not attempted.
* **C, composite** (the default): the audit request was made by an approved impersonator for its
  cluster, ``lower(impersonated_user) == lower(proxy email)``, the HTTP method is compatible with
  the verb (GET→get/list/watch, POST→create, PUT→update, PATCH→patch, DELETE→delete/
  deletecollection; non-resource URLs: the lower-case method, k8s-audit-schema.md and §1.5), the
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

Proxy side: allowed decisions (``is_allowed``) that carry an email, for Kubernetes hosts
(``impersonation.proxy_hosts`` maps host → cluster; when the map is empty every decision belongs
to its own ``cluster`` column or, if that is null, to the lake's single cluster). Pomerium writes
both an authorize line and an Envoy access line per request (§1.2, §1.3); an access line whose
``request_id`` equals an authorize line's ``check_request_id`` is the same request and is dropped.
Audit side: one row per request (``cluster, audit_id, request_received_at``; k8s-audit-schema.md
§9) impersonated by an approved impersonator.

Failure: SQL errors propagate (a broken lake is an error, not an empty result). An empty lake or
a lake without proxy data gives empty results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ztaudit.core.catalog import sql_literal
from ztaudit.core.config import Config

#: HTTP method a Kubernetes verb is made with (the verb → method direction of §1.5's mapping).
VERB_METHOD_SQL = (
    "CASE {v} WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET' WHEN 'watch' THEN 'GET' "
    "WHEN 'create' THEN 'POST' WHEN 'update' THEN 'PUT' WHEN 'patch' THEN 'PATCH' "
    "WHEN 'delete' THEN 'DELETE' WHEN 'deletecollection' THEN 'DELETE' ELSE upper({v}) END"
)

_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_MAX = datetime(9999, 1, 1, tzinfo=UTC)

#: The config views the correlation reads. :func:`install_config` replaces them per connection.
CONFIG_VIEWS = ("zt_approved_impersonators", "zt_proxy_hosts", "zt_correlation_settings")


# --------------------------------------------------------------------------------------------
# configuration as relations
# --------------------------------------------------------------------------------------------

def default_config_view_sql(cfg: Config) -> dict[str, str]:
    """SELECTs for the config views from a config's values, for the catalog's default views.

    Only called with the built-in defaults (code constants, not user input), because a CREATE VIEW
    cannot bind parameters; per-run configs go through :func:`install_config`, which binds.
    """
    approved = [(c, u) for c, users in cfg.impersonation.approved_impersonators.items() for u in users]
    if approved:
        rows = ", ".join(f"({sql_literal(c)}, {sql_literal(u)})" for c, u in approved)
        approved_sql = f"SELECT * FROM (VALUES {rows}) AS t(cluster, username)"
    else:
        approved_sql = "SELECT CAST(NULL AS VARCHAR) AS cluster, CAST(NULL AS VARCHAR) AS username WHERE false"
    hosts = list(cfg.impersonation.proxy_hosts.items())
    if hosts:
        rows = ", ".join(f"({sql_literal(h.lower())}, {sql_literal(c)})" for h, c in hosts)
        hosts_sql = f"SELECT * FROM (VALUES {rows}) AS t(host, cluster)"
    else:
        hosts_sql = "SELECT CAST(NULL AS VARCHAR) AS host, CAST(NULL AS VARCHAR) AS cluster WHERE false"
    window_us = int(cfg.correlation.match_window_seconds * 1_000_000)
    exact_us = int(cfg.correlation.exact_id_window_seconds * 1_000_000)
    settings_sql = (
        f"SELECT CAST({window_us} AS BIGINT) AS window_us, CAST({exact_us} AS BIGINT) AS exact_window_us, "
        f"{'true' if hosts else 'false'} AS has_hosts, "
        "(SELECT CASE WHEN count(DISTINCT cluster) = 1 THEN min(cluster) END FROM k8s_audit) AS single_cluster"
    )
    return {"zt_approved_impersonators": approved_sql, "zt_proxy_hosts": hosts_sql,
            "zt_correlation_settings": settings_sql}


def install_config(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    """Point the config views of ``con`` at ``cfg`` (values bound as parameters).

    Called before any correlation query on a connection made by ``catalog.connect``. Idempotent.
    Also sets the session time zone to UTC, so day boundaries are UTC days (DESIGN.md).
    """
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_cfg_approved (cluster VARCHAR, username VARCHAR)")
    approved = [(c, u) for c, users in cfg.impersonation.approved_impersonators.items() for u in users]
    if approved:
        con.executemany("INSERT INTO zt_cfg_approved VALUES (?, ?)", approved)
    con.execute("CREATE OR REPLACE TEMP TABLE zt_cfg_hosts (host VARCHAR, cluster VARCHAR)")
    hosts = [(h.lower().split(":")[0], c) for h, c in cfg.impersonation.proxy_hosts.items()]
    if hosts:
        con.executemany("INSERT INTO zt_cfg_hosts VALUES (?, ?)", hosts)
    row = con.execute("SELECT CASE WHEN count(DISTINCT cluster) = 1 THEN min(cluster) END FROM k8s_audit"
                      ).fetchone()
    single = row[0] if row else None
    con.execute(
        "CREATE OR REPLACE TEMP TABLE zt_cfg_settings AS SELECT CAST(? AS BIGINT) AS window_us, "
        "CAST(? AS BIGINT) AS exact_window_us, CAST(? AS BOOLEAN) AS has_hosts, "
        "CAST(? AS VARCHAR) AS single_cluster",
        [int(cfg.correlation.match_window_seconds * 1_000_000),
         int(cfg.correlation.exact_id_window_seconds * 1_000_000), bool(hosts), single],
    )
    con.execute("CREATE OR REPLACE TEMP VIEW zt_approved_impersonators AS SELECT * FROM zt_cfg_approved")
    con.execute("CREATE OR REPLACE TEMP VIEW zt_proxy_hosts AS SELECT * FROM zt_cfg_hosts")
    con.execute("CREATE OR REPLACE TEMP VIEW zt_correlation_settings AS SELECT * FROM zt_cfg_settings")


def approved_predicate(imp: str, cluster: str) -> str:
    """SQL predicate (never NULL): ``imp`` is an approved impersonator for ``cluster``.

    Written as two uncorrelated IN lists: a correlated EXISTS made DuckDB spend 8 s and 2 GB on 4M
    rows; the IN form takes 0.4 s. Pass alias-qualified column names (``r.cluster``).
    """
    return (f"(coalesce({imp} IN (SELECT username FROM zt_approved_impersonators WHERE cluster = '*'), false) "
            f"OR coalesce(coalesce({cluster}, '') || chr(0) || {imp} IN "
            f"(SELECT cluster || chr(0) || username FROM zt_approved_impersonators), false))")


# --------------------------------------------------------------------------------------------
# SQL fragments (shared by the view and by the materialized detect path)
# --------------------------------------------------------------------------------------------

def _window_sql(col: str) -> str:
    """SQL (``AND ...``) keeping rows whose ``col`` (``alias.column``) is in [``$lo``, ``$hi``), and
    the same window on the alias's ``dt`` day partitions (``$lo_day``..``$hi_day``) so whole days
    outside it are skipped unread."""
    alias = col.split(".")[0]
    return (f"AND {col} >= $lo AND {col} < $hi "
            f"AND CAST({alias}.dt AS VARCHAR) >= $lo_day AND CAST({alias}.dt AS VARCHAR) <= $hi_day")


def _proxy_side(detail: bool, bounded: bool, who: bool = False) -> str:
    """Allowed decisions for Kubernetes hosts. Lean (detect path): only what matching needs, hashed,
    so 4M decisions stay small in memory; ``detail`` adds the columns the analyst view shows.

    ``who`` (the summary-only path of :func:`ensure`) adds just the lower-cased email, the actor of
    an unmatched decision, so the summary needs no second read of ``proxy_decision``.
    """
    extra = (", lower(d.email) AS who, upper(d.method) AS method, d.path, d.decided_at, d.request_id, "
             "d.check_request_id, d.session_id, d.user_id, d.host" if detail else
             ", lower(d.email) AS who" if who else "")
    time = _window_sql("d.decided_at") if bounded else ""
    return f"""
    SELECT hash(d.origin, d.request_id, d.check_request_id, d.decided_at) AS pk,
           hash(coalesce(h.cluster, d.cluster, s.single_cluster), lower(d.email), upper(d.method), d.path) AS k,
           coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster,
           epoch_us(d.decided_at) AS d_us,
           CASE WHEN epoch_us(d.decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           hash(coalesce(d.check_request_id, d.request_id)) AS rid_h{extra}
    FROM proxy_decision d
    CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_hosts h ON h.host = split_part(lower(d.host), ':', 1)
    WHERE d.is_allowed AND d.email IS NOT NULL AND d.email <> '' {time}
      AND (NOT s.has_hosts OR h.cluster IS NOT NULL OR (d.host IS NULL AND d.cluster IS NOT NULL))
      AND (coalesce(d.record_type, '') <> 'access' OR d.request_id IS NULL OR d.request_id NOT IN (
           SELECT x.check_request_id FROM proxy_decision x
           WHERE x.record_type = 'authorize' AND x.check_request_id IS NOT NULL))
    """


def _audit_side(detail: bool, bounded: bool, who_all: bool = False) -> str:
    """Requests impersonated by an approved impersonator, one row per (cluster, audit_id,
    request_received_at); grouping by one 64-bit hash of that key is ~2x faster than by the columns.

    ``who_all`` (the summary-only path of :func:`ensure`) reads every stage with an impersonator,
    keeps the same requests with the same values (each taken over the approved, impersonated stages
    only) and adds ``who_all``: the lower-cased impersonated user over all those stages, which is
    the ``actor`` of ``zt_unmatched_audit``, so the summary needs no second read of the audit log.
    """
    if who_all:
        return _audit_side_who_all(bounded)
    extra = (", any_value(r.impersonator) AS impersonator, any_value(r.verb) AS verb, "
             f"{VERB_METHOD_SQL.format(v='any_value(r.verb)')} AS method, "
             "split_part(any_value(r.request_uri), '?', 1) AS path, any_value(r.audit_id) AS audit_id, "
             "any_value(r.request_received_at) AS request_received_at, max(r.response_code) AS response_code"
             if detail else "")
    time = _window_sql("r.request_received_at") if bounded else ""
    return f"""
    SELECT hash(r.cluster, r.audit_id, r.request_received_at) AS pk,
           any_value(hash(coalesce(r.cluster, s.single_cluster), lower(r.impersonated_user),
                          {VERB_METHOD_SQL.format(v='r.verb')},
                          split_part(r.request_uri, '?', 1))) AS k,
           any_value(coalesce(r.cluster, s.single_cluster)) AS cluster, any_value(hash(r.audit_id)) AS audit_h,
           lower(any_value(r.impersonated_user)) AS who, epoch_us(any_value(r.request_received_at)) AS r_us{extra}
    FROM k8s_audit r CROSS JOIN zt_correlation_settings s
    WHERE r.impersonator IS NOT NULL AND r.impersonated_user IS NOT NULL {time}
      AND {approved_predicate('r.impersonator', 'coalesce(r.cluster, s.single_cluster)')}
    GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)
    """


_TIER_A = """
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'A' AS tier
    FROM zt_p p JOIN zt_a a ON a.audit_h = p.rid_h AND a.cluster = p.cluster
    CROSS JOIN zt_correlation_settings s
    WHERE abs(a.r_us - p.d_us) <= s.exact_window_us
    QUALIFY row_number() OVER (PARTITION BY p.pk ORDER BY abs(a.r_us - p.d_us), a.pk) = 1
        AND row_number() OVER (PARTITION BY a.pk ORDER BY abs(a.r_us - p.d_us), p.pk) = 1
"""


def _tier_c_ranked(excluded: str, ptab: str = "zt_p", atab: str = "zt_a") -> str:
    """Rows of zt_p / zt_a not paired in ``excluded``, with burst (``grp``) and in-burst rank (``n``).

    Two sorts of (k, t): the first finds burst starts (gap to the previous row of the key above the
    widest tolerance, window + ½ s) and running counts per side; the second numbers bursts and
    takes each burst's starting counts, so ``n`` = running count − count before the burst. A proxy
    row's time is the middle of its logged second (``half`` = ½ s for second precision).
    """
    return f"""
    WITH u AS (
        SELECT pk, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half
        FROM {ptab} WHERE pk NOT IN (SELECT p_pk FROM {excluded})
        UNION ALL
        SELECT pk, true AS is_a, k, r_us AS t, 0 AS half
        FROM {atab} WHERE pk NOT IN (SELECT a_pk FROM {excluded})
    ), l1 AS (
        SELECT u.*,
               coalesce(t - lag(t) OVER w > (SELECT window_us + 500000 FROM zt_correlation_settings), true) AS brk,
               sum(CASE WHEN is_a THEN 0 ELSE 1 END) OVER w AS cp,
               sum(CASE WHEN is_a THEN 1 ELSE 0 END) OVER w AS ca
        FROM u WINDOW w AS (PARTITION BY k ORDER BY t, is_a, pk ROWS UNBOUNDED PRECEDING)
    ), l2 AS (
        SELECT pk, is_a, k, t, half, cp, ca,
               sum(brk::INT) OVER w AS grp,
               max(CASE WHEN brk THEN cp - (CASE WHEN is_a THEN 0 ELSE 1 END) END) OVER w AS base_p,
               max(CASE WHEN brk THEN ca - (CASE WHEN is_a THEN 1 ELSE 0 END) END) OVER w AS base_a
        FROM l1 WINDOW w AS (PARTITION BY k ORDER BY t, is_a, pk ROWS UNBOUNDED PRECEDING)
    )
    SELECT pk, is_a, k, t, half, grp, CASE WHEN is_a THEN ca - base_a ELSE cp - base_p END AS n FROM l2
    """


def _tier_c_global(excluded: str) -> str:
    """Cheap first pass: rank each side of a key by time over the whole range (one sort) and pair the
    k-th decision with the k-th request when within tolerance. Exact whenever a key lost nothing;
    after a missing request the ranks shift, those pairs fail the time check and go on to the burst
    passes."""
    return f"""
    WITH u AS (
        SELECT pk, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half
        FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM {excluded})
        UNION ALL
        SELECT pk, true AS is_a, k, r_us AS t, 0 AS half
        FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM {excluded})
    )
    SELECT pk, is_a, k, t, half, 0 AS grp, row_number() OVER (PARTITION BY k, is_a ORDER BY t, pk) AS n FROM u
    """


_TIER_C_PAIRS = """
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM {r} p JOIN {r} a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half
"""


def _tier_c(excluded: str) -> str:
    """One multiset pass of tier C as a single SELECT (for the view)."""
    return f"WITH r AS MATERIALIZED ({_tier_c_ranked(excluded)}) {_TIER_C_PAIRS.format(r='r')}"


def view_sql() -> str:
    """The ``proxy_audit_match`` view: every matched pair and every unmatched row of both sides."""
    return f"""
    WITH zt_p AS MATERIALIZED ({_proxy_side(True, False)}),
         zt_a AS MATERIALIZED ({_audit_side(True, False)}),
         zt_pa AS MATERIALIZED ({_TIER_A}),
         zt_c0 AS MATERIALIZED (
             WITH r AS MATERIALIZED ({_tier_c_global('zt_pa')}) {_TIER_C_PAIRS.format(r='r')}),
         zt_x0 AS MATERIALIZED (SELECT * FROM zt_pa UNION ALL SELECT * FROM zt_c0),
         zt_c1 AS MATERIALIZED ({_tier_c('zt_x0')}),
         zt_x1 AS MATERIALIZED (SELECT * FROM zt_x0 UNION ALL SELECT * FROM zt_c1),
         zt_c2 AS MATERIALIZED ({_tier_c('zt_x1')}),
         zt_pairs AS MATERIALIZED (SELECT * FROM zt_x1 UNION ALL SELECT * FROM zt_c2)
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


VIEW_DESCRIPTION = (
    "Proxy decisions paired with the impersonated audit requests they caused (tier A exact id, tier C "
    "composite key + time window, multiset); side = both | proxy (no audit request) | audit (no decision).")


def _audit_side_who_all(bounded: bool) -> str:
    time = _window_sql("r.request_received_at") if bounded else ""
    return f"""
    SELECT hash(r.cluster, r.audit_id, r.request_received_at) AS pk,
           any_value(hash(coalesce(r.cluster, r.single_cluster), lower(r.impersonated_user),
                          {VERB_METHOD_SQL.format(v='r.verb')},
                          split_part(r.request_uri, '?', 1))) FILTER (WHERE r.lean) AS k,
           any_value(coalesce(r.cluster, r.single_cluster)) FILTER (WHERE r.lean) AS cluster,
           any_value(hash(r.audit_id)) FILTER (WHERE r.lean) AS audit_h,
           lower(any_value(r.impersonated_user) FILTER (WHERE r.lean)) AS who,
           epoch_us(any_value(r.request_received_at) FILTER (WHERE r.lean)) AS r_us,
           lower(any_value(r.impersonated_user)) AS who_all
    FROM (SELECT r.cluster, r.audit_id, r.request_received_at, r.impersonated_user, r.verb, r.request_uri,
                 s.single_cluster,
                 r.impersonated_user IS NOT NULL
                 AND {approved_predicate('r.impersonator', 'coalesce(r.cluster, s.single_cluster)')} AS lean
          FROM k8s_audit r CROSS JOIN zt_correlation_settings s
          WHERE r.impersonator IS NOT NULL {time}) r
    GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)
    HAVING bool_or(r.lean)
    """


# --------------------------------------------------------------------------------------------
# materialized path for detect
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Correlation:
    """Names of the temp tables :func:`ensure` built on a connection.

    ``unmatched_proxy`` / ``unmatched_audit`` hold the detail rows of each side's unmatched events
    with a ``judgeable`` flag (false near the data's end, where the other side may still arrive,
    or in a cluster with no data at all on the other side); ``summary`` holds matched and unmatched
    counts per (cluster, actor, day).
    """

    unmatched_proxy: str = "zt_unmatched_proxy"
    unmatched_audit: str = "zt_unmatched_audit"
    summary: str = "zt_match_summary"


def _day(ts: datetime) -> str:
    """The UTC day of ``ts`` as the lake's ``dt`` partitions spell it (a naive time is UTC, as the
    session time zone makes it for DuckDB)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC).date().isoformat()


def _key(cfg: Config, since: datetime | None, until: datetime | None) -> str:
    blob = json.dumps([str(since), str(until), cfg.impersonation.approved_impersonators,
                       cfg.impersonation.proxy_hosts, cfg.correlation.match_window_seconds,
                       cfg.correlation.exact_id_window_seconds], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime | None,
           until: datetime | None, *, detail: bool = True) -> Correlation:
    """Build (once per connection, config and window) the correlation temp tables; return their names.

    Called by each impersonation detector and the summary; the second caller reuses the tables.
    Events are read with a margin around [since, until) so pairs straddling the edges are found;
    only rows inside the window are reported.

    ``detail=False`` (:func:`impersonation_summary`) builds ``summary`` only, not the detail tables
    ``unmatched_proxy`` / ``unmatched_audit``: the summary's unmatched counts then come from the
    matching tables themselves (same events, clusters, actors, times and judgeability), which saves
    a second read of every decision and every impersonated audit event (~0.5 s at 10M events). A
    later call that needs the detail rebuilds everything.
    """
    key = _key(cfg, since, until)
    # fetchall, not fetchone: a result left unfinished blocks the caller's next con.sql()
    have = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'zt_match_meta'").fetchall()
    if have and have[0][0]:
        rows = con.execute("SELECT key, detail FROM zt_match_meta").fetchall()
        if rows and rows[0][0] == key and (rows[0][1] or not detail):
            return Correlation()
    install_config(con, cfg)
    bounded = since is not None or until is not None
    margin = timedelta(seconds=max(cfg.correlation.match_window_seconds,
                                   cfg.correlation.exact_id_window_seconds) + 2)
    params: dict[str, Any] = {}
    if bounded:
        params = {"lo": (since - margin) if since else _MIN,
                  "hi": (until + margin) if until else _MAX}
        params.update(lo_day=_day(params["lo"]), hi_day=_day(params["hi"]))
    con.execute(f"CREATE OR REPLACE TEMP TABLE zt_p AS {_proxy_side(False, bounded, who=not detail)}", params)
    con.execute(f"CREATE OR REPLACE TEMP TABLE zt_a AS {_audit_side(False, bounded, who_all=not detail)}", params)
    con.execute(f"CREATE OR REPLACE TEMP TABLE zt_pairs AS {_TIER_A}")
    # multiset passes: global ranks (cheap, settles nearly everything), then bursts twice over what
    # is left (kept in small tables so those passes do not rescan everything)
    con.execute(f"CREATE OR REPLACE TEMP TABLE zt_r AS {_tier_c_global('zt_pairs')}")
    con.execute(f"INSERT INTO zt_pairs {_TIER_C_PAIRS.format(r='zt_r')}")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_lp AS SELECT * FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_pairs)")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_la AS SELECT * FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_pairs)")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_pairs2 (p_pk UBIGINT, a_pk UBIGINT, tier VARCHAR)")
    for _ in range(2):
        con.execute(f"CREATE OR REPLACE TEMP TABLE zt_r AS {_tier_c_ranked('zt_pairs2', 'zt_lp', 'zt_la')}")
        con.execute(f"INSERT INTO zt_pairs2 {_TIER_C_PAIRS.format(r='zt_r')}")
    con.execute("INSERT INTO zt_pairs SELECT * FROM zt_pairs2")
    con.execute("DROP TABLE IF EXISTS zt_r")
    win = {"lo_j": since or _MIN,
           "hi_j": until or _MAX}
    # the same window on the day partitions (dt is the UTC day of the event time), so the detail
    # reads below skip whole days outside it
    win_days = {"lo_jd": _day(win["lo_j"]), "hi_jd": _day(win["hi_j"])}
    # Watermarks: the newest event of each side per cluster. A decision newer than the newest audit
    # request minus the window cannot be judged yet (its request may still be in flight), and the
    # same the other way round; a cluster with no data at all on the other side is not judged.
    # Watermarks: the newest event of each side per cluster, over *all* its rows (a denied decision
    # or a controller's request also shows the log was flowing). A decision newer than the newest
    # audit request minus the window cannot be judged yet (its request may still be in flight), and
    # the same the other way round; a cluster with no data at all on the other side is not judged.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE zt_proxy_marks AS
        SELECT coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster, max(epoch_us(d.decided_at)) AS max_p
        FROM proxy_decision d CROSS JOIN zt_correlation_settings s
        LEFT JOIN zt_proxy_hosts h ON h.host = split_part(lower(d.host), ':', 1)
        GROUP BY 1
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE zt_audit_marks AS
        SELECT coalesce(cluster, s.single_cluster) AS cluster, max(epoch_us(request_received_at)) AS max_a
        FROM k8s_audit CROSS JOIN zt_correlation_settings s GROUP BY 1
    """)
    con.execute("CREATE OR REPLACE TEMP TABLE zt_unpaired_a AS SELECT pk FROM zt_la "
                "WHERE pk NOT IN (SELECT a_pk FROM zt_pairs2)")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_unpaired_p AS SELECT pk FROM zt_lp "
                "WHERE pk NOT IN (SELECT p_pk FROM zt_pairs2)")
    if detail:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE zt_unmatched_proxy AS
            SELECT p.cluster, lower(d.email) AS actor, d.email, d.decided_at, d.request_id, d.check_request_id,
                   d.session_id, d.user_id, d.method, d.path, d.host, d.proxy, d.client_ip, d.origin,
                   (am.max_a IS NOT NULL AND p.d_us + p.prec_us + s.window_us < am.max_a) AS judgeable
            FROM (SELECT * FROM zt_lp WHERE pk IN (SELECT pk FROM zt_unpaired_p)) p
            JOIN (SELECT * FROM proxy_decision
                  WHERE hash(origin, request_id, check_request_id, decided_at) IN (SELECT pk FROM zt_unpaired_p)
                    AND decided_at >= $lo_j AND decided_at < $hi_j
                    AND CAST(dt AS VARCHAR) >= $lo_jd AND CAST(dt AS VARCHAR) <= $hi_jd) d
              ON hash(d.origin, d.request_id, d.check_request_id, d.decided_at) = p.pk
            CROSS JOIN zt_correlation_settings s
            LEFT JOIN zt_audit_marks am ON am.cluster = p.cluster
            WHERE d.decided_at >= $lo_j AND d.decided_at < $hi_j
        """, win | win_days)
        unmatched_proxy = "zt_unmatched_proxy"
    else:
        # what the summary reads of zt_unmatched_proxy, from the unpaired decisions of zt_lp (same
        # rows: pk is the decision's key; who is lower(email); d_us is decided_at)
        con.execute("DROP TABLE IF EXISTS zt_unmatched_proxy")
        unmatched_proxy = """(
            SELECT p.cluster, p.who AS actor, make_timestamp(p.d_us)::TIMESTAMPTZ AS decided_at,
                   (am.max_a IS NOT NULL AND p.d_us + p.prec_us + s.window_us < am.max_a) AS judgeable
            FROM zt_lp p CROSS JOIN zt_correlation_settings s
            LEFT JOIN zt_audit_marks am ON am.cluster = p.cluster
            WHERE p.pk IN (SELECT pk FROM zt_unpaired_p)
              AND p.d_us >= epoch_us($lo_j) AND p.d_us < epoch_us($hi_j))"""
    if detail:
        _unmatched_audit(con, win | win_days)
        unmatched_audit = "zt_unmatched_audit"
    else:
        # what the summary reads of zt_unmatched_audit, from the unpaired requests of zt_la: cluster and
        # request time are part of the request key, and who_all is the detail table's actor
        con.execute("DROP TABLE IF EXISTS zt_unmatched_audit")
        unmatched_audit = """(
            SELECT a.cluster, a.who_all AS actor, make_timestamp(a.r_us)::TIMESTAMPTZ AS request_received_at,
                   (pm.max_p IS NOT NULL AND a.r_us + s.window_us + 1000000 < pm.max_p) AS judgeable
            FROM zt_la a CROSS JOIN zt_correlation_settings s
            LEFT JOIN zt_proxy_marks pm ON pm.cluster = a.cluster
            WHERE a.pk IN (SELECT pk FROM zt_unpaired_a)
              AND a.r_us >= epoch_us($lo_j) AND a.r_us < epoch_us($hi_j))"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE zt_match_summary AS
        WITH m AS (
            -- aggregate on integers first (4M pairs), convert the few group results to times after
            SELECT a.cluster, a.who AS actor,
                   CAST(DATE '1970-01-01' + CAST(a.r_us // 86400000000 AS INTEGER) AS DATE) AS day,
                   count(*) FILTER (WHERE x.tier = 'A') AS matched_a, count(*) FILTER (WHERE x.tier = 'C') AS matched_c,
                   make_timestamp(min(a.r_us))::TIMESTAMPTZ AS first_at,
                   make_timestamp(max(a.r_us))::TIMESTAMPTZ AS last_at
            FROM zt_pairs x JOIN zt_a a ON a.pk = x.a_pk
            WHERE a.r_us >= epoch_us($lo_j) AND a.r_us < epoch_us($hi_j)
            GROUP BY a.cluster, a.who, a.r_us // 86400000000
        ), u AS (
            SELECT cluster, actor, CAST(decided_at AS DATE) AS day, 'proxy' AS side, decided_at AS ts,
                   judgeable FROM {unmatched_proxy}
            UNION ALL
            SELECT cluster, actor, CAST(request_received_at AS DATE), 'audit', request_received_at,
                   judgeable FROM {unmatched_audit}
        )
        SELECT cluster, actor, day,
               sum(matched_a)::BIGINT AS matched_tier_a, sum(matched_c)::BIGINT AS matched_tier_c,
               sum(unmatched_proxy)::BIGINT AS unmatched_proxy, sum(unmatched_audit)::BIGINT AS unmatched_audit,
               sum(pending)::BIGINT AS pending, min(first_at) AS first_seen, max(last_at) AS last_seen
        FROM (
            SELECT cluster, actor, day, matched_a, matched_c, 0 AS unmatched_proxy,
                   0 AS unmatched_audit, 0 AS pending, first_at, last_at
            FROM m
            UNION ALL
            SELECT cluster, actor, day, 0, 0,
                   count(*) FILTER (WHERE side = 'proxy' AND judgeable),
                   count(*) FILTER (WHERE side = 'audit' AND judgeable),
                   count(*) FILTER (WHERE NOT judgeable), min(ts), max(ts)
            FROM u GROUP BY ALL
        ) GROUP BY ALL
    """, win)
    # the big intermediate tables are not needed any more: free their memory for the next detector
    for t in ("zt_p", "zt_a", "zt_pairs", "zt_pairs2", "zt_lp", "zt_la", "zt_unpaired_a", "zt_unpaired_p"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute("CREATE OR REPLACE TEMP TABLE zt_match_meta AS SELECT ? AS key, ? AS detail", [key, detail])
    return Correlation()


def _unmatched_audit(con: duckdb.DuckDBPyConnection, win: dict[str, Any]) -> None:
    """Build ``zt_unmatched_audit``: the detail of each unpaired impersonated request in the window."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE zt_unmatched_audit AS
        SELECT r.*, (m.max_p IS NOT NULL AND epoch_us(r.request_received_at) + s.window_us + 1000000 < m.max_p)
                    AS judgeable
        FROM (SELECT coalesce(any_value(cluster), any_value(s0.single_cluster)) AS cluster,
                     lower(any_value(impersonated_user)) AS actor,
                     any_value(audit_id) AS audit_id, any_value(request_received_at) AS request_received_at,
                     any_value(verb) AS verb, split_part(any_value(request_uri), '?', 1) AS path,
                     max(response_code) AS response_code, any_value(impersonator) AS impersonator,
                     any_value(impersonated_user) AS impersonated_user, any_value(credential_id) AS credential_id,
                     any_value(source_ip) AS source_ip, any_value(user_agent) AS user_agent,
                     any_value(namespace) AS namespace
              FROM k8s_audit CROSS JOIN zt_correlation_settings s0 WHERE impersonator IS NOT NULL
                AND hash(cluster, audit_id, request_received_at) IN (SELECT pk FROM zt_unpaired_a)
                -- request_received_at is part of the group key, so this drops whole requests only
                AND request_received_at >= $lo_j AND request_received_at < $hi_j
                AND CAST(dt AS VARCHAR) >= $lo_jd AND CAST(dt AS VARCHAR) <= $hi_jd
              GROUP BY hash(cluster, audit_id, request_received_at)) r
        CROSS JOIN zt_correlation_settings s
        LEFT JOIN zt_proxy_marks m ON m.cluster = r.cluster
        WHERE r.request_received_at >= $lo_j AND r.request_received_at < $hi_j
    """, win)


def impersonation_summary(con: duckdb.DuckDBPyConnection, config: Config, since: datetime | None = None,
                          until: datetime | None = None) -> Any:
    """Matched and unmatched proxy/audit counts per identity (for ``ztaudit report impersonation``).

    Returns a ``pyarrow.Table``: cluster, actor, matched_tier_a, matched_tier_c, unmatched_proxy
    (allowed decisions with no impersonated request), unmatched_audit (impersonated requests with
    no decision), pending (too close to the data's end to judge), match_rate, first_seen,
    last_seen. Called by the report engineer's report; raises on SQL errors.
    """
    ensure(con, config, since, until, detail=False)
    return con.sql("""
        SELECT * FROM (
        SELECT cluster, actor, sum(matched_tier_a)::BIGINT AS matched_tier_a,
               sum(matched_tier_c)::BIGINT AS matched_tier_c, sum(unmatched_proxy)::BIGINT AS unmatched_proxy,
               sum(unmatched_audit)::BIGINT AS unmatched_audit, sum(pending)::BIGINT AS pending,
               round((sum(matched_tier_a) + sum(matched_tier_c)) / nullif(sum(matched_tier_a) + sum(matched_tier_c)
                     + sum(unmatched_proxy) + sum(unmatched_audit), 0), 4) AS match_rate,
               min(first_seen) AS first_seen, max(last_seen) AS last_seen
        FROM zt_match_summary GROUP BY cluster, actor
        ) ORDER BY unmatched_proxy + unmatched_audit DESC, cluster, actor
    """).to_arrow_table()

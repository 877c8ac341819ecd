"""Revocation status: was each revocation observed at the proxy and at the API server?

Holds :func:`build` (the temp table ``zt_rev_status``: one row per revocation, its uses before and
after it on both planes and its ``status``) and :func:`revocation_status` (those rows, columns
:data:`STATUS_COLUMNS`). Called by ``revocation.not_enforced`` (:mod:`ztaudit.detectors.revocation`,
through :func:`build`) and by ``ztaudit report revocation`` through
:func:`revocation_status`. All work is DuckDB SQL; values from config and time bounds are bound
parameters. Which events are revocations: :mod:`ztaudit.detectors.revocations_view`.

Identity bridge (docs/proxy-and-idp.md §0, §3): ``subject_login`` (email / UPN / login) ↔ proxy
``email`` ↔ audit ``impersonated_user`` / ``actor`` (case-insensitive); ``subject_id`` ↔ proxy
``user_id`` (and, when the IdP event names no login, the email the proxy logged for that user id);
``session_id`` ↔ proxy ``session_id``. Session revocations are judged at the proxy only: the
audit log carries no session id (§1.5).

Per revocation: last allowed use before it, first allowed and first denied use after it, at the
proxy and at the API server; ``status`` is

* ``not_enforced``: an allowed use later than ``revoked_at + revocation.grace_seconds``;
* ``enforced``: no such use, and a denied attempt at or after ``revoked_at`` was seen;
* ``unverified``: neither (nothing tried again, which is common: after a revocation Pomerium's
  denied lines carry no identity, §1.4, and a deleted token fails authentication with a 401 that
  names no user, docs/kubernetes-audit.md §5.4).

Timing rules: API requests are judged by ``request_received_at`` (a watch or exec opened before
the revocation and closed after it is not a violation, §4 step 4). Proxy times have second
precision (§1.1): a decision logged at second S happened in ``[S, S+1 s)``, so "allowed after the
grace period" requires the *logged* time to be past it (never a false alarm from truncation), and a
denial logged in the revocation's own second counts as after it, with latency clamped at 0.
Judgement stops when the subject is restored (IdP activate/unsuspend/enable event for the same
subject; re-creation of the same service account, secret or binding).

Failure: SQL errors propagate; an empty lake gives an empty table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import duckdb
import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.window import EARLIEST, LATEST, Window, utc_day
from ztaudit.detectors.revocations_view import REVOCATIONS_IN_WINDOW_SQL
from ztaudit.detectors.sql import execute

#: ``violations`` references :func:`revocation_status` returns per revocation.
REPORT_VIOLATIONS = 20

STATUS_COLUMNS = [
    "kind", "subject", "identity", "subject_id", "session_id", "cluster", "source", "system", "event_type",
    "revoked_at", "revoked_by", "restored_at", "last_allowed_proxy_before", "first_allowed_proxy_after",
    "first_denied_proxy", "last_allowed_api_before", "first_allowed_api_after", "first_denied_api",
    "allowed_after_grace_proxy", "allowed_after_grace_api", "first_allowed_after_grace",
    "last_allowed_after_grace", "latency_seconds", "exposure_seconds", "status", "evidence",
    "violations",
]

#: Most distinct subjects DuckDB may push into a scan as an IN filter while uses are collected.
_IN_FILTER_THRESHOLD: Final = 5000

#: The revocations judged, numbered: ``login`` falls back to the email the proxy logged for the subject
#: id (``min``: one deterministic choice when the proxy logged several spellings).
_REVOKED_SQL: Final = f"""
    CREATE OR REPLACE TEMP TABLE zt_rev AS
    SELECT row_number() OVER (ORDER BY v.revoked_at, v.subject, v.source, v.evidence) AS rev_id,
           v.* REPLACE (coalesce(v.login, (SELECT min(lower(p.email)) FROM proxy_decision p
                                           WHERE p.user_id = v.subject_id AND p.email <> '')) AS login)
    FROM ({REVOCATIONS_IN_WINDOW_SQL}) v
"""

_USES_TABLE: Final = """CREATE OR REPLACE TEMP TABLE zt_rev_use (rev_id BIGINT, plane VARCHAR, ts TIMESTAMPTZ,
                        prec_us BIGINT, allowed BOOLEAN, ref VARCHAR)"""

#: Every scan of the big tables below is bounded to [$ulo, $until) — $ulo is the earliest
#: ``revoked_at`` of the kinds the statement judges, less the 7-day window, so nothing a join could
#: keep is dropped — and to the day partitions ``dt`` in [$ulo_day, $hi_day].
_PROXY_BOUND: Final = ("d.decided_at >= $ulo AND d.decided_at < $until "
                       "AND CAST(d.dt AS VARCHAR) >= $ulo_day AND CAST(d.dt AS VARCHAR) <= $hi_day")
_AUDIT_BOUND: Final = ("request_received_at >= $ulo AND request_received_at < $until "
                       "AND CAST(dt AS VARCHAR) >= $ulo_day AND CAST(dt AS VARCHAR) <= $hi_day")

_IDENT_KINDS: Final = ("identity", "token", "grant")
_PROXY_USE_COLUMNS: Final = """r.rev_id, 'proxy' AS plane, d.decided_at AS ts,
           CASE WHEN epoch_us(d.decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           d.is_allowed AS allowed, 'proxy_decision:' || coalesce(d.request_id, d.origin) AS ref"""
_PROXY_USE_WINDOW: Final = f"d.decided_at >= r.revoked_at - INTERVAL 7 DAY AND {_PROXY_BOUND}"

#: Uses of a revoked service account (by ``user_name``) or legacy token (by ``credential_id``) at the API
#: server, for ``{kind}`` / ``{column}``. Audit requests are grouped per (cluster, audit_id,
#: request_received_at) after filtering: the time bounds are on a group key, so they drop whole
#: requests, never stages of one.
_SUBJECT_API_USES: Final = f"""INSERT INTO zt_rev_use
    SELECT r.rev_id, 'api', q.request_received_at, 0, q.response_code NOT IN (401, 403),
           'k8s_audit:' || q.cluster || '/' || q.audit_id
    FROM zt_rev r JOIN (
        SELECT cluster, audit_id, request_received_at, any_value({{column}}) AS subj,
               max(response_code) AS response_code
        FROM k8s_audit WHERE {{column}} IN (SELECT subject FROM zt_rev WHERE kind = '{{kind}}')
          AND {_AUDIT_BOUND}
        GROUP BY ALL) q ON q.subj = r.subject AND q.cluster = r.cluster
    WHERE r.kind = '{{kind}}' AND q.response_code IS NOT NULL
      AND q.request_received_at >= r.revoked_at - INTERVAL 7 DAY"""

#: The statements that collect the uses of revoked subjects into ``zt_rev_use``: name -> (kinds it
#: judges, INSERT). Each runs only when a kind it judges was revoked; each takes ``$until``, ``$ulo``,
#: ``$ulo_day`` and ``$hi_day`` (bounds of its own kinds). Binding uses: :func:`_binding_uses`.
_USE_SCANS: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "identity at the proxy": (_IDENT_KINDS, f"""INSERT INTO zt_rev_use
        SELECT {_PROXY_USE_COLUMNS} FROM zt_rev r JOIN proxy_decision d ON lower(d.email) = r.login
        WHERE r.kind IN {_IDENT_KINDS} AND {_PROXY_USE_WINDOW}
        UNION
        SELECT {_PROXY_USE_COLUMNS} FROM zt_rev r JOIN proxy_decision d ON d.user_id = r.subject_id
        WHERE r.kind IN {_IDENT_KINDS} AND {_PROXY_USE_WINDOW}"""),
    # the actors whose lower case is a revoked login, spelled as in the log: an IN on the plain
    # column lets DuckDB push the filter into the Parquet scan (lower(actor) IN ... cannot)
    "identity at the API server": (_IDENT_KINDS, f"""INSERT INTO zt_rev_use
        WITH who AS MATERIALIZED (
            SELECT actor FROM (SELECT DISTINCT actor FROM k8s_audit WHERE {_AUDIT_BOUND})
            WHERE lower(actor) IN (SELECT login FROM zt_rev WHERE login IS NOT NULL))
        SELECT r.rev_id, 'api', q.request_received_at, 0, q.response_code NOT IN (401, 403),
               'k8s_audit:' || q.cluster || '/' || q.audit_id
        FROM zt_rev r JOIN (
            SELECT cluster, audit_id, request_received_at, lower(any_value(actor)) AS who,
                   max(response_code) AS response_code
            FROM k8s_audit WHERE actor IN (SELECT actor FROM who) AND {_AUDIT_BOUND}
            GROUP BY ALL) q ON q.who = r.login
        WHERE r.kind IN {_IDENT_KINDS} AND q.response_code IS NOT NULL
          AND q.request_received_at >= r.revoked_at - INTERVAL 7 DAY"""),
    "session at the proxy": (("session",), f"""INSERT INTO zt_rev_use
        SELECT {_PROXY_USE_COLUMNS} FROM zt_rev r JOIN proxy_decision d ON d.session_id = r.session_id
        WHERE r.kind = 'session' AND {_PROXY_USE_WINDOW}"""),
    "service account at the API server": (
        ("service_account",), _SUBJECT_API_USES.format(kind="service_account", column="user_name")),
    "legacy token at the API server": (
        ("legacy_token",), _SUBJECT_API_USES.format(kind="legacy_token", column="credential_id")),
}


# RBAC reason strings: 'RBAC: allowed by ClusterRoleBinding "NAME" of ...' and
# 'RBAC: allowed by RoleBinding "NAME/NS" of ...' (corpus: Pinniped sample).
_BINDING_RE: Final = (
    """regexp_extract({reason}, 'allowed by (ClusterRoleBinding|RoleBinding) "([^"]+)"', ['kind', 'ref'])""")
_BINDING_SUBJ: Final = """CASE WHEN {m}.kind = 'ClusterRoleBinding' THEN 'ClusterRoleBinding/' || {m}.ref
                        ELSE 'RoleBinding/' || split_part({m}.ref, '/', 2) || '/' || split_part({m}.ref, '/', 1)
                   END"""
_BINDING_SCOPE: Final = f"""authz_reason LIKE '%RoleBinding "%' AND {_AUDIT_BOUND}
                     AND cluster IN (SELECT cluster FROM zt_rev WHERE kind = 'binding')"""

#: The few distinct RBAC reasons that name a revoked binding.
_BINDING_REASONS_SQL: Final = f"""
    CREATE OR REPLACE TEMP TABLE zt_rev_reason AS
    SELECT authz_reason FROM (SELECT DISTINCT authz_reason FROM k8s_audit WHERE {_BINDING_SCOPE})
    WHERE {_BINDING_SUBJ.format(m=_BINDING_RE.format(reason='authz_reason'))}
          IN (SELECT subject FROM zt_rev WHERE kind = 'binding')
"""

#: The requests having a stage with such a reason.
_BINDING_REQUESTS_SQL: Final = f"""
    CREATE OR REPLACE TEMP TABLE zt_rev_req AS
    SELECT DISTINCT cluster, audit_id, request_received_at FROM k8s_audit
    WHERE authz_reason IN (SELECT authz_reason FROM zt_rev_reason) AND {_BINDING_SCOPE}
"""

#: Those requests judged with all their stages, exactly as over the whole log.
_BINDING_USES_SQL: Final = f"""INSERT INTO zt_rev_use
    SELECT r.rev_id, 'api', q.request_received_at, 0, true, 'k8s_audit:' || q.cluster || '/' || q.audit_id
    FROM zt_rev r JOIN (
        SELECT cluster, audit_id, request_received_at, {_BINDING_SUBJ.format(m='m')} AS subj
        FROM (SELECT a.cluster, a.audit_id, a.request_received_at,
                     {_BINDING_RE.format(reason='any_value(a.authz_reason)')} AS m
              FROM k8s_audit a SEMI JOIN zt_rev_req k
                ON a.cluster = k.cluster AND a.audit_id IS NOT DISTINCT FROM k.audit_id
               AND a.request_received_at = k.request_received_at
              WHERE a.authz_reason LIKE '%RoleBinding "%' AND a.request_received_at >= $ulo
                AND a.request_received_at < $until AND CAST(a.dt AS VARCHAR) >= $ulo_day
                AND CAST(a.dt AS VARCHAR) <= $hi_day
              GROUP BY ALL HAVING max(a.response_code) BETWEEN 200 AND 399)) q
      ON q.subj = r.subject AND q.cluster = r.cluster
    WHERE r.kind = 'binding' AND q.request_received_at >= r.revoked_at - INTERVAL 7 DAY"""


def _binding_uses(con: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> None:
    """Insert the uses of revoked role bindings: requests whose RBAC reason names the binding.

    A request's binding is read from one of its stages' reasons (``any_value``), so the parse runs
    per request, not per distinct reason; but only a request with some stage whose reason names a
    revoked binding can match. So: parse the few distinct reasons, keep those naming a revoked
    binding, take the requests having such a stage, and judge only those requests, all their
    stages included, exactly as over the whole log.
    """
    execute(con, _BINDING_REASONS_SQL, params)
    row = con.execute("SELECT count(*) FROM zt_rev_reason").fetchone()
    if row and row[0]:
        execute(con, _BINDING_REQUESTS_SQL, params)
        execute(con, _BINDING_USES_SQL, params)
    con.execute("DROP TABLE IF EXISTS zt_rev_req")
    con.execute("DROP TABLE IF EXISTS zt_rev_reason")


def _use_params(con: duckdb.DuckDBPyConnection, kinds: tuple[str, ...], hi: datetime) -> dict[str, Any]:
    """Bounds for the use scans of revocations of ``kinds`` (see :data:`_PROXY_BOUND`)."""
    row = con.execute("SELECT min(revoked_at) - INTERVAL 7 DAY FROM zt_rev WHERE list_contains($kinds, kind)",
                      {"kinds": list(kinds)}).fetchone()
    ulo: datetime = row[0] if row and row[0] is not None else EARLIEST
    return {"until": hi, "ulo": ulo, "ulo_day": utc_day(ulo), "hi_day": utc_day(hi)}


#: One row per judged revocation into ``zt_rev_status``: the uses before and after it on both planes,
#: the allowed uses after the grace period (from ``$vsince`` on), latency, exposure and status.
_STATUS_SQL: Final = """
    CREATE OR REPLACE TEMP TABLE zt_rev_status AS
    WITH u AS (
        SELECT u.*, r.revoked_at, coalesce(r.restored_at, $latest) AS stop,
               greatest(r.revoked_at + $grace, $vsince) AS vfrom
        FROM zt_rev_use u JOIN zt_rev r USING (rev_id)
    ), agg AS (
        SELECT rev_id,
          max(ts) FILTER (WHERE plane = 'proxy' AND allowed AND ts + to_microseconds(prec_us) <= revoked_at)
            AS last_allowed_proxy_before,
          min(ts) FILTER (WHERE plane = 'proxy' AND allowed AND ts + to_microseconds(prec_us) > revoked_at
                          AND ts < stop) AS first_allowed_proxy_after,
          min(ts) FILTER (WHERE plane = 'proxy' AND NOT allowed AND ts + to_microseconds(prec_us) > revoked_at
                          AND ts < stop) AS first_denied_proxy,
          max(ts) FILTER (WHERE plane = 'api' AND allowed AND ts <= revoked_at) AS last_allowed_api_before,
          min(ts) FILTER (WHERE plane = 'api' AND allowed AND ts > revoked_at AND ts < stop)
            AS first_allowed_api_after,
          min(ts) FILTER (WHERE plane = 'api' AND NOT allowed AND ts > revoked_at AND ts < stop)
            AS first_denied_api,
          count(*) FILTER (WHERE plane = 'proxy' AND allowed AND ts > vfrom AND ts < stop)
            AS allowed_after_grace_proxy,
          count(*) FILTER (WHERE plane = 'api' AND allowed AND ts > vfrom AND ts < stop)
            AS allowed_after_grace_api,
          min(ts) FILTER (WHERE allowed AND ts > vfrom AND ts < stop) AS first_allowed_after_grace,
          max(ts) FILTER (WHERE allowed AND ts > vfrom AND ts < stop) AS last_allowed_after_grace,
          -- the first $keep references in (ts, ref) order: a bounded heap per revocation instead of
          -- sorting every use; wrapped in a struct so NULL references are kept, as list() keeps them
          [x.r FOR x IN min_by({'r': ref}, (ts, ref), $keep)
                        FILTER (WHERE allowed AND ts > vfrom AND ts < stop)] AS viol
        FROM u GROUP BY rev_id
    )
    SELECT r.kind, r.subject, coalesce(r.login, r.subject) AS identity, r.subject_id, r.session_id,
           r.cluster, r.source, r.system, r.event_type,
           r.revoked_at, r.revoked_by, r.restored_at,
           a.last_allowed_proxy_before, a.first_allowed_proxy_after, a.first_denied_proxy,
           a.last_allowed_api_before, a.first_allowed_api_after, a.first_denied_api,
           coalesce(a.allowed_after_grace_proxy, 0) AS allowed_after_grace_proxy,
           coalesce(a.allowed_after_grace_api, 0) AS allowed_after_grace_api,
           a.first_allowed_after_grace, a.last_allowed_after_grace,
           CASE WHEN coalesce(a.allowed_after_grace_proxy, 0) + coalesce(a.allowed_after_grace_api, 0) = 0
                 AND least(a.first_denied_proxy, a.first_denied_api) IS NOT NULL
                THEN greatest(0.0, epoch_us(least(a.first_denied_proxy, a.first_denied_api))
                                   - epoch_us(r.revoked_at)) / 1e6 END AS latency_seconds,
           CASE WHEN a.last_allowed_after_grace IS NOT NULL
                THEN (epoch_us(a.last_allowed_after_grace) - epoch_us(r.revoked_at)) / 1e6 END
                AS exposure_seconds,
           CASE WHEN coalesce(a.allowed_after_grace_proxy, 0) + coalesce(a.allowed_after_grace_api, 0) > 0
                THEN 'not_enforced'
                WHEN least(a.first_denied_proxy, a.first_denied_api) IS NOT NULL THEN 'enforced'
                ELSE 'unverified' END AS status,
           r.evidence, coalesce(a.viol, []) AS violations
    FROM zt_rev r LEFT JOIN agg a USING (rev_id)
    ORDER BY r.revoked_at, r.subject
"""


def build(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime | None,
          until: datetime | None, *, lookback: bool = False) -> str:
    """Build temp table ``zt_rev_status`` (one row per revocation) on ``con``; return its name.

    Its ``violations`` holds the first max(:data:`REPORT_VIOLATIONS`, ``detect.max_evidence``)
    references of allowed uses after the grace period, oldest first (all that the report and the
    detector's evidence use); the counts cover every use.

    Revocations revoked in [since, until) — or, with ``lookback`` (the detector), in
    [since − revocation.lookback_days, until) — are judged against uses before ``until``; with
    ``lookback`` only uses at or after ``since`` count as violations, so a run over a later window
    reports only what happened in it. Called by :func:`revocation_status` and the detector with an
    ``open_lake`` connection (UTC session); raises on SQL errors.
    """
    window = Window(since, until).widened(before=timedelta(days=cfg.revocation.lookback_days if lookback else 0))
    vsince = since if (lookback and since) else EARLIEST
    execute(con, _REVOKED_SQL, window.params())
    kinds = {str(r[0]) for r in con.execute("SELECT DISTINCT kind FROM zt_rev").fetchall()}
    con.execute(_USES_TABLE)
    # A semi-join on a small set of subjects lets DuckDB push the set into the Parquet scan as an IN
    # filter, so row groups without any of them are skipped; by default only up to 50 values are
    # pushed, too few for a lake with many revocations. Raised for these scans, then restored.
    setting = con.execute("SELECT value FROM duckdb_settings() "
                          "WHERE name = 'dynamic_or_filter_threshold'").fetchall()  # absent before DuckDB 1.2
    old_threshold = int(setting[0][0]) if setting else None
    if old_threshold is not None:
        con.execute(f"SET dynamic_or_filter_threshold = {max(old_threshold, _IN_FILTER_THRESHOLD)}")
    try:
        for judged, sql in _USE_SCANS.values():
            if kinds & set(judged):
                execute(con, sql, _use_params(con, judged, window.hi))
        if "binding" in kinds:
            _binding_uses(con, _use_params(con, ("binding",), window.hi))
    finally:
        if old_threshold is not None:
            con.execute(f"SET dynamic_or_filter_threshold = {old_threshold}")
    execute(con, _STATUS_SQL, {"grace": timedelta(seconds=cfg.revocation.grace_seconds), "latest": LATEST,
                                "vsince": vsince, "keep": max(REPORT_VIOLATIONS, cfg.detect.max_evidence)})
    return "zt_rev_status"


def revocation_status(con: duckdb.DuckDBPyConnection, config: Config, since: datetime | None = None,
                      until: datetime | None = None) -> pa.Table:
    """One row per revocation with its enforcement status and latency (``ztaudit report revocation``).

    Columns: :data:`STATUS_COLUMNS` (``violations`` lists up to :data:`REPORT_VIOLATIONS` event
    references of allowed uses after the grace period). Raises on SQL errors; an empty lake gives
    an empty table.
    """
    table = build(con, config, since, until)
    cols = ", ".join(c if c != "violations" else f"violations[1:{REPORT_VIOLATIONS}] AS violations"
                     for c in STATUS_COLUMNS)
    return con.sql(f"SELECT {cols} FROM {table}").to_arrow_table()

"""The ``revocation.stream_survived`` detector: a stream opened before a revocation, still open after its grace period.

A revocation stops *new* requests. The API server authenticates and authorizes a request once, when
it arrives, so a watch, exec, attach, port-forward, proxy or followed log opened before the
revocation keeps flowing until the client or the server ends it (real-stack.md §4: a
``kubectl get pods -w`` opened before a Keycloak disable kept receiving events for 70 s after the
session was deleted and new requests were refused). ``revocation.not_enforced`` judges requests by
``requestReceivedTimestamp`` and so never sees these; this detector does.

Called through :mod:`ztaudit.detectors.registry` (``ztaudit detect``) and, through
:func:`build_streams` and :func:`stream_exposure`, by ``ztaudit report revocation`` (the exposure of
each revocation). It reuses the revocation judgement of :mod:`ztaudit.detectors.revocation_status`:
the revocations (``zt_rev``) and the subjects' API requests (``zt_rev_use``, matched to each
revocation's subject exactly as ``revocation.not_enforced`` matches them: login = audit user, tier-B
session id, service account, legacy token, RBAC binding named in the reason), so
:func:`~ztaudit.detectors.revocation_status.build` must have run on the same connection first.

A **stream** is a request (cluster, audit_id, request_received_at) that the API server treats as
long-running (its ``LongRunningRequestCheck``: verbs ``watch`` and ``proxy``, subresources ``exec``,
``attach``, ``portforward``, ``proxy``, ``log``), narrowed as follows: a ``log`` only with
``follow`` set (a log without it ends once the existing log is sent; it never waits open), and a
``list``/``get`` whose query sets ``watch`` is a watch too. Query parameters are read as Go's
``url.ParseQuery`` and Kubernetes' boolean conversion read them: the first value of the (decoded)
key, true unless it is ``0`` or ``false`` (any case), so ``watch=1``, ``follow=`` and ``follow=True``
count. ``proxy`` is included because the API server gives it no request timeout either: a
``pods/proxy``, ``services/proxy`` or ``nodes/proxy`` connection (a WebSocket through it, the
kubelet's API behind ``nodes/proxy``) stays open and carries anything.

It **survived** a revocation of its subject when it was received before ``revoked_at``, was
established (the response code of its ``ResponseStarted`` stage, else of its end, is below 400 and
the decision is not ``forbid``: denied and failed streams never flowed) and

* its end (the ``ResponseComplete`` or ``Panic`` stage's ``stageTimestamp``) is later than
  ``revoked_at + revocation.grace_seconds``, or
* it has a ``ResponseStarted`` stage and no end, and its cluster's audit log goes on past
  ``revoked_at + grace`` (capped at ``--until``): it is still open at the end of the logs and the
  time it stayed open is a minimum (``still_open``).

Not judged: revocations whose allowed use afterwards is not judged (``unjudged``: an IdP grant
removal, one IdP SSO session), and a revocation restored before its grace period ended; the time
open after a revocation stops at its restoration. A stream that survived several revocations (an
Okta deactivate and a revocation-list line) is one finding, measured against the earliest.

Severity: **high** for ``exec``, ``attach``, ``portforward`` and ``proxy`` (an interactive channel
into a workload or node: commands, data and internal services remain in the revoked person's hands)
and for a watch of ``secrets`` (every change delivers secret values); **medium** for other watches
and followed logs (read-only, limited to the object kind or container watched).

Timing: audit times have microseconds; a stream received in the revocation's own instant or later is
``revocation.not_enforced``'s business (a use after the revocation), not a survivor.

Failure: SQL errors propagate; an empty lake or no revocation gives no finding.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

from ztaudit.core.config import Config
from ztaudit.core.window import EARLIEST, LATEST, utc_day
from ztaudit.detectors.base import NO_CLUSTER_REF, DetectContext, Finding, Severity, audit_ref_sql
from ztaudit.detectors.engine import Engine, Session, as_engine
from ztaudit.detectors.revocation_status import build
from ztaudit.detectors.sql import Table, run

#: Stream kinds (``stream`` in a finding's context) that hand the revoked person an interactive channel.
HIGH_KINDS: Final = ("exec", "attach", "portforward", "proxy")

#: Columns of ``zt_rev_stream``: one row per (revocation, stream that survived it).
STREAM_COLUMNS: Final = [
    "rev_id", "cluster", "audit_id", "ref", "opened_at", "started_at", "ended_at", "still_open", "seen_until",
    "latest_audit_at", "stream", "verb", "resource", "subresource", "namespace", "name", "request_uri", "actor",
    "response_code", "open_after_revocation", "stages",
]


def _param_true(key: str) -> str:
    """SQL: the query of ``q.request_uri`` sets parameter ``key`` (a literal from this module) to true.

    As Go's ``url.ParseQuery`` then Kubernetes' ``Convert_Slice_string_To_bool``: the pairs between
    ``&`` after the first ``?``, the key percent-decoded (an undecodable one never matches), the first
    pair with that key decides, and its value is false only when it is ``0`` or ``false`` (any case);
    present without ``=`` or empty is true. Linear in the URI (``string_split``, no backtracking).
    Written with ``substr``, not slices (``kv[:n]``, which sqlglot cannot read for Spark).
    """
    pairs = ("string_split(CASE WHEN strpos(q.request_uri, '?') > 0 "
             "THEN substr(q.request_uri, strpos(q.request_uri, '?') + 1) ELSE '' END, '&')")
    key_of = "try(url_decode(CASE WHEN strpos(kv, '=') > 0 THEN substr(kv, 1, strpos(kv, '=') - 1) ELSE kv END))"
    value_of = "CASE WHEN strpos(kv, '=') > 0 THEN substr(kv, strpos(kv, '=') + 1) ELSE '' END"
    first = f"[{value_of} FOR kv IN {pairs} IF {key_of} = '{key}'][1]"
    return f"coalesce(lower(coalesce(try(url_decode({first})), {first})) NOT IN ('0', 'false'), false)"


#: SQL: the part of a request's evidence reference before its audit id, for the ``cluster`` column.
_REF_PREFIX: Final = f"'k8s_audit:' || coalesce(cluster, '{NO_CLUSTER_REF}') || '/'"
#: The revoked subjects' allowed API requests received before their revocation (from the judgement's
#: ``zt_rev_use``): the only requests that can be streams surviving it.
_CANDIDATES_SQL: Final = Table("zt_rev_stream_cand", """
        SELECT u.rev_id, u.cluster, u.ref, u.ts AS received_at
    FROM zt_rev_use u JOIN zt_rev r USING (rev_id)
    WHERE u.plane = 'api' AND u.allowed AND u.ts < r.revoked_at AND NOT r.unjudged AND u.ref IS NOT NULL
""")

#: Those requests with their stages, one row per request: its end (ResponseComplete or Panic), its
#: ResponseStarted, whether it was established, what it was, and each stage once (first time logged:
#: a stage delivered twice is one; of two copies logged at the same time, e.g. a log read twice from two
#: files, the code and origin of the first in origin order, on both engines and at any thread count).
#: Read from ``k8s_audit`` bounded by the candidates' receive times; the reference is the
#: :func:`~ztaudit.detectors.base.audit_ref_sql` every detector uses (a lake without cluster names too:
#: the clusters are compared with IS NOT DISTINCT FROM).
_REQUESTS_SQL: Final = Table("zt_rev_stream_all", f"""
        WITH st AS (
        SELECT a.cluster, a.audit_id, a.request_received_at, a.stage, min(a.stage_at) AS stage_ts,
               arg_min(a.response_code, (a.stage_at, coalesce(a.origin, ''))) AS code,
               arg_min(a.origin, (a.stage_at, coalesce(a.origin, ''))) AS origin,
               bool_or(coalesce(a.decision, '') = 'forbid') AS forbid,
               any_value(a.verb) AS verb, any_value(a.resource) AS resource, any_value(a.subresource) AS subresource,
               any_value(a.namespace) AS namespace, any_value(a.name) AS name,
               any_value(a.request_uri) AS request_uri, any_value(a.actor) AS actor
        FROM k8s_audit a SEMI JOIN (
            -- the audit id out of the reference, so the join builds no string per audit row
            SELECT DISTINCT cluster, received_at, substr(ref, length({_REF_PREFIX}) + 1) AS audit_id
            FROM zt_rev_stream_cand
            WHERE substr(ref, 1, length({_REF_PREFIX})) = {_REF_PREFIX}) c
          ON a.cluster IS NOT DISTINCT FROM c.cluster AND a.request_received_at = c.received_at
         AND a.audit_id = c.audit_id
        WHERE a.request_received_at >= $rlo AND a.request_received_at <= $rhi
          AND CAST(a.dt AS VARCHAR) >= $rlo_day AND CAST(a.dt AS VARCHAR) <= $rhi_day
        GROUP BY a.cluster, a.audit_id, a.request_received_at, a.stage
    )
    SELECT cluster, audit_id, request_received_at,
           {audit_ref_sql("cluster", "audit_id")} AS ref,
           max(stage_ts) FILTER (WHERE stage IN ('ResponseComplete', 'Panic')) AS ended_at,
           min(stage_ts) FILTER (WHERE stage = 'ResponseStarted') AS started_at,
           coalesce(min(code) FILTER (WHERE stage = 'ResponseStarted'),
                    arg_max(code, stage_ts) FILTER (WHERE stage IN ('ResponseComplete', 'Panic'))) AS response_code,
           bool_or(forbid) AS forbid,
           any_value(verb) AS verb, any_value(resource) AS resource, any_value(subresource) AS subresource,
           any_value(namespace) AS namespace, any_value(name) AS name, any_value(request_uri) AS request_uri,
           any_value(actor) AS actor,
           list({{'stage': stage, 'at': stage_ts, 'response_code': code, 'origin': origin}}
                ORDER BY stage_ts, stage) AS stages
    FROM st GROUP BY cluster, audit_id, request_received_at
""")

#: The established streams among them, with their kind (see the module docstring).
_KINDS_SQL: Final = Table("zt_rev_stream_req", f"""
        SELECT * FROM (
        SELECT q.*, CASE
            WHEN q.subresource IN ('exec', 'attach', 'portforward') THEN q.subresource
            WHEN q.subresource = 'proxy' OR q.verb = 'proxy' THEN 'proxy'
            WHEN q.subresource = 'log' THEN CASE WHEN {_param_true('follow')} THEN 'logs' END
            WHEN q.verb = 'watch' OR (q.verb IN ('list', 'get') AND {_param_true('watch')}) THEN 'watch'
          END AS stream
        FROM zt_rev_stream_all q
        WHERE q.response_code < 400 AND NOT q.forbid AND (q.ended_at IS NOT NULL OR q.started_at IS NOT NULL))
    WHERE stream IS NOT NULL
""")

#: Each cluster's latest audit time (receive or stage), for the streams with no end: how long the
#: log shows them open. Only clusters with such a stream, only from the first of them on.
_LATEST_SQL: Final = Table("zt_rev_stream_latest", """
        SELECT cluster, least(greatest(max(request_received_at), max(stage_at)), $until) AS latest
    FROM k8s_audit
    WHERE coalesce(cluster, chr(0)) IN (SELECT coalesce(cluster, chr(0)) FROM zt_rev_stream_req WHERE ended_at IS NULL)
      AND request_received_at >= $olo AND request_received_at < $until
      AND CAST(dt AS VARCHAR) >= $olo_day AND CAST(dt AS VARCHAR) <= $hi_day
    GROUP BY cluster
""")

#: One row per (revocation, stream) that survived it: open later than revoked_at + grace, before a
#: restoration, and (detector windows) still open at or after ``$vsince``.
_STREAMS_SQL: Final = Table("zt_rev_stream", """
        WITH s AS (
        SELECT c.rev_id, q.*, l.latest AS latest_audit_at, q.ended_at IS NULL AS still_open,
               coalesce(q.ended_at, l.latest) AS seen_until, r.revoked_at, r.restored_at
        FROM zt_rev_stream_cand c JOIN zt_rev r USING (rev_id)
        JOIN zt_rev_stream_req q
          ON q.cluster IS NOT DISTINCT FROM c.cluster AND q.request_received_at = c.received_at AND q.ref = c.ref
        LEFT JOIN zt_rev_stream_latest l ON l.cluster IS NOT DISTINCT FROM q.cluster AND q.ended_at IS NULL
    )
    SELECT rev_id, cluster, audit_id, ref, request_received_at AS opened_at, started_at, ended_at, still_open,
           seen_until, latest_audit_at, stream, verb, resource, subresource, namespace, name, request_uri, actor,
           response_code,
           (epoch_us(least(seen_until, coalesce(restored_at, seen_until))) - epoch_us(revoked_at)) / 1e6
             AS open_after_revocation,
           stages
    FROM s
    WHERE seen_until > revoked_at + $grace AND seen_until >= $vsince
      AND (restored_at IS NULL OR restored_at > revoked_at + $grace)
    ORDER BY rev_id, opened_at, cluster, audit_id
""")


def build_streams(engine: Engine, cfg: Config, until: datetime | None,
                  vsince: datetime | None = None) -> str:
    """Build temp table ``zt_rev_stream`` (:data:`STREAM_COLUMNS`) on ``engine``; return its name.

    Needs ``zt_rev`` and ``zt_rev_use`` of :func:`~ztaudit.detectors.revocation_status.build` run just
    before on ``engine`` with the same ``until``. ``vsince``: only streams still open at or after it
    (the detector's window start; None for all). Called by :class:`StreamSurvived` and
    :func:`stream_exposure`; raises on SQL errors. Every statement reads bounded time ranges.
    """
    run(engine, _CANDIDATES_SQL, {})
    (row,) = engine.rows("SELECT min(received_at), max(received_at) FROM zt_rev_stream_cand")
    hi = until or LATEST
    if row[0] is None:
        engine.create_table("zt_rev_stream", f"SELECT {', '.join(STREAM_COLUMNS)} FROM ("
            "SELECT NULL::BIGINT AS rev_id, NULL::VARCHAR AS cluster, NULL::VARCHAR AS audit_id, "
            "NULL::VARCHAR AS ref, NULL::TIMESTAMPTZ AS opened_at, NULL::TIMESTAMPTZ AS started_at, "
            "NULL::TIMESTAMPTZ AS ended_at, NULL::BOOLEAN AS still_open, NULL::TIMESTAMPTZ AS seen_until, "
            "NULL::TIMESTAMPTZ AS latest_audit_at, NULL::VARCHAR AS stream, NULL::VARCHAR AS verb, "
            "NULL::VARCHAR AS resource, NULL::VARCHAR AS subresource, NULL::VARCHAR AS namespace, "
            "NULL::VARCHAR AS name, NULL::VARCHAR AS request_uri, NULL::VARCHAR AS actor, "
            "NULL::INTEGER AS response_code, NULL::DOUBLE AS open_after_revocation, "
            "[]::STRUCT(stage VARCHAR, \"at\" TIMESTAMPTZ, response_code INTEGER, origin VARCHAR)[] AS stages"
            ") WHERE false")
        return "zt_rev_stream"
    rlo, rhi = row[0], row[1]
    run(engine, _REQUESTS_SQL, {"rlo": rlo, "rhi": rhi, "rlo_day": utc_day(rlo), "rhi_day": utc_day(rhi)})
    run(engine, _KINDS_SQL, {})
    (open_row,) = engine.rows("SELECT min(request_received_at) FROM zt_rev_stream_req WHERE ended_at IS NULL")
    olo = open_row[0] if open_row[0] is not None else hi
    run(engine, _LATEST_SQL, {"until": hi, "olo": olo, "olo_day": utc_day(olo), "hi_day": utc_day(hi)})
    run(engine, _STREAMS_SQL, {"grace": timedelta(seconds=cfg.revocation.grace_seconds),
                               "vsince": vsince or EARLIEST})
    for t in ("zt_rev_stream_cand", "zt_rev_stream_all", "zt_rev_stream_req", "zt_rev_stream_latest"):
        engine.drop(t)
    return "zt_rev_stream"


#: Per revocation (keyed as the status rows are: evidence, kind, subject, revoked_at): how many streams
#: outlived it, how many of them are still open, and the longest (seconds open after the revocation).
_EXPOSURE_SQL: Final = """
    SELECT r.evidence, r.kind, r.subject, r.revoked_at, count(*) AS streams,
           count(*) FILTER (WHERE s.still_open) AS still_open,
           max(s.open_after_revocation) AS longest_seconds,
           arg_max(s.stream, (s.open_after_revocation, s.ref)) AS longest_stream,
           arg_max(s.ref, (s.open_after_revocation, s.ref)) AS longest_ref,
           arg_max(s.still_open, (s.open_after_revocation, s.ref)) AS longest_still_open,
           list(DISTINCT s.stream ORDER BY s.stream) AS kinds,
           list(s.ref ORDER BY s.open_after_revocation DESC, s.ref)[1:$keep] AS refs
    FROM zt_rev_stream s JOIN zt_rev r USING (rev_id)
    GROUP BY r.evidence, r.kind, r.subject, r.revoked_at
"""


def stream_exposure(con: Session, cfg: Config, until: datetime | None,
                    keep: int = 20) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Streams that outlived each revocation judged on ``con``: (evidence, kind, subject, revoked_at) ->
    ``streams``, ``still_open``, ``longest_seconds``, ``longest_stream``, ``longest_ref``,
    ``longest_still_open``, ``kinds``, ``refs`` (up to ``keep``, longest first).

    Called by ``ztaudit report revocation`` right after
    :func:`~ztaudit.detectors.revocation_status.revocation_status` on the same connection and window;
    raises on SQL errors.
    """
    engine = as_engine(con)
    build_streams(engine, cfg, until)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in engine.records(_EXPOSURE_SQL, {"keep": keep}):
        out[(r.pop("evidence"), r.pop("kind"), r.pop("subject"), r.pop("revoked_at"))] = r
    return out


#: One row per stream: the earliest revocation it survived (``QUALIFY``), with every revocation's event.
_FINDINGS_SQL: Final = """
    SELECT s.*, r.kind, r.subject, coalesce(r.login, r.subject) AS identity, r.system, r.event_type,
           r.revoked_at, r.revoked_by, r.restored_at, r.evidence AS revocation,
           list(r.evidence) OVER w AS revocations
    FROM zt_rev_stream s JOIN zt_rev r USING (rev_id)
    WINDOW w AS (PARTITION BY s.cluster, s.audit_id, s.opened_at ORDER BY r.revoked_at, r.rev_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    QUALIFY row_number() OVER (PARTITION BY s.cluster, s.audit_id, s.opened_at
                               ORDER BY r.revoked_at, r.rev_id) = 1
    ORDER BY s.opened_at, s.cluster, s.audit_id
"""

_WHAT: Final = {"watch": "watch", "exec": "exec session", "attach": "attach session",
                "portforward": "port-forward", "proxy": "proxy connection", "logs": "followed log stream"}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _target(r: dict[str, Any]) -> str:
    """What the stream reads or drives, e.g. ``pods/web-1/exec in web``."""
    obj = "/".join(x for x in (r["resource"], r["name"], r["subresource"]) if x) or (r["request_uri"] or "?")
    return f"{obj} in {r['namespace']}" if r["namespace"] else obj


def severity(stream: str, resource: str | None) -> Severity:
    """High for an interactive channel (:data:`HIGH_KINDS`) or a watch of secrets, else medium."""
    if stream in HIGH_KINDS or (stream == "watch" and resource == "secrets"):
        return Severity.HIGH
    return Severity.MEDIUM


class StreamSurvived:
    """``revocation.stream_survived``: a stream opened before a revocation and still open after its grace period."""

    id: ClassVar[str] = "revocation.stream_survived"
    description: ClassVar[str] = ("a watch, exec, attach, port-forward or log stream opened before a revocation "
                                  "and still open after it plus the grace period")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """One finding per stream that outlived a revocation of its subject by more than the grace period.

        Judges the revocations of ``revocation.not_enforced``'s window (``revocation.lookback_days``
        before ``since`` too) and reports the streams still open at or after ``since``. Called by
        detect; raises on SQL errors.
        """
        cfg = ctx.config
        build(ctx.engine, cfg, ctx.since, ctx.until, lookback=True)
        build_streams(ctx.engine, cfg, ctx.until, ctx.since)
        grace = cfg.revocation.grace_seconds
        out: list[Finding] = []
        for r in ctx.engine.records(_FINDINGS_SQL):
            secs = float(r["open_after_revocation"])
            who = r["subject"] if r["identity"] == r["subject"] else f"{r['subject']} ({r['identity']})"
            if r["still_open"]:
                end = (f"and is still open at the end of the logs ({_iso(r['latest_audit_at'])}, no ResponseComplete): "
                       f"open at least {_dur(secs)} after the revocation")
            else:
                end = f"and stayed open {_dur(secs)} after the revocation, until {_iso(r['ended_at'])}"
            summary = (f"{r['actor']}'s {_WHAT[r['stream']]} ({_target(r)}) opened at {_iso(r['opened_at'])}, "
                       f"before {r['kind']} {who} was revoked at {_iso(r['revoked_at'])} ({r['event_type']}, "
                       f"{r['system']}), {end}, past the {grace} s grace period. The API server checks a request "
                       "only when it arrives: end the stream (the client's connection, the pod's session), and "
                       "bound stream lifetimes (proxy connection limits, kubelet streaming idle timeout).")
            stages = [{"stage": s["stage"], "at": s["at"].astimezone(UTC).isoformat() if s["at"] else None,
                       "response_code": s["response_code"], "origin": s["origin"]} for s in r["stages"]]
            refs = list(dict.fromkeys([r["ref"], *r["revocations"]]))
            out.append(Finding(
                detector=self.id,
                key=(r["cluster"], r["audit_id"], r["opened_at"].astimezone(UTC).isoformat()),
                severity=severity(r["stream"], r["resource"]),
                actor=r["actor"],
                summary=summary,
                first_seen=r["opened_at"],
                last_seen=r["seen_until"],
                evidence=tuple(refs[: cfg.detect.max_evidence]),
                credential_id=r["subject"] if r["kind"] == "legacy_token" else None,
                cluster=r["cluster"],
                namespace=r["namespace"],
                score=secs,
                context={
                    "stream": r["stream"], "verb": r["verb"], "resource": r["resource"],
                    "subresource": r["subresource"], "name": r["name"], "request_uri": r["request_uri"],
                    "response_code": r["response_code"], "opened_at": r["opened_at"], "started_at": r["started_at"],
                    "ended_at": r["ended_at"], "still_open": bool(r["still_open"]),
                    "latest_audit_at": r["latest_audit_at"], "open_after_revocation": round(secs, 6),
                    "open_after_revocation_is_minimum": bool(r["still_open"]), "grace_seconds": grace,
                    "kind": r["kind"], "subject": r["subject"], "revoked_at": r["revoked_at"],
                    "revoked_by": r["revoked_by"], "event_type": r["event_type"], "system": r["system"],
                    "restored_at": r["restored_at"], "revocations": list(dict.fromkeys(r["revocations"])),
                    "stages": stages,
                },
            ))
        return out


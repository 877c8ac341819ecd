"""The four ``credential.*`` detectors: ``stale``, ``legacy_token``, ``shared`` and ``off_cluster``.

Each reads the requests with their credential key (:data:`~ztaudit.detectors.credentials.USES_SQL`;
what a key is, and why fallback keys ``USER=`` / ``TOKEN?=`` are judged less, is described in
:mod:`ztaudit.detectors.credentials`) and places source IPs with
:func:`~ztaudit.detectors.credentials.in_cluster`. Called through :mod:`ztaudit.detectors.registry`
(``ztaudit detect`` and the streaming hook).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import pyarrow as pa

from ztaudit.core.columns import TS
from ztaudit.detectors.base import DetectContext, Finding, Severity, audit_ref_sql
from ztaudit.detectors.credentials import (
    HOLDER_KIND_SQL,
    USES_SQL,
    in_cluster,
    learn_networks,
    placement,
    register_ip_table,
    window_bounds,
)

#: A finding's references: the first :data:`EVIDENCE` uses in (time, reference) order, so the same
#: data always gives the same evidence (``findings_store`` compares it to see what changed).
EVIDENCE: Final = 20
#: SQL for a use's evidence reference, ``k8s_audit:<cluster>/<audit id>`` (``None`` for a lake without
#: cluster names: a NULL cluster must not turn the whole reference NULL and lose the audit id).
_REF: Final = audit_ref_sql("cluster", "audit_id")


def _cluster_name(cluster: str | None) -> str:
    """The cluster as a summary names it (as :mod:`ztaudit.detectors.impersonation` does: plain audit
    files ingested without ``--cluster`` have none)."""
    return cluster if cluster else "(unnamed cluster; ingest with --cluster)"


def _dt(v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    return None


# --- credential.stale ------------------------------------------------------------------------

_STALE_SQL = """
WITH u AS (SELECT * FROM {uses}),
keys AS (SELECT DISTINCT credential_key FROM u
         WHERE ts >= $lo AND credential_key IS NOT NULL AND NOT starts_with(credential_key, 'USER=')
           AND NOT starts_with(credential_key, 'TOKEN?=')),
issued AS (  -- the base table is enough here: every stage of a TokenRequest has the same time
    SELECT issued_credential_id AS credential_key, min(request_received_at) AS issued_at,
           arg_min(user_name, request_received_at) AS issued_by FROM k8s_audit
    WHERE issued_credential_id IS NOT NULL AND request_received_at < $hi GROUP BY 1
)
SELECT u.credential_key,
       mode(kind ORDER BY kind) AS kind,
       mode(holder ORDER BY holder) AS holder,
       mode(cluster ORDER BY cluster) AS cluster,
       min(ts) AS first_seen, max(ts) AS last_seen, any_value(i.issued_at) AS issued_at,
       any_value(i.issued_by) AS issued_by
FROM u JOIN keys USING (credential_key) LEFT JOIN issued i USING (credential_key)
GROUP BY u.credential_key
"""

# Uses after an origin time + max age, per key (the first such use is the finding's first_seen).
_PAST_AGE_SQL = """
WITH u AS (SELECT * FROM {uses}),
lim AS (SELECT * FROM {lim})
SELECT u.credential_key, min(ts) AS first_past, max(ts) AS last_past, count(*) AS n,
       list(DISTINCT source_ip ORDER BY source_ip) FILTER (WHERE source_ip IS NOT NULL)[1:10] AS ips,
       list({ref} ORDER BY ts, {ref})[1:20] AS ev
FROM u JOIN lim USING (credential_key)
WHERE ts >= lim.limit_at
GROUP BY u.credential_key
HAVING max(ts) >= $lo
"""

# Resumed use after dormancy: hourly buckets per key and cluster, gap to the previous bucket of the
# same key in the same cluster. Per cluster because fallback keys (TOKEN?=<service account>) and
# SECRET=<ns>/<name> name a holder, not a token: the same service account name in two clusters is
# two credentials, and one used daily in one cluster says nothing of the other. The evidence is the
# last use before the gap and the first use after it.
_DORMANT_SQL = """
WITH u AS (SELECT * FROM {uses}),
b AS (
    SELECT credential_key, cluster, min(holder) AS holder, min(ts) AS t0, max(ts) AS t1,
           arg_min({ref}, (ts, audit_id)) AS first_ref,
           arg_max({ref}, (ts, audit_id)) AS last_ref
    FROM u WHERE credential_key IS NOT NULL AND NOT starts_with(credential_key, 'USER=')
    GROUP BY credential_key, cluster, floor(epoch(ts) / 3600)
),
g AS (SELECT *, lag(t1) OVER w AS prev, lag(last_ref) OVER w AS prev_ref FROM b
      WINDOW w AS (PARTITION BY credential_key, cluster ORDER BY t0))
SELECT credential_key, holder, cluster, prev, t0, [prev_ref, first_ref] AS ev FROM g
WHERE prev IS NOT NULL AND t0 >= $lo AND epoch(t0) - epoch(prev) >= $dormant_s
"""

_ANNOT_SQL = """
WITH u AS (SELECT * FROM {uses} WHERE stale_note IS NOT NULL)
SELECT coalesce(credential_key, 'USER=' || holder) AS key, min(holder) AS holder,
       min(cluster) AS cluster, min(ts) AS t0, max(ts) AS t1,
       count(*) FILTER (WHERE ts >= $lo) AS n, arg_max(stale_note, ts) AS note,
       list({ref} ORDER BY ts DESC, {ref})[1:20] AS ev
FROM u GROUP BY key HAVING max(ts) >= $lo
"""


def _ev_list(v: Any) -> tuple[str, ...]:
    """Evidence references (:data:`_REF` strings, already in (time, reference) order), at most
    :data:`EVIDENCE`."""
    return tuple(str(x) for x in (v or [])[:EVIDENCE])


def _requested_by_a_person(kind: str, issued_by: str | None) -> bool:
    """Whether the token is one a person asked for (``kubectl create token --duration 720h``: a
    TokenRequest whose user is no ``system:`` identity): it lives as long as they asked, which the audit
    log does not keep (``spec.expirationSeconds`` is in the request body), not the hour the kubelet
    rotates a pod's token on. Its use past the maximum age is still a finding (a long-lived bearer token
    is how a holder of ``serviceaccounts/token`` keeps access), with advice about the token, not a client."""
    return kind == "jti" and issued_by is not None and not issued_by.startswith("system:")


class Stale:
    """``credential.stale``: used past its kind's maximum age, after dormancy, or flagged stale by
    the API server (``authentication.k8s.io/stale-token``, docs/kubernetes-audit.md §5.1).

    The age counts from the token's origin: the earlier of its TokenRequest (``issued_at``, §4) and
    its first use, because API servers' clocks differ and a TokenRequest logged by one server can
    carry a later time than the first use logged by another (a token cannot be used before it is
    issued, so the earlier time is the nearer to the truth). Fallback keys: maximum age never,
    dormancy for ``TOKEN?=`` but not ``USER=``, the annotation always
    (:mod:`ztaudit.detectors.credentials` says why).
    """

    id: ClassVar[str] = "credential.stale"
    description: ClassVar[str] = ("a credential used past its maximum age, after long dormancy, or with the "
                                  "API server's stale-token annotation")

    def run(self, ctx: DetectContext) -> list[Finding]:
        lo, hi = window_bounds(ctx.since, ctx.until)
        name = f"_cred_uses_{uuid.uuid4().hex[:12]}"
        # One pass over k8s_requests (the stage de-duplication is the expensive part); the four
        # checks below read this temp table.
        ctx.engine.create_table(name, f"SELECT * FROM ({USES_SQL}) WHERE ts < $hi", {"hi": hi})
        try:
            return self._run(ctx, name, lo, hi)
        finally:
            ctx.engine.drop(name)

    def _run(self, ctx: DetectContext, uses: str, lo: datetime, hi: datetime) -> list[Finding]:
        cfg = ctx.config.credentials
        out: list[Finding] = []
        # 1. Past maximum age: age from the TokenRequest that issued it (§4), else first seen.
        info = ctx.engine.rows(_STALE_SQL.format(uses=uses), {"lo": lo, "hi": hi})
        limits = []
        meta: dict[str, tuple[Any, ...]] = {}
        for key, kind, holder, cluster, first_seen, _last, issued_at, issued_by in info:
            max_h = cfg.max_age_hours.get(kind)
            if max_h is None:
                continue
            # The earlier of issue and first use (see the class docstring: clock skew between API
            # servers can log the TokenRequest after the token's first use).
            issued, first = _dt(issued_at), _dt(first_seen)
            times = [x for x in (issued, first) if x is not None]
            if not times:
                continue
            origin = min(times)
            limits.append({"credential_key": key, "limit_at": origin + timedelta(hours=float(max_h))})
            meta[key] = (kind, holder, cluster, origin, issued is not None and issued == origin, max_h, issued,
                         issued_by)
        if limits:
            name = f"_cred_lim_{uuid.uuid4().hex[:12]}"
            ctx.engine.register_arrow(name, pa.Table.from_pylist(
                limits, schema=pa.schema([("credential_key", pa.string()), ("limit_at", TS)])))
            try:
                past = ctx.engine.rows(_PAST_AGE_SQL.format(lim=name, uses=uses, ref=_REF), {"lo": lo})
            finally:
                ctx.engine.drop(name)
            for key, first_past, last_past, n, ips, ev in past:
                kind, holder, cluster, origin, from_issue, max_h, issued, issued_by = meta[key]
                age_h = (last_past - origin).total_seconds() / 3600
                basis = "issued" if from_issue else "first seen"
                advice = ("Find the client that keeps an old token and make it reload or rotate it."
                          if not _requested_by_a_person(kind, issued_by) else
                          f"{issued_by} requested it (a TokenRequest: it lives as long as they asked, which the "
                          "audit log does not keep): a long-lived bearer token outside the kubelet's hourly "
                          "rotation; ask why it must live this long, and prefer a short --duration.")
                out.append(Finding(
                    detector=self.id, key=(key, "max_age"), severity=Severity.MEDIUM, actor=holder,
                    credential_id=key, cluster=cluster, first_seen=first_past, last_seen=last_past,
                    summary=(f"{kind} credential {key} of {holder} used {n} times up to {age_h:.0f} h after it was "
                             f"{basis} ({origin:%Y-%m-%d %H:%M} UTC); the maximum for {kind} is {max_h:g} h. "
                             + advice),
                    evidence=_ev_list(ev), score=age_h / float(max_h),
                    context={"reason": "max_age", "kind": kind, "age_hours": age_h, "max_age_hours": max_h,
                             "age_from": basis, "origin": origin, "issued_at": issued, "issued_by": issued_by,
                             "uses_past_max_age": n,
                             "source_ips": list(ips or [])},
                ))
        # 2. Dormant then used again.
        dormant_s = float(cfg.dormancy_days) * 86400
        for key, holder, cluster, prev, t0, ev in ctx.engine.rows(
                _DORMANT_SQL.format(uses=uses, ref=_REF), {"lo": lo, "dormant_s": dormant_s}):
            days = (t0 - prev).total_seconds() / 86400
            out.append(Finding(
                detector=self.id, key=(key, cluster or "", "dormant", t0.isoformat()), severity=Severity.MEDIUM,
                actor=holder, credential_id=key, cluster=cluster, first_seen=t0, last_seen=t0,
                evidence=_ev_list([x for x in ev if x is not None]),
                summary=(f"credential {key} of {holder} used again on {t0:%Y-%m-%d %H:%M} UTC after {days:.0f} days "
                         f"unused (dormancy threshold {cfg.dormancy_days:g} days). Confirm its owner still needs it."),
                score=days / float(cfg.dormancy_days),
                context={"reason": "dormant", "previous_use": prev, "resumed": t0, "dormant_days": days},
            ))
        # 3. The API server's own stale-token annotation (undercounts: only on cache misses).
        # One finding per credential (first_seen = its first annotated use, so re-runs over later
        # windows replace it instead of adding one per day).
        for key, holder, cluster, t0, t1, n, note, ev in ctx.engine.rows(
                _ANNOT_SQL.format(uses=uses, ref=_REF), {"lo": lo}):
            out.append(Finding(
                detector=self.id, key=(key, "stale_token_annotation"),
                severity=Severity.MEDIUM, actor=holder, credential_id=key, cluster=cluster,
                first_seen=t0, last_seen=t1, evidence=_ev_list(ev), score=float(n),
                summary=(f"the API server marked {n} requests of {holder} as using a stale token ({note}). "
                         "The client read its projected token once and never reloaded it; upgrade or fix it."),
                context={"reason": "stale_token_annotation", "annotation": note, "requests": n},
            ))
        return out


# --- credential.legacy_token -----------------------------------------------------------------

_LEGACY_SQL = f"""
WITH u AS ({USES_SQL} WHERE request_received_at >= $lo AND request_received_at < $hi AND
           (coalesce(is_legacy_token, false) OR credential_kind = 'legacy_secret'))
SELECT credential_key, min(holder) AS holder, mode(cluster ORDER BY cluster) AS cluster,
       to_timestamp(floor(epoch(ts) / 86400) * 86400) AS day, min(ts) AS t0, max(ts) AS t1, count(*) AS n,
       count(*) FILTER (WHERE invalidated_note IS NOT NULL) AS invalidated,
       -- a failed authentication logs no user (§5.4); the annotation names <secret>/<namespace> (§5.2)
       min(split_part(invalidated_note, '/', 2)) FILTER (WHERE invalidated_note IS NOT NULL) AS invalidated_ns,
       list(DISTINCT source_ip ORDER BY source_ip) FILTER (WHERE source_ip IS NOT NULL)[1:10] AS ips,
       list(DISTINCT user_agent ORDER BY user_agent) FILTER (WHERE user_agent IS NOT NULL)[1:10] AS uas,
       list({_REF} ORDER BY ts, {_REF})[1:20] AS ev
FROM u GROUP BY credential_key, day
"""


class LegacyToken:
    """``credential.legacy_token``: a legacy secret-based SA token in use (docs/kubernetes-audit.md §5.2).

    One finding per credential **per UTC day**: a legacy token never expires, so "still in use
    today" is the fact to act on (the API server itself tracks it at day granularity with the
    ``kubernetes.io/legacy-token-last-used`` label); a per-day key keeps ``finding_id`` stable
    across batch and streaming runs of the same day, and each day's finding lists that day's
    clients and places.
    """

    id: ClassVar[str] = "credential.legacy_token"
    description: ClassVar[str] = "a legacy secret-based service-account token in use (one finding per token per day)"

    def run(self, ctx: DetectContext) -> list[Finding]:
        lo, hi = window_bounds(ctx.since, ctx.until)
        out = []
        for key, holder, cluster, day, t0, t1, n, invalidated, inv_ns, ips, uas, ev in ctx.engine.rows(
                _LEGACY_SQL, {"lo": lo, "hi": hi}):
            outside = [ip for ip in (ips or []) if in_cluster(ctx.config, cluster, ip) is False]
            sev = Severity.HIGH if invalidated or outside else Severity.MEDIUM
            whose = holder
            if holder is None and inv_ns:
                # Only failed authentications (no user, §5.4): the holder is a service account of the
                # Secret's namespace, named by the group every one of them is in (§2).
                holder = f"system:serviceaccounts:{inv_ns}"
                whose = f"{holder} (a service account of the Secret's namespace: a rejected request logs no user)"
            on = f"{day:%Y-%m-%d}"
            if invalidated and invalidated == n:
                did = (f"was presented {n} times on {on} after it was invalidated, every attempt rejected "
                       "(401)")
            elif invalidated:
                did = (f"made {n - invalidated} requests on {on}, and {invalidated} rejected "
                       f"attempt{'s' if invalidated > 1 else ''} after the token was invalidated")
            else:
                did = f"made {n} requests on {on}"
            where = f" including from outside the cluster ({', '.join(outside)})" if outside else ""
            out.append(Finding(
                detector=self.id, key=(key, day.date().isoformat()), severity=sev, actor=holder,
                credential_id=key, cluster=cluster, first_seen=t0, last_seen=t1, evidence=_ev_list(ev),
                score=float(n),
                summary=(f"legacy secret-based token {key} of {whose} {did}{where}. Move the client to a bound "
                         "token (TokenRequest / projected volume) and delete the Secret."),
                context={"requests": n, "invalidated_requests": invalidated, "rejected_attempts": invalidated,
                         "accepted_requests": n - invalidated, "source_ips": list(ips or []),
                         "user_agents": list(uas or []), "outside_ips": outside},
            ))
        return out


# --- credential.shared -----------------------------------------------------------------------

_SHARED_SQL = """
WITH u AS ({uses} WHERE request_received_at >= $lo AND request_received_at < $hi
           AND credential_id IS NOT NULL AND credential_id <> ''),
p AS (  -- the place holding the credential: the peer (the X-Forwarded-For entries are its clients)
    SELECT u.*, source_ip AS place, coalesce(ip.inside, false) AS inside
    FROM u LEFT JOIN {ips} ip ON ip.cluster IS NOT DISTINCT FROM u.cluster AND ip.ip = u.source_ip
),
b AS (
    SELECT credential_key, place, floor(epoch(ts) / $w) AS bucket, min(ts) AS t0, max(ts) AS t1,
           bool_or(inside) AS hop_inside, list_distinct(flatten(list(source_ips))) AS chain,
           count(*) AS n, min(holder) AS holder, min(kind) AS kind, min(cluster) AS cluster,
           bool_or(pod_name IS NOT NULL) AS pod_bound,
           list(DISTINCT user_agent) FILTER (WHERE user_agent IS NOT NULL) AS uas,
           -- the bucket's first uses, as (time, reference) so the finding can take the first overall
           list({{'ts': ts, 'ref': {ref}}} ORDER BY ts, {ref})[1:5] AS ev
    FROM p WHERE place IS NOT NULL GROUP BY credential_key, place, bucket
),
multi AS (  -- only credentials seen from more than one place can be shared
    SELECT * FROM b WHERE credential_key IN (
        SELECT credential_key FROM b GROUP BY credential_key HAVING count(DISTINCT place) > 1)
),
shifted AS (SELECT *, bucket AS jb FROM multi UNION ALL SELECT *, bucket + 1 AS jb FROM multi),
pairs AS (  -- equi-join on (key, bucket): a bucket meets its own and the previous bucket
    SELECT a.credential_key, a.holder, a.kind, a.cluster, a.pod_bound OR b.pod_bound AS pod_bound,
           a.place AS place_a, b.place AS place_b, least(a.t0, b.t0) AS t0, greatest(a.t1, b.t1) AS t1,
           a.uas AS uas_a, b.uas AS uas_b, list_concat(a.ev, b.ev) AS ev
    FROM multi a JOIN shifted b ON a.credential_key = b.credential_key AND b.jb = a.bucket AND a.place <> b.place
    WHERE greatest(epoch(a.t0) - epoch(b.t1), epoch(b.t0) - epoch(a.t1), 0) <= $w
      -- explained by a proxy hop: an in-cluster peer forwarding for the other place, and never for a
      -- pod-bound token (the class docstring: X-Forwarded-For is the client's to set, audit/v1 types.go)
      AND (a.pod_bound OR b.pod_bound OR NOT (
           (b.hop_inside AND list_contains(b.chain, a.place)) OR (a.hop_inside AND list_contains(a.chain, b.place))))
)
SELECT credential_key, min(holder), min(kind), min(cluster), bool_or(pod_bound),
       to_timestamp(floor(epoch(t0) / 86400) * 86400) AS day, min(t0), max(t1),
       -- sorted sets: list() keeps the order rows arrive in, which no engine promises
       list_sort(list_distinct(list(place_a) || list(place_b))) AS places,
       list_sort(list_distinct(flatten(list(uas_a) || list(uas_b)))) AS uas,
       [x.ref FOR x IN list_sort(list_distinct(flatten(list(ev))))][1:$evidence] AS ev
FROM pairs GROUP BY credential_key, day
"""


class Shared:
    """``credential.shared``: one credential used from several places within ``shared_window_seconds``.

    Place = the peer IP (the last ``sourceIPs`` entry): the credential is where the connection
    comes from; X-Forwarded-For entries are the clients of a proxy that holds its own credential
    (Pomerium impersonating people). "All but the last IP can be arbitrarily set by the client"
    (``staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go``, ``Event.SourceIPs``), so a
    forwarding chain is a claim, and it is trusted only where a real proxy could make it:

    * Two places are *explained by a proxy hop* when one peer is inside the cluster's networks and
      forwards for the other (the other's IP is in its ``sourceIPs``), and the credential is not
      pod-bound: an in-cluster proxy that re-sends the client's own bearer token (a dashboard
      serving a person's token) is a real deployment; a chain from an outside peer is not trusted
      (docs/detection-background.md "What NONE of them has": sourceIPs is client-controlled).
    * A pod-bound token (pod-name extra, §3) is never excused by a hop: its pod uses it, and the
      proxies in front of the API server authenticate with their own credential (impersonating, §6)
      while egress gateways that SNAT add no X-Forwarded-For. Any pod can set X-Forwarded-For to
      the victim pod's address, so trusting the chain would let a copied token hide in the
      cluster.

    A pod-bound token belongs to one pod, so two places are enough; for other credentials (x509,
    unbound JTI, legacy secrets mounted by replicas) at least one place must be outside the
    cluster's networks. Not covered: an in-cluster thief of a credential that is NOT pod-bound
    (a person's token) who sets X-Forwarded-For to the owner's address is taken for a proxy hop.
    Fallback keys (USER=, TOKEN?=) are not judged: they merge several credentials of one holder.
    """

    id: ClassVar[str] = "credential.shared"
    description: ClassVar[str] = "one credential used concurrently from several places or clients"

    def run(self, ctx: DetectContext) -> list[Finding]:
        w = int(ctx.config.credentials.shared_window_seconds)
        lo, hi = window_bounds(ctx.since, ctx.until)
        pairs = ctx.engine.rows(
            """SELECT DISTINCT cluster, source_ip FROM k8s_requests
               WHERE request_received_at >= $lo AND request_received_at < $hi AND credential_id IS NOT NULL""",
            {"lo": lo, "hi": hi})
        name = register_ip_table(ctx.engine, ctx.config, pairs)
        try:
            rows = ctx.engine.rows(_SHARED_SQL.format(uses=USES_SQL, ips=name, ref=_REF),
                                   {"lo": lo, "hi": hi, "w": w, "evidence": EVIDENCE})
        finally:
            ctx.engine.drop(name)
        out = []
        for key, holder, kind, cluster, pod_bound, day, t0, t1, places, uas, ev in rows:
            places = sorted(set(places or []))
            outside = [p for p in places if in_cluster(ctx.config, cluster, p) is False]
            if not pod_bound and not outside:
                continue  # e.g. a legacy Secret mounted into several replicas: in-cluster only
            uas = sorted(set(uas or []))
            out.append(Finding(
                detector=self.id, key=(key, day.date().isoformat()), severity=Severity.HIGH, actor=holder,
                credential_id=key, cluster=cluster, first_seen=t0, last_seen=t1, evidence=_ev_list(ev),
                score=float(len(places)),
                summary=(f"{kind} credential {key} of {holder} was used from {len(places)} places "
                         f"({', '.join(places[:5])}) within {w} s" + (" although it is bound to one pod"
                                                                     if pod_bound else "")
                         + f"; clients: {', '.join(uas[:4])}. Treat it as leaked: delete the bound object "
                         "or rotate the credential."),
                context={"places": places, "outside_places": outside, "user_agents": uas,
                         "pod_bound": bool(pod_bound), "window_seconds": w},
            ))
        return out


# --- credential.off_cluster ------------------------------------------------------------------

_OFF_USES = f"""
SELECT *, CASE WHEN impersonator IS NULL THEN coalesce(nullif(source_ips, []), [source_ip])
               ELSE [source_ip] END AS addrs
FROM ({USES_SQL} WHERE request_received_at >= $lo AND request_received_at < $hi
      AND ({HOLDER_KIND_SQL}) IN ('service_account', 'node') AND source_ip IS NOT NULL)
"""
#: The distinct (cluster, address) pairs to place: every ``sourceIPs`` entry, not only the peer; for an
#: impersonating request only the peer (a proxy that impersonates people forwards *their* addresses:
#: Pomerium's X-Forwarded-For carries the person's laptop, not where its own token was used).
_OFF_ADDRS_SQL = f"SELECT DISTINCT cluster, unnest(addrs) AS ip FROM ({_OFF_USES})"


def _off_sql(ips: str) -> str:
    """Requests with an address outside the cluster, per credential, cluster and day. ``peer`` is the
    last ``sourceIPs`` entry (the connection's own address); the others are ``X-Forwarded-For``
    entries, which the API server takes from the client or a proxy in front of it."""
    return f"""
WITH a AS (
    SELECT u.*, unnest(list_transform(addrs, lambda x, i: {{'ip': x, 'peer': i = len(addrs)}})) AS addr
    FROM ({_OFF_USES}) u),
o AS (SELECT a.*, NOT coalesce(p.inside, true) AS outside
      FROM a LEFT JOIN {ips} p ON p.cluster IS NOT DISTINCT FROM a.cluster AND p.ip = a.addr.ip),
r AS (SELECT credential_key, holder, holder_kind, cluster, ts, audit_id, any_value(user_agent) AS user_agent,
             bool_or(outside AND addr.peer) AS peer_out, bool_or(outside AND NOT addr.peer) AS fwd_out,
             list(DISTINCT addr.ip) FILTER (WHERE outside) AS out_ips, list(DISTINCT addr.ip) AS all_ips
      FROM o GROUP BY credential_key, holder, holder_kind, cluster, ts, audit_id HAVING bool_or(outside))
SELECT coalesce(credential_key, 'USER=' || holder) AS credential_key, holder, holder_kind, cluster,
       to_timestamp(floor(epoch(ts) / 86400) * 86400) AS day, min(ts), max(ts), count(*),
       bool_or(peer_out), bool_or(fwd_out), list_sort(list_distinct(flatten(list(out_ips)))),
       list_sort(list_distinct(flatten(list(all_ips))))[1:10],
       list(DISTINCT user_agent ORDER BY user_agent) FILTER (WHERE user_agent IS NOT NULL)[1:5],
       list({_REF} ORDER BY ts, {_REF})[1:{EVIDENCE}]
FROM r GROUP BY ALL
ORDER BY credential_key, holder, holder_kind, cluster, day
"""


class OffCluster:
    """``credential.off_cluster``: a service-account or node credential used from outside the
    cluster's networks (config ``credentials.cluster_networks``). Every ``sourceIPs`` entry is
    placed: the last is the connection's peer, which the client cannot forge (finding severity
    high); the others come from ``X-Forwarded-For`` ("All but the last IP can be arbitrarily set by
    the client", ``staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go``), which is also how the
    real client address survives a load balancer in front of the API server (severity medium when
    only a forwarded address is outside, and the finding says so). Forwarded addresses of an
    impersonating request are not judged: an identity-aware proxy forwards the addresses of the
    people it serves, which are outside by design. One finding per credential, cluster and day."""

    id: ClassVar[str] = "credential.off_cluster"
    description: ClassVar[str] = "an in-cluster credential (service account, node) used from outside the cluster"

    def run(self, ctx: DetectContext) -> list[Finding]:
        lo, hi = window_bounds(ctx.since, ctx.until)
        params = {"lo": lo, "hi": hi}
        pairs = ctx.engine.rows(_OFF_ADDRS_SQL, params)
        if not any(in_cluster(ctx.config, c, ip) is False for c, ip in pairs):
            return []
        learned = learn_networks(ctx.engine, ctx.config, lo, hi, pairs)
        if not any(placement(ctx.config, c, ip, learned)[0] is False for c, ip in pairs):
            return []
        ips = register_ip_table(ctx.engine, ctx.config, pairs, learned)
        try:
            rows = ctx.engine.rows(_off_sql(ips), params)
        finally:
            ctx.engine.drop(ips)
        out = []
        for key, holder, hkind, cluster, day, t0, t1, n, peer_out, _fwd_out, out_ips, all_ips, uas, ev in rows:
            basis = ("the connection's own address" if peer_out else
                     "an X-Forwarded-For address (set by the client or a proxy in front of the API server)")
            placed_by = {ip: placement(ctx.config, cluster, ip, learned)[1] for ip in all_ips or []}
            rule = placement(ctx.config, cluster, out_ips[0], learned)[1]
            ranges = [f"learned:{net} from {why}" for net, why in learned.get(cluster, [])][:10]
            networks = ("its configured networks" if rule == "configured" else
                        "the default private and link-local ranges" +
                        (f" and the {len(ranges)} ranges learned from its nodes and pods" if ranges else
                         "; no range of its own could be learned from its nodes and pods"))
            out.append(Finding(
                detector=self.id, key=(key, cluster, day.date().isoformat()),
                severity=Severity.HIGH if peer_out else Severity.MEDIUM,
                actor=holder, credential_id=key, cluster=cluster, first_seen=t0, last_seen=t1,
                evidence=_ev_list(ev), score=float(n),
                summary=(f"{hkind} credential {key} of {holder} made {n} requests to {_cluster_name(cluster)} "
                         f"from outside the cluster's networks ({', '.join(out_ips[:5])}; {basis}; "
                         f"placed by {networks}). "
                         "In-cluster credentials should never leave the cluster: find where it was copied and "
                         "rotate it."),
                context={"source_ips": list(out_ips), "outside_by": "peer" if peer_out else "x-forwarded-for",
                         "user_agents": list(uas or []), "cluster_networks": ctx.config.networks_for(cluster),
                         "network_rule": rule, "placed_by": placed_by, "learned_networks": ranges},
            ))
        return out

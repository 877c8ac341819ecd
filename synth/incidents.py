"""Labelled incidents and near-misses, injected into the background traffic.

Each detector id (DESIGN.md "Detector ids") gets at least three incident instances when the run
has at least 7 days and 2 clusters, spread over clusters and days (reach and staleness incidents
come late enough to have a baseline), plus near-misses: situations that look similar but that the
detector must **not** flag. Every instance becomes one line of ``labels.jsonl``::

    {"detector": "impersonation.proxy_bypass", "actor": "bob.schmidt@example.com",
     "first_seen": "...Z", "last_seen": "...Z", "cluster": "prod", "kind": "incident", "note": "..."}

``actor`` is the identity the detector should name: the person's email for proxy and revocation
findings, the service-account or node username for credential and reach findings, the
impersonating identity for ``impersonation.unapproved_impersonator``, and the Pomerium service
account for its use without impersonation. ``first_seen``/``last_seen`` span the evidence lines
(audit events and proxy decisions) of the instance. When one injected activity legitimately
trips a second detector (a stolen credential used from a public IP is also off-cluster), it gets
a second label so precision is measured fairly.

Incident lines are generated up front into scratch buffers (to measure their span), then merged
into the main buffers; the engine flushes them with the background in time order. Some incidents
change the world instead (a person revoked stops their background activity; a pod's client stops
reloading its token), and the stale-credential labels get their span from the engine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ztaudit.synth.clock import DAY, HOUR, MINUTE, US, iso_us, uuid_from_int, weekday
from ztaudit.synth.events import (
    FORBID_ANN,
    Op,
    allow_ann,
    emit_request,
    forbidden_status,
    impersonated,
    jlist,
    jstr,
    object_ref,
    okta_event,
    plain_user,
    pod_token_user,
    pomerium_check,
    pomerium_identity,
    x509_user,
)
from ztaudit.synth.traffic import (
    Buffers,
    _cwb,
    _list,
    _one,
    _rb,
    _watch,
    ci_job,
    controller_user,
    human_command,
    pomerium_pods,
    pomerium_user,
    proxied_request,
    team_reason,
)
from ztaudit.synth.world import (
    POMERIUM_USER,
    PROXY_UTC_OFFSET_MINUTES,
    TOKEN_ROTATE_US,
    Cluster,
    Human,
    Pod,
    Workload,
    World,
    new_pod,
    pod_jti,
    session_id,
)

ALL_KINDS: frozenset[str] = frozenset({
    "impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
    "impersonation.unapproved_impersonator", "revocation.not_enforced", "reach.anomalous",
    "credential.stale", "credential.legacy_token", "credential.shared", "credential.off_cluster",
})

OFF = PROXY_UTC_OFFSET_MINUTES * MINUTE
#: people (indexes into world.humans) whose accounts are revoked, one per revocation instance
REVOKED = (13, 14, 15, 3, 7, 9)
KUBECTL_LINUX = "kubectl/v1.29.4 (linux/amd64) kubernetes/55fd7ef"
KUBECTL_MAC = "kubectl/v1.32.1 (darwin/arm64) kubernetes/e9c9be4"
PY_CLIENT = "OpenAPI-Generator/31.0.0/python"


@dataclass(slots=True)
class Label:
    """One labelled incident or near-miss."""

    detector: str
    actor: str
    first_seen: int
    last_seen: int
    cluster: str
    kind: str  # "incident" | "near_miss"
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "actor": self.actor, "first_seen": iso_us(self.first_seen),
                "last_seen": iso_us(self.last_seen), "cluster": self.cluster, "kind": self.kind, "note": self.note}


@dataclass(slots=True)
class Plan:
    """Labels with known spans, and stale-credential labels whose span the engine measures."""

    labels: list[Label] = field(default_factory=list)
    stale: list[tuple[Label, Pod, int]] = field(default_factory=list)
    warn_after: dict[int, tuple[int, str]] = field(default_factory=dict)

    def stale_annotation(self, pod: Pod, t: int) -> str:
        """``authentication.k8s.io/stale-token`` for a kubelet token used past ``warnafter`` (§5.1).

        Kubelet tokens are minted for 3607 s and extended to a year by the API server, which warns
        (this annotation) on every use after the original expiry.
        """
        warn, subject = self.warn_after.get(id(pod), (0, ""))
        if not subject or t <= warn:
            return ""
        return (f'"authentication.k8s.io/stale-token":"subject: {subject}, seconds after warning threshold: '
                f'{(t - warn) // US}"')


class _Ctx:
    """Shared state while planning: the world, an rng, the main buffers, the labels."""

    def __init__(self, world: World, rng: random.Random, bufs: Buffers, plan: Plan) -> None:
        self.world, self.rng, self.bufs, self.plan = world, rng, bufs, plan
        self.days = (world.end - world.start) // DAY
        self.nc = len(world.clusters)

    def cluster(self, i: int) -> Cluster:
        return self.world.clusters[i % self.nc]

    def day(self, frac: float, min_day: int = 0, weekday_only: bool = True) -> int:
        """A day index inside the period at ``frac`` of it, moved to a weekday when possible."""
        d = min(self.days - 1, max(min(min_day, self.days - 1), int(frac * self.days)))
        if weekday_only:
            for delta in (0, 1, -1, 2, -2, 3, -3):
                dd = d + delta
                if 0 <= dd < self.days and weekday(self.world.start + dd * DAY + 12 * HOUR) < 5:
                    return dd
        return d

    def at(self, day: int, local_hour: float) -> int:
        """UTC µs of ``local_hour`` (proxy local time) on period day ``day``, kept inside the period."""
        t = self.world.start + day * DAY - OFF + int(local_hour * HOUR) + int(self.rng.random() * 600 * US)
        return min(max(t, self.world.start + 5 * MINUTE), self.world.end - 3 * HOUR)

    def scratch(self) -> Buffers:
        return Buffers(audit={c.name: [] for c in self.world.clusters})

    def commit(self, s: Buffers, detector: str, actor: str, cluster: str, kind: str, note: str,
               also: list[tuple[str, str]] | None = None) -> Label:
        """Merge a scratch buffer into the main buffers and label its span (plus any ``also``)."""
        times = [t for lines in s.audit.values() for t, _ in lines] + [t for t, _ in s.proxy]
        first, last = min(times), max(times)
        lab = Label(detector, actor, first, last, cluster, kind, note)
        self.plan.labels.append(lab)
        for det, act in also or []:
            self.plan.labels.append(Label(det, act, first, last, cluster, kind, note + f" (also labelled {detector})"))
        for name, lines in s.audit.items():
            self.bufs.audit[name].extend(lines)
        self.bufs.proxy.extend(s.proxy)
        self.bufs.okta.extend(s.okta)
        self.bufs.pomerium_identity.extend(s.pomerium_identity)
        return lab


def _pod(c: Cluster, ns: str, name: str, k: int = 0) -> Pod:
    pods = [p for p in c.pods if p.workload.namespace == ns and p.workload.name == name]
    return pods[k % len(pods)]


def _pod_user(w: World, c: Cluster, p: Pod, t: int) -> str:
    return pod_token_user(p.workload.username, p.workload.sa_uid, p.workload.namespace,
                          pod_jti(w, c, p, p.rotation(t)), p.name, p.uid, p.node.name, p.node.uid)


def _spread(ctx: _Ctx, t: int, n: int, minutes: float) -> Iterator[int]:
    """``n`` increasing instants from ``t`` over about ``minutes`` minutes."""
    for _ in range(n):
        yield t
        t += int((0.2 + ctx.rng.random()) * minutes / max(1, n) * MINUTE)


# --- impersonation -------------------------------------------------------------------------


def _oidc_user(h: Human) -> str:
    """A person authenticated directly by the API server's OIDC authenticator: no impersonation."""
    return plain_user(h.email, [*h.groups, "system:authenticated"])


def proxy_bypass(ctx: _Ctx, i: int) -> None:
    """A person calls the API server directly with an OIDC token (user.username = email)."""
    w, c = ctx.world, ctx.cluster(i)
    h = w.humans[(1, 5, 8)[i % 3]]
    t = ctx.at(ctx.day((0.3, 0.55, 0.8)[i % 3]), 20.5 + i * 0.4)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    ns = h.team.namespaces[0]
    r = _rb(f"team-{h.team.name}-edit", ns, "edit", f'Group "team-{h.team.name}"', kind="ClusterRole")
    disc = allow_ann(_cwb("system:discovery", 'Group "system:authenticated"'))
    ops = [Op("get", "/api?timeout=32s", "", disc), Op("get", "/apis?timeout=32s", "", disc),
           _list("pods", r, ns=ns),
           _one("get", "secrets", ns, f"{next(x for x in c.workloads if x.namespace == ns).name}-credentials", r),
           _list("configmaps", r, ns=ns), _list("pods", r, ns=ns)]
    home = f"198.51.100.{70 + i}"
    for tt, op in zip(_spread(ctx, t, len(ops), 6), ops, strict=True):
        emit_request(emit, ctx.rng, tt, op, _oidc_user(h), jlist([home]), jstr(h.user_agent))
    ctx.commit(s, "impersonation.proxy_bypass", h.email, c.name, "incident",
               f"{h.email} used an OIDC token against the {c.name} API server directly from {home}, "
               "not through Pomerium (no impersonation)")


def unobserved(ctx: _Ctx, i: int) -> None:
    """Pomerium allowed Kubernetes requests but the API server logged nothing for them."""
    w, c = ctx.world, ctx.cluster(i + 1)
    h = w.humans[(2, 6, 0)[i % 3]]
    d = ctx.day((0.2, 0.45, 0.7)[i % 3])
    t = ctx.at(d, 14.2 + i * 0.7)
    s = ctx.scratch()
    sess = session_id(w, h, (t + OFF) // DAY)
    for tt in _spread(ctx, t, 3, 4):
        human_command(w, ctx.rng, s, c, h, tt, sess, discovery=0.0, emit_audit=False, kind="pods")
    ctx.commit(s, "impersonation.unobserved", h.email, c.name, "incident",
               f"Pomerium allowed {h.email} on {c.host} but no impersonated audit event exists "
               "(requests reached the API server by another path, or audit events were dropped)")


def proxy_sa_direct(ctx: _Ctx, i: int) -> None:
    """The Pomerium service account's token used by itself (no Impersonate-User header)."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day((0.35, 0.65)[i % 2])
    t = ctx.at(d, 1.5 + i)  # at night: someone with access to the pomerium pod
    pod = pomerium_pods(c)[i % 2]
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    user = pomerium_user(w, c, pod, t)
    if i % 2 == 0:  # misconfigured: the proxy SA itself is bound to cluster-admin
        r = ('RBAC: allowed by ClusterRoleBinding "pomerium-admin" of ClusterRole "cluster-admin" to '
             'ServiceAccount "pomerium-authorize/pomerium"')
        ops = [_list("namespaces", r), _list("secrets", r), _list("pods", r), _one("get", "secrets", "payments",
                                                                                  "api-credentials", r)]
        sts: list[str | None] = [None] * len(ops)
        anns: list[str | None] = [None] * len(ops)
    else:  # correctly scoped: only impersonation is allowed, so plain requests are 403
        ops = [_list("namespaces", ""), _list("secrets", "", ns="kube-system"), _list("pods", "")]
        sts = [forbidden_status(POMERIUM_USER, "list", "namespaces", "", ""),
               forbidden_status(POMERIUM_USER, "list", "secrets", "", "kube-system"),
               forbidden_status(POMERIUM_USER, "list", "pods", "", "")]
        anns = [FORBID_ANN] * 3
    for tt, op, st, an in zip(_spread(ctx, t, len(ops), 5), ops, sts, anns, strict=True):
        emit_request(emit, ctx.rng, tt, op, user, jlist([pod.ip]), jstr(KUBECTL_LINUX), status=st, ann=an)
    ctx.commit(s, "impersonation.unobserved", POMERIUM_USER, c.name, "incident",
               f"the proxy service account's token (pod {pod.name}) reached the API without impersonating anyone "
               f"({'allowed by a cluster-admin binding' if i % 2 == 0 else 'forbidden by RBAC'}); no proxy decision")


def unbrokered(ctx: _Ctx, i: int) -> None:
    """The approved impersonator's credential impersonates a person with no proxy decision."""
    w, c = ctx.world, ctx.cluster(i + 2)
    victim = w.humans[(4, 11, 1)[i % 3]]
    d = ctx.day((0.4, 0.6, 0.9)[i % 3])
    t = ctx.at(d, 2.0 + i * 0.5)  # at night, when the proxy is idle
    pod = pomerium_pods(c)[0]
    user = pomerium_user(w, c, pod, t)
    if i % 3 == 0:
        ip, ua, where = "203.0.113.50", KUBECTL_LINUX, "from public address 203.0.113.50"
    elif i % 3 == 1:
        other = _pod(c, "search", "query")
        ip, ua, where = other.ip, PY_CLIENT, f"from pod {other.name} ({other.ip}), not the proxy"
    else:
        ip, ua, where = pod.ip, KUBECTL_LINUX, f"from inside the proxy pod {pod.name}"
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    imp = impersonated(victim.email, [victim.team.group_id, *victim.groups])
    ns = victim.team.namespaces[0]
    r = _rb(f"team-{victim.team.name}-edit", ns, "edit", f'Group "team-{victim.team.name}"', kind="ClusterRole")
    ops = [_list("pods", r, ns=ns), _list("secrets", r, ns=ns), _list("configmaps", r, ns=ns),
           _one("get", "deployments", ns, next(x for x in c.workloads if x.namespace == ns).name, r, group="apps")]
    for tt, op in zip(_spread(ctx, t, len(ops), 4), ops, strict=True):
        emit_request(emit, ctx.rng, tt, op, user, jlist([ip]), jstr(ua), imp=imp)
    also = [("credential.off_cluster", POMERIUM_USER)] if i % 3 == 0 else []
    ctx.commit(s, "impersonation.unbrokered", victim.email, c.name, "incident",
               f"pomerium-authorize token impersonated {victim.email} {where} with no Pomerium decision", also)


def unapproved(ctx: _Ctx, i: int) -> None:
    """Impersonation by an identity that is not an approved impersonator."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day((0.3, 0.5, 0.75)[i % 3], min_day=1)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    if i % 3 == 0:  # CI impersonates an application SA to read its secret
        t = ctx.at(d, 11.3)
        job = ci_job(w, ctx.rng, ctx.bufs.audit_to(c.name), c, t, target_ns="payments")
        api = c.workload("payments", "api")
        imp = ('{"username":"system:serviceaccount:payments:api","groups":["system:serviceaccounts",'
               '"system:serviceaccounts:payments","system:authenticated"]}')
        r = _rb("api", "payments", "api", 'ServiceAccount "api/payments"')
        ops = [_one("get", "secrets", "payments", "api-credentials", r), _list("secrets", r, ns="payments")]
        for tt, op in zip(_spread(ctx, job.end + 5 * US, len(ops), 1), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, job.user, jlist([job.ip]),
                         jstr("kubectl/v1.31.0 (linux/amd64) kubernetes/9ce1a43"), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", "system:serviceaccount:ci:deployer", c.name,
                   "incident", f"CI deployer impersonated {api.username} (kubectl --as) to read its secrets")
    elif i % 3 == 1:  # a person with an OIDC token uses --as to become a platform admin
        h, target = w.humans[0], w.humans[12]
        t = ctx.at(d, 21.0)
        imp = impersonated(target.email, [target.team.group_id, *target.groups])
        r = _cwb("team-platform-admin", 'Group "team-platform"').replace('ClusterRole "team-platform-admin"',
                                                                          'ClusterRole "cluster-admin"')
        ops = [_list("namespaces", r), _list("secrets", r, ns="kube-system"), _list("clusterrolebindings", r,
                                                                                   group="rbac.authorization.k8s.io")]
        home = "198.51.100.90"
        for tt, op in zip(_spread(ctx, t, len(ops), 3), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, _oidc_user(h), jlist([home]), jstr(h.user_agent), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", h.email, c.name, "incident",
                   f"{h.email} (direct OIDC, not via the proxy) impersonated {target.email}",
                   also=[("impersonation.proxy_bypass", h.email)])
    else:  # a workload's token (ingress controller) impersonates a platform admin
        p = _pod(c, "ingress-nginx", "ingress-nginx-controller", 1)
        target = w.humans[10]
        t = ctx.at(d, 3.0)
        imp = impersonated(target.email, [target.team.group_id, *target.groups])
        r = _cwb("team-platform-admin", 'Group "team-platform"').replace('ClusterRole "team-platform-admin"',
                                                                          'ClusterRole "cluster-admin"')
        ops = [_list("secrets", r), _list("serviceaccounts", r), _one("get", "secrets", "kube-system",
                                                                     "bootstrap-token-abcdef", r)]
        for tt, op in zip(_spread(ctx, t, len(ops), 3), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, _pod_user(w, c, p, tt), jlist([p.ip]), jstr(PY_CLIENT), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", p.workload.username, c.name, "incident",
                   f"ingress-nginx pod {p.name}'s token impersonated {target.email}")


def correlation_near_misses(ctx: _Ctx, i: int) -> None:
    """Proxied requests that must still match: skew at the window's edge; identical GET bursts."""
    w, c = ctx.world, ctx.cluster(i)
    h = w.humans[(0, 4, 10)[i % 3]]
    d = ctx.day((0.15, 0.5, 0.85)[i % 3])
    t = ctx.at(d, 10.6 + i)
    sess = session_id(w, h, (t + OFF) // DAY)
    s = ctx.scratch()
    # 1) skew at the edge: audit time minus the (second-truncated) proxy time is 2.6–2.95 s
    ns = h.team.namespaces[0] if not h.team.cluster_admin else "monitoring"
    op = _list("pods", team_reason(h, ns), ns=ns)
    for k in range(3):
        tt = t + k * 7 * US + int(ctx.rng.random() * 0.3 * US)
        frac = tt % US
        target = int((2.6 + 0.3 * ctx.rng.random()) * US)
        skew = target - frac - 43_000
        proxied_request(w, ctx.rng, s, c, h, tt, op, sess, skew_us=skew)
    ctx.commit(s, "impersonation.unbrokered", h.email, c.name, "near_miss",
               "clock skew at the edge of the 3 s window (audit minus second-truncated proxy time 2.6-2.95 s)",
               also=[("impersonation.unobserved", h.email)])
    # 2) identical discovery GETs in one burst: match as a multiset
    s = ctx.scratch()
    t2 = t + 20 * MINUTE
    disc = Op("get", "/apis?timeout=32s", "", allow_ann(_cwb("system:discovery", 'Group "system:authenticated"')))
    for k in range(6):
        proxied_request(w, ctx.rng, s, c, h, t2 + k * 90_000, disc, sess)
    ctx.commit(s, "impersonation.unobserved", h.email, c.name, "near_miss",
               "six identical GET /apis within one second (multiset match, not 1:1 by path and second)",
               also=[("impersonation.unbrokered", h.email)])


# --- revocation ----------------------------------------------------------------------------

_ADMIN = {"alternateId": "it-admin@example.com", "displayName": "IT Admin", "id": "00uadmin0000000000x",
          "type": "User"}


def _okta_revoke(ctx: _Ctx, h: Human, t: int, event_type: str) -> None:
    target: list[dict[str, Any]] = [{"alternateId": h.email, "detailEntry": None, "displayName": h.display,
                                     "id": h.okta_id, "type": "User"}]
    ctx.bufs.to_okta(t, okta_event(ctx.rng, t, event_type, _ADMIN, target, "192.0.2.10",
                                   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0.0.0",
                                   "102" + ctx.world.namer.b62(22, "adm", t), f"/api/v1/users/{h.okta_id}/lifecycle"))


def _pom_delete(ctx: _Ctx, h: Human, t: int, sess: str) -> None:
    ctx.bufs.to_identity(t, pomerium_identity(
        t, PROXY_UTC_OFFSET_MINUTES, h.okta_id, sess,
        'oauth2: "invalid_grant" "The refresh token is invalid or expired."'))


def _denied(ctx: _Ctx, out: Buffers, c: Cluster, h: Human, t: int, path: str, *, identified: bool,
            sess: str) -> None:
    rid = uuid_from_int(ctx.rng.getrandbits(128))
    if identified:
        line = pomerium_check(t, PROXY_UTC_OFFSET_MINUTES, rid, "GET", path, c.host, h.client_ip, sess, h.okta_id,
                              h.email, c.route_id, c.route_checksum, False, ["groups-unauthorized"])
    else:  # no session any more: user "" and no session-id (§1.4)
        line = pomerium_check(t, PROXY_UTC_OFFSET_MINUTES, rid, "GET", path, c.host, h.client_ip, None, "", "",
                              c.route_id, c.route_checksum, False, ["user-unauthenticated"])
    out.to_proxy(t, line)


def revocation(ctx: _Ctx, i: int) -> None:
    """Revocations: three not enforced (incidents) and three enforced shapes (near-misses)."""
    w = ctx.world
    h = w.humans[REVOKED[i]]
    c = ctx.world.cluster(h.clusters[i % len(h.clusters)])
    d = ctx.day((0.3, 0.5, 0.7, 0.4, 0.6, 0.8)[i], min_day=1)
    t0 = ctx.at(d, 12.0 + (i % 3) * 0.8)
    h.active_until = t0
    local_day = (t0 + OFF) // DAY
    sess = session_id(w, h, local_day)
    rng = ctx.rng
    grace = 900 * US
    if i < 3:
        etype = ("user.lifecycle.deactivate", "user.lifecycle.deactivate", "user.lifecycle.suspend")[i]
        _okta_revoke(ctx, h, t0, etype)
        t1 = t0 + int((1 + 6 * rng.random()) * MINUTE)
        if i != 1:
            _pom_delete(ctx, h, t1, sess)
        # within the grace period: still allowed (latency, not a finding)
        pre = ctx.scratch()
        human_command(w, rng, pre, c, h, t0 + 2 * MINUTE, sess, discovery=0.0, kind="pods")
        ctx.commit(pre, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "allowed inside the 900 s grace period after the revocation (latency, not a violation)")
        s = ctx.scratch()
        sess2 = sess if i != 2 else w.namer.uuid("session", h.email, local_day, 1)
        t = t0 + grace + int((5 + 10 * rng.random()) * MINUTE)
        for _ in range(6):
            t = human_command(w, rng, s, c, h, t, sess2, discovery=0.2)
            t += int((3 + 12 * rng.random()) * MINUTE)
        how = ("the identity_manager deleted the session but the proxy kept allowing it",
               "the proxy never noticed (no identity_manager deletion)",
               "the user was suspended, yet a new proxy session was issued")[i]
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "incident",
                   f"Okta {etype} at {iso_us(t0)}; {how}; allowed proxy decisions and audit events continue after "
                   "the grace period")
    elif i == 3:  # enforced at once: denied, unauthenticated, no audit events afterwards
        _okta_revoke(ctx, h, t0, "user.session.clear")
        t1 = t0 + 3 * MINUTE
        _pom_delete(ctx, h, t1, sess)
        s = ctx.scratch()
        human_command(w, rng, s, c, h, t0 + MINUTE, sess, discovery=0.0, kind="pods")
        for tt in _spread(ctx, t1 + 2 * MINUTE, 8, 40):
            _denied(ctx, s, c, h, tt, f"/api/v1/namespaces/{h.team.namespaces[0]}/pods", identified=False, sess="")
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "revocation enforced: after the identity_manager deletion every request is denied "
                   "(user-unauthenticated, no identity on the line) and nothing reaches the API server")
    elif i == 4:  # denied with identity after revocation
        _okta_revoke(ctx, h, t0, "user.lifecycle.suspend")
        s = ctx.scratch()
        for tt in _spread(ctx, t0 + grace + 5 * MINUTE, 6, 30):
            _denied(ctx, s, c, h, tt, f"/api/v1/namespaces/{h.team.namespaces[0]}/pods", identified=True, sess=sess)
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "suspended user still presents a session but is denied (allow=false, groups-unauthorized)")
    else:  # a long watch that began before the revocation and ended after the grace period
        s = ctx.scratch()
        ns = h.team.namespaces[0] if not h.team.cluster_admin else "monitoring"
        op = _watch("pods", team_reason(h, ns), ns=ns)
        proxied_request(w, rng, s, c, h, t0 - 3 * MINUTE, op, sess, watch_seconds=28 * 60)
        _okta_revoke(ctx, h, t0, "user.lifecycle.deactivate")
        _pom_delete(ctx, h, t0 + 2 * MINUTE, sess)
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "a watch started 3 min before the revocation ended 25 min after it; judge by its start")


# --- reach ---------------------------------------------------------------------------------


def reach(ctx: _Ctx, i: int) -> None:
    """Sudden reach: an SA listing secrets everywhere, a person's reach jump, a stolen node cert."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day((0.7, 0.8, 0.9)[i % 3], min_day=4)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    rng = ctx.rng
    namespaces = c.namespaces
    if i % 3 == 0:
        p = _pod(c, "search", "indexer", 1)
        t = ctx.at(d, 4.0)
        r = ('RBAC: allowed by ClusterRoleBinding "search-indexer-debug" of ClusterRole "secret-reader" to '
             'ServiceAccount "indexer/search"')
        for tt, ns in zip(_spread(ctx, t, len(namespaces), 8), namespaces, strict=True):
            emit_request(emit, rng, tt, _list("secrets", r, ns=ns), _pod_user(w, c, p, tt), jlist([p.ip]),
                         jstr(p.workload.user_agent))
        ctx.commit(s, "reach.anomalous", p.workload.username, c.name, "incident",
                   f"pod {p.name} listed secrets in {len(namespaces)} namespaces within minutes "
                   "(normally: configmaps/endpoints/pods in search)")
    elif i % 3 == 1:
        h = w.humans[1]
        t = ctx.at(d, 15.0)
        sess = session_id(w, h, (t + OFF) // DAY)
        r = f'RBAC: allowed by ClusterRoleBinding "temp-debug" of ClusterRole "cluster-admin" to User "{h.email}"'
        res = [("secrets", ""), ("configmaps", ""), ("serviceaccounts", ""), ("roles", "rbac.authorization.k8s.io"),
               ("rolebindings", "rbac.authorization.k8s.io"), ("pods", ""), ("deployments", "apps")]
        tt = t
        for ns in namespaces:
            for rs, g in res[: 3 + int(rng.random() * 4)]:
                proxied_request(w, rng, s, c, h, tt, _list(rs, r, ns=ns, group=g), sess)
                tt += int((2 + 20 * rng.random()) * US)
        proxied_request(w, rng, s, c, h, tt, _list("nodes", r), sess)
        proxied_request(w, rng, s, c, h, tt + 5 * US, _list("clusterrolebindings", r,
                                                             group="rbac.authorization.k8s.io"), sess)
        ctx.commit(s, "reach.anomalous", h.email, c.name, "incident",
                   f"{h.email} (team payments) suddenly listed secrets, RBAC and workloads in {len(namespaces)} "
                   "namespaces through the proxy (a temporary cluster-admin binding)")
    else:
        n = c.nodes[2]
        own = sorted({p.workload.namespace for p in c.pods if p.node is n})
        t = ctx.at(d, 3.5)
        ip = "203.0.113.77"
        user = x509_user(n.username, ["system:nodes", "system:authenticated"], n.cert_hash)
        ua = jstr(KUBECTL_LINUX)
        tt = t
        for ns in namespaces:
            for name in ("default-token", "db-credentials", f"{ns}-tls"):
                if ns in own:
                    op = _one("get", "secrets", ns, name, "")
                    emit_request(emit, rng, tt, op, user, jlist([ip]), ua)
                else:
                    op = _one("get", "secrets", ns, name, "")
                    msg = (f'secrets "{name}" is forbidden: User "{n.username}" cannot get resource "secrets" in API '
                           f'group "" in the namespace "{ns}": no relationship found between node \'{n.name}\' '
                           f'and this object')
                    st = (f'{{"metadata":{{}},"status":"Failure","message":{jstr(msg)},"reason":"Forbidden",'
                          f'"details":{{"name":"{name}","kind":"secrets"}},"code":403}}')
                    emit_request(emit, rng, tt, op, user, jlist([ip]), ua, status=st, ann=FORBID_ANN)
                tt += int((1 + 4 * rng.random()) * US)
        ctx.commit(s, "reach.anomalous", n.username, c.name, "incident",
                   f"node {n.name}'s certificate used from {ip} to read secrets in {len(namespaces)} namespaces "
                   f"(its pods are only in {', '.join(own)}; the Node authorizer denied the rest)",
                   also=[("credential.off_cluster", n.username), ("credential.shared", n.username)])


def new_namespace(ctx: _Ctx, i: int) -> None:
    """Near-miss: a new team namespace is created, a workload deployed, and the team starts using it."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day(0.55, min_day=3)
    t = ctx.at(d, 11.0)
    ns = "payments-ledger"
    admin = next(h for h in w.humans if h.team.cluster_admin and h.active_until is None)
    sess = session_id(w, admin, (t + OFF) // DAY)
    s = ctx.scratch()
    r = team_reason(admin, ns)
    body_ns = '{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"' + ns + '"}}'
    proxied_request(w, ctx.rng, s, c, admin, t, Op("create", "/api/v1/namespaces?fieldManager=kubectl-create",
                                                   object_ref("namespaces", name=ns), allow_ann(r), code=201,
                                                   status='{"metadata":{},"code":201}', level="Request",
                                                   request_object=body_ns), sess)
    rb = ('{"kind":"RoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"team-payments-edit",'
          '"namespace":"' + ns + '"},"subjects":[{"kind":"Group","apiGroup":"rbac.authorization.k8s.io","name":'
          '"team-payments"}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"edit"}}')
    proxied_request(w, ctx.rng, s, c, admin, t + 40 * US, Op(
        "create",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings?fieldManager=kubectl-client-side-apply",
        object_ref("rolebindings", ns, api_group="rbac.authorization.k8s.io"), allow_ann(r), code=201,
        status='{"metadata":{},"code":201}', level="Request", request_object=rb, namespace=ns,
        resource="rolebindings"), sess)
    ctx.commit(s, "reach.anomalous", admin.email, c.name, "near_miss",
               f"platform admin created namespace {ns} for team payments")
    wl = Workload(namespace=ns, name="ledger", sa="ledger", replicas=2, profile="app", rate_per_pod_hour=30,
                  user_agent="ledger/v0.1.0 (linux/amd64) kubernetes/$Format",
                  sa_uid=w.namer.uuid("sa", c.name, ns, "ledger"), rs_hash=w.namer.hex(10, "rs", c.name, ns, "ledger"))
    c.workloads.append(wl)
    for k in range(2):
        c.pods.append(new_pod(w.namer, ctx.rng, c, wl, c.nodes[(k * 3) % len(c.nodes)], t + HOUR + k * MINUTE,
                              w.start, 900 + k))
    for h in w.humans:
        if h.team.name == "payments" and c.name in h.clusters:
            h.extra_namespaces.append((t + 30 * MINUTE, ns))
    ctx.plan.labels.append(Label("reach.anomalous", wl.username, t + HOUR, w.end, c.name, "near_miss",
                                 f"new workload in the new team namespace {ns}"))
    for h in w.humans[:4]:
        if h.team.name == "payments" and h.active_until is None:
            ctx.plan.labels.append(Label("reach.anomalous", h.email, t + 30 * MINUTE, w.end, c.name, "near_miss",
                                         f"payments team member starts using the new namespace {ns}"))


def scale_out(ctx: _Ctx, i: int) -> None:
    """Near-miss: checkout/web scaled from 3 to 8 replicas, onto nodes it never ran on."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day(0.45, min_day=2)
    t = ctx.at(d, 13.0)
    wl = c.workload("checkout", "web")
    for k in range(5):
        node = c.nodes[(k * 5 + 1) % len(c.nodes)]
        c.pods.append(new_pod(w.namer, ctx.rng, c, wl, node, t + k * 3 * US, w.start, 800 + k))
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    rs = f"{wl.name}-{wl.rs_hash}"
    u = controller_user(w, c, "replicaset-controller", t)
    r = _cwb("system:controller:replicaset-controller", 'ServiceAccount "replicaset-controller/kube-system"')
    for k in range(5):
        emit_request(emit, ctx.rng, t + k * 3 * US - 500_000, Op("create", "/api/v1/namespaces/checkout/pods",
                     object_ref("pods", "checkout"), allow_ann(r), status='{"metadata":{},"code":201}', code=201,
                     namespace="checkout", resource="pods"), u, jlist([c.control_plane.ip]),
                     jstr("kube-controller-manager/v1.32.3 (linux/amd64) kubernetes/6d2f1b5/system:serviceaccount:"
                          "kube-system:replicaset-controller"))
    lab = ctx.commit(s, "credential.shared", wl.username, c.name, "near_miss",
                     f"deployment checkout/web ({rs}) scaled 3 -> 8: new pods, IPs and tokens on new nodes")
    lab.last_seen = w.end
    for det in ("credential.off_cluster", "reach.anomalous"):
        ctx.plan.labels.append(Label(det, wl.username, lab.first_seen, w.end, c.name, "near_miss", lab.note))


# --- credentials ---------------------------------------------------------------------------

_LEGACY = [("default", "build-bot", "curl/8.5.0"), ("monitoring", "old-exporter", "Go-http-client/1.1"),
           ("kube-system", "tiller", "kubectl/v1.18.20 (linux/amd64) kubernetes/1f3e19b")]


def legacy_token(ctx: _Ctx, i: int) -> None:
    """A dormant legacy secret-based token revived from a public address (§5.2)."""
    w, c = ctx.world, ctx.cluster(i)
    ns, sa, ua = _LEGACY[i % 3]
    d = ctx.day((0.4, 0.65, 0.9)[i % 3], min_day=2)
    t = ctx.at(d, 22.0 + i * 0.3)
    username = f"system:serviceaccount:{ns}:{sa}"
    secret = f"{sa}-token-{w.namer.pod_suffix('legacy', c.name, sa)}"
    user = plain_user(username, ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                      uid=w.namer.uuid("sa", c.name, ns, sa))
    ann = (f'"authentication.k8s.io/legacy-token":"{username}",'
           f'"authentication.k8s.io/legacy-token-autogenerated-secret":"{secret}"')
    ip = f"198.51.100.{10 + i}"
    r = f'RBAC: allowed by ClusterRoleBinding "{sa}" of ClusterRole "cluster-admin" to ServiceAccount "{sa}/{ns}"'
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    ops = [Op("get", "/version?timeout=32s", "", allow_ann(_cwb("system:public-info-viewer",
                                                                  'Group "system:authenticated"'))),
           _list("namespaces", r), _list("secrets", r), _list("pods", r), _one("get", "secrets", "kube-system",
                                                                             "cloud-provider-config", r)]
    for tt, op in zip(_spread(ctx, t, len(ops), 10), ops, strict=True):
        emit_request(emit, ctx.rng, tt, op, user, jlist([ip]), jstr(ua), extra_ann=ann)
    ctx.commit(s, "credential.legacy_token", username, c.name, "incident",
               f"legacy token of Secret {ns}/{secret} (never used in the period before) used from {ip}",
               also=[("credential.off_cluster", username)])


def off_cluster(ctx: _Ctx, i: int) -> None:
    """In-cluster credentials used from outside the cluster's networks."""
    w, c = ctx.world, ctx.cluster(i + 1)
    d = ctx.day((0.3, 0.55, 0.8)[i % 3], min_day=1)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    rng = ctx.rng
    if i % 3 == 0:  # an old (already rotated) pod token replayed from a laptop: not concurrent use
        p = _pod(c, "payments", "api", 0)
        t = ctx.at(d, 19.0)
        old_rot = max(0, p.rotation(t) - 2)
        user = pod_token_user(p.workload.username, p.workload.sa_uid, "payments", pod_jti(w, c, p, old_rot), p.name,
                              p.uid, p.node.name, p.node.uid)
        ip = "198.51.100.23"
        r = _rb("api", "payments", "api", 'ServiceAccount "api/payments"')
        for tt in _spread(ctx, t, 5, 6):
            emit_request(emit, rng, tt, _one("get", "secrets", "payments", "api-credentials", r), user, jlist([ip]),
                         jstr(KUBECTL_MAC))
        ctx.commit(s, "credential.off_cluster", p.workload.username, c.name, "incident",
                   f"a copy of pod {p.name}'s token (issued ~{(p.rotation(t) - old_rot) * 48} min earlier) used from "
                   f"{ip}")
    elif i % 3 == 1:  # a kubelet certificate used from a public address while the kubelet runs
        n = c.nodes[4]
        t = ctx.at(d, 22.5)
        user = x509_user(n.username, ["system:nodes", "system:authenticated"], n.cert_hash)
        ip = "203.0.113.18"
        ops = [_list("pods", ""), _one("get", "nodes", "", n.name, ""), _list("nodes", "")]
        for tt, op in zip(_spread(ctx, t, len(ops), 4), ops, strict=True):
            emit_request(emit, rng, tt, op, user, jlist([ip]), jstr(KUBECTL_LINUX))
        # the real kubelet keeps renewing its lease from the node at the same time
        lease = _one("update", "leases", "kube-node-lease", n.name, "", group="coordination.k8s.io", query="timeout=5s")
        for tt in _spread(ctx, t - MINUTE, 4, 4):
            emit_request(emit, rng, tt, lease, user, jlist([n.ip]),
                         jstr("kubelet/v1.32.3 (linux/amd64) kubernetes/6d2f1b5"))
        ctx.commit(s, "credential.off_cluster", n.username, c.name, "incident",
                   f"node {n.name}'s client certificate used from {ip} while the kubelet used it from {n.ip}",
                   also=[("credential.shared", n.username)])
    else:  # a finished CI job's token replayed from outside
        t = ctx.at(d, 10.5)
        user = ci_job(w, rng, ctx.bufs.audit_to(c.name), c, t, target_ns="checkout").user
        ip = "203.0.113.91"
        r = _rb("ci-deployer", "checkout", "edit", 'ServiceAccount "deployer/ci"', kind="ClusterRole")
        for tt in _spread(ctx, t + 40 * MINUTE, 4, 5):
            emit_request(emit, rng, tt, _list("secrets", r, ns="checkout"), user, jlist([ip]), jstr(PY_CLIENT))
        ctx.commit(s, "credential.off_cluster", "system:serviceaccount:ci:deployer", c.name, "incident",
                   f"a finished CI job's token replayed from {ip} 40 min later")


def shared(ctx: _Ctx, i: int) -> None:
    """One JTI used from its pod and from somewhere else within minutes (different clients)."""
    w, c = ctx.world, ctx.cluster(i + 2)
    d = ctx.day((0.35, 0.6, 0.85)[i % 3], min_day=1)
    t = ctx.at(d, 14.5)
    p = _pod(c, ("checkout", "catalog", "payments")[i % 3], ("web", "catalog-api", "worker")[i % 3], 0)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    rng = ctx.rng
    rot = p.rotation(t)
    # keep inside one token lifetime so the pod itself presents the same JTI
    t = max(t, p.rot_offset + rot * TOKEN_ROTATE_US + 5 * MINUTE)
    user = _pod_user(w, c, p, t)
    ns, wn = p.workload.namespace, p.workload.name
    r = _rb(wn, ns, wn, f'ServiceAccount "{p.workload.sa}/{ns}"')
    for tt in _spread(ctx, t, 6, 20):  # the pod's own use
        emit_request(emit, rng, tt, _one("get", "configmaps", ns, f"{wn}-config", r), user, jlist([p.ip]),
                     jstr(p.workload.user_agent))
    if i % 3 == 2:
        other = _pod(c, "analytics", "etl")
        ip, ua, where, also = other.ip, PY_CLIENT, f"pod {other.name} ({other.ip})", []
    else:
        ip, ua = f"203.0.113.{30 + i}", KUBECTL_MAC
        where, also = f"a laptop at {ip}", [("credential.off_cluster", p.workload.username)]
    for tt in _spread(ctx, t + 3 * MINUTE, 4, 8):
        emit_request(emit, rng, tt, _one("get", "secrets", ns, f"{wn}-credentials", r), user, jlist([ip]), jstr(ua))
    ctx.commit(s, "credential.shared", p.workload.username, c.name, "incident",
               f"token of pod {p.name} used from the pod and from {where} within minutes", also)


def stale(ctx: _Ctx, i: int) -> None:
    """A client that read its projected token once and never reloaded it (> 48 h old in use)."""
    w, c = ctx.world, ctx.cluster(i)
    if ctx.days < 3:
        return
    p = _pod(c, ("search", "catalog", "payments")[i % 3], ("query", "catalog-api", "worker")[i % 3], 1)
    freeze = w.start + DAY // 2 + i * 6 * HOUR
    p.frozen_at = freeze
    rot = p.rotation(freeze)
    issued = p.rot_offset + rot * TOKEN_ROTATE_US
    ctx.plan.warn_after[id(p)] = (issued + 3607 * US, p.workload.username)
    lab = Label("credential.stale", p.workload.username, 0, 0, c.name, "incident",
                f"pod {p.name} keeps presenting JTI={pod_jti(w, c, p, rot)} (issued {iso_us(issued)}) after the "
                "kubelet rotated it; in use more than 48 h after issue")
    ctx.plan.stale.append((lab, p, issued + 48 * HOUR))


def dormant_admin_cert(ctx: _Ctx) -> None:
    """With 32+ days: the kubeadm ``kubernetes-admin`` certificate used, dormant > 30 days, used again."""
    w, c = ctx.world, ctx.world.clusters[0]
    if ctx.days < 32:
        return
    user = x509_user("kubernetes-admin", ["kubeadm:cluster-admins", "system:authenticated"],
                     w.namer.sha256_hex("cert", c.name, "kubernetes-admin"))
    r = _cwb("kubeadm:cluster-admins", 'Group "kubeadm:cluster-admins"').replace(
        'ClusterRole "kubeadm:cluster-admins"', 'ClusterRole "cluster-admin"')
    bastion = jlist([f"10.{c.index}.0.5"])
    ops = [_list("nodes", r), _list("pods", r, ns="kube-system"), _one("get", "configmaps", "kube-system",
                                                                      "kubeadm-config", r)]
    first = ctx.scratch()
    for tt, op in zip(_spread(ctx, ctx.at(0, 11.0), len(ops), 5), ops, strict=True):
        emit_request(first.audit_to(c.name), ctx.rng, tt, op, user, bastion, jstr(KUBECTL_LINUX))
    ctx.commit(first, "credential.stale", "kubernetes-admin", c.name, "near_miss",
               "first use of the kubeadm admin certificate in the period (not stale yet)")
    again = ctx.scratch()
    for tt, op in zip(_spread(ctx, ctx.at(ctx.days - 1, 11.0), len(ops), 5), ops, strict=True):
        emit_request(again.audit_to(c.name), ctx.rng, tt, op, user, bastion, jstr(KUBECTL_LINUX))
    ctx.commit(again, "credential.stale", "kubernetes-admin", c.name, "incident",
               f"the kubeadm admin certificate used again after {ctx.days - 1} days of dormancy")


def rotation_near_misses(ctx: _Ctx) -> None:
    """Near-misses that hold over the whole period: kubelet rotation, many replicas, weekly rhythm."""
    w = ctx.world
    for c in w.clusters[:2]:
        api = c.workload("payments", "api")
        ctx.plan.labels.append(Label("credential.stale", api.username, w.start, w.end, c.name, "near_miss",
                                     "kubelet rotates the pods' tokens every ~48 min (many JTIs, none old)"))
        ctx.plan.labels.append(Label("credential.shared", api.username, w.start, w.end, c.name, "near_miss",
                                     "three replicas share the service account, each with its own token and IP"))
        ctx.plan.labels.append(Label("reach.anomalous", "system:serviceaccount:ci:deployer", w.start, w.end, c.name,
                                     "near_miss", "CI deploys in weekday bursts and is silent at weekends"))


# --- plan ----------------------------------------------------------------------------------

_Step = tuple[str, int, Callable[[_Ctx, int], None]]

_STEPS: list[_Step] = [
    ("revocation.not_enforced", 6, revocation),
    ("impersonation.proxy_bypass", 3, proxy_bypass),
    ("impersonation.unobserved", 3, unobserved),
    ("impersonation.unobserved", 2, proxy_sa_direct),
    ("impersonation.unbrokered", 3, unbrokered),
    ("impersonation.unbrokered", 3, correlation_near_misses),
    ("impersonation.unapproved_impersonator", 3, unapproved),
    ("reach.anomalous", 1, new_namespace),
    ("reach.anomalous", 3, reach),
    ("credential.shared", 1, scale_out),
    ("credential.legacy_token", 3, legacy_token),
    ("credential.off_cluster", 3, off_cluster),
    ("credential.shared", 3, shared),
    ("credential.stale", 3, stale),
]


def plan_incidents(world: World, rng: random.Random, bufs: Buffers, kinds: frozenset[str]) -> Plan:
    """Inject the incidents of ``kinds`` (detector ids) into ``world`` and ``bufs``; return the plan."""
    plan = Plan()
    if not kinds:
        return plan
    ctx = _Ctx(world, rng, bufs, plan)
    for kind, n, fn in _STEPS:
        if kind in kinds:
            for i in range(n):
                fn(ctx, i)
    if kinds & {"credential.stale", "credential.shared", "reach.anomalous"}:
        rotation_near_misses(ctx)
    if "credential.stale" in kinds:
        dormant_admin_cert(ctx)
    plan.labels = [lab for lab in plan.labels if lab.detector in kinds]
    return plan

"""Impersonation incidents and near-misses: proxy bypass, unobserved and unbrokered requests,
unapproved impersonators, and correlation look-alikes.
"""

from __future__ import annotations

from ztaudit.synth.clock import DAY, MINUTE, US
from ztaudit.synth.events import (
    FORBID_ANN,
    Op,
    allow_ann,
    emit_request,
    forbidden_status,
    impersonated,
    jlist,
    jstr,
)
from ztaudit.synth.incident_context import (
    KUBECTL_LINUX,
    OFF,
    PY_CLIENT,
    IncidentContext,
    oidc_user,
    pod_named,
    pod_user,
    spread,
)
from ztaudit.synth.people import ci_job, human_command, pomerium_pods, pomerium_user, proxied_request, team_reason
from ztaudit.synth.traffic import cwb_op, list_op, one_op, rb_op
from ztaudit.synth.world import (
    POMERIUM_USER,
    session_id,
)


def proxy_bypass(ctx: IncidentContext, i: int) -> None:
    """A person calls the API server directly with an OIDC token (user.username = email)."""
    w, c = ctx.world, ctx.cluster(i)
    h = w.humans[(1, 5, 8)[i % 3]]
    t = ctx.at(ctx.day((0.3, 0.55, 0.8)[i % 3]), 20.5 + i * 0.4)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    ns = h.team.namespaces[0]
    r = rb_op(f"team-{h.team.name}-edit", ns, "edit", f'Group "team-{h.team.name}"', kind="ClusterRole")
    disc = allow_ann(cwb_op("system:discovery", 'Group "system:authenticated"'))
    ops = [Op("get", "/api?timeout=32s", "", disc), Op("get", "/apis?timeout=32s", "", disc),
           list_op("pods", r, ns=ns),
           one_op("get", "secrets", ns, f"{next(x for x in c.workloads if x.namespace == ns).name}-credentials", r),
           list_op("configmaps", r, ns=ns), list_op("pods", r, ns=ns)]
    home = f"198.51.100.{70 + i}"
    for tt, op in zip(spread(ctx, t, len(ops), 6), ops, strict=True):
        emit_request(emit, ctx.rng, tt, op, oidc_user(h), jlist([home]), jstr(h.user_agent))
    ctx.commit(s, "impersonation.proxy_bypass", h.email, c.name, "incident",
               f"{h.email} used an OIDC token against the {c.name} API server directly from {home}, "
               "not through Pomerium (no impersonation)")


def unobserved(ctx: IncidentContext, i: int) -> None:
    """Pomerium allowed Kubernetes requests but the API server logged nothing for them."""
    w, c = ctx.world, ctx.cluster(i + 1)
    h = w.humans[(2, 6, 0)[i % 3]]
    d = ctx.day((0.2, 0.45, 0.7)[i % 3])
    t = ctx.at(d, 14.2 + i * 0.7)
    s = ctx.scratch()
    sess = session_id(w, h, (t + OFF) // DAY)
    for tt in spread(ctx, t, 3, 4):
        human_command(w, ctx.rng, s, c, h, tt, sess, discovery=0.0, emit_audit=False, kind="pods")
    ctx.commit(s, "impersonation.unobserved", h.email, c.name, "incident",
               f"Pomerium allowed {h.email} on {c.host} but no impersonated audit event exists "
               "(requests reached the API server by another path, or audit events were dropped)")


def proxy_sa_direct(ctx: IncidentContext, i: int) -> None:
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
        ops = [list_op("namespaces", r), list_op("secrets", r), list_op("pods", r), one_op("get", "secrets", "payments",
                                                                                  "api-credentials", r)]
        sts: list[str | None] = [None] * len(ops)
        anns: list[str | None] = [None] * len(ops)
    else:  # correctly scoped: only impersonation is allowed, so plain requests are 403
        ops = [list_op("namespaces", ""), list_op("secrets", "", ns="kube-system"), list_op("pods", "")]
        sts = [forbidden_status(POMERIUM_USER, "list", "namespaces", "", ""),
               forbidden_status(POMERIUM_USER, "list", "secrets", "", "kube-system"),
               forbidden_status(POMERIUM_USER, "list", "pods", "", "")]
        anns = [FORBID_ANN] * 3
    for tt, op, st, an in zip(spread(ctx, t, len(ops), 5), ops, sts, anns, strict=True):
        emit_request(emit, ctx.rng, tt, op, user, jlist([pod.ip]), jstr(KUBECTL_LINUX), status=st, ann=an)
    ctx.commit(s, "impersonation.unobserved", POMERIUM_USER, c.name, "incident",
               f"the proxy service account's token (pod {pod.name}) reached the API without impersonating anyone "
               f"({'allowed by a cluster-admin binding' if i % 2 == 0 else 'forbidden by RBAC'}); no proxy decision")


def unbrokered(ctx: IncidentContext, i: int) -> None:
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
        other = pod_named(c, "search", "query")
        ip, ua, where = other.ip, PY_CLIENT, f"from pod {other.name} ({other.ip}), not the proxy"
    else:
        ip, ua, where = pod.ip, KUBECTL_LINUX, f"from inside the proxy pod {pod.name}"
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    imp = impersonated(victim.email, [victim.team.group_id, *victim.groups])
    ns = victim.team.namespaces[0]
    r = rb_op(f"team-{victim.team.name}-edit", ns, "edit", f'Group "team-{victim.team.name}"', kind="ClusterRole")
    ops = [list_op("pods", r, ns=ns), list_op("secrets", r, ns=ns), list_op("configmaps", r, ns=ns),
           one_op("get", "deployments", ns, next(x for x in c.workloads if x.namespace == ns).name, r, group="apps")]
    for tt, op in zip(spread(ctx, t, len(ops), 4), ops, strict=True):
        emit_request(emit, ctx.rng, tt, op, user, jlist([ip]), jstr(ua), imp=imp)
    also = [("credential.off_cluster", POMERIUM_USER)] if i % 3 == 0 else []
    ctx.commit(s, "impersonation.unbrokered", victim.email, c.name, "incident",
               f"pomerium-authorize token impersonated {victim.email} {where} with no Pomerium decision", also)


def unapproved(ctx: IncidentContext, i: int) -> None:
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
        r = rb_op("api", "payments", "api", 'ServiceAccount "api/payments"')
        ops = [one_op("get", "secrets", "payments", "api-credentials", r), list_op("secrets", r, ns="payments")]
        for tt, op in zip(spread(ctx, job.end + 5 * US, len(ops), 1), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, job.user, jlist([job.ip]),
                         jstr("kubectl/v1.31.0 (linux/amd64) kubernetes/9ce1a43"), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", "system:serviceaccount:ci:deployer", c.name,
                   "incident", f"CI deployer impersonated {api.username} (kubectl --as) to read its secrets")
    elif i % 3 == 1:  # a person with an OIDC token uses --as to become a platform admin
        h, target = w.humans[0], w.humans[12]
        t = ctx.at(d, 21.0)
        imp = impersonated(target.email, [target.team.group_id, *target.groups])
        r = cwb_op("team-platform-admin", 'Group "team-platform"').replace('ClusterRole "team-platform-admin"',
                                                                          'ClusterRole "cluster-admin"')
        ops = [list_op("namespaces", r), list_op("secrets", r, ns="kube-system"), list_op("clusterrolebindings", r,
                                                                                   group="rbac.authorization.k8s.io")]
        home = "198.51.100.90"
        for tt, op in zip(spread(ctx, t, len(ops), 3), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, oidc_user(h), jlist([home]), jstr(h.user_agent), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", h.email, c.name, "incident",
                   f"{h.email} (direct OIDC, not via the proxy) impersonated {target.email}",
                   also=[("impersonation.proxy_bypass", h.email)])
    else:  # a workload's token (ingress controller) impersonates a platform admin
        p = pod_named(c, "ingress-nginx", "ingress-nginx-controller", 1)
        target = w.humans[10]
        t = ctx.at(d, 3.0)
        imp = impersonated(target.email, [target.team.group_id, *target.groups])
        r = cwb_op("team-platform-admin", 'Group "team-platform"').replace('ClusterRole "team-platform-admin"',
                                                                          'ClusterRole "cluster-admin"')
        ops = [list_op("secrets", r), list_op("serviceaccounts", r), one_op("get", "secrets", "kube-system",
                                                                     "bootstrap-token-abcdef", r)]
        for tt, op in zip(spread(ctx, t, len(ops), 3), ops, strict=True):
            emit_request(emit, ctx.rng, tt, op, pod_user(w, c, p, tt), jlist([p.ip]), jstr(PY_CLIENT), imp=imp)
        ctx.commit(s, "impersonation.unapproved_impersonator", p.workload.username, c.name, "incident",
                   f"ingress-nginx pod {p.name}'s token impersonated {target.email}")


def correlation_near_misses(ctx: IncidentContext, i: int) -> None:
    """Proxied requests that must still match: skew at the window's edge; identical GET bursts."""
    w, c = ctx.world, ctx.cluster(i)
    h = w.humans[(0, 4, 10)[i % 3]]
    d = ctx.day((0.15, 0.5, 0.85)[i % 3])
    t = ctx.at(d, 10.6 + i)
    sess = session_id(w, h, (t + OFF) // DAY)
    s = ctx.scratch()
    # 1) skew at the edge: audit time minus the (second-truncated) proxy time is 2.6–2.95 s
    ns = h.team.namespaces[0] if not h.team.cluster_admin else "monitoring"
    op = list_op("pods", team_reason(h, ns), ns=ns)
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
    disc = Op("get", "/apis?timeout=32s", "", allow_ann(cwb_op("system:discovery", 'Group "system:authenticated"')))
    for k in range(6):
        proxied_request(w, ctx.rng, s, c, h, t2 + k * 90_000, disc, sess)
    ctx.commit(s, "impersonation.unobserved", h.email, c.name, "near_miss",
               "six identical GET /apis within one second (multiset match, not 1:1 by path and second)",
               also=[("impersonation.unbrokered", h.email)])

"""Reach incidents and near-misses: identities that suddenly touch much more, new namespaces,
scale-outs.
"""

from __future__ import annotations

from ztaudit.synth.clock import DAY, HOUR, MINUTE, US
from ztaudit.synth.events import (
    FORBID_ANN,
    Op,
    allow_ann,
    emit_request,
    jlist,
    jstr,
    object_ref,
    x509_user,
)
from ztaudit.synth.incident_context import KUBECTL_LINUX, OFF, IncidentContext, Label, pod_named, pod_user, spread
from ztaudit.synth.people import proxied_request, team_reason
from ztaudit.synth.traffic import controller_user, cwb_op, list_op, one_op
from ztaudit.synth.world import (
    Workload,
    new_pod,
    session_id,
)


def reach(ctx: IncidentContext, i: int) -> None:
    """Sudden reach: an SA listing secrets everywhere, a person's reach jump, a stolen node cert."""
    w, c = ctx.world, ctx.cluster(i)
    d = ctx.day((0.7, 0.8, 0.9)[i % 3], min_day=4)
    s = ctx.scratch()
    emit = s.audit_to(c.name)
    rng = ctx.rng
    namespaces = c.namespaces
    if i % 3 == 0:
        p = pod_named(c, "search", "indexer", 1)
        t = ctx.at(d, 4.0)
        r = ('RBAC: allowed by ClusterRoleBinding "search-indexer-debug" of ClusterRole "secret-reader" to '
             'ServiceAccount "indexer/search"')
        for tt, ns in zip(spread(ctx, t, len(namespaces), 8), namespaces, strict=True):
            emit_request(emit, rng, tt, list_op("secrets", r, ns=ns), pod_user(w, c, p, tt), jlist([p.ip]),
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
                proxied_request(w, rng, s, c, h, tt, list_op(rs, r, ns=ns, group=g), sess)
                tt += int((2 + 20 * rng.random()) * US)
        proxied_request(w, rng, s, c, h, tt, list_op("nodes", r), sess)
        proxied_request(w, rng, s, c, h, tt + 5 * US, list_op("clusterrolebindings", r,
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
                    op = one_op("get", "secrets", ns, name, "")
                    emit_request(emit, rng, tt, op, user, jlist([ip]), ua)
                else:
                    op = one_op("get", "secrets", ns, name, "")
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


def new_namespace(ctx: IncidentContext, i: int) -> None:
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


def scale_out(ctx: IncidentContext, i: int) -> None:
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
    r = cwb_op("system:controller:replicaset-controller", 'ServiceAccount "replicaset-controller/kube-system"')
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

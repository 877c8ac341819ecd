"""Background traffic: what a healthy cluster and its people produce, hour by hour.

Actors (per cluster):

* control plane: ``system:kube-controller-manager`` and ``system:kube-scheduler`` (x509 client
  certificates, ``X509SHA256=`` credential ids, k8s-audit-schema.md §3), ``system:apiserver``
  (loopback token, ``system:masters``), and the controller-manager's per-controller service
  accounts (``--use-service-account-credentials``: JTI tokens without pod extras, minted by
  TokenRequests the controller manager itself issues, §4);
* kubelets ``system:node:<node>``: lease renewals, node status, a watch on their own pods, the
  Secrets/ConfigMaps of pods on the node, and TokenRequests for those pods (every ~48 min per pod,
  annotation ``issued-credential-id``, §4);
* workloads: pod-bound tokens (JTI + pod/node extras, §3), source IP from the pod CIDR, reach that
  is steady and mostly within the namespace; cluster-wide controllers (Prometheus,
  kube-state-metrics, ingress-nginx, cert-manager, CoreDNS) have broad but constant reach;
* CI: ``system:serviceaccount:ci:deployer`` in short-lived runner pods, weekday bursts that patch
  Deployments in team namespaces;
* people through Pomerium (proxy-idp-formats.md §1.5, §1.6): for every request an ``authorize
  check`` line (second precision, local offset) and an audit Event where ``user`` is the Pomerium
  authorize service account and ``impersonatedUser`` the person's email; audit time = proxy time +
  latency + a per-cluster, per-day clock skew of 0–1.5 s. Okta ``user.session.start`` at each
  day's first login.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
    pomerium_access,
    pomerium_check,
    sa_user,
    x509_user,
)
from ztaudit.synth.world import (
    KUBE_COMMIT,
    KUBE_VERSION,
    POMERIUM_NS,
    POMERIUM_SA,
    POMERIUM_USER,
    PROXY_UTC_OFFSET_MINUTES,
    TOKEN_ROTATE_US,
    Cluster,
    Human,
    Pod,
    Workload,
    World,
    okta_session,
    pod_jti,
    session_id,
)

Emit = Callable[[int, str], None]


@dataclass(slots=True)
class Buffers:
    """Lines produced for the current hour (and beyond), per output stream, as ``(µs, line)``."""

    audit: dict[str, list[tuple[int, str]]]
    proxy: list[tuple[int, str]] = field(default_factory=list)
    okta: list[tuple[int, str]] = field(default_factory=list)
    pomerium_identity: list[tuple[int, str]] = field(default_factory=list)

    def audit_to(self, cluster: str) -> Emit:
        buf = self.audit[cluster]

        def emit(t: int, line: str) -> None:
            buf.append((t, line))
        return emit

    def to_proxy(self, t: int, line: str) -> None:
        self.proxy.append((t, line))

    def to_okta(self, t: int, line: str) -> None:
        self.okta.append((t, line))

    def to_identity(self, t: int, line: str) -> None:
        self.pomerium_identity.append((t, line))


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth below 30, rounded normal above)."""
    if lam <= 0:
        return 0
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def _cwb(name: str, subject: str) -> str:
    return f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "{name}" to {subject}'


def _rb(binding: str, ns: str, role: str, subject: str, kind: str = "Role") -> str:
    return f'RBAC: allowed by RoleBinding "{binding}/{ns}" of {kind} "{role}" to {subject}'


def _watch(resource: str, reason: str, group: str = "", version: str = "v1", ns: str = "",
           selector: str = "") -> Op:
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    path = f"{base}/namespaces/{ns}/{resource}" if ns else f"{base}/{resource}"
    q = f"?{selector}&" if selector else "?"
    return Op("watch", path + q, object_ref(resource, ns, api_group=group, api_version=version), allow_ann(reason),
              watch=True, namespace=ns, resource=resource)


def _list(resource: str, reason: str, group: str = "", version: str = "v1", ns: str = "", query: str = "limit=500",
          level: str = "Metadata") -> Op:
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    path = f"{base}/namespaces/{ns}/{resource}" if ns else f"{base}/{resource}"
    return Op("list", f"{path}?{query}" if query else path, object_ref(resource, ns, api_group=group,
              api_version=version), allow_ann(reason), level=level, namespace=ns, resource=resource)


def _one(verb: str, resource: str, ns: str, name: str, reason: str, group: str = "", version: str = "v1",
         sub: str = "", query: str = "", code: int = 200, body: str = "", level: str = "Metadata") -> Op:
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    path = f"{base}/namespaces/{ns}/{resource}/{name}" if ns else f"{base}/{resource}/{name}"
    if sub:
        path += "/" + sub
    status = f'{{"metadata":{{}},"code":{code}}}'
    return Op(verb, f"{path}?{query}" if query else path,
              object_ref(resource, ns, name, api_group=group, api_version=version, subresource=sub),
              allow_ann(reason), status=status, code=code, request_object=body, level=level if not body else "Request",
              namespace=ns, resource=resource)


def _lease(ns: str, name: str, reason: str) -> Op:
    return _one("update", "leases", ns, name, reason, group="coordination.k8s.io", query="timeout=5s",
                level="Metadata")


@dataclass(slots=True)
class Actor:
    """A machine identity with a weighted request pool; ``user`` is rebuilt on token rotation."""

    cluster: Cluster
    username: str
    rate: float  # requests per hour at scale 1
    ops: list[Op]
    ips: str
    ua: str
    static_user: str = ""
    pod: Pod | None = None
    #: controller-manager per-controller token (hourly, no pod extras) when neither of the above
    controller: str = ""
    weekend_factor: float = 0.9
    _rot: int = -1
    _user: str = ""

    def user(self, world: World, t: int) -> str:
        if self.static_user:
            return self.static_user
        if self.pod is not None:
            rot = self.pod.rotation(t)
            if rot != self._rot:
                p = self.pod
                self._user = pod_token_user(self.username, p.workload.sa_uid, p.workload.namespace,
                                            pod_jti(world, self.cluster, p, rot), p.name, p.uid, p.node.name,
                                            p.node.uid)
                self._rot = rot
            return self._user
        rot = t // HOUR
        if rot != self._rot:
            self._user = controller_user(world, self.cluster, self.controller, t)
            self._rot = rot
        return self._user


def controller_user(world: World, c: Cluster, controller: str, t: int) -> str:
    """A controller-manager per-controller token: JTI credential id, not pod-bound, hourly."""
    jti = world.namer.uuid("jti-ctl", c.name, f"system:serviceaccount:kube-system:{controller}", t // HOUR)
    return sa_user(f"system:serviceaccount:kube-system:{controller}",
                   world.namer.uuid("sa", c.name, "kube-system", controller), "kube-system",
                   {"authentication.kubernetes.io/credential-id": f"JTI={jti}"})


def _weighted(*pairs: tuple[int, Op]) -> list[Op]:
    out: list[Op] = []
    for w, op in pairs:
        out.extend([op] * w)
    return out


def _app_ops(c: Cluster, w: Workload) -> list[Op]:
    ns, sa = w.namespace, w.sa
    subj = f'ServiceAccount "{sa}/{ns}"'
    r = _rb(w.name, ns, w.name, subj)
    ops = [(6, _one("get", "configmaps", ns, f"{w.name}-config", r)),
           (3, _watch("endpoints", r, ns=ns)),
           (2, _watch("configmaps", r, ns=ns, selector=f"fieldSelector=metadata.name%3D{w.name}-config")),
           (4, _list("pods", r, ns=ns, query=f"labelSelector=app%3D{w.name}")),
           (2, _one("get", "secrets", ns, f"{w.name}-credentials", r))]
    if w.name in ("worker", "indexer", "etl"):
        ops.append((6, _lease(ns, f"{w.name}-leader", r)))
    return _weighted(*ops)


def _cluster_wide_ops(c: Cluster, w: Workload) -> list[Op]:
    ns, sa = w.namespace, w.sa
    subj = f'ServiceAccount "{sa}/{ns}"'
    crb = _cwb(w.name, subj)
    nsr = _rb(w.name, ns, w.name, subj)
    p = w.profile
    if p == "prometheus":
        node_ops = [(1, dataclasses.replace(_one("get", "nodes", "", n.name, crb, sub="proxy"),
                                            uri=f"/api/v1/nodes/{n.name}/proxy/metrics/cadvisor")) for n in c.nodes]
        return _weighted((3, _watch("pods", crb)), (3, _watch("endpoints", crb)), (2, _watch("services", crb)),
                         (2, _watch("nodes", crb)), (2, _list("pods", crb)), *node_ops)
    if p == "ksm":
        res = [("pods", ""), ("secrets", ""), ("configmaps", ""), ("nodes", ""), ("namespaces", ""),
               ("deployments", "apps"), ("replicasets", "apps"), ("jobs", "batch"),
               ("persistentvolumeclaims", ""), ("services", "")]
        return _weighted(*[(2, _watch(r, crb, group=g)) for r, g in res],
                         *[(1, _list(r, crb, group=g)) for r, g in res])
    if p == "ingress":
        return _weighted((3, _watch("ingresses", crb, group="networking.k8s.io")), (3, _watch("services", crb)),
                         (3, _watch("endpointslices", crb, group="discovery.k8s.io")), (2, _watch("secrets", crb)),
                         (2, _watch("configmaps", nsr, ns=ns)), (6, _lease(ns, "ingress-nginx-leader", nsr)))
    if p == "certmanager":
        ks = _rb("cert-manager:leaderelection", "kube-system", "cert-manager:leaderelection", subj)
        team_ns = ["payments", "checkout", "search", "catalog"]
        return _weighted((3, _watch("certificates", crb, group="cert-manager.io")), (3, _watch("secrets", crb)),
                         (2, _watch("certificaterequests", crb, group="cert-manager.io")),
                         (8, _lease("kube-system", "cert-manager-controller", ks)),
                         *[(1, _one("get", "secrets", n, f"{n}-tls", crb)) for n in team_ns])
    if p == "coredns":
        return _weighted((3, _watch("services", crb)), (3, _watch("endpointslices", crb, group="discovery.k8s.io")),
                         (2, _watch("namespaces", crb)))
    if p == "pomerium":
        return _weighted((1, _one("get", "configmaps", ns, "pomerium-config", nsr)))
    raise ValueError(p)


def control_plane_actors(world: World, c: Cluster) -> list[Actor]:
    """kube-controller-manager, kube-scheduler, apiserver, and the per-controller service accounts."""
    cp = c.control_plane
    ips = jlist([cp.ip])
    kcm, sch = "system:kube-controller-manager", "system:kube-scheduler"
    kcm_r = _cwb(kcm, f'User "{kcm}"')
    sch_r = _cwb(sch, f'User "{sch}"')
    ua_kcm = f"kube-controller-manager/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    ua_sch = f"kube-scheduler/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    ua_api = f"kube-apiserver/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    kcm_ops = _weighted(
        (20, _lease("kube-system", "kube-controller-manager", kcm_r)),
        (2, _watch("secrets", kcm_r)), (2, _watch("serviceaccounts", kcm_r)), (2, _watch("namespaces", kcm_r)),
        (2, _watch("nodes", kcm_r)), (2, _watch("pods", kcm_r)), (2, _watch("replicasets", kcm_r, group="apps")),
        (2, _watch("deployments", kcm_r, group="apps")), (1, _list("secrets", kcm_r)),
        (2, _watch("endpointslices", kcm_r, group="discovery.k8s.io")))
    sch_ops = _weighted(
        (20, _lease("kube-system", "kube-scheduler", sch_r)), (3, _watch("pods", sch_r)), (2, _watch("nodes", sch_r)),
        (1, _watch("persistentvolumeclaims", sch_r)), (1, _watch("csinodes", sch_r, group="storage.k8s.io")))
    api_user = plain_user("system:apiserver", ["system:authenticated", "system:masters"],
                          uid=world.namer.uuid("apiserver", c.name))
    api_id = "apiserver-" + world.namer.hex(26, "apiserver-lease", c.name)
    api_ops = _weighted((10, _lease("kube-system", api_id, "")),
                        (3, _one("get", "services", "default", "kubernetes", "")),
                        (2, _one("get", "endpoints", "default", "kubernetes", "")),
                        (1, _list("priorityclasses", "", group="scheduling.k8s.io", query="")))
    actors = [
        Actor(c, kcm, 140, kcm_ops, ips, jstr(ua_kcm),
              static_user=x509_user(kcm, ["system:authenticated"], world.namer.sha256_hex("cert", c.name, kcm))),
        Actor(c, sch, 110, sch_ops, ips, jstr(ua_sch),
              static_user=x509_user(sch, ["system:authenticated"], world.namer.sha256_hex("cert", c.name, sch))),
        Actor(c, "system:apiserver", 60, api_ops, jlist(["::1"]), jstr(ua_api), static_user=api_user),
    ]
    app_ns = sorted({w.namespace for w in c.workloads if w.profile == "app"})
    for ctl, res, group in (("replicaset-controller", "replicasets", "apps"),
                            ("deployment-controller", "deployments", "apps"),
                            ("endpointslice-controller", "endpointslices", "discovery.k8s.io")):
        user = f"system:serviceaccount:kube-system:{ctl}"
        r = _cwb(f"system:controller:{ctl}", f'ServiceAccount "{ctl}/kube-system"')
        ops: list[Op] = []
        for ns in app_ns:
            for w in c.workloads:
                if w.namespace == ns:
                    name = w.name if res != "endpointslices" else f"{w.name}-{world.namer.pod_suffix('eps', w.name)}"
                    sub = "status" if res != "endpointslices" else ""
                    ops.append(_one("update", res, ns, name if res != "replicasets" else f"{w.name}-{w.rs_hash}", r,
                                    group=group, sub=sub))
        ua = f"{ua_kcm}/system:serviceaccount:kube-system:{ctl}"
        actors.append(Actor(c, user, 40, ops, ips, jstr(ua), controller=ctl))
    return actors


def node_actors(world: World, c: Cluster) -> list[Actor]:
    """One kubelet per node; its reach follows the pods scheduled on it (Node authorizer, reason "")."""
    actors = []
    for n in c.nodes:
        user = x509_user(n.username, ["system:nodes", "system:authenticated"], n.cert_hash)
        ops = [(12, _lease("kube-node-lease", n.name, "")),
               (3, _one("patch", "nodes", "", n.name, "", sub="status")),
               (1, _watch("pods", "", selector=f"fieldSelector=spec.nodeName%3D{n.name}")),
               (2, _one("get", "nodes", "", n.name, "", query="resourceVersion=0&timeout=10s"))]
        for p in c.pods:
            if p.node is n:
                ns, wn = p.workload.namespace, p.workload.name
                ops.append((1, _watch("configmaps", "", ns=ns,
                                      selector="fieldSelector=metadata.name%3Dkube-root-ca.crt")))
                ops.append((1, _one("get", "secrets", ns, f"{wn}-credentials", "")))
                ops.append((1, _one("get", "configmaps", ns, f"{wn}-config", "")))
        actors.append(Actor(c, n.username, 110, _weighted(*ops), jlist([n.ip]),
                            jstr(f"kubelet/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"), static_user=user,
                            weekend_factor=1.0))
    return actors


def pod_actors(world: World, c: Cluster) -> list[Actor]:
    """One actor per pod, presenting the pod's current projected token."""
    actors = []
    for p in c.pods:
        w = p.workload
        if w.profile == "pomerium":
            continue  # the proxy's token is only ever used to impersonate people (see proxied_request)
        ops = _app_ops(c, w) if w.profile == "app" else _cluster_wide_ops(c, w)
        actors.append(Actor(c, w.username, w.rate_per_pod_hour, ops, jlist([p.ip]), jstr(w.user_agent), pod=p))
    return actors


def token_request_body(pod: Pod) -> str:
    """``requestObject`` of a kubelet TokenRequest at Request level (k8s-audit-schema.md §4)."""
    return ('{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},'
            '"spec":{"audiences":["https://kubernetes.default.svc.cluster.local"],"expirationSeconds":3607,'
            f'"boundObjectRef":{{"kind":"Pod","apiVersion":"v1","name":"{pod.name}","uid":"{pod.uid}"}}}},'
            '"status":{"token":"","expirationTimestamp":null}}')


def emit_token_request(world: World, rng: random.Random, emit: Emit, c: Cluster, pod: Pod, t: int, rot: int) -> None:
    """The kubelet mints the ``rot``-th token for ``pod``: ``create serviceaccounts/<sa>/token``."""
    w = pod.workload
    op = _one("create", "serviceaccounts", w.namespace, w.sa, "", sub="token", code=201,
              body=token_request_body(pod))
    user = x509_user(pod.node.username, ["system:nodes", "system:authenticated"], pod.node.cert_hash)
    issued = f'"authentication.kubernetes.io/issued-credential-id":"JTI={pod_jti(world, c, pod, rot)}"'
    emit_request(emit, rng, t, op, user, jlist([pod.node.ip]),
                 jstr(f"kubelet/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"), extra_ann=issued)


def token_rotations(world: World, rng: random.Random, emit: Emit, c: Cluster, h0: int, h1: int) -> None:
    """Every TokenRequest the kubelets issue in ``[h0, h1)`` (about one per pod per 48 min)."""
    for p in c.pods:
        if p.deleted_at is not None and p.deleted_at <= h0:
            continue
        k = max(0, -(-(h0 - p.rot_offset) // TOKEN_ROTATE_US))
        t = p.rot_offset + k * TOKEN_ROTATE_US
        while t < h1:
            if p.alive(t):
                emit_token_request(world, rng, emit, c, p, t, k)
            k += 1
            t += TOKEN_ROTATE_US


# --- people through Pomerium ---------------------------------------------------------------


def proxy_skew_us(world: World, c: Cluster, t: int) -> int:
    """Audit clock minus proxy clock, per cluster and day: 0–1.5 s (config: 3 s match window)."""
    return int(world.namer.unit("skew", c.name, t // DAY) * 1.5 * US)


def pomerium_pods(c: Cluster) -> list[Pod]:
    return [p for p in c.pods if p.workload.namespace == POMERIUM_NS and p.workload.sa == POMERIUM_SA]


def pomerium_user(world: World, c: Cluster, pod: Pod, t: int) -> str:
    """``user`` block of the Pomerium authorize SA's projected token in ``pod`` at ``t``."""
    rot = pod.rotation(t)
    key = (c.name, pod.name, rot)
    u = world.user_cache.get(key)
    if u is None:
        u = pod_token_user(POMERIUM_USER, pod.workload.sa_uid, POMERIUM_NS, pod_jti(world, c, pod, rot), pod.name,
                           pod.uid, pod.node.name, pod.node.uid)
        world.user_cache[key] = u
    return u


@dataclass(slots=True)
class ProxiedResult:
    """Where a proxied request landed: proxy decision time and the audit request (if any)."""

    proxy_time: int
    audit_time: int | None


def proxied_request(world: World, rng: random.Random, out: Buffers, c: Cluster, h: Human, t: int, op: Op,
                    session: str, *, emit_audit: bool = True, skew_us: int | None = None,
                    access_log: bool = False, status: str | None = None, ann: str | None = None,
                    watch_seconds: int | None = None) -> ProxiedResult:
    """A person's request through Pomerium: the allowed authorize line, then the impersonated Event.

    ``t`` is the true instant Pomerium decided. The proxy logs it truncated to the second in its
    local offset; the API server receives the request a few ms later, and its clock is skewed by
    ``skew_us`` (default: the cluster's skew that day).
    """
    rid = uuid_from_int(rng.getrandbits(128))
    out.to_proxy(t, pomerium_check(t, PROXY_UTC_OFFSET_MINUTES, rid, op.method, op.path, c.host, h.client_ip,
                                   session, h.okta_id, h.email, c.route_id, c.route_checksum, True, ["groups-ok"]))
    if not emit_audit:
        return ProxiedResult(t, None)
    skew = proxy_skew_us(world, c, t) if skew_us is None else skew_us
    ta = t + 3000 + int(rng.random() * 40_000) + skew
    pods = pomerium_pods(c)
    pod = pods[int(rng.random() * len(pods))]
    user = pomerium_user(world, c, pod, ta)
    ips = jlist([h.client_ip, pod.ip])
    imp = impersonated(h.email, [h.team.group_id, *h.groups])
    req = emit_request(out.audit_to(c.name), rng, ta, op, user, ips, jstr(h.user_agent), imp=imp, status=status,
                       ann=ann, watch_seconds=watch_seconds, end_limit=world.end)
    if access_log:
        out.to_proxy(req.completed, pomerium_access(req.completed, PROXY_UTC_OFFSET_MINUTES, rid, op.method,
                                                    op.path, c.host, h.user_agent, h.client_ip, op.code,
                                                    (req.completed - t) / 1000))
    return ProxiedResult(t, ta)


_DISCOVERY = [
    Op("get", "/api?timeout=32s", "", allow_ann(_cwb("system:discovery", 'Group "system:authenticated"'))),
    Op("get", "/apis?timeout=32s", "", allow_ann(_cwb("system:discovery", 'Group "system:authenticated"'))),
    Op("get", "/apis/apps/v1?timeout=32s", "", allow_ann(_cwb("system:discovery", 'Group "system:authenticated"'))),
]


def team_reason(h: Human, ns: str) -> str:
    t = h.team
    if t.cluster_admin:
        return _cwb(f"team-{t.name}-admin", f'Group "team-{t.name}"').replace(
            f'ClusterRole "team-{t.name}-admin"', 'ClusterRole "cluster-admin"')
    return _rb(f"team-{t.name}-edit", ns, "edit", f'Group "team-{t.name}"', kind="ClusterRole")


def human_namespaces(h: Human, c: Cluster, t: int) -> list[str]:
    """Namespaces a person works in at ``t``: the team's, plus any new ones granted since."""
    if h.team.cluster_admin:
        ns = sorted({w.namespace for w in c.workloads if w.namespace in c.namespaces})
    else:
        ns = list(h.team.namespaces)
    ns += [n for since, n in h.extra_namespaces if t >= since]
    return ns


def human_command(world: World, rng: random.Random, out: Buffers, c: Cluster, h: Human, t: int, session: str,
                  *, discovery: float = 0.35, kind: str | None = None, namespace: str | None = None,
                  emit_audit: bool = True) -> int:
    """One kubectl invocation (discovery, then one to three API calls); returns the end instant."""
    nss = human_namespaces(h, c, t)
    ns = namespace or nss[int(rng.random() * len(nss))]
    r = team_reason(h, ns)
    apps = [w for w in c.workloads if w.namespace == ns] or c.workloads[:1]
    w = apps[int(rng.random() * len(apps))]
    pods = [p for p in c.pods if p.workload is w and p.alive(t)] or [p for p in c.pods if p.workload is w]
    pod = pods[int(rng.random() * len(pods))]
    if rng.random() < discovery:
        for op in _DISCOVERY[: 2 + (1 if "k9s" in h.user_agent else 0)]:
            for _ in range(1 + (rng.random() < 0.4)):  # kubectl repeats discovery GETs (memcache races)
                proxied_request(world, rng, out, c, h, t, op, session, emit_audit=emit_audit)
                t += 2000 + int(rng.random() * 30_000)
    k = kind or rng.choices(
        ["pods", "deploy", "logs", "describe", "svc", "watch", "restart", "exec", "secret", "delete", "forbidden"],
        [35, 15, 10, 10, 10, 4, 3, 2, 3, 2, 6])[0]
    ops: list[Op]
    status: str | None = None
    ann: str | None = None
    if k == "pods":
        ops = [_list("pods", r, ns=ns)]
    elif k == "deploy":
        ops = [_one("get", "deployments", ns, w.name, r, group="apps")]
    elif k == "logs":
        ops = [_one("get", "pods", ns, pod.name, r), _one("get", "pods", ns, pod.name, r, sub="log",
                                                          query=f"container={w.name}&tailLines=200")]
    elif k == "describe":
        ops = [_one("get", "pods", ns, pod.name, r),
               _list("events", r, ns=ns, query=f"fieldSelector=involvedObject.name%3D{pod.name}&limit=500")]
    elif k == "svc":
        ops = [_list("services", r, ns=ns), _list("configmaps", r, ns=ns)]
    elif k == "watch":
        ops = [_list("pods", r, ns=ns), _watch("pods", r, ns=ns)]
    elif k == "restart":
        body = ('{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"'
                + iso_us(t)[:19] + 'Z"}}}}}')
        ops = [_one("get", "deployments", ns, w.name, r, group="apps"),
               _one("patch", "deployments", ns, w.name, r, group="apps", body=body,
                    query="fieldManager=kubectl-rollout")]
    elif k == "exec":
        ops = [_one("get", "pods", ns, pod.name, r),
               Op("create", f"/api/v1/namespaces/{ns}/pods/{pod.name}/exec?command=sh&container={w.name}&stdin=true"
                  "&stdout=true&tty=true", object_ref("pods", ns, pod.name, subresource="exec"), allow_ann(r),
                  exec_=True, namespace=ns, resource="pods")]
    elif k == "secret":
        ops = [_one("get", "secrets", ns, f"{w.name}-credentials", r)]
    elif k == "delete":
        ops = [_one("delete", "pods", ns, pod.name, r)]
    else:  # an RBAC 403: someone else's namespace, or cluster-scoped nodes
        other = [n for n in ("payments", "search", "analytics", "monitoring") if n not in nss]
        if other:
            ons = other[int(rng.random() * len(other))]
            op = _list("secrets", "", ns=ons)
            status = forbidden_status(h.email, "list", "secrets", "", ons)
        else:
            op = _list("nodes", "")
            status = forbidden_status(h.email, "list", "nodes", "", "")
        ops = [Op(op.verb, op.uri, op.obj, FORBID_ANN, status, code=403, namespace=op.namespace,
                  resource=op.resource)]
        ann = FORBID_ANN
    for op in ops:
        proxied_request(world, rng, out, c, h, t, op, session, emit_audit=emit_audit, status=status, ann=ann,
                        access_log=rng.random() < 0.1)
        t += 40_000 + int(rng.random() * 400_000)
    return t


@dataclass(slots=True)
class WorkDay:
    """A person's working window on one local day (µs, UTC instants), or None on days off."""

    start: int
    end: int


def work_day(world: World, h: Human, local_day: int) -> WorkDay | None:
    """Weekdays 8–10 to 16–19 local; on weekends a short on-call session now and then."""
    off = PROXY_UTC_OFFSET_MINUTES * MINUTE
    midnight = local_day * DAY - off  # UTC instant of local midnight
    wd = (local_day + 3) % 7
    u = world.namer.unit("workday", h.email, local_day)
    if wd >= 5:
        if u > 0.12:
            return None
        s = midnight + int((10 + 8 * world.namer.unit("wkend", h.email, local_day)) * HOUR)
        return WorkDay(s, s + int((0.3 + u * 4) * HOUR))
    if u < 0.06:  # leave, sick days
        return None
    s = midnight + int((8 + 2 * world.namer.unit("start", h.email, local_day)) * HOUR)
    return WorkDay(s, s + int((7.5 + 2.5 * world.namer.unit("len", h.email, local_day)) * HOUR))


def human_hour(world: World, rng: random.Random, out: Buffers, h: Human, h0: int, h1: int, scale: float) -> None:
    """A person's background activity in ``[h0, h1)``: Okta login at day start, kubectl bursts."""
    off = PROXY_UTC_OFFSET_MINUTES * MINUTE
    for local_day in {(h0 + off) // DAY, (h1 - 1 + off) // DAY}:
        wdw = work_day(world, h, local_day)
        if wdw is None:
            continue
        # nothing starts in the last minute, so every proxied request's audit event is in the period
        lo, hi = max(h0, wdw.start), min(h1, wdw.end, world.end - MINUTE)
        if h.active_until is not None:
            hi = min(hi, h.active_until)
        login = wdw.start - int((2 + 8 * world.namer.unit("login", h.email, local_day)) * MINUTE)
        if h0 <= login < h1 and (h.active_until is None or login < h.active_until):
            emit_login(world, rng, out, h, login, local_day)
        if hi <= lo:
            continue
        sess = session_id(world, h, local_day)
        frac = (hi - lo) / HOUR
        n = poisson(rng, 5.0 * h.activity * frac * max(0.3, min(1.0, scale) ** 0.5))
        for _ in range(n):
            t = lo + int(rng.random() * (hi - lo))
            cname = h.clusters[0] if rng.random() < 0.6 or len(h.clusters) == 1 else rng.choice(h.clusters[1:])
            human_command(world, rng, out, world.cluster(cname), h, t, sess)


def emit_login(world: World, rng: random.Random, out: Buffers, h: Human, t: int, local_day: int) -> None:
    """Okta ``user.session.start`` for the person's morning login (actor = the user, §3.1)."""
    actor = {"alternateId": h.email, "displayName": h.display, "id": h.okta_id, "type": "User"}
    out.to_okta(t, okta_event(rng, t, "user.session.start", actor, None, h.client_ip,
                              "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
                              "Gecko) Chrome/130.0.0.0 Safari/537.36", okta_session(world, h, local_day),
                              "/api/v1/authn"))


# --- CI ----------------------------------------------------------------------------------


def ci_hour(world: World, rng: random.Random, out: Buffers, c: Cluster, h0: int, h1: int, scale: float) -> None:
    """Deploy jobs on weekdays in working hours: a runner pod per job, each with a fresh token."""
    local_hour = ((h0 + PROXY_UTC_OFFSET_MINUTES * MINUTE) % DAY) // HOUR
    if weekday(h0 + PROXY_UTC_OFFSET_MINUTES * MINUTE) >= 5 or not 9 <= local_hour < 19:
        return
    emit = out.audit_to(c.name)
    for _ in range(poisson(rng, 1.6 * max(0.25, scale ** 0.5))):
        t = h0 + int(rng.random() * (h1 - h0))
        ci_job(world, rng, emit, c, t)


@dataclass(frozen=True, slots=True)
class CiJob:
    """A finished CI job: its runner's ``user`` block, pod IP, token JTI and end instant."""

    user: str
    ip: str
    jti: str
    end: int


def ci_job(world: World, rng: random.Random, emit: Emit, c: Cluster, t: int,
           target_ns: str | None = None) -> CiJob:
    """One deploy job in a fresh runner pod (the kubelet mints its token as the pod starts)."""
    job = world.namer.hex(5, "cijob", c.name, t)
    node = c.nodes[int(rng.random() * len(c.nodes))]
    ns = target_ns or rng.choice(["payments", "checkout", "search", "catalog"])
    apps = [w for w in c.workloads if w.namespace == ns]
    w = apps[int(rng.random() * len(apps))]
    pod_name = f"deployer-{job}-{world.namer.pod_suffix('cipod', c.name, t)}"
    pod_uid = world.namer.uuid("cipoduid", c.name, pod_name)
    jti = world.namer.uuid("jti-ci", c.name, pod_name)
    ip = f"10.{c.index}.{node.pod_octet}.{200 + int(rng.random() * 50)}"
    user = pod_token_user("system:serviceaccount:ci:deployer", world.namer.uuid("sa", c.name, "ci", "deployer"), "ci",
                          jti, pod_name, pod_uid, node.name, node.uid)
    # the kubelet mints the runner's token as the pod starts
    op = _one("create", "serviceaccounts", "ci", "deployer", "", sub="token", code=201)
    emit_request(emit, rng, t - 2 * US, op, x509_user(node.username, ["system:nodes", "system:authenticated"],
                                                      node.cert_hash), jlist([node.ip]),
                 jstr(f"kubelet/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"),
                 extra_ann=f'"authentication.kubernetes.io/issued-credential-id":"JTI={jti}"')
    r = _rb("ci-deployer", ns, "edit", 'ServiceAccount "deployer/ci"', kind="ClusterRole")
    image = f"registry.example.com/{ns}/{w.name}:{world.namer.hex(7, 'img', c.name, t)}"
    body = ('{"spec":{"template":{"spec":{"containers":[{"name":"' + w.name + '","image":"' + image + '"}]}}}}')
    seq = [_one("get", "deployments", ns, w.name, r, group="apps"),
           _one("patch", "deployments", ns, w.name, r, group="apps", body=body, query="fieldManager=kubectl-set"),
           _list("replicasets", r, group="apps", ns=ns, query=f"labelSelector=app%3D{w.name}"),
           _watch("deployments", r, group="apps", ns=ns, selector=f"fieldSelector=metadata.name%3D{w.name}"),
           _list("pods", r, ns=ns, query=f"labelSelector=app%3D{w.name}")]
    ua = jstr("kubectl/v1.31.0 (linux/amd64) kubernetes/9ce1a43")
    ips = jlist([ip])
    for op in seq:
        emit_request(emit, rng, t, op, user, ips, ua, watch_seconds=30 + int(rng.random() * 90) if op.watch else None,
                     end_limit=world.end)
        t += int((0.3 + rng.random() * 3) * US)
    return CiJob(user, ip, jti, t)

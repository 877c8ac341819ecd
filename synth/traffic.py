"""Background traffic of the machines: control plane, kubelets and workloads, hour by hour.

Actors (per cluster):

* control plane: ``system:kube-controller-manager`` and ``system:kube-scheduler`` (x509 client
  certificates, ``X509SHA256=`` credential ids, docs/kubernetes-audit.md §3), ``system:apiserver``
  (loopback token, ``system:masters``), and the controller-manager's per-controller service
  accounts (``--use-service-account-credentials``: JTI tokens without pod extras, minted by
  TokenRequests the controller manager itself issues, §4);
* kubelets ``system:node:<node>``: lease renewals, node status, a watch on their own pods, the
  Secrets/ConfigMaps of pods on the node, and TokenRequests for those pods (every ~48 min per pod,
  annotation ``issued-credential-id``, §4);
* workloads: pod-bound tokens (JTI + pod/node extras, §3), source IP from the pod CIDR, reach that
  is steady and mostly within the namespace; cluster-wide controllers (Prometheus,
  kube-state-metrics, ingress-nginx, cert-manager, CoreDNS) have broad but constant reach.

People and CI are in :mod:`.people`; both write into :class:`Buffers`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ztaudit.synth.clock import HOUR
from ztaudit.synth.events import (
    Op,
    allow_ann,
    emit_request,
    jlist,
    jstr,
    object_ref,
    plain_user,
    pod_token_user,
    sa_user,
    x509_user,
)
from ztaudit.synth.world import (
    KUBE_COMMIT,
    KUBE_VERSION,
    TOKEN_ROTATE_US,
    Cluster,
    Pod,
    Workload,
    World,
    pod_jti,
)

Emit = Callable[[int, str], None]


@dataclass(slots=True)
class Buffers:
    """Lines produced for the current hour (and beyond), per output stream, as ``(µs, line)``."""

    audit: dict[str, list[tuple[int, str]]]
    proxy: list[tuple[int, str]] = field(default_factory=list)
    okta: list[tuple[int, str]] = field(default_factory=list)
    pomerium_identity: list[tuple[int, str]] = field(default_factory=list)
    #: people's API requests as the audit log will show them: (effective user, requestReceived µs,
    #: response code), for the revocation ground truth (:mod:`.revocation_truth`)
    uses: list[tuple[str, int, int]] = field(default_factory=list)

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


def cwb_op(name: str, subject: str) -> str:
    return f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "{name}" to {subject}'


def rb_op(binding: str, ns: str, role: str, subject: str, kind: str = "Role") -> str:
    return f'RBAC: allowed by RoleBinding "{binding}/{ns}" of {kind} "{role}" to {subject}'


def watch_op(resource: str, reason: str, group: str = "", version: str = "v1", ns: str = "",
           selector: str = "") -> Op:
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    path = f"{base}/namespaces/{ns}/{resource}" if ns else f"{base}/{resource}"
    q = f"?{selector}&" if selector else "?"
    return Op("watch", path + q, object_ref(resource, ns, api_group=group, api_version=version), allow_ann(reason),
              watch=True, namespace=ns, resource=resource)


def list_op(resource: str, reason: str, group: str = "", version: str = "v1", ns: str = "", query: str = "limit=500",
          level: str = "Metadata") -> Op:
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    path = f"{base}/namespaces/{ns}/{resource}" if ns else f"{base}/{resource}"
    return Op("list", f"{path}?{query}" if query else path, object_ref(resource, ns, api_group=group,
              api_version=version), allow_ann(reason), level=level, namespace=ns, resource=resource)


def one_op(verb: str, resource: str, ns: str, name: str, reason: str, group: str = "", version: str = "v1",
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


def lease_op(ns: str, name: str, reason: str) -> Op:
    return one_op("update", "leases", ns, name, reason, group="coordination.k8s.io", query="timeout=5s",
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
    r = rb_op(w.name, ns, w.name, subj)
    ops = [(6, one_op("get", "configmaps", ns, f"{w.name}-config", r)),
           (3, watch_op("endpoints", r, ns=ns)),
           (2, watch_op("configmaps", r, ns=ns, selector=f"fieldSelector=metadata.name%3D{w.name}-config")),
           (4, list_op("pods", r, ns=ns, query=f"labelSelector=app%3D{w.name}")),
           (2, one_op("get", "secrets", ns, f"{w.name}-credentials", r))]
    if w.name in ("worker", "indexer", "etl"):
        ops.append((6, lease_op(ns, f"{w.name}-leader", r)))
    return _weighted(*ops)


def _cluster_wide_ops(c: Cluster, w: Workload) -> list[Op]:
    ns, sa = w.namespace, w.sa
    subj = f'ServiceAccount "{sa}/{ns}"'
    crb = cwb_op(w.name, subj)
    nsr = rb_op(w.name, ns, w.name, subj)
    p = w.profile
    if p == "prometheus":
        node_ops = [(1, dataclasses.replace(one_op("get", "nodes", "", n.name, crb, sub="proxy"),
                                            uri=f"/api/v1/nodes/{n.name}/proxy/metrics/cadvisor")) for n in c.nodes]
        return _weighted((3, watch_op("pods", crb)), (3, watch_op("endpoints", crb)), (2, watch_op("services", crb)),
                         (2, watch_op("nodes", crb)), (2, list_op("pods", crb)), *node_ops)
    if p == "ksm":
        res = [("pods", ""), ("secrets", ""), ("configmaps", ""), ("nodes", ""), ("namespaces", ""),
               ("deployments", "apps"), ("replicasets", "apps"), ("jobs", "batch"),
               ("persistentvolumeclaims", ""), ("services", "")]
        return _weighted(*[(2, watch_op(r, crb, group=g)) for r, g in res],
                         *[(1, list_op(r, crb, group=g)) for r, g in res])
    if p == "ingress":
        return _weighted((3, watch_op("ingresses", crb, group="networking.k8s.io")), (3, watch_op("services", crb)),
                         (3, watch_op("endpointslices", crb, group="discovery.k8s.io")), (2, watch_op("secrets", crb)),
                         (2, watch_op("configmaps", nsr, ns=ns)), (6, lease_op(ns, "ingress-nginx-leader", nsr)))
    if p == "certmanager":
        ks = rb_op("cert-manager:leaderelection", "kube-system", "cert-manager:leaderelection", subj)
        team_ns = ["payments", "checkout", "search", "catalog"]
        return _weighted((3, watch_op("certificates", crb, group="cert-manager.io")), (3, watch_op("secrets", crb)),
                         (2, watch_op("certificaterequests", crb, group="cert-manager.io")),
                         (8, lease_op("kube-system", "cert-manager-controller", ks)),
                         *[(1, one_op("get", "secrets", n, f"{n}-tls", crb)) for n in team_ns])
    if p == "coredns":
        return _weighted((3, watch_op("services", crb)), (3, watch_op("endpointslices", crb, group="discovery.k8s.io")),
                         (2, watch_op("namespaces", crb)))
    if p == "pomerium":
        return _weighted((1, one_op("get", "configmaps", ns, "pomerium-config", nsr)))
    raise ValueError(p)


def control_plane_actors(world: World, c: Cluster) -> list[Actor]:
    """kube-controller-manager, kube-scheduler, apiserver, and the per-controller service accounts."""
    cp = c.control_plane
    ips = jlist([cp.ip])
    kcm, sch = "system:kube-controller-manager", "system:kube-scheduler"
    kcm_r = cwb_op(kcm, f'User "{kcm}"')
    sch_r = cwb_op(sch, f'User "{sch}"')
    ua_kcm = f"kube-controller-manager/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    ua_sch = f"kube-scheduler/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    ua_api = f"kube-apiserver/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"
    kcm_ops = _weighted(
        (20, lease_op("kube-system", "kube-controller-manager", kcm_r)),
        (2, watch_op("secrets", kcm_r)), (2, watch_op("serviceaccounts", kcm_r)), (2, watch_op("namespaces", kcm_r)),
        (2, watch_op("nodes", kcm_r)), (2, watch_op("pods", kcm_r)), (2, watch_op("replicasets", kcm_r, group="apps")),
        (2, watch_op("deployments", kcm_r, group="apps")), (1, list_op("secrets", kcm_r)),
        (2, watch_op("endpointslices", kcm_r, group="discovery.k8s.io")))
    sch_ops = _weighted(
        (20, lease_op("kube-system", "kube-scheduler", sch_r)), (3, watch_op("pods", sch_r)),
        (2, watch_op("nodes", sch_r)),
        (1, watch_op("persistentvolumeclaims", sch_r)), (1, watch_op("csinodes", sch_r, group="storage.k8s.io")))
    api_user = plain_user("system:apiserver", ["system:authenticated", "system:masters"],
                          uid=world.namer.uuid("apiserver", c.name))
    api_id = "apiserver-" + world.namer.hex(26, "apiserver-lease", c.name)
    api_ops = _weighted((10, lease_op("kube-system", api_id, "")),
                        (3, one_op("get", "services", "default", "kubernetes", "")),
                        (2, one_op("get", "endpoints", "default", "kubernetes", "")),
                        (1, list_op("priorityclasses", "", group="scheduling.k8s.io", query="")))
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
        r = cwb_op(f"system:controller:{ctl}", f'ServiceAccount "{ctl}/kube-system"')
        ops: list[Op] = []
        for ns in app_ns:
            for w in c.workloads:
                if w.namespace == ns:
                    name = w.name if res != "endpointslices" else f"{w.name}-{world.namer.pod_suffix('eps', w.name)}"
                    sub = "status" if res != "endpointslices" else ""
                    ops.append(one_op("update", res, ns, name if res != "replicasets" else f"{w.name}-{w.rs_hash}", r,
                                    group=group, sub=sub))
        ua = f"{ua_kcm}/system:serviceaccount:kube-system:{ctl}"
        actors.append(Actor(c, user, 40, ops, ips, jstr(ua), controller=ctl))
    return actors


def node_actors(world: World, c: Cluster) -> list[Actor]:
    """One kubelet per node; its reach follows the pods scheduled on it (Node authorizer, reason "")."""
    actors = []
    for n in c.nodes:
        user = x509_user(n.username, ["system:nodes", "system:authenticated"], n.cert_hash)
        ops = [(12, lease_op("kube-node-lease", n.name, "")),
               (3, one_op("patch", "nodes", "", n.name, "", sub="status")),
               (1, watch_op("pods", "", selector=f"fieldSelector=spec.nodeName%3D{n.name}")),
               (2, one_op("get", "nodes", "", n.name, "", query="resourceVersion=0&timeout=10s"))]
        for p in c.pods:
            if p.node is n:
                ns, wn = p.workload.namespace, p.workload.name
                ops.append((1, watch_op("configmaps", "", ns=ns,
                                      selector="fieldSelector=metadata.name%3Dkube-root-ca.crt")))
                ops.append((1, one_op("get", "secrets", ns, f"{wn}-credentials", "")))
                ops.append((1, one_op("get", "configmaps", ns, f"{wn}-config", "")))
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
    """``requestObject`` of a kubelet TokenRequest at Request level (docs/kubernetes-audit.md §4)."""
    return ('{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},'
            '"spec":{"audiences":["https://kubernetes.default.svc.cluster.local"],"expirationSeconds":3607,'
            f'"boundObjectRef":{{"kind":"Pod","apiVersion":"v1","name":"{pod.name}","uid":"{pod.uid}"}}}},'
            '"status":{"token":"","expirationTimestamp":null}}')


def emit_token_request(world: World, rng: random.Random, emit: Emit, c: Cluster, pod: Pod, t: int, rot: int) -> None:
    """The kubelet mints the ``rot``-th token for ``pod``: ``create serviceaccounts/<sa>/token``."""
    w = pod.workload
    op = one_op("create", "serviceaccounts", w.namespace, w.sa, "", sub="token", code=201,
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

"""Background traffic of people and CI, hour by hour.

* people through Pomerium (docs/proxy-and-idp.md §1.5, §1.6): for every request an ``authorize
  check`` line (second precision, local offset) and an audit Event where ``user`` is the Pomerium
  authorize service account and ``impersonatedUser`` the person's email; audit time = proxy time +
  latency + a per-cluster, per-day clock skew of 0–1.5 s. Okta ``user.session.start`` at each
  day's first login;
* CI: ``system:serviceaccount:ci:deployer`` in short-lived runner pods, weekday bursts that patch
  Deployments in team namespaces.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
    pod_token_user,
    pomerium_access,
    pomerium_check,
    x509_user,
)
from ztaudit.synth.traffic import Buffers, Emit, cwb_op, list_op, one_op, poisson, rb_op, watch_op
from ztaudit.synth.world import (
    KUBE_COMMIT,
    KUBE_VERSION,
    POMERIUM_NS,
    POMERIUM_SA,
    POMERIUM_USER,
    PROXY_UTC_OFFSET_MINUTES,
    Cluster,
    Human,
    Pod,
    World,
    active_spans,
    okta_session,
    pod_jti,
    session_at,
    session_id,
)

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
    out.uses.append((h.email, ta, op.code if status is None else _status_code(status, op.code)))
    if access_log:
        out.to_proxy(req.completed, pomerium_access(req.completed, PROXY_UTC_OFFSET_MINUTES, rid, op.method,
                                                    op.path, c.host, h.user_agent, h.client_ip, op.code,
                                                    (req.completed - t) / 1000))
    return ProxiedResult(t, ta)


def _status_code(status: str, default: int) -> int:
    """The ``code`` of a ``responseStatus`` JSON (its last ``"code":`` member)."""
    i = status.rfind('"code":')
    if i < 0:
        return default
    digits = status[i + 7:].split("}", 1)[0].split(",", 1)[0]
    return int(digits) if digits.isdigit() else default


_DISCOVERY = [
    Op("get", "/api?timeout=32s", "", allow_ann(cwb_op("system:discovery", 'Group "system:authenticated"'))),
    Op("get", "/apis?timeout=32s", "", allow_ann(cwb_op("system:discovery", 'Group "system:authenticated"'))),
    Op("get", "/apis/apps/v1?timeout=32s", "", allow_ann(cwb_op("system:discovery", 'Group "system:authenticated"'))),
]


def team_reason(h: Human, ns: str) -> str:
    t = h.team
    if t.cluster_admin:
        return cwb_op(f"team-{t.name}-admin", f'Group "team-{t.name}"').replace(
            f'ClusterRole "team-{t.name}-admin"', 'ClusterRole "cluster-admin"')
    return rb_op(f"team-{t.name}-edit", ns, "edit", f'Group "team-{t.name}"', kind="ClusterRole")


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
        ops = [list_op("pods", r, ns=ns)]
    elif k == "deploy":
        ops = [one_op("get", "deployments", ns, w.name, r, group="apps")]
    elif k == "logs":
        ops = [one_op("get", "pods", ns, pod.name, r), one_op("get", "pods", ns, pod.name, r, sub="log",
                                                          query=f"container={w.name}&tailLines=200")]
    elif k == "describe":
        ops = [one_op("get", "pods", ns, pod.name, r),
               list_op("events", r, ns=ns, query=f"fieldSelector=involvedObject.name%3D{pod.name}&limit=500")]
    elif k == "svc":
        ops = [list_op("services", r, ns=ns), list_op("configmaps", r, ns=ns)]
    elif k == "watch":
        ops = [list_op("pods", r, ns=ns), watch_op("pods", r, ns=ns)]
    elif k == "restart":
        body = ('{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"'
                + iso_us(t)[:19] + 'Z"}}}}}')
        ops = [one_op("get", "deployments", ns, w.name, r, group="apps"),
               one_op("patch", "deployments", ns, w.name, r, group="apps", body=body,
                    query="fieldManager=kubectl-rollout")]
    elif k == "exec":
        ops = [one_op("get", "pods", ns, pod.name, r),
               Op("create", f"/api/v1/namespaces/{ns}/pods/{pod.name}/exec?command=sh&container={w.name}&stdin=true"
                  "&stdout=true&tty=true", object_ref("pods", ns, pod.name, subresource="exec"), allow_ann(r),
                  exec_=True, namespace=ns, resource="pods")]
    elif k == "secret":
        ops = [one_op("get", "secrets", ns, f"{w.name}-credentials", r)]
    elif k == "delete":
        ops = [one_op("delete", "pods", ns, pod.name, r)]
    else:  # an RBAC 403: someone else's namespace, or cluster-scoped nodes
        other = [n for n in ("payments", "search", "analytics", "monitoring") if n not in nss]
        if other:
            ons = other[int(rng.random() * len(other))]
            op = list_op("secrets", "", ns=ons)
            status = forbidden_status(h.email, "list", "secrets", "", ons)
        else:
            op = list_op("nodes", "")
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
        login = wdw.start - int((2 + 8 * world.namer.unit("login", h.email, local_day)) * MINUTE)
        if h0 <= login < h1 and active_spans(h, login, login + 1):
            emit_login(world, rng, out, h, login, local_day)
        if hi <= lo:
            continue
        if h.active_until is None and not h.pauses:
            spans = [(lo, hi)]
        else:
            spans = active_spans(h, lo, hi)
        for a, b in spans:
            sess = session_id(world, h, local_day) if not h.relogins else ""
            n = poisson(rng, 5.0 * h.activity * (b - a) / HOUR * max(0.3, min(1.0, scale) ** 0.5))
            for _ in range(n):
                t = a + int(rng.random() * (b - a))
                cname = h.clusters[0] if rng.random() < 0.6 or len(h.clusters) == 1 else rng.choice(h.clusters[1:])
                human_command(world, rng, out, world.cluster(cname), h, t, sess or session_at(world, h, t))


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
    op = one_op("create", "serviceaccounts", "ci", "deployer", "", sub="token", code=201)
    emit_request(emit, rng, t - 2 * US, op, x509_user(node.username, ["system:nodes", "system:authenticated"],
                                                      node.cert_hash), jlist([node.ip]),
                 jstr(f"kubelet/{KUBE_VERSION} (linux/amd64) kubernetes/{KUBE_COMMIT}"),
                 extra_ann=f'"authentication.kubernetes.io/issued-credential-id":"JTI={jti}"')
    r = rb_op("ci-deployer", ns, "edit", 'ServiceAccount "deployer/ci"', kind="ClusterRole")
    image = f"registry.example.com/{ns}/{w.name}:{world.namer.hex(7, 'img', c.name, t)}"
    body = ('{"spec":{"template":{"spec":{"containers":[{"name":"' + w.name + '","image":"' + image + '"}]}}}}')
    seq = [one_op("get", "deployments", ns, w.name, r, group="apps"),
           one_op("patch", "deployments", ns, w.name, r, group="apps", body=body, query="fieldManager=kubectl-set"),
           list_op("replicasets", r, group="apps", ns=ns, query=f"labelSelector=app%3D{w.name}"),
           watch_op("deployments", r, group="apps", ns=ns, selector=f"fieldSelector=metadata.name%3D{w.name}"),
           list_op("pods", r, ns=ns, query=f"labelSelector=app%3D{w.name}")]
    ua = jstr("kubectl/v1.31.0 (linux/amd64) kubernetes/9ce1a43")
    ips = jlist([ip])
    for op in seq:
        emit_request(emit, rng, t, op, user, ips, ua, watch_seconds=30 + int(rng.random() * 90) if op.watch else None,
                     end_limit=world.end)
        t += int((0.3 + rng.random() * 3) * US)
    return CiJob(user, ip, jti, t)

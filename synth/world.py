"""The simulated organisation: clusters, nodes, workloads and their pods, teams, people.

Everything here is stable over the generated period unless an incident or near-miss changes it
on purpose (a deployment scaled out, a new team namespace, a pod whose client never reloads its
token). The population is the same for every seed of a given cluster list; the seed changes
identifiers, placement and traffic.

Kubernetes semantics simulated (see docs/kubernetes-audit.md):

* Nodes authenticate with their own x509 client certificate: ``system:node:<name>``, groups
  ``system:nodes`` + ``system:authenticated``, credential id ``X509SHA256=<hash of the leaf>``
  (§3). Kubelet client certificates are typically issued for a year, so they do not rotate inside a
  few weeks.
* Pods use kubelet-projected, pod-bound service-account tokens: ``system:serviceaccount:<ns>:<sa>``
  with ``user.extra`` credential-id ``JTI=<uuid>``, pod-name/pod-uid and node-name/node-uid (§3,
  §5.1). The kubelet asks for 3607 s tokens and refreshes them at 80 % of their life, i.e. about
  every 48 minutes, through a ``create serviceaccounts/<sa>/token`` TokenRequest whose audit record
  carries ``authentication.kubernetes.io/issued-credential-id: JTI=<uuid>`` (§4).
* People reach the API only through Pomerium, whose authorize service account impersonates them
  (docs/proxy-and-idp.md §1.5, §1.6).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ztaudit.synth.clock import DAY, HOUR, MINUTE, Namer

#: Kubelet refreshes a projected token at 80 % of its 3607 s lifetime (docs/kubernetes-audit.md §4).
TOKEN_ROTATE_US = 48 * MINUTE
#: Proxy host suffix: each cluster is a Pomerium route ``k8s-<cluster>.example.com``.
PROXY_DOMAIN = "example.com"
#: The approved impersonator (config.py ``impersonation.approved_impersonators`` default).
POMERIUM_NS, POMERIUM_SA = "pomerium", "pomerium-authorize"
POMERIUM_USER = f"system:serviceaccount:{POMERIUM_NS}:{POMERIUM_SA}"
#: Local offset of the Pomerium process (US Eastern, standard time in November).
PROXY_UTC_OFFSET_MINUTES = -5 * 60

#: Background activity stops this long before a pause (or deactivation), so no command of the
#: person's own routine straddles the revocation instant.
PAUSE_MARGIN_US = MINUTE

KUBE_VERSION = "v1.32.3"
KUBE_COMMIT = "6d2f1b5"


@dataclass(slots=True)
class Node:
    """A worker or control-plane node with its own kubelet client certificate."""

    name: str
    index: int
    ip: str
    uid: str
    cert_hash: str
    pod_octet: int  # pod CIDR 10.<cluster>.<pod_octet>.0/24
    control_plane: bool = False
    next_pod_ip: int = 2

    @property
    def username(self) -> str:
        return f"system:node:{self.name}"

    def allocate_ip(self, cluster_index: int) -> str:
        ip = f"10.{cluster_index}.{self.pod_octet}.{self.next_pod_ip}"
        self.next_pod_ip = self.next_pod_ip + 1 if self.next_pod_ip < 250 else 2
        return ip


@dataclass(slots=True)
class Workload:
    """A Deployment: its service account, replicas, client and request profile."""

    namespace: str
    name: str
    sa: str
    replicas: int
    profile: str
    rate_per_pod_hour: float
    user_agent: str
    sa_uid: str = ""
    rs_hash: str = ""

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.sa}"


@dataclass(slots=True)
class Pod:
    """One pod of a workload, bound to a node; its token JTI rotates every ~48 min."""

    name: str
    uid: str
    workload: Workload
    node: Node
    ip: str
    created_at: int
    rot_offset: int
    deleted_at: int | None = None
    #: a client that read its token once and never reloaded it (credential.stale incident):
    #: from this instant on, requests keep presenting the token current at that instant.
    frozen_at: int | None = None

    def rotation(self, t: int) -> int:
        """Index of the token the pod presents at ``t`` (0 = the token minted at pod start)."""
        if self.frozen_at is not None and t >= self.frozen_at:
            t = self.frozen_at
        return max(0, (t - self.rot_offset) // TOKEN_ROTATE_US)

    def alive(self, t: int) -> bool:
        return self.created_at <= t and (self.deleted_at is None or t < self.deleted_at)


@dataclass(slots=True)
class Team:
    """A team: an IdP group, the namespaces it owns, and the ClusterRole bound to it there."""

    name: str
    group_id: str
    namespaces: list[str]
    cluster_admin: bool = False


@dataclass(slots=True)
class Human:
    """A person: Okta user, Pomerium identity, kubectl client."""

    email: str
    display: str
    okta_id: str
    team: Team
    client_ip: str
    user_agent: str
    clusters: list[str]
    activity: float  # relative busyness
    #: background activity stops here for good (the user was deactivated; incidents take over after it)
    active_until: int | None = None
    #: spans ``[from, to)`` without background activity (suspended until restored, sessions cleared
    #: until the next login); sorted, never overlapping
    pauses: list[tuple[int, int]] = field(default_factory=list)
    #: instants of a new login on the same local day (after a session clear or a restoration): each
    #: one starts a new Pomerium session id (:func:`session_at`)
    relogins: list[int] = field(default_factory=list)
    #: extra namespaces the person starts to use from a given instant (new team namespace)
    extra_namespaces: list[tuple[int, str]] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return ["engineering", f"team-{self.team.name}"]


@dataclass(slots=True)
class Cluster:
    """One Kubernetes cluster fronted by its own Pomerium route."""

    name: str
    index: int
    nodes: list[Node]
    control_plane: Node
    workloads: list[Workload]
    pods: list[Pod]
    namespaces: list[str]
    sa_uids: dict[str, str]
    host: str
    route_id: str
    route_checksum: int

    def pods_of(self, workload: Workload) -> list[Pod]:
        return [p for p in self.pods if p.workload is workload]

    def workload(self, namespace: str, name: str) -> Workload:
        for w in self.workloads:
            if w.namespace == namespace and w.name == name:
                return w
        raise KeyError(f"{namespace}/{name}")


@dataclass(slots=True)
class World:
    """The whole simulated estate for one run."""

    namer: Namer
    start: int
    end: int
    clusters: list[Cluster]
    teams: list[Team]
    humans: list[Human]
    okta_org: str = "example.okta.com"
    #: ``user`` blocks of the proxy's tokens, by (cluster, pod, rotation): built once per token
    user_cache: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def human(self, email: str) -> Human:
        for h in self.humans:
            if h.email == email:
                return h
        raise KeyError(email)


# (namespace, name, service account, replicas, profile, requests per pod-hour, user agent)
_WORKLOADS: list[tuple[str, str, str, int, str, float, str]] = [
    ("payments", "api", "api", 3, "app", 40, "payments-api/v2.14.1 (linux/amd64) kubernetes/$Format"),
    ("payments", "worker", "worker", 2, "app", 30, "payments-worker/v2.14.1 (linux/amd64) kubernetes/$Format"),
    ("checkout", "web", "checkout", 3, "app", 30, "checkout/v1.8.0 (linux/amd64) kubernetes/$Format"),
    ("search", "indexer", "indexer", 2, "app", 50, "indexer/v0.9.3 (linux/amd64) kubernetes/$Format"),
    ("search", "query", "query", 3, "app", 25, "query/v0.9.3 (linux/amd64) kubernetes/$Format"),
    ("catalog", "catalog-api", "catalog", 2, "app", 30, "catalog/v3.1.2 (linux/amd64) kubernetes/$Format"),
    ("analytics", "etl", "etl", 1, "app", 30, "etl/v1.0.7 (linux/amd64) kubernetes/$Format"),
    ("monitoring", "prometheus", "prometheus", 1, "prometheus", 80, "prometheus/v2.54.1"),
    ("monitoring", "kube-state-metrics", "kube-state-metrics", 1, "ksm", 60,
     "kube-state-metrics/v2.13.0 (linux/amd64) kubernetes/$Format"),
    ("ingress-nginx", "ingress-nginx-controller", "ingress-nginx", 2, "ingress", 40,
     "nginx-ingress-controller/v1.11.2 (linux/amd64) ingress-nginx/46e76e5916813cfca2a9b0bfdc34b69a0000f6b9"),
    ("cert-manager", "cert-manager", "cert-manager", 1, "certmanager", 50,
     "cert-manager-controller/v1.15.3 (linux/amd64) cert-manager/0a5f5b3b8d2c"),
    ("kube-system", "coredns", "coredns", 2, "coredns", 20, "coredns/v1.11.3 (linux/amd64) kubernetes/$Format"),
    ("pomerium", "pomerium-authorize", "pomerium-authorize", 2, "pomerium", 2,
     "pomerium/v0.28.0 (linux/amd64) kubernetes/$Format"),
]

_TEAMS: list[tuple[str, list[str], bool]] = [
    ("payments", ["payments", "checkout"], False),
    ("search", ["search", "catalog"], False),
    ("data", ["analytics"], False),
    ("platform", ["monitoring", "ingress-nginx", "cert-manager", "kube-system", "ci", "pomerium"], True),
]

_PEOPLE: list[tuple[str, str]] = [
    ("alice.nguyen", "payments"), ("bob.schmidt", "payments"), ("carol.okafor", "payments"),
    ("dan.kowalski", "payments"), ("erin.santos", "search"), ("farid.haddad", "search"),
    ("grace.liu", "search"), ("hiro.tanaka", "search"), ("ines.moreau", "data"),
    ("jamal.wright", "data"), ("kate.oconnor", "platform"), ("leo.rossi", "platform"),
    ("maya.patel", "platform"), ("nora.berg", "payments"), ("omar.farouk", "search"),
    ("paula.mendes", "data"),
]

_KUBECTL_UAS = [
    "kubectl/v1.31.2 (darwin/arm64) kubernetes/5864a46",
    "kubectl/v1.32.1 (darwin/arm64) kubernetes/e9c9be4",
    "kubectl/v1.30.5 (linux/amd64) kubernetes/74e84a9",
    "k9s/v0.32.5 (darwin/arm64) kubernetes/$Format",
]

NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease", "payments", "checkout", "search",
              "catalog", "analytics", "monitoring", "ingress-nginx", "cert-manager", "ci", "pomerium"]


def _sa_uid(namer: Namer, cluster: str, ns: str, sa: str) -> str:
    return namer.uuid("sa", cluster, ns, sa)


def new_pod(namer: Namer, rng: random.Random, cluster: Cluster, w: Workload, node: Node, created_at: int,
            period_start: int, serial: int) -> Pod:
    """A pod of ``w`` on ``node``; a pod already running at the start has a random token phase."""
    name = f"{w.name}-{w.rs_hash}-{namer.pod_suffix('pod', cluster.name, w.namespace, w.name, serial)}"
    rot = created_at if created_at > period_start else period_start - int(rng.random() * TOKEN_ROTATE_US)
    return Pod(name=name, uid=namer.uuid("poduid", cluster.name, name), workload=w, node=node,
               ip=node.allocate_ip(cluster.index), created_at=created_at, rot_offset=rot)


def build_world(seed: int, cluster_names: list[str], start: int, days: int) -> World:
    """Build the population for ``cluster_names`` over ``days`` days from ``start`` (µs UTC)."""
    namer = Namer(seed)
    rng = random.Random(f"{seed}/world")  # noqa: S311 - synthetic data, reproducible by seed
    end = start + days * DAY
    teams = [Team(name=n, group_id="00g" + namer.b62(17, "group", n), namespaces=list(ns), cluster_admin=adm)
             for n, ns, adm in _TEAMS]
    by_team = {t.name: t for t in teams}
    clusters: list[Cluster] = []
    for ci, cname in enumerate(cluster_names, start=1):
        cp = Node(name=f"{cname}-control-plane-0", index=0, ip=f"10.{ci}.0.2",
                  uid=namer.uuid("nodeuid", cname, "cp"), cert_hash=namer.sha256_hex("cert", cname, "cp"),
                  pod_octet=63, control_plane=True)
        n_nodes = 6
        nodes = []
        for k in range(n_nodes):
            nname = f"{cname}-pool-a-{namer.hex(4, 'nodepool', cname)}-{namer.pod_suffix('node', cname, k)}"
            nodes.append(Node(name=nname, index=k, ip=f"10.{ci}.0.{10 + k}", uid=namer.uuid("nodeuid", cname, k),
                              cert_hash=namer.sha256_hex("cert", cname, nname), pod_octet=64 + k))
        workloads = [Workload(namespace=ns, name=n, sa=sa, replicas=r, profile=p, rate_per_pod_hour=rate,
                              user_agent=ua, sa_uid=_sa_uid(namer, cname, ns, sa),
                              rs_hash=namer.hex(10, "rs", cname, ns, n).translate(str.maketrans("0123", "bcdf")))
                     for ns, n, sa, r, p, rate, ua in _WORKLOADS]
        cluster = Cluster(name=cname, index=ci, nodes=nodes, control_plane=cp, workloads=workloads, pods=[],
                          namespaces=list(NAMESPACES), sa_uids={}, host=f"k8s-{cname}.{PROXY_DOMAIN}",
                          route_id=namer.hex(16, "route", cname),
                          route_checksum=int(namer.hex(16, "routesum", cname), 16))
        serial = 0
        for w in workloads:
            placed = rng.sample(nodes, k=min(w.replicas, len(nodes)))
            for node in placed:
                created = start - int((1 + rng.random() * 20) * DAY)
                cluster.pods.append(new_pod(namer, rng, cluster, w, node, created, start, serial))
                serial += 1
        clusters.append(cluster)
    humans = []
    for i, (handle, team) in enumerate(_PEOPLE):
        first, last = handle.split(".")
        names = [c.name for c in clusters]
        # everyone works in the first (production) cluster; most also in one or two others
        used = [names[0]] + [n for j, n in enumerate(names[1:]) if (i + j) % 3 != 2]
        humans.append(Human(email=f"{handle}@example.com", display=f"{first.title()} {last.title()}",
                            okta_id="00u" + namer.b62(17, "okta", handle), team=by_team[team],
                            client_ip=f"192.0.2.{20 + i * 7 % 200}",
                            user_agent=_KUBECTL_UAS[i % len(_KUBECTL_UAS)], clusters=used,
                            activity=0.6 + rng.random() * 0.8))
    return World(namer=namer, start=start, end=end, clusters=clusters, teams=teams, humans=humans)


def session_id(world: World, human: Human, day_index: int, generation: int = 0) -> str:
    """The Pomerium session id a person uses on a given day (one login per working day)."""
    return world.namer.uuid("session", human.email, day_index, generation)


def session_at(world: World, human: Human, t: int) -> str:
    """The Pomerium session id the person holds at ``t``: the day's, renewed at each re-login."""
    day = (t + PROXY_UTC_OFFSET_MINUTES * MINUTE) // DAY
    gen = 0
    for r in human.relogins:
        if r <= t and (r + PROXY_UTC_OFFSET_MINUTES * MINUTE) // DAY == day:
            gen += 1
    return world.namer.uuid("session", human.email, day, gen)


def active_spans(human: Human, lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` without the person's pauses (and nothing from ``active_until`` on)."""
    if human.active_until is not None:
        hi = min(hi, human.active_until - PAUSE_MARGIN_US)
    if hi <= lo:
        return []
    spans = [(lo, hi)]
    for a0, b in human.pauses:
        a = a0 - PAUSE_MARGIN_US  # nothing starts in the minute before a pause
        if b <= lo or a >= hi:
            continue
        out = []
        for x, y in spans:
            if x < a:
                out.append((x, min(y, a)))
            if y > b:
                out.append((max(x, b), y))
        spans = out
    return spans


def okta_session(world: World, human: Human, day_index: int) -> str:
    """Okta ``authenticationContext.externalSessionId`` for the person's login that day."""
    return "102" + world.namer.b62(22, "oktasess", human.email, day_index)


def pod_jti(world: World, cluster: Cluster, pod: Pod, rotation: int) -> str:
    """The ``jti`` of the ``rotation``-th token the kubelet minted for ``pod``."""
    return world.namer.uuid("jti", cluster.name, pod.name, rotation)


def hour_of(t: int) -> int:
    """Hour of day (UTC) for a µs instant."""
    return (t % DAY) // HOUR

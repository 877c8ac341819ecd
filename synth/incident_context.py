"""What every incident family shares: labels, the plan, the planning context and small helpers.

Used by the incident families (:mod:`.incidents_impersonation`, :mod:`.incidents_revocation`,
:mod:`.incidents_reach`, :mod:`.incidents_credentials`) and by :func:`.incidents.plan_incidents`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ztaudit.synth.clock import DAY, HOUR, MINUTE, US, iso_us, weekday
from ztaudit.synth.events import (
    plain_user,
    pod_token_user,
)
from ztaudit.synth.traffic import Buffers
from ztaudit.synth.world import (
    PROXY_UTC_OFFSET_MINUTES,
    Cluster,
    Human,
    Pod,
    World,
    pod_jti,
)

ALL_KINDS: frozenset[str] = frozenset({
    "impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
    "impersonation.unapproved_impersonator", "revocation.not_enforced", "reach.anomalous",
    "credential.stale", "credential.legacy_token", "credential.shared", "credential.off_cluster",
    "impersonation.unapproved_right",  # planted in the RBAC snapshot (:mod:`.rbac`), not in the traffic
})

OFF = PROXY_UTC_OFFSET_MINUTES * MINUTE
#: people (indexes into world.humans) whose accounts may be revoked: no other incident family
#: scripts them, so their pauses never hide another family's evidence
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
class Revocation:
    """One revoking IdP event the generator emits, with what it was planned to show.

    ``revoked_at`` is the Okta ``published`` instant (µs, a whole millisecond); ``restored_at`` the
    ``user.lifecycle.unsuspend`` that ends it, if any. ``label`` is the ``revocation.not_enforced``
    line of ``labels.jsonl`` for it (None for IdP-only people and lines-less cases); the engine sets its
    ``kind`` from the judged status (:mod:`.revocation_truth`).
    """

    event_type: str
    subject: str
    subject_id: str
    revoked_at: int
    kind: str  # "identity" | "session"
    intent: str  # the status it was built to have
    note: str
    cluster: str = ""
    restored_at: int | None = None
    label: Label | None = None


@dataclass(slots=True)
class Plan:
    """Labels with known spans, and stale-credential labels whose span the engine measures."""

    labels: list[Label] = field(default_factory=list)
    stale: list[tuple[Label, Pod, int]] = field(default_factory=list)
    warn_after: dict[int, tuple[int, str]] = field(default_factory=dict)
    revocations: list[Revocation] = field(default_factory=list)

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


class IncidentContext:
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
        self.merge(s)
        return lab

    def merge(self, s: Buffers) -> None:
        """Merge a scratch buffer into the main buffers without labelling it."""
        for name, lines in s.audit.items():
            self.bufs.audit[name].extend(lines)
        self.bufs.proxy.extend(s.proxy)
        self.bufs.okta.extend(s.okta)
        self.bufs.pomerium_identity.extend(s.pomerium_identity)
        self.bufs.uses.extend(s.uses)


def pod_named(c: Cluster, ns: str, name: str, k: int = 0) -> Pod:
    pods = [p for p in c.pods if p.workload.namespace == ns and p.workload.name == name]
    return pods[k % len(pods)]


def pod_user(w: World, c: Cluster, p: Pod, t: int) -> str:
    return pod_token_user(p.workload.username, p.workload.sa_uid, p.workload.namespace,
                          pod_jti(w, c, p, p.rotation(t)), p.name, p.uid, p.node.name, p.node.uid)


def spread(ctx: IncidentContext, t: int, n: int, minutes: float) -> Iterator[int]:
    """``n`` increasing instants from ``t`` over about ``minutes`` minutes."""
    for _ in range(n):
        yield t
        t += int((0.2 + ctx.rng.random()) * minutes / max(1, n) * MINUTE)


def oidc_user(h: Human) -> str:
    """A person authenticated directly by the API server's OIDC authenticator: no impersonation."""
    return plain_user(h.email, [*h.groups, "system:authenticated"])

"""Labelled incidents and near-misses, injected into the background traffic.

Each detector id (docs/design.md "Detector ids") gets at least three incident instances when the run
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
from collections.abc import Callable

from ztaudit.synth.incident_context import IncidentContext, Plan
from ztaudit.synth.incidents_credentials import (
    dormant_admin_cert,
    legacy_token,
    off_cluster,
    rotation_near_misses,
    shared,
    stale,
)
from ztaudit.synth.incidents_impersonation import (
    correlation_near_misses,
    proxy_bypass,
    proxy_sa_direct,
    unapproved,
    unbrokered,
    unobserved,
)
from ztaudit.synth.incidents_reach import new_namespace, reach, scale_out
from ztaudit.synth.incidents_revocation import revocations
from ztaudit.synth.traffic import Buffers
from ztaudit.synth.world import (
    World,
)

_Step = tuple[str, int, Callable[[IncidentContext, int], None]]

_STEPS: list[_Step] = [
    ("revocation.not_enforced", 1, revocations),
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
    ctx = IncidentContext(world, rng, bufs, plan)
    for kind, n, fn in _STEPS:
        if kind in kinds:
            for i in range(n):
                fn(ctx, i)
    if kinds & {"credential.stale", "credential.shared", "reach.anomalous"}:
        rotation_near_misses(ctx)
    if "credential.stale" in kinds:
        dormant_admin_cert(ctx)
    plan.labels = [lab for lab in plan.labels if lab.detector in kinds]
    plan.revocations.sort(key=lambda r: (r.revoked_at, r.subject))
    return plan

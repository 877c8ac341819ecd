"""``impersonation.unapproved_right``: who RBAC allows to impersonate, against the approved impersonators.

Called by ``ztaudit detect`` (every run: it reads the latest RBAC snapshot per cluster, so it finds a
right the day the snapshot is ingested, whether or not it was ever used) and by ``report nhi`` (the
"who may impersonate it" column, :func:`impersonators_of`). Without an ingested snapshot it returns
nothing; a SQL error propagates and fails this detector alone.

What counts as an impersonation right (the impersonation filter's checks,
``k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``; docs/kubernetes-audit.md §6): the
verb ``impersonate`` (or ``*``) on ``users``, ``groups`` or ``serviceaccounts`` in the core API
group ``""`` and on ``uids`` or ``userextras/<key>`` in ``authentication.k8s.io``; ``*`` matches
any group, resource and verb, so a rule ``*`` / ``*`` / ``*`` (``cluster-admin``) is one. A
service account is impersonated through ``serviceaccounts`` in its own namespace, so a RoleBinding
(the built-in ``edit`` and ``admin`` ClusterRoles include ``impersonate serviceaccounts``) gives
that right in its namespace only; ``resourceNames`` limit whom. Rules are evaluated with
:func:`ztaudit.detectors.rbac.covers`, the RBAC matcher of granted-vs-used.

One finding per cluster and subject (a user, a service account or a group), whatever the number of
bindings and rules behind it: the evidence lists every ``rbac_grant`` reference (binding, role,
rule) and, when the right was used in the window, up to ``detect.max_evidence`` audit events in
which that identity (or, for a group, a member of it) impersonated someone. Severity ``high`` if
used, ``medium`` otherwise. The finding's context says which targets (``users``, ``groups``,
``serviceaccounts``, ``uids``, ``userextras``), where (``cluster-wide`` or the namespaces), whether
it comes from a full wildcard rule (``cluster_admin_equivalent``), and for a group the members the
audit log showed.

Not reported: an approved impersonator for the cluster (``impersonation.approved_impersonators``,
its own list plus ``*``), and the group ``system:masters``. Kubernetes authorizes
``system:masters`` before RBAC is consulted (it is hard-wired in the API server; the
``cluster-admin`` binding to it that kubeadm creates changes nothing and cannot be usefully
removed), so a finding about it would appear on every cluster every day and say nothing a user can
fix. Members of ``system:masters`` who actually impersonate are found by
``impersonation.unapproved_impersonator``; other subjects bound to ``cluster-admin`` are reported
here, once each, marked ``cluster_admin_equivalent``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final

from ztaudit.core.window import Window
from ztaudit.detectors.base import DetectContext, Finding, Severity, audit_ref
from ztaudit.detectors.engine import Engine
from ztaudit.detectors.rbac import Rule, Use, covers, latest_grants

DETECTOR: Final = "impersonation.unapproved_right"
AUTHN_GROUP: Final = "authentication.k8s.io"
#: The group the API server authorizes before RBAC (see the module docstring).
MASTERS: Final = "system:masters"
#: Probes for the impersonation targets: (target, API group, resource, subresource); a keyed extra
#: is ``userextras/<key>``, so its probe asks for any key.
TARGETS: Final = (("users", "", "users", None), ("groups", "", "groups", None),
                  ("serviceaccounts", "", "serviceaccounts", None), ("uids", AUTHN_GROUP, "uids", None),
                  ("userextras", AUTHN_GROUP, "userextras", "*"))


def rule_of(g: dict[str, Any]) -> Rule:
    """The :class:`~ztaudit.detectors.rbac.Rule` of one ``rbac_grant`` row."""
    return Rule(tuple(g["verbs"] or ()), tuple(g["api_groups"] or ()), tuple(g["resources"] or ()),
                tuple(g["resource_names"] or ()), tuple(g["non_resource_urls"] or ()), g["scope_namespace"])


def impersonation_targets(rule: Rule) -> list[str]:
    """The targets (``users``, ``groups``, ...) ``rule`` lets its subject impersonate, any name.

    A ``resourceNames`` list narrows whom, not whether: the probe is made with the rule's first
    name when it has some. A ``userextras`` rule may name the extra as ``userextras/<key>``.
    """
    out = []
    name = rule.resource_names[0] if rule.resource_names else None
    for target, group, resource, sub in TARGETS:
        # only serviceaccounts are namespaced: a RoleBinding's users/groups/uids rights are void
        ns = rule.scope_namespace if resource == "serviceaccounts" else None
        probe = Use("impersonate", group, resource, sub, ns, name, None, 1)
        extra = [r for r in rule.resources if r.startswith("userextras/")] if resource == "userextras" else []
        if covers(rule, probe) or (extra and covers(rule, Use("impersonate", group, resource, extra[0][11:], ns,
                                                                  name, None, 1))):
            out.append(target)
    return out


def is_wildcard(rule: Rule) -> bool:
    """A rule of ``*`` verbs on ``*`` resources in ``*`` groups: cluster-admin equivalent."""
    return "*" in rule.verbs and "*" in rule.resources and "*" in rule.api_groups


def grant_ref(g: dict[str, Any]) -> str:
    """An evidence reference to one ``rbac_grant`` row: binding, role and rule index."""
    ns = f"{g['binding_namespace']}/" if g["binding_namespace"] else ""
    return (f"rbac_grant:{g['cluster']}/{g['binding_kind']}/{ns}{g['binding_name']}"
            f"/{g['role_kind']}/{g['role_name']}#{g['rule_index']}")


@dataclass
class Right:
    """What one subject of one cluster may impersonate, and through which grants."""

    cluster: str | None
    subject_kind: str
    subject: str
    targets: set[str] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)  # "cluster-wide" or namespaces
    resource_names: set[str] = field(default_factory=set)
    unrestricted: bool = False  # some rule names no resourceNames
    wildcard: bool = False
    refs: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


def impersonation_rights(grants: list[dict[str, Any]]) -> list[Right]:
    """Every subject of ``grants`` (rows of ``rbac_grant``) with an impersonation right, sorted."""
    rights: dict[tuple[str | None, str, str], Right] = {}
    for g in grants:
        if not g["role_found"]:
            continue
        rule = rule_of(g)
        targets = impersonation_targets(rule)
        if not targets:
            continue
        key = (g["cluster"], g["subject_kind"], g["subject"])
        r = rights.setdefault(key, Right(*key))
        r.targets.update(targets)
        r.scopes.add(rule.scope_namespace or "cluster-wide")
        r.resource_names.update(rule.resource_names)
        r.unrestricted |= not rule.resource_names
        r.wildcard |= is_wildcard(rule)
        r.refs.append(grant_ref(g))
        r.rules.append(rule)
    return [rights[k] for k in sorted(rights, key=lambda k: (str(k[0]), k[1], k[2]))]


def impersonators_of(rights: list[Right], cluster: str | None, identity: str) -> list[str]:
    """Subjects (``Kind name``) of ``cluster`` that may impersonate ``identity``, ``system:masters`` left out.

    A service account is impersonated as ``serviceaccounts`` in its namespace with its name; any
    other user (a node) as ``users`` with its name (the impersonation filter's attributes).
    """
    if identity.startswith("system:serviceaccount:"):
        _, _, ns, name = identity.split(":", 3)
        probe = Use("impersonate", "", "serviceaccounts", None, ns, name, None, 1)
    else:
        probe = Use("impersonate", "", "users", None, None, identity, None, 1)
    return [f"{r.subject_kind} {r.subject}" for r in rights
            if r.cluster == cluster and r.subject != MASTERS and any(covers(rule, probe) for rule in r.rules)]


def _uses(engine: Engine, window: Window, cap: int) -> list[dict[str, Any]]:
    """Per cluster and impersonator: its groups and the first ``cap`` impersonated requests."""
    params: dict[str, Any] = {**window.params(), "cap": cap}
    return engine.records(f"""
        SELECT cluster, impersonator, list_distinct(flatten(list(coalesce(user_groups, [])))) AS groups,
               min(request_received_at) AS first_seen, max(request_received_at) AS last_seen, count(*) AS requests,
               list(audit_id ORDER BY request_received_at, audit_id)[1:$cap] AS audit_ids,
               -- the first 20 by name: an unordered list's first 20 are whichever rows came first
               list(DISTINCT impersonated_user ORDER BY impersonated_user)[1:20] AS targets
        FROM k8s_requests
        WHERE impersonator IS NOT NULL AND {Window.sql("request_received_at")}
        GROUP BY cluster, impersonator""", params)


class UnapprovedRight:
    """RBAC lets an identity impersonate and it is not an approved impersonator (used or not)."""

    id: ClassVar[str] = DETECTOR
    description: ClassVar[str] = ("an identity that RBAC allows to impersonate users, groups, service accounts "
                                  "or uids and that is not an approved impersonator, used or not")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """One finding per cluster and unapproved subject with an impersonation right (module docstring)."""
        grants = latest_grants(ctx.engine, ctx.until)
        if not grants:
            return []
        window = Window(ctx.since, ctx.until)
        cap = ctx.config.detect.max_evidence
        uses = _uses(ctx.engine, window, cap)
        by_user: dict[tuple[str | None, str], dict[str, Any]] = {(u["cluster"], u["impersonator"]): u for u in uses}
        by_group: dict[tuple[str | None, str], list[dict[str, Any]]] = defaultdict(list)
        for u in uses:
            for grp in u["groups"] or []:
                by_group[(u["cluster"], grp)].append(u)
        snapshot_at = max(g["snapshot_at"] for g in grants)
        out = []
        for r in impersonation_rights(grants):
            if r.subject == MASTERS and r.subject_kind == "Group":
                continue
            if r.subject_kind != "Group" and r.subject in ctx.config.approved_for(r.cluster):
                continue
            if r.subject_kind == "Group":
                used = by_group.get((r.cluster, r.subject), [])
            else:
                one = by_user.get((r.cluster, r.subject))
                used = [one] if one else []
            out.append(_finding(r, used, snapshot_at, cap))
        return out


def _finding(r: Right, used: list[dict[str, Any]], snapshot_at: datetime, cap: int) -> Finding:
    where = ", ".join(sorted(r.scopes))
    whom = ", ".join(sorted(r.targets))
    names = "" if r.unrestricted else f" (only {', '.join(sorted(r.resource_names)[:5])})"
    admin = " through a cluster-admin-equivalent wildcard rule" if r.wildcard else ""
    label = f"{r.subject_kind} {r.subject}"
    evidence = list(r.refs[:cap])
    requests = sum(int(u["requests"]) for u in used)
    if used:
        for u in used:
            evidence += [audit_ref(u["cluster"], a) for a in u["audit_ids"]]
        first = min(u["first_seen"] for u in used)
        last = max(u["last_seen"] for u in used)
        summary = (f"{label} may impersonate {whom}{names} ({where}){admin}, is not an approved impersonator, "
                   f"and used it in {requests} requests")
    else:
        first = last = snapshot_at
        summary = (f"{label} may impersonate {whom}{names} ({where}){admin} and is not an approved "
                   "impersonator (not used in the period)")
    context: dict[str, Any] = {
        "subject_kind": r.subject_kind, "targets": sorted(r.targets), "scopes": sorted(r.scopes),
        "resource_names": sorted(r.resource_names) if not r.unrestricted else [],
        "cluster_admin_equivalent": r.wildcard, "grants": len(r.refs), "used_requests": requests,
    }
    if r.subject_kind == "Group":
        context["members_seen_impersonating"] = sorted(str(u["impersonator"]) for u in used)[:20]
    if used:
        context["impersonated"] = sorted({str(t) for u in used for t in (u["targets"] or []) if t})[:20]
    return Finding(DETECTOR, (r.cluster, r.subject_kind, r.subject), Severity.HIGH if used else Severity.MEDIUM,
                   r.subject, summary, first, last, tuple(evidence[: cap * 2]), cluster=r.cluster,
                   namespace=next(iter(r.scopes)) if len(r.scopes) == 1 and "cluster-wide" not in r.scopes
                   else None, context=context)

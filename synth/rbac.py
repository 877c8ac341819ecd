"""The RBAC snapshot of each generated cluster, written after the traffic, and its ground truth.

Called by :func:`ztaudit.synth.engine.generate`: :class:`UsedPermissions` sees every audit line as
it is flushed, then :func:`write_snapshots` writes ``DIR/rbac_snapshot/<cluster>.json`` (what
``kubectl get clusterroles,clusterrolebindings,roles,rolebindings -A -o json`` prints: a ``v1
List``, keys sorted) and returns the labels and the right-sizing truth (``manifest.json``'s ``rbac``).
Nothing here draws from the traffic's random streams, so the logs are the same bytes with or
without it.

What the snapshot grants, per service account (people's team bindings are left out: the snapshot is
about non-human identities, and a team bound to the built-in ``edit``/``admin`` roles may
impersonate service accounts, docs/nhi.md, which would make every team a finding):

* **Exactly what it did**: every permission its allowed requests used in the period (the
  generator's own lines, read back, so incidents count too; a request made *as* it by an impersonator
  counts: RBAC authorizes it as the target), as a Role per namespace it used, or
  one ClusterRole when it made any cluster-scoped request (a cluster-wide rule is used by a
  request in any namespace). Rules are per API group with exactly the verbs used on each resource,
  so the snapshot grants no verb x resource pair that was not used. Impersonated requests grant
  ``impersonate`` on what the API server's impersonation filter checks: ``users`` (or
  ``serviceaccounts`` in the target's namespace) and each group asked for
  (``k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``; the groups the filter adds itself,
  ``system:authenticated`` and ``system:serviceaccounts[:NS]``, are not checked).
* **Unused extras** for a seeded third of the workload service accounts: one or two rules of
  verbs they never used (listed in the truth as ``report nhi`` labels its unused pairs).
* With the incident kind ``impersonation.unapproved_right``: the CI deployer is bound to the
  built-in ``edit`` ClusterRole in the team namespaces, as the audit log's authorization reasons
  say (``RoleBinding "ci-deployer/<ns>" of ClusterRole "edit"``); ``edit`` includes ``impersonate``
  on ``serviceaccounts``, so CI may act as any workload there. And the first cluster keeps the
  ClusterRole of a retired OIDC proxy (``kube-oidc:kube-oidc-proxy``, impersonate users, groups and
  service accounts), never seen in the log.

Every subject other than the approved impersonator (the Pomerium service account) that may
impersonate is labelled an ``impersonation.unapproved_right`` incident in ``labels.jsonl``
(``first_seen``/``last_seen`` = the period: the snapshot's grant holds throughout; the finding is
timed at the snapshot). The truth, one line per cluster and service account in the snapshot or the
log: ``cluster, identity, seen, in_snapshot, over_privileged, extras`` (the unused grants as ``report
nhi`` words them, or ``["ClusterRole edit"]`` for the CI deployer), ``impersonation_right``, ``note``.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from ztaudit.synth.clock import iso_us
from ztaudit.synth.incident_context import Label
from ztaudit.synth.world import POMERIUM_USER, World

#: Folder of ``--out`` holding one snapshot per cluster (``<cluster>.json``).
RBAC_DIR: Final = "rbac_snapshot"
DETECTOR: Final = "impersonation.unapproved_right"
SA_PREFIX: Final = "system:serviceaccount:"
RBAC_API: Final = "rbac.authorization.k8s.io"
#: Groups the impersonation filter adds itself (not authorized with ``impersonate``).
ADDED_GROUPS: Final = ("system:authenticated", "system:serviceaccounts")
CI_USER: Final = "system:serviceaccount:ci:deployer"
CI_NAMESPACES: Final = ("payments", "checkout", "search", "catalog")
RETIRED_PROXY: Final = ("kube-oidc", "kube-oidc-proxy")
#: Share of workload service accounts given unused extras (seeded choice).
EXTRA_SHARE: Final = 1 / 3
#: Candidate extras: (API group, resource, verbs); only pairs the account never used are added.
EXTRAS: Final = (("", "secrets", ("list", "watch")), ("", "pods/exec", ("create",)),
                 ("apps", "deployments", ("patch", "delete")), ("", "configmaps", ("update", "delete")))

_RO = ["get", "list", "watch"]
_RW = ["create", "delete", "deletecollection", "patch", "update"]
#: The built-in ``edit`` ClusterRole (kubernetes bootstrap policy, aggregated; abridged to the core,
#: apps, batch and networking rules), with its ``impersonate serviceaccounts`` rule.
EDIT_RULES: Final = [
    {"apiGroups": [""], "resources": ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets",
                                      "services/proxy"], "verbs": _RO},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
    {"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
     "verbs": _RW},
    {"apiGroups": [""], "resources": ["configmaps", "events", "persistentvolumeclaims", "secrets", "serviceaccounts",
                                      "services"], "verbs": _RW},
    {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments", "deployments/rollback", "deployments/scale",
                                          "replicasets", "statefulsets"], "verbs": _RW},
    {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": _RW},
    {"apiGroups": [""], "resources": ["configmaps", "endpoints", "events", "persistentvolumeclaims", "pods",
                                      "pods/log", "serviceaccounts", "services"], "verbs": _RO},
    {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments", "deployments/scale", "replicasets",
                                          "statefulsets"], "verbs": _RO},
    {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": _RO},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": _RO + _RW},
]
RETIRED_PROXY_RULES: Final = [
    {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
    {"apiGroups": ["authentication.k8s.io"], "resources": ["userextras/scopes"], "verbs": ["impersonate"]},
]

#: (verb, API group, resource[/subresource] or URL, namespace or None); a URL's group is "-".
Perm = tuple[str, str, str, str | None]


@dataclass(slots=True)
class UsedPermissions:
    """Every service account's allowed permissions, and every service account seen, per cluster."""

    used: dict[tuple[str, str], set[Perm]] = field(default_factory=lambda: defaultdict(set))
    seen: set[tuple[str, str]] = field(default_factory=set)

    def observe(self, cluster: str, lines: Iterable[tuple[int, str]]) -> None:
        """Read the audit ``lines`` of ``cluster`` about to be written (only service-account lines are parsed).

        A line counts as allowed as ``report nhi`` counts it (``ztaudit.detectors.rbac.AUTHORIZED``):
        the ``authorization.k8s.io/decision`` annotation when present, else a response other than
        401, 403 and 429 (a ``RequestReceived`` stage has neither: allowed). A service account
        impersonated by someone is seen, like one that made the request itself.
        """
        for _, line in lines:
            if SA_PREFIX not in line:
                continue
            e = orjson.loads(line)
            user = e["user"]["username"]
            if not user.startswith(SA_PREFIX):
                continue
            imp = e.get("impersonatedUser")
            if imp is None:
                self.seen.add((cluster, user))
            elif str(imp.get("username", "")).startswith(SA_PREFIX):
                self.seen.add((cluster, str(imp["username"])))
            code = (e.get("responseStatus") or {}).get("code", 200)
            decision = (e.get("annotations") or {}).get("authorization.k8s.io/decision")
            if (decision != "allow") if decision is not None else code in (401, 403, 429):
                continue
            self.seen.add((cluster, user))
            mine = self.used[(cluster, user)]
            if imp is not None:
                target = str(imp["username"])
                if target.startswith(SA_PREFIX):
                    mine.add(("impersonate", "", "serviceaccounts", target.split(":")[2]))
                else:
                    mine.add(("impersonate", "", "users", None))
                for g in imp.get("groups") or []:
                    if g not in ADDED_GROUPS and not g.startswith("system:serviceaccounts:"):
                        mine.add(("impersonate", "", "groups", None))
                if not target.startswith(SA_PREFIX):
                    continue
                mine = self.used[(cluster, target)]  # RBAC authorizes the request itself as the target
            ref = e.get("objectRef")
            if ref is None or not ref.get("resource"):
                mine.add((e["verb"], "-", e["requestURI"].split("?", 1)[0], None))
                continue
            res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            mine.add((e["verb"], ref.get("apiGroup", ""), res, ref.get("namespace") or None))


def _meta(cluster: str, name: str, ns: str | None, created: str,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"creationTimestamp": created, "name": name,
                         "resourceVersion": str(10_000 + uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster}/{ns}/{name}").int
                                                % 900_000),
                         "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ztaudit-synth/{cluster}/{ns}/{name}"))}
    if ns:
        m["namespace"] = ns
    if labels:
        m["labels"] = labels
    return m


def _rules(perms: Iterable[Perm]) -> list[dict[str, Any]]:
    """RBAC rules granting exactly ``perms`` (one scope): resources share a rule only with the same verbs."""
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for verb, group, res, _ in perms:
        verbs[(group, res)].add(verb)
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (group, res), vs in sorted(verbs.items()):
        merged[(group, tuple(sorted(vs)))].append(res)
    out = []
    for (group, verb_list), resources in sorted(merged.items()):
        if group == "-":
            out.append({"nonResourceURLs": sorted(resources), "verbs": list(verb_list)})
        else:
            out.append({"apiGroups": [group], "resources": sorted(resources), "verbs": list(verb_list)})
    return out


def _unused_labels(rules: Sequence[dict[str, Any]], ns: str | None) -> list[str]:
    """The pairs of ``rules`` as ``report nhi`` words unused grants (``verb group/resource in NS``)."""
    where = f" in {ns}" if ns else ""
    return [f"{v} {g + '/' if g else ''}{r}{where}" for rule in rules for v in rule["verbs"]
            for g in rule["apiGroups"] for r in rule["resources"]]


@dataclass(slots=True)
class _Builder:
    """The objects of one cluster's snapshot, in the order kubectl prints them."""

    cluster: str
    created: str
    items: list[dict[str, Any]] = field(default_factory=list)
    names: set[tuple[str, str | None, str]] = field(default_factory=set)

    def name(self, kind: str, ns: str | None, want: str) -> str:
        n, k = want, 2
        while (kind, ns, n) in self.names:
            n, k = f"{want}-{k}", k + 1
        self.names.add((kind, ns, n))
        return n

    def grant(self, sa: str, role_name: str, ns: str | None, rules: list[dict[str, Any]],
              labels: dict[str, str] | None = None) -> None:
        """A Role (``ns``) or ClusterRole and its binding to ``sa`` (``system:serviceaccount:NS:NAME``)."""
        kind = "Role" if ns else "ClusterRole"
        name = self.name(kind, ns, role_name)
        self.items.append({"apiVersion": f"{RBAC_API}/v1", "kind": kind,
                           "metadata": _meta(self.cluster, name, ns, self.created, labels), "rules": rules})
        self.bind(sa, kind, name, ns)

    def bind(self, sa: str, role_kind: str, role_name: str, ns: str | None, binding: str | None = None) -> None:
        _, _, sa_ns, sa_name = sa.split(":", 3)
        kind = "RoleBinding" if ns else "ClusterRoleBinding"
        name = self.name(kind, ns, binding or role_name)
        self.items.append({"apiVersion": f"{RBAC_API}/v1", "kind": kind,
                           "metadata": _meta(self.cluster, name, ns, self.created),
                           "roleRef": {"apiGroup": RBAC_API, "kind": role_kind, "name": role_name},
                           "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}]})

    def document(self) -> dict[str, Any]:
        order = {"ClusterRole": 0, "ClusterRoleBinding": 1, "Role": 2, "RoleBinding": 3}
        items = sorted(self.items, key=lambda o: (order[o["kind"]], o["metadata"].get("namespace", ""),
                                                  o["metadata"]["name"]))
        return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


def _role_names(world: World) -> dict[str, str]:
    """The role name the audit log's authorization reasons use per service account, where it has one."""
    out = {CI_USER: "ci-deployer"}
    for c in world.clusters:
        for w in c.workloads:
            out.setdefault(w.username, w.name)
    for ctl in ("replicaset-controller", "deployment-controller", "endpointslice-controller"):
        out[f"{SA_PREFIX}kube-system:{ctl}"] = f"system:controller:{ctl}"
    return out


def write_snapshots(out_dir: Path, world: World, used: UsedPermissions, seed: int,
                    plant_rights: bool) -> tuple[list[Label], list[dict[str, Any]], dict[str, str]]:
    """Write every cluster's snapshot; return (labels, truth rows, files by cluster) (module docstring)."""
    folder = out_dir / RBAC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}/rbac")  # noqa: S311 - synthetic data, reproducible by seed
    names = _role_names(world)
    workloads = {w.username for c in world.clusters for w in c.workloads if w.profile != "pomerium"}
    extra_for = {u for u in sorted(workloads) if rng.random() < EXTRA_SHARE}
    created = iso_us(world.start - 90 * 86_400_000_000)[:19] + "Z"
    labels: list[Label] = []
    truth: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for ci, c in enumerate(world.clusters):
        b = _Builder(c.name, created)
        sas = sorted({sa for (cl, sa) in used.used if cl == c.name}
                     | {sa for (cl, sa) in used.seen if cl == c.name}
                     | ({CI_USER} if plant_rights else set()))
        rights: dict[str, str] = {}
        for sa in sas:
            perms = used.used.get((c.name, sa), set())
            extras: list[str] = []
            note = "granted exactly what it used"
            if sa == CI_USER and plant_rights:
                for ns in CI_NAMESPACES:
                    b.bind(sa, "ClusterRole", "edit", ns, binding="ci-deployer")
                perms = {p for p in perms if p[3] not in CI_NAMESPACES or not _in_edit(p)}
                extras, note = ["ClusterRole edit"], ("bound to the built-in edit ClusterRole in "
                                                      f"{', '.join(CI_NAMESPACES)}: far more than a deploy job uses")
                rights[sa] = (f"may impersonate service accounts in {', '.join(CI_NAMESPACES)} through the "
                              "built-in edit ClusterRole")
            if not perms and not extras:
                truth.append({"cluster": c.name, "identity": sa, "seen": True, "in_snapshot": False,
                              "over_privileged": False, "extras": [], "impersonation_right": False,
                              "note": "seen, but no allowed request: no grant in the snapshot"})
                continue
            cluster_wide = any(p[3] is None for p in perms)
            role = names.get(sa, sa.split(":")[3])
            if cluster_wide:
                rules = _rules(perms)
                if sa in extra_for:
                    added = _extras(perms, None, rng)
                    rules += added
                    extras += _unused_labels(added, None)
                if rules:
                    b.grant(sa, role, None, rules)
            else:
                home = sa.split(":")[2]
                by_ns: dict[str, set[Perm]] = defaultdict(set)
                for p in perms:
                    by_ns[str(p[3])].add(p)
                if sa in extra_for:
                    by_ns.setdefault(home, set())
                for ns in sorted(by_ns):
                    rules = _rules(by_ns[ns])
                    if sa in extra_for and ns == home:
                        added = _extras(by_ns[ns], ns, rng)
                        rules += added
                        extras += _unused_labels(added, ns)
                    if rules:
                        b.grant(sa, role, ns, rules)
            if sa in extra_for and extras:
                note = f"granted what it used plus {len(extras)} unused permission(s)"
            if any(p[0] == "impersonate" for p in perms) and sa != POMERIUM_USER:
                rights[sa] = "may impersonate: it impersonated in the period, and the snapshot grants what it used"
            truth.append({"cluster": c.name, "identity": sa, "seen": (c.name, sa) in used.seen, "in_snapshot": True,
                          "over_privileged": bool(extras), "extras": extras, "impersonation_right": sa in rights,
                          "note": note if (c.name, sa) in used.seen else note + "; never seen in the log"})
        if plant_rights and ci == 0:
            ns, name = RETIRED_PROXY
            sa = f"{SA_PREFIX}{ns}:{name}"
            b.grant(sa, name, None, RETIRED_PROXY_RULES, labels={"app.kubernetes.io/name": name})
            rights[sa] = ("may impersonate users, groups and service accounts through a retired OIDC proxy's "
                          "ClusterRole, never used")
            truth.append({"cluster": c.name, "identity": sa, "seen": False, "in_snapshot": True,
                          "over_privileged": True, "extras": _unused_labels(
                              [r for r in RETIRED_PROXY_RULES if "apiGroups" in r], None),
                          "impersonation_right": True, "note": "granted but never seen: " + rights[sa]})
        if plant_rights:  # the built-in role the CI deployer's bindings name
            b.items.append({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {
                f"{RBAC_API}/aggregate-to-edit": "true"}}]}, "apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRole",
                "metadata": {**_meta(c.name, "edit", None, created, {"kubernetes.io/bootstrapping": "rbac-defaults"}),
                             "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
                "rules": EDIT_RULES})
        path = folder / f"{c.name}.json"
        path.write_text(json.dumps(b.document(), indent=4, sort_keys=True) + "\n", encoding="utf-8")
        files[c.name] = f"{RBAC_DIR}/{c.name}.json"
        for sa, why in sorted(rights.items()):
            labels.append(Label(DETECTOR, sa, world.start, world.end, c.name, "incident",
                                f"RBAC snapshot: {why}"))
    return labels, truth, files


def _in_edit(p: Perm) -> bool:
    """True when the built-in ``edit`` rules (:data:`EDIT_RULES`) grant ``p`` (no wildcards there)."""
    verb, group, res, _ = p
    return any(group in r["apiGroups"] and res in r["resources"] and verb in r["verbs"] for r in EDIT_RULES)


def _extras(perms: set[Perm], ns: str | None, rng: random.Random) -> list[dict[str, Any]]:
    """One or two rules of verbs the account never used (``ns`` = their scope)."""
    used = {(v, g, r) for v, g, r, _ in perms}
    out = []
    for group, res, verbs in rng.sample(EXTRAS, k=1 + int(rng.random() < 0.5)):
        unused = [v for v in verbs if (v, group, res) not in used]
        if unused:
            out.append({"apiGroups": [group], "resources": [res], "verbs": unused})
    return out

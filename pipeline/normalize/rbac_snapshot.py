"""``rbac_snapshot`` source kind: an RBAC snapshot → the ``rbac_grant`` table.

Input: the output of ``kubectl get roles,clusterroles,rolebindings,clusterrolebindings -A -o json``,
a ``v1 List`` whose ``items`` are ``Role``, ``ClusterRole``, ``RoleBinding`` and
``ClusterRoleBinding`` objects (``rbac.authorization.k8s.io/v1``). :meth:`unwrap` recognises only
such a List (every item an RBAC kind), so audit events or IdP records are never claimed; the whole
List is one record, because a binding needs the roles of the same snapshot to be resolved.

Output: one ``rbac_grant`` row per subject × rule × binding (the granted side of "granted vs
used", docs/detection-background.md §1.9: audit2rbac gives the used set, Audicia diffs the two):

* a RoleBinding grants in its own namespace (``scope_namespace``), also when it references a
  ClusterRole; a ClusterRoleBinding grants cluster-wide (``scope_namespace`` null);
* subjects are resolved to the names the audit log uses: ``system:serviceaccount:<ns>:<name>``
  for ServiceAccounts (docs/kubernetes-audit.md §5.1), the user or group name otherwise;
* ``can_impersonate`` marks rules with the ``impersonate`` verb on users, groups,
  serviceaccounts, userextras or uids (docs/kubernetes-audit.md §6);
* a binding whose role is not in the snapshot yields one row with ``role_found`` false and empty
  rules, so a dangling binding is visible rather than dropped;
* ``bootstrap`` marks a grant of Kubernetes' own default policy *as shipped*, to a group every
  service account is in (:data:`DEFAULT_GROUP_GRANTS`, from the API server's bootstrap policy,
  ``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go``): the binding and its role have the
  default's name, the subject is one of that binding's default groups, the rule grants nothing the
  default role does not, and both objects carry the policy's label
  ``kubernetes.io/bootstrapping: rbac-defaults`` without ``rbac.authorization.kubernetes.io/autoupdate:
  "false"`` (<https://kubernetes.io/docs/reference/access-authn-authz/rbac/#auto-reconciliation>).
  Names and labels alone prove nothing (anyone who may write RBAC objects sets them, and
  reconciliation keeps the subjects and rules an administrator added): a group added to the
  ``cluster-admin`` binding, or a rule added to ``system:basic-user``, is not a default.

The snapshot time is the ingestion time (a List carries none); reports use the latest snapshot
per cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import pyarrow as pa

from ztaudit.core.columns import conform
from ztaudit.core.derived_tables import RBAC_GRANT
from ztaudit.core.quarantine import IgnoreReason, Reason, Rejected
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped

SOURCE: Final = "rbac_snapshot"
TABLE: Final = "rbac_grant"
RBAC_GROUP: Final = "rbac.authorization.k8s.io"
ROLE_KINDS: Final = ("Role", "ClusterRole")
BINDING_KINDS: Final = ("RoleBinding", "ClusterRoleBinding")
RBAC_KINDS: Final = (*ROLE_KINDS, *BINDING_KINDS)
#: Resources whose ``impersonate`` verb lets a subject act as someone else (§6).
IMPERSONATE_RESOURCES: Final = ("users", "groups", "serviceaccounts", "userextras", "uids", "*")

def _is_rbac_item(item: Any) -> bool:
    return (isinstance(item, Mapping) and item.get("kind") in RBAC_KINDS
            and str(item.get("apiVersion", "")).startswith(RBAC_GROUP + "/"))


def _strs(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else []


def subject_username(kind: str, name: str, namespace: str | None, binding_ns: str | None) -> str:
    """The identity string the audit log uses for an RBAC subject."""
    if kind == "ServiceAccount":
        return f"system:serviceaccount:{namespace or binding_ns or ''}:{name}"
    return name


def can_impersonate(verbs: Sequence[str], resources: Sequence[str]) -> bool:
    """True when a rule allows impersonating users, groups, service accounts, extras or uids."""
    return (("impersonate" in verbs or "*" in verbs)
            and any(r.split("/")[0] in IMPERSONATE_RESOURCES for r in resources))


BOOTSTRAP_LABEL: Final = ("kubernetes.io/bootstrapping", "rbac-defaults")
AUTOUPDATE: Final = "rbac.authorization.kubernetes.io/autoupdate"


def is_bootstrap(metadata: Any) -> bool:
    """An object of the API server's default policy, still reconciled by it (module docstring)."""
    if not isinstance(metadata, Mapping):
        return False
    labels, notes = metadata.get("labels"), metadata.get("annotations")
    key, value = BOOTSTRAP_LABEL
    return (isinstance(labels, Mapping) and labels.get(key) == value
            and not (isinstance(notes, Mapping) and str(notes.get(AUTOUPDATE, "")).lower() == "false"))


#: The bootstrap policy's ClusterRoleBindings to groups a service account is in, by name (binding and
#: ClusterRole share it): (default subject groups, the role's rules as (verbs, apiGroups, resources,
#: nonResourceURLs)). Kubernetes 1.20+ (the URLs of system:discovery and system:public-info-viewer).
DEFAULT_GROUP_GRANTS: Final[dict[str, tuple[frozenset[str], tuple[tuple[frozenset[str], ...], ...]]]] = {
    "system:basic-user": (frozenset({"system:authenticated"}), (
        (frozenset({"create"}), frozenset({"authorization.k8s.io"}),
         frozenset({"selfsubjectaccessreviews", "selfsubjectrulesreviews"}), frozenset()),
        (frozenset({"create"}), frozenset({"authentication.k8s.io"}), frozenset({"selfsubjectreviews"}),
         frozenset()))),
    "system:discovery": (frozenset({"system:authenticated"}), (
        (frozenset({"get"}), frozenset(), frozenset(),
         frozenset({"/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                    "/readyz", "/version", "/version/"})),)),
    "system:public-info-viewer": (frozenset({"system:authenticated", "system:unauthenticated"}), (
        (frozenset({"get"}), frozenset(), frozenset(),
         frozenset({"/healthz", "/livez", "/readyz", "/version", "/version/"})),)),
    "system:service-account-issuer-discovery": (frozenset({"system:serviceaccounts"}), (
        (frozenset({"get"}), frozenset(), frozenset(),
         frozenset({"/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                    "/openid/v1/jwks", "/openid/v1/jwks/"})),)),
}


def is_default_group_grant(binding_kind: str, binding: str, role_kind: str, role: str, subject_kind: str,
                           subject: str, rule: Mapping[str, Any]) -> bool:
    """Whether one rule of one binding's subject is a grant of the bootstrap policy as shipped
    (:data:`DEFAULT_GROUP_GRANTS`; the labels are checked by the caller)."""
    default = DEFAULT_GROUP_GRANTS.get(binding)
    if (default is None or binding_kind != "ClusterRoleBinding" or role_kind != "ClusterRole" or role != binding
            or subject_kind != "Group" or subject not in default[0] or _strs(rule.get("resourceNames"))):
        return False
    got = (set(_strs(rule.get("verbs"))), set(_strs(rule.get("apiGroups"))), set(_strs(rule.get("resources"))),
           set(_strs(rule.get("nonResourceURLs"))))
    return any(all(g <= d for g, d in zip(got, allowed, strict=True)) for allowed in default[1])


def grants(items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Grant rows for RBAC objects (roles and bindings of one snapshot) and problems found."""
    roles: dict[tuple[str, str | None, str], list[Mapping[str, Any]]] = {}
    default_roles: set[tuple[str, str | None, str]] = set()
    problems: list[str] = []
    for it in items:
        if it.get("kind") in ROLE_KINDS:
            md = it.get("metadata") or {}
            ns = md.get("namespace") if it["kind"] == "Role" else None
            rules = it.get("rules") or []
            key = (str(it["kind"]), ns, str(md.get("name", "")))
            roles[key] = [r for r in rules if isinstance(r, Mapping)]
            if is_bootstrap(md):
                default_roles.add(key)
    rows: list[dict[str, Any]] = []
    for it in items:
        if it.get("kind") not in BINDING_KINDS:
            continue
        md = it.get("metadata") or {}
        bname, bns = md.get("name"), md.get("namespace") if it["kind"] == "RoleBinding" else None
        ref = it.get("roleRef") or {}
        rkind, rname = ref.get("kind"), ref.get("name")
        if not bname or rkind not in ROLE_KINDS or not rname:
            problems.append(f"{it['kind']} {bns or ''}/{bname}: missing name or roleRef")
            continue
        role_key = (rkind, bns if rkind == "Role" else None, rname)
        rules = roles.get(role_key)
        labelled = is_bootstrap(md) and role_key in default_roles
        for subj in it.get("subjects") or []:
            if not isinstance(subj, Mapping) or not subj.get("kind") or not subj.get("name"):
                problems.append(f"{it['kind']} {bns or ''}/{bname}: subject without kind or name")
                continue
            base = {
                "subject_kind": subj["kind"], "subject_name": subj["name"],
                "subject_namespace": subj.get("namespace") or (bns if subj["kind"] == "ServiceAccount" else None),
                "subject": subject_username(str(subj["kind"]), str(subj["name"]), subj.get("namespace"), bns),
                "binding_kind": it["kind"], "binding_name": bname, "binding_namespace": bns,
                "role_kind": rkind, "role_name": rname, "scope_namespace": bns, "bootstrap": False,
            }
            if rules is None:
                rows.append({**base, "role_found": False, "verbs": [], "api_groups": [], "resources": [],
                             "resource_names": [], "non_resource_urls": [], "can_impersonate": False})
                continue
            for i, rule in enumerate(rules):
                verbs, res = _strs(rule.get("verbs")), _strs(rule.get("resources"))
                default = labelled and is_default_group_grant(str(it["kind"]), str(bname), str(rkind), str(rname),
                                                              str(subj["kind"]), str(subj["name"]), rule)
                rows.append({**base, "bootstrap": default, "role_found": True, "rule_index": i, "verbs": verbs,
                             "api_groups": _strs(rule.get("apiGroups")), "resources": res,
                             "resource_names": _strs(rule.get("resourceNames")),
                             "non_resource_urls": _strs(rule.get("nonResourceURLs")),
                             "can_impersonate": can_impersonate(verbs, res)})
    return rows, problems


class RbacSnapshotNormalizer:
    """Normalizer for the ``rbac_snapshot`` source kind (see the module docstring)."""

    source: ClassVar[str] = SOURCE

    def unwrap(self, value: Any) -> list[Unwrapped] | None:
        """The whole List as one record when it is a non-empty List of RBAC objects, else None."""
        if not isinstance(value, Mapping) or not str(value.get("kind", "")).endswith("List"):
            return None
        items = value.get("items")
        if not isinstance(items, list) or not items or not all(_is_rbac_item(i) for i in items):
            return None
        return [Unwrapped(record=value, form="rbac_list")]

    def parse_text(self, line: str) -> list[Unwrapped] | None:
        """RBAC snapshots are JSON only."""
        return None

    def ignore(self, value: Any, text: str | None) -> IgnoreReason | None:
        """Nothing is ignored as an RBAC snapshot."""
        return None

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Grant rows for each snapshot List; a List whose bindings cannot be read is rejected."""
        now = ctx.ingested_at or datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        rejected: list[Rejected] = []
        for item, origin in zip(records, origins, strict=True):
            rec = item.record
            items = rec.get("items") if isinstance(rec, Mapping) else None
            if not isinstance(items, list) or not all(_is_rbac_item(i) for i in items):
                raw = json.dumps(rec, default=str).encode()
                rejected.append(Rejected(origin, Reason.UNKNOWN_SHAPE, "not a List of RBAC objects", raw[:65536],
                                         SOURCE, len(raw)))
                continue
            got, problems = grants(items)
            for p in problems:
                rejected.append(Rejected(origin, Reason.MISSING_FIELD, p, p.encode(), SOURCE, len(p)))
            for r in got:
                r.update(snapshot_at=now, cluster=item.cluster or ctx.cluster, origin=origin, ingested_at=now)
            rows.extend(got)
        table = pa.Table.from_pylist(rows, schema=RBAC_GRANT) if rows else RBAC_GRANT.empty_table()
        return conform(table, RBAC_GRANT), rejected

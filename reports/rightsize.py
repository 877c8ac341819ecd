"""Right-sizing: granted permissions never used, and a least-privilege Role checked before it is printed.

Called by ``report nhi`` (its ``rightsize`` section and the over-privilege verdict line) for every
service account with allowed requests in the baseline period; SQL errors propagate.

* **Used** permissions are the identity's *allowed* requests (response below 400, decision not
  ``forbid``) in the period, as :func:`ztaudit.detectors.rbac.granted_vs_used` counts them (a request
  made as the service account by an impersonator included: RBAC authorizes it as the account), plus the
  ``impersonate`` checks its impersonated requests passed: the API server's impersonation filter
  authorizes ``impersonate`` on ``users`` (the user's name), on ``groups`` (each group asked for) and,
  for a service account, on ``serviceaccounts`` in its namespace
  (``k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``); the groups the filter adds itself
  (``system:authenticated``, ``system:serviceaccounts[:NS]``) are not checked and not counted.
* **Unused grants**: every rule of the latest RBAC snapshot bound to the service account itself
  (ServiceAccount subject; grants to groups such as ``system:serviceaccounts`` or
  ``system:authenticated`` are shared by every account and are fixed on the group binding, so they
  are not charged to one account) is expanded into its explicit verb x resource pairs in its scope;
  a pair no allowed request used is unused. A wildcard (``*`` verb, resource or group) is always
  counted as unused: it grants verbs and resources no workload uses (``escalate``, ``bind``,
  resources added later).
* **The suggestion** is built from what the account actually did, as audit2rbac does
  (<https://github.com/liggitt/audit2rbac>): one Role per namespace it used, one ClusterRole for
  cluster-scoped and all-namespace requests and non-resource URLs; a rule per API group and resource
  with exactly the verbs used on it (resources with the same verbs share a rule, so no verb x resource
  pair is granted that was not used); ``resourceNames`` when every ``get``/``update``/``patch``/
  ``delete`` of that resource named one of at most :data:`MAX_NAMES` objects (RBAC cannot restrict
  ``list``, ``watch`` or ``create`` by name, so those never get names).
* **The check** (:func:`verify`), before a suggestion is printed: every allowed request of the
  period is replayed against the suggested rules with the RBAC matcher
  (:func:`ztaudit.detectors.rbac.covers`: wildcards, subresources, resourceNames, non-resource URL
  prefixes) and must be allowed; every verb x resource (x name) pair the rules grant, in their scope,
  must have been used. A suggestion that fails is not printed; the row says why.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import duckdb

from ztaudit.core.window import Window
from ztaudit.detectors.rbac import Rule, Use, covers

#: The period right-sizing judges when the report is given neither --since nor --until.
BASELINE: Final = timedelta(days=30)
#: At most this many object names in one rule's resourceNames; more and the rule names none.
MAX_NAMES: Final = 10
#: Verbs RBAC authorizes with the object's name (only these can be restricted by resourceNames).
NAMED_VERBS: Final = frozenset({"get", "update", "patch", "delete"})

USES_SQL: Final = """
SELECT cluster, actor, verb, coalesce(api_group, '') AS api_group, resource, subresource, namespace, name,
       CASE WHEN resource IS NULL THEN split_part(request_uri, '?', 1) END AS path, count(*) AS n
FROM k8s_requests
WHERE request_received_at >= $lo AND request_received_at < $hi AND actor_kind = 'service_account'
  AND verb IS NOT NULL
  AND coalesce(response_code, 200) < 400 AND coalesce(decision, 'allow') <> 'forbid'
GROUP BY ALL
"""
#: The impersonation checks behind each allowed impersonated request of a service account (module docstring).
IMPERSONATE_SQL: Final = """
WITH r AS (
    SELECT cluster, impersonator, impersonated_user, coalesce(impersonated_groups, []) AS groups
    FROM k8s_requests
    WHERE request_received_at >= $lo AND request_received_at < $hi
      AND impersonator LIKE 'system:serviceaccount:%' AND impersonated_user IS NOT NULL
      AND coalesce(response_code, 200) < 400 AND coalesce(decision, 'allow') <> 'forbid'
)
SELECT cluster, impersonator, CASE WHEN impersonated_user LIKE 'system:serviceaccount:%:%' THEN 'serviceaccounts'
                                   ELSE 'users' END AS resource,
       CASE WHEN impersonated_user LIKE 'system:serviceaccount:%:%' THEN split_part(impersonated_user, ':', 3) END,
       CASE WHEN impersonated_user LIKE 'system:serviceaccount:%:%' THEN split_part(impersonated_user, ':', 4)
            ELSE impersonated_user END AS name, count(*) AS n
FROM r GROUP BY ALL
UNION ALL
SELECT cluster, impersonator, 'groups', NULL, g, count(*)
FROM (SELECT cluster, impersonator, unnest(groups) AS g FROM r)
WHERE g <> 'system:authenticated' AND g <> 'system:serviceaccounts' AND g NOT LIKE 'system:serviceaccounts:%'
GROUP BY ALL
"""


def baseline(con: duckdb.DuckDBPyConnection, since: datetime | None, until: datetime | None) -> Window:
    """The period judged: ``[since, until)`` if either is given, else the :data:`BASELINE` before the
    newest audit event (the lake's last 30 days, whatever day the report runs)."""
    if since is not None or until is not None:
        return Window(since, until)
    row = con.execute("SELECT max(request_received_at) FROM k8s_audit").fetchone()
    last = row[0] if row else None
    if last is None:
        return Window()
    return Window(last - BASELINE, last + timedelta(microseconds=1))


def used_by_identity(con: duckdb.DuckDBPyConnection, window: Window) -> dict[tuple[str | None, str], list[Use]]:
    """Allowed requests of every service account in ``window``, and the impersonation checks its
    impersonated requests passed, as distinct :class:`Use` values."""
    out: dict[tuple[str | None, str], list[Use]] = defaultdict(list)
    for cluster, actor, verb, grp, res, sub, ns, name, path, n in con.execute(
            USES_SQL, {"lo": window.lo, "hi": window.hi}).fetchall():
        if res is None and not path:
            continue
        out[(cluster, actor)].append(Use(verb, grp, res, sub, ns, name, path, int(n)))
    for cluster, actor, res, ns, name, n in con.execute(IMPERSONATE_SQL, {"lo": window.lo, "hi": window.hi}).fetchall():
        out[(cluster, actor)].append(Use("impersonate", "", res, None, ns, name, None, int(n)))
    return out


def _full(u: Use) -> str:
    return (u.resource or "") + (f"/{u.subresource}" if u.subresource else "")


def suggest(uses: Sequence[Use]) -> list[Rule]:
    """Least-privilege rules for ``uses`` (see the module docstring), sorted by scope."""
    # (scope, group, resource) -> verb -> names (None in the set = some request named no object)
    res: dict[tuple[str | None, str, str], dict[str, set[str | None]]] = defaultdict(lambda: defaultdict(set))
    urls: dict[str, set[str]] = defaultdict(set)
    for u in uses:
        if u.resource is None:
            urls[u.path or ""].add(u.verb)
            continue
        res[(u.namespace, u.api_group, _full(u))][u.verb].add(u.name)
    # per (scope, group, resource, names): the verbs used with exactly those names (or with any name)
    per: dict[tuple[str | None, str, str, tuple[str, ...]], set[str]] = defaultdict(set)
    for (scope, group, resource), verbs in res.items():
        for verb, seen_names in verbs.items():
            named = verb in NAMED_VERBS and None not in seen_names and len(seen_names) <= MAX_NAMES
            key_names = tuple(sorted(n for n in seen_names if n is not None)) if named else ()
            per[(scope, group, resource, key_names)].add(verb)
    # resources with the same verbs (and names) share a rule: the cross product is exactly what was used
    merged: dict[tuple[str | None, str, tuple[str, ...], tuple[str, ...]], set[str]] = defaultdict(set)
    for (scope, group, resource, rnames), verb_set in per.items():
        merged[(scope, group, rnames, tuple(sorted(verb_set)))].add(resource)
    rules = [Rule(verbs, (group,), tuple(sorted(resources)), names, (), scope)
             for (scope, group, names, verbs), resources in merged.items()]
    by_verbs: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for path, verbs_u in urls.items():
        by_verbs[tuple(sorted(verbs_u))].add(path)
    rules += [Rule(verbs, (), (), (), tuple(sorted(paths)), None) for verbs, paths in by_verbs.items()]
    return sorted(rules, key=lambda r: (r.scope_namespace or "", r.non_resource_urls, r.api_groups, r.resources,
                                        r.verbs, r.resource_names))


def grants_of(rule: Rule) -> Iterable[tuple[str, str, str, str | None, str | None]]:
    """The explicit (verb, group, resource or URL, scope, name) pairs of a rule without wildcards."""
    if rule.non_resource_urls:
        for v in rule.verbs:
            for url in rule.non_resource_urls:
                yield v, "", url, None, None
        return
    for v in rule.verbs:
        for g in rule.api_groups:
            for r in rule.resources:
                for n in rule.resource_names or (None,):
                    yield v, g, r, rule.scope_namespace, n


@dataclass(frozen=True)
class Check:
    """The result of replaying the period's allowed requests against a suggestion."""

    requests: int
    allowed: int
    never_used: tuple[str, ...]  # granted pairs no request used (must be empty)

    @property
    def ok(self) -> bool:
        return self.allowed == self.requests and not self.never_used


def verify(rules: Sequence[Rule], uses: Sequence[Use]) -> Check:
    """Replay ``uses`` against ``rules`` and list what the rules grant beyond them (see module docstring)."""
    allowed = sum(u.requests for u in uses if any(covers(r, u) for r in rules))
    used: set[tuple[str, str, str, str | None, str | None]] = set()
    for u in uses:
        if u.resource is None:
            used.add((u.verb, "", u.path or "", None, None))
        else:
            used.add((u.verb, u.api_group, _full(u), u.namespace, u.name))
            used.add((u.verb, u.api_group, _full(u), u.namespace, None))
    extra = []
    for r in rules:
        if "*" in r.verbs or "*" in r.api_groups or "*" in r.resources or any(p.endswith("*")
                                                                            for p in r.non_resource_urls):
            extra.append(f"wildcard rule {r}")
            continue
        extra += [f"{v} {g + '/' if g else ''}{res}" + (f" {n}" if n else "") + (f" in {ns}" if ns else "")
                  for v, g, res, ns, n in grants_of(r) if (v, g, res, ns, n) not in used]
    return Check(sum(u.requests for u in uses), allowed, tuple(extra))


def to_yaml(cluster: str | None, identity: str, rules: Sequence[Rule]) -> str:
    """Roles, ClusterRole and their bindings for ``identity`` as Kubernetes YAML (JSON-quoted strings)."""
    _, _, sa_ns, sa_name = identity.split(":", 3)
    base = f"ztaudit-rightsized-{sa_name}"
    docs: list[str] = [f"# least privilege for {identity} on cluster {cluster}, from its allowed requests"]
    scopes = sorted({r.scope_namespace for r in rules}, key=lambda s: (s is not None, s or ""))
    for scope in scopes:
        kind = "Role" if scope else "ClusterRole"
        meta = f"metadata:\n  name: {json.dumps(base)}\n" + (f"  namespace: {json.dumps(scope)}\n" if scope else "")
        lines = [f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\n{meta}rules:"]
        for r in (x for x in rules if x.scope_namespace == scope):
            if r.non_resource_urls:
                lines.append(f"- nonResourceURLs: {json.dumps(list(r.non_resource_urls))}\n"
                             f"  verbs: {json.dumps(list(r.verbs))}")
                continue
            item = (f"- apiGroups: {json.dumps(list(r.api_groups))}\n  resources: {json.dumps(list(r.resources))}\n"
                    f"  verbs: {json.dumps(list(r.verbs))}")
            if r.resource_names:
                item += f"\n  resourceNames: {json.dumps(list(r.resource_names))}"
            lines.append(item)
        docs.append("\n".join(lines))
        docs.append(f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}Binding\n{meta}"
                    f"roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: {json.dumps(base)}\n"
                    f"subjects:\n- kind: ServiceAccount\n  name: {json.dumps(sa_name)}\n"
                    f"  namespace: {json.dumps(sa_ns)}")
    return "\n---\n".join(docs) + "\n"


def unused_grants(grants: Sequence[dict[str, Any]], uses: Sequence[Use]) -> tuple[int, list[str]]:
    """(granted pairs, the unused ones as labels) for the rules of ``grants`` (rbac_grant rows)."""
    total, unused = 0, []
    for g in grants:
        rule = Rule(tuple(g["verbs"] or ()), tuple(g["api_groups"] or ()), tuple(g["resources"] or ()),
                    tuple(g["resource_names"] or ()), tuple(g["non_resource_urls"] or ()), g["scope_namespace"])
        where = f" in {rule.scope_namespace}" if rule.scope_namespace else ""
        if "*" in rule.verbs or "*" in rule.api_groups or "*" in rule.resources:
            total += 1
            what = (",".join(rule.non_resource_urls) if rule.non_resource_urls
                    else f"{','.join(rule.api_groups) or '-'}/{','.join(rule.resources)}")
            unused.append(f"{','.join(rule.verbs)} {what}{where} (wildcard, {g['role_kind']} {g['role_name']})")
            continue
        mine = [u for u in uses if covers(rule, u)]
        for v, grp, res, _scope, name in grants_of(rule):
            total += 1
            hit = any(_uses_pair(u, v, grp, res, name) for u in mine)
            if not hit and not (res.endswith("*") and mine):
                unused.append(f"{v} {grp + '/' if grp else ''}{res}" + (f" {name}" if name else "") + where)
    return total, unused


def _uses_pair(u: Use, verb: str, group: str, resource: str, name: str | None) -> bool:
    """True when ``u`` exercised ``verb`` on ``resource`` (a URL for a non-resource request)."""
    if u.verb != verb:
        return False
    if u.resource is None:
        return u.path == resource
    return u.api_group == group and _full(u) == resource and (name is None or u.name == name)

"""Granted vs used: RBAC grants (``rbac_grant``) against what each identity actually did.

In the spirit of audit2rbac (docs/detection-background.md §1.9: the *used* set per identity) and Audicia
(the only tool found that diffs granted against used): for every identity, each granted rule of
the latest RBAC snapshot of its cluster with how many requests it covered in the period, the
granted rules never used (a least-privilege suggestion: drop them or narrow the binding), the
requests no rule of the snapshot explains (``used_not_granted``: system:masters, Node
authorizer, webhooks, or a snapshot older than the binding), and impersonation rights.

Subjects are resolved the way the authorizer sees them (docs/kubernetes-audit.md §5.1, §6): a user
by name; a service account as ``system:serviceaccount:NS:NAME`` plus its implicit groups
``system:serviceaccounts``, ``system:serviceaccounts:NS`` and ``system:authenticated``; groups
from the audit log (``impersonated_groups`` when the proxy impersonates a person, else
``user_groups``). Rule matching follows RBAC semantics (``ResourceMatches`` and friends in
``pkg/apis/rbac/v1/evaluation_helpers.go``): ``*`` wildcards for verbs, groups and resources,
``resource/subresource`` exactly, ``*/subresource`` for that subresource of every resource (and
nothing else: ``pods/*`` is not "every subresource of pods", it matches only a subresource named
``*``), ``resourceNames`` restricting by object name, ``nonResourceURLs`` with a trailing ``*``
prefix match.

A request counts as used when authorization allowed it (:data:`AUTHORIZED`): the audit annotation
``authorization.k8s.io/decision`` (the lake's ``decision`` column) when present, else a response
other than 401, 403 and 429. A 404 ``get`` or a 409 ``create`` passed authorization (the handler
answered it), so it is a use; a 429 without a decision was refused by API Priority and Fairness,
which runs before the authorization filter (``DefaultBuildHandlerChain`` in
``k8s.io/apiserver/pkg/server/config.go``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import duckdb
import pyarrow as pa

from ztaudit.core.requests import requests_select
from ztaudit.core.window import Window
from ztaudit.detectors.engine import DuckDBEngine, Session, as_engine

GRANTED_VS_USED: Final = pa.schema([
    ("cluster", pa.string()), ("identity", pa.string()), ("identity_kind", pa.string()),
    ("row_type", pa.string()),  # granted | used_not_granted
    ("via", pa.string()), ("binding", pa.string()), ("role", pa.string()), ("scope_namespace", pa.string()),
    ("verbs", pa.list_(pa.string())), ("api_groups", pa.list_(pa.string())), ("resources", pa.list_(pa.string())),
    ("resource_names", pa.list_(pa.string())), ("can_impersonate", pa.bool_()),
    ("used_requests", pa.int64()), ("used_permissions", pa.list_(pa.string())), ("never_used", pa.bool_()),
    ("suggestion", pa.string()),
])

#: SQL predicate over ``k8s_requests``: authorization allowed the request (module docstring). The one
#: definition of "allowed" for granted-vs-used, right-sizing and the NHI inventory.
AUTHORIZED: Final = ("(CASE WHEN decision IS NOT NULL THEN decision = 'allow' "
                     "ELSE coalesce(response_code, 200) NOT IN (401, 403, 429) END)")


@dataclass(frozen=True)
class Rule:
    """One granted rule, as a row of ``rbac_grant``."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    resource_names: tuple[str, ...]
    non_resource_urls: tuple[str, ...]
    scope_namespace: str | None


@dataclass(frozen=True)
class Use:
    """A distinct permission exercised: verb on group/resource[/subresource] in a namespace."""

    verb: str
    api_group: str
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    path: str | None
    requests: int

    def label(self) -> str:
        if self.resource is None:
            return f"{self.verb} {self.path or '?'}"
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        grp = f"{self.api_group}/" if self.api_group else ""
        return f"{self.verb} {grp}{res}" + (f" in {self.namespace}" if self.namespace else " (cluster)")


def covers(rule: Rule, use: Use) -> bool:
    """True when ``rule`` (in its binding's scope) authorises ``use`` under RBAC semantics."""
    if "*" not in rule.verbs and use.verb not in rule.verbs:
        return False
    if use.resource is None:  # non-resource URL (only ClusterRoleBindings grant them)
        path = use.path or ""
        return rule.scope_namespace is None and any(
            u == path or u == "*" or (u.endswith("*") and path.startswith(u[:-1])) for u in rule.non_resource_urls)
    if rule.scope_namespace is not None and use.namespace != rule.scope_namespace:
        return False
    if "*" not in rule.api_groups and use.api_group not in rule.api_groups:
        return False
    full = use.resource + (f"/{use.subresource}" if use.subresource else "")
    # ResourceMatches: "*", the exact resource[/subresource], or "*/<subresource>"; never "<resource>/*"
    ok = any(r == "*" or r == full or (use.subresource is not None and r == f"*/{use.subresource}")
             for r in rule.resources)
    if not ok:
        return False
    return not rule.resource_names or (use.name is not None and use.name in rule.resource_names)


class RuleIndex:
    """Rules indexed by (scope, API group, resource), to ask "does any of them cover this use?" without
    trying every rule (report nhi replays hundreds of thousands of uses).

    :meth:`allows` looks up only the rules :func:`covers` could accept (a rule in the use's namespace or
    cluster-wide, naming the use's group or ``*``, and its resource, ``*`` or ``*/<subresource>``) and
    lets :func:`covers` decide, so the answer is ``any(covers(r, use) for r in rules)`` by construction.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._by_key: dict[tuple[str | None, str, str], list[Rule]] = defaultdict(list)
        self._urls = [r for r in rules if r.scope_namespace is None and r.non_resource_urls]
        for r in rules:
            for g in r.api_groups:
                for res in r.resources:
                    self._by_key[(r.scope_namespace, g, res)].append(r)

    def allows(self, use: Use) -> bool:
        """``any(covers(rule, use) for rule in rules)``."""
        if use.resource is None:
            return any(covers(r, use) for r in self._urls)
        scopes = (None,) if use.namespace is None else (None, use.namespace)
        full = use.resource + (f"/{use.subresource}" if use.subresource else "")
        names = (full, "*") if use.subresource is None else (full, "*", f"*/{use.subresource}")
        return any(covers(r, use) for scope in scopes for g in (use.api_group, "*") for res in names
                   for r in self._by_key.get((scope, g, res), ()))


def implicit_groups(identity: str) -> set[str]:
    """Groups the authenticator adds for an identity (service accounts, nodes, everyone)."""
    groups = {"system:authenticated"}
    if identity.startswith("system:serviceaccount:"):
        ns = identity.split(":")[2]
        groups |= {"system:serviceaccounts", f"system:serviceaccounts:{ns}"}
    elif identity.startswith("system:node:"):
        groups.add("system:nodes")
    return groups


def _kind_of(identity: str) -> str:
    if identity.startswith("system:serviceaccount:"):
        return "service_account"
    if identity.startswith("system:node:"):
        return "node"
    if identity.startswith("system:"):
        return "system"
    return "human"


def _has_view(session: Session, name: str) -> bool:
    """Whether view ``name`` is readable. On DuckDB (a connection, or the engine over one), asked of
    the connection's catalog (``open_lake`` makes every derived view; a bare connection has none). An
    engine whose ``read_lake`` made the derived views itself (Spark: every view, empty over a table the
    lake does not hold yet) has it; a view it could not translate makes the statement reading it fail,
    naming it."""
    if isinstance(session, duckdb.DuckDBPyConnection):
        # a report's connection may hold an unfinished result: `execute` replaces it, as before the seam
        got = session.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()[0]
        return bool(got and got[0])
    if not isinstance(session, DuckDBEngine):
        return True
    rows = session.rows("SELECT count(*) FROM duckdb_views() WHERE view_name = $name", {"name": name})
    return bool(rows and rows[0][0])


def latest_grants(session: Session, until: datetime | None) -> list[dict[str, Any]]:
    """Rows of the latest RBAC snapshot per cluster ingested before ``until`` (all clusters; ``None``:
    the newest, whatever its time).

    Called by ``impersonation.unapproved_right`` with the run's engine (DuckDB or Spark), and by
    :func:`granted_vs_used` and ``report nhi`` with a DuckDB connection (wrapped by
    :func:`~ztaudit.detectors.engine.as_engine`). Rows are read through Arrow on both engines, so
    their Python values are the same. SQL errors propagate (on Spark, a ``rbac_grant`` view it could
    not make fails here, naming it)."""
    if not _has_view(session, "rbac_grant"):
        return []
    engine = as_engine(session)
    rows: list[dict[str, Any]] = engine.query(
        """SELECT * FROM rbac_grant g
            WHERE snapshot_at = (SELECT max(snapshot_at) FROM rbac_grant h
                                 WHERE h.cluster IS NOT DISTINCT FROM g.cluster AND h.snapshot_at < $until)""",
        {"until": Window(until=until).hi}).to_pylist()
    return rows


#: Groups an impersonated request names that the impersonation filter adds itself and does not check.
_CHECKED_GROUP: Final = ("g <> 'system:authenticated' AND g <> 'system:serviceaccounts' "
                         "AND g NOT LIKE 'system:serviceaccounts:%'")


def impersonate_checks(requests: str, keep: tuple[str, ...] = ()) -> str:
    """SQL: the ``impersonate`` checks behind each impersonated request of ``requests``, one row per check.

    The API server's impersonation filter authorizes ``impersonate`` on ``users`` (the user's name,
    cluster-wide), or on ``serviceaccounts`` (its name in its namespace) for a
    ``system:serviceaccount:NS:NAME``, and on ``groups`` for each group asked for; the groups the filter
    adds itself (``system:authenticated``, a service account's ``system:serviceaccounts`` and
    ``system:serviceaccounts:NS``) are not checked (``k8s.io/apiserver/pkg/endpoints/filters/
    impersonation.go``). A record that names the impersonated user passed every check, whatever the
    request's own answer (a refused impersonation is answered 403 before the request and logs no
    impersonatedUser: docs/kubernetes-audit.md §6), so no "allowed" condition belongs here. Each check
    counts once per request (``list_distinct`` of the groups).

    Called by :func:`granted_vs_used` and by the right-sizing queries of ``report nhi``
    (:mod:`ztaudit.reports.rightsize`), so both read the same checks. ``requests`` names a relation
    (a CTE: it is read twice) with ``cluster, impersonator, impersonated_user, impersonated_groups``
    and the ``keep`` columns; the result has ``cluster, impersonator, resource, namespace, name`` and
    the ``keep`` columns.
    """
    kept = "".join(f", {c}" for c in keep)
    return f"""
SELECT cluster, impersonator, CASE WHEN sa THEN 'serviceaccounts' ELSE 'users' END AS resource,
       CASE WHEN sa THEN split_part(impersonated_user, ':', 3) END AS namespace,
       CASE WHEN sa THEN split_part(impersonated_user, ':', 4) ELSE impersonated_user END AS name{kept}
FROM (SELECT *, impersonated_user LIKE 'system:serviceaccount:%:%' AS sa FROM {requests}
      WHERE impersonator IS NOT NULL AND impersonated_user IS NOT NULL)
UNION ALL
SELECT cluster, impersonator, 'groups', NULL, g{kept}
FROM (SELECT cluster, impersonator, unnest(list_distinct(coalesce(impersonated_groups, []))) AS g{kept}
      FROM {requests} WHERE impersonator IS NOT NULL AND impersonated_user IS NOT NULL)
WHERE {_CHECKED_GROUP}
"""


#: The :func:`impersonate_checks` of the window's requests, counted per impersonator and check, and
#: each impersonator's own groups (``user_groups``), through which a grant may be its own (``group``
#: rows with count 0). One row per request (:func:`~ztaudit.core.requests.requests_select`,
#: on the columns every stage shares), not the ``k8s_requests`` view's window over the whole lake.
IMPERSONATE_CHECKS_SQL: Final = f"""
WITH r AS (
    {requests_select(["cluster", "impersonator", "impersonated_user", "impersonated_groups", "user_groups"],
                     "impersonator IS NOT NULL AND impersonated_user IS NOT NULL "
                     "AND request_received_at >= ? AND request_received_at < ?")}
)
SELECT cluster, impersonator, resource, namespace, name, count(*)
FROM ({impersonate_checks("r")}) GROUP BY ALL
UNION ALL
SELECT DISTINCT cluster, impersonator, 'group', NULL, g, 0
FROM (SELECT cluster, impersonator, unnest(coalesce(user_groups, [])) AS g FROM r)
"""


def granted_vs_used(con: duckdb.DuckDBPyConnection, since: datetime | None,
                    until: datetime | None) -> pa.Table:
    """Per identity and cluster: granted rules with their use in [since, until), never-used rules,
    used-but-not-granted permissions and impersonation rights (table :data:`GRANTED_VS_USED`)."""
    window = Window(since, until)
    lo, hi = window.lo, window.hi
    grants = latest_grants(con, hi)
    uses_rows = con.execute(
        f"""SELECT cluster, actor, any_value(actor_kind),
                  list_distinct(flatten(list(coalesce(impersonated_groups, user_groups, [])))),
                  verb, coalesce(api_group, ''), resource, subresource, namespace, name,
                  CASE WHEN resource IS NULL THEN split_part(request_uri, '?', 1) END, count(*)
           FROM k8s_requests
           WHERE request_received_at >= ? AND request_received_at < ? AND actor IS NOT NULL
             AND {AUTHORIZED}
           GROUP BY cluster, actor, verb, coalesce(api_group, ''), resource, subresource, namespace, name,
                    CASE WHEN resource IS NULL THEN split_part(request_uri, '?', 1) END""",
        [lo, hi]).fetchall()
    uses: dict[tuple[str, str], list[Use]] = defaultdict(list)
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    kinds: dict[tuple[str, str], str] = {}
    for cluster, actor, kind, grps, verb, grp, res, sub, ns, name, path, n in uses_rows:
        key = (cluster, actor)
        uses[key].append(Use(verb, grp, res, sub, ns, name, path, int(n)))
        groups[key] |= set(grps or [])
        kinds[key] = kind or _kind_of(actor)
    # the impersonator's own uses: the impersonate checks its allowed impersonated requests passed
    # (without them every impersonation right read "never used: remove it", the proxy's included)
    for cluster, impersonator, res, ns, name, n in con.execute(IMPERSONATE_CHECKS_SQL, [lo, hi]).fetchall():
        if res == "group":  # a group the impersonator is in (its grants may come through it)
            groups[(cluster, impersonator)].add(name)
        else:
            uses[(cluster, impersonator)].append(Use("impersonate", "", res, None, ns, name, None, int(n)))
    by_cluster: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for g in grants:
        by_cluster[g["cluster"]].append(g)
    identities = set(uses)
    for g in grants:  # users and service accounts named in bindings, even if never seen
        if g["subject_kind"] in ("User", "ServiceAccount"):
            identities.add((g["cluster"], g["subject"]))
    out: list[dict[str, Any]] = []
    for cluster, identity in sorted(identities, key=lambda k: (str(k[0]), str(k[1]))):
        key = (cluster, identity)
        subject_names = {identity}
        subject_groups = groups.get(key, set()) | implicit_groups(identity)
        mine = [g for g in by_cluster.get(cluster, [])
                if (g["subject_kind"] == "Group" and g["subject"] in subject_groups)
                or (g["subject_kind"] != "Group" and g["subject"] in subject_names)]
        my_uses = uses.get(key, [])
        covered: set[int] = set()
        for g in mine:
            rule = Rule(tuple(g["verbs"] or ()), tuple(g["api_groups"] or ()), tuple(g["resources"] or ()),
                        tuple(g["resource_names"] or ()), tuple(g["non_resource_urls"] or ()),
                        g["scope_namespace"])
            hits = [i for i, u in enumerate(my_uses) if covers(rule, u)]
            covered.update(hits)
            n = sum(my_uses[i].requests for i in hits)
            used_labels = sorted({my_uses[i].label() for i in hits})
            out.append({
                "cluster": cluster, "identity": identity, "identity_kind": kinds.get(key, _kind_of(identity)),
                "row_type": "granted", "via": f"{g['subject_kind']} {g['subject']}",
                "binding": f"{g['binding_kind']} {(g['binding_namespace'] + '/') if g['binding_namespace'] else ''}"
                           f"{g['binding_name']}",
                "role": f"{g['role_kind']} {g['role_name']}" + ("" if g["role_found"] else " (not in snapshot)"),
                "scope_namespace": g["scope_namespace"], "verbs": list(rule.verbs),
                "api_groups": list(rule.api_groups), "resources": list(rule.resources),
                "resource_names": list(rule.resource_names), "can_impersonate": bool(g["can_impersonate"]),
                "used_requests": n, "used_permissions": used_labels[:20], "never_used": n == 0,
                "suggestion": _suggest(rule, [my_uses[i] for i in hits], g),
            })
        for i, u in enumerate(my_uses):
            if i not in covered:
                out.append({
                    "cluster": cluster, "identity": identity, "identity_kind": kinds.get(key, _kind_of(identity)),
                    "row_type": "used_not_granted", "via": None, "binding": None, "role": None,
                    "scope_namespace": u.namespace, "verbs": [u.verb], "api_groups": [u.api_group],
                    "resources": [u.resource + (f"/{u.subresource}" if u.subresource else "")] if u.resource else [],
                    "resource_names": [u.name] if u.name else [], "can_impersonate": u.verb == "impersonate",
                    "used_requests": u.requests, "used_permissions": [u.label()], "never_used": False,
                    "suggestion": "allowed by something outside the snapshot (system:masters, Node authorizer, "
                                  "webhook) or the snapshot is older than the grant",
                })
    return pa.Table.from_pylist(out, schema=GRANTED_VS_USED)


def _suggest(rule: Rule, used: Sequence[Use], g: dict[str, Any]) -> str:
    """A least-privilege hint for one granted rule (audit2rbac-style: keep what was used)."""
    if not g["role_found"]:
        return "binding points at a role missing from the snapshot: delete the binding"
    if not used:
        imp = " (impersonation right)" if g["can_impersonate"] else ""
        return f"never used in the period{imp}: remove it from this identity's grants"
    verbs = sorted({u.verb for u in used})
    res = sorted({(u.resource or u.path or "?") + (f"/{u.subresource}" if u.subresource else "") for u in used})
    if "*" in rule.verbs or "*" in rule.resources or set(verbs) < set(rule.verbs) or len(res) < len(rule.resources):
        return f"narrow to verbs {verbs} on {res}"
    return "used as granted"

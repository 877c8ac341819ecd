"""Right-sizing: granted permissions never used, and a least-privilege Role checked before it is printed.

Called by ``report nhi`` (its ``rightsize`` section and the over-privilege verdict line) for every
service account with allowed requests in the baseline period; SQL errors propagate.

* **Used** permissions are what authorization allowed the identity in the period
  (:data:`ztaudit.detectors.rbac.AUTHORIZED`: the audit decision ``allow``, else a response other
  than 401/403/429; a 404 ``get`` or a 409 ``create`` passed authorization and is a use), as
  :func:`ztaudit.detectors.rbac.granted_vs_used` counts them (a request made as the service account
  by an impersonator included: RBAC authorizes it as the account), plus the ``impersonate`` checks
  its impersonated requests passed, whatever the request's own answer
  (:func:`ztaudit.detectors.rbac.impersonate_checks`, shared with ``report reach --granted``): the
  API server's impersonation filter authorizes ``impersonate`` on ``users`` (the user's name), on
  ``groups`` (each group asked for) and, for a service account, on ``serviceaccounts`` in its
  namespace (``k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``); the groups the filter adds
  itself (``system:authenticated``, ``system:serviceaccounts[:NS]``) are not checked and not counted.
* **Evidence of open findings is not a use to keep.** Requests that are evidence (``k8s_audit:``
  references) of an open finding about the account (not acked, not suppressed, ``docs/triage.md``)
  are left out of the suggestion and of its replay; the row says how many and which findings
  (:func:`left_out`). A suggestion must not legalise the attack the report flags.
* **Unused grants**: every rule of the RBAC snapshot bound to the service account, itself or
  through a group it is in, is expanded into its explicit verb x resource pairs in its scope; a pair
  no allowed request used is unused. A wildcard (``*`` verb, resource or group) is always counted as
  unused: it grants verbs and resources no workload uses (``escalate``, ``bind``, resources added
  later).
* **The suggestion** is built from what the account actually did, as audit2rbac does
  (<https://github.com/liggitt/audit2rbac>): one Role per namespace it used, one ClusterRole for
  cluster-scoped and all-namespace requests and non-resource URLs; a rule per API group and resource
  with exactly the verbs used on it (resources with the same verbs share a rule, so no verb x resource
  pair is granted that was not used). **No** ``resourceNames`` for ordinary resources: a baseline of
  a few days says nothing about tomorrow's object names, and generated names (``pvc-<uuid>``, a
  Job's pods, a leader-election lease recreated under a new name) would break the workload.
  Impersonation is the exception: ``impersonate`` rules name exactly the users, groups and service
  accounts impersonated, and never ``system:masters`` (a request impersonating it is left out).
  Object names are ``ztaudit-rightsized-<namespace>-<name>`` (:func:`object_name`), hashed when
  longer than a Kubernetes name (253) or when two accounts would get the same name. An account
  whose namespace or name is not a valid DNS-1123 name (so could not be a ServiceAccount, and could
  inject YAML) gets no suggestion.
* **Review, not verified**: a suggestion that grants RBAC writes (``create``/``update``/``patch``/
  ``bind``/``escalate`` on roles and bindings), ``impersonate`` or secret reads (``get``/``list``/
  ``watch`` secrets) is marked ``review`` (:func:`review_reasons`): replay cannot verify it (the API
  server's escalation checks, ``bind``/``escalate``, judge RBAC writes against the writer's own
  rights), and these are the permissions an attacker wants.
* **The check** (:func:`verify`), before a suggestion is printed: every allowed request of the
  period that was kept is replayed against the suggested rules with the RBAC matcher
  (:func:`ztaudit.detectors.rbac.covers`: wildcards, subresources, resourceNames, non-resource URL
  prefixes) and must be allowed; every verb x resource pair the rules grant, in their scope, must
  have been used (for ``impersonate``, every name). A suggestion that fails is not printed; the row
  says why.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

import duckdb
import pyarrow as pa

from ztaudit.core.window import Window
from ztaudit.detectors.rbac import AUTHORIZED, Rule, RuleIndex, Use, covers, impersonate_checks

#: The period right-sizing judges when the report is given neither --since nor --until.
BASELINE: Final = timedelta(days=30)
#: The group the API server authorizes before RBAC: never suggested as an impersonation target.
MASTERS: Final = "system:masters"
#: Longest object name suggested (a DNS-1123 subdomain, what ``kubectl`` and most tools accept).
MAX_OBJECT_NAME: Final = 253
NAME_PREFIX: Final = "ztaudit-rightsized-"
#: DNS-1123 label (a namespace) and subdomain (a ServiceAccount name); lengths are checked first.
_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
RBAC_GROUP: Final = "rbac.authorization.k8s.io"
RBAC_OBJECTS: Final = frozenset({"roles", "rolebindings", "clusterroles", "clusterrolebindings"})
RBAC_WRITE_VERBS: Final = frozenset({"create", "update", "patch", "bind", "escalate", "*"})
SECRET_READ_VERBS: Final = frozenset({"get", "list", "watch", "*"})
#: The name of the registered relation :func:`used_by_identity` and :func:`left_out` anti-join.
EXCLUDED_VIEW: Final = "_rightsize_excluded"
EXCLUDED_SCHEMA: Final = pa.schema([("cluster", pa.string()), ("actor", pa.string()), ("audit_id", pa.string()),
                                    ("finding_id", pa.string())])

#: The relation the queries below read by default (``{src}``); ``report nhi`` passes its one-pass copy.
REQUESTS: Final = "k8s_requests"
_EXCLUDED: Final = f"""EXISTS (SELECT 1 FROM {EXCLUDED_VIEW} x
    WHERE x.cluster IS NOT DISTINCT FROM r.cluster AND x.actor = r.{{who}} AND x.audit_id = r.audit_id)"""
#: Each distinct use with its allowed requests (``n``) and those not left out as evidence (``kept``):
#: one pass gives both what RBAC allowed and what a suggestion may be built from.
USES_SQL: Final = f"""
SELECT cluster, actor, verb, coalesce(api_group, '') AS api_group, resource, subresource, namespace, name,
       CASE WHEN resource IS NULL THEN split_part(request_uri, '?', 1) END AS path, count(*) AS n,
       count(*) FILTER (WHERE NOT excluded) AS kept
FROM (SELECT *, {_EXCLUDED.format(who="actor")} AS excluded FROM {{src}} r
      WHERE request_received_at >= $lo AND request_received_at < $hi AND actor_kind = 'service_account'
        AND verb IS NOT NULL AND {AUTHORIZED})
GROUP BY ALL
"""
#: A service account's impersonated requests, with ``excluded``: the relation the
#: :func:`~ztaudit.detectors.rbac.impersonate_checks` below read (not only allowed ones: a record that
#: names the impersonated user passed the impersonate checks whatever the request's own answer).
_IMPERSONATED: Final = f"""
    SELECT cluster, impersonator, impersonated_user, impersonated_groups,
           {_EXCLUDED.format(who="impersonator")} AS excluded
    FROM {{src}} r
    WHERE request_received_at >= $lo AND request_received_at < $hi
      AND impersonator LIKE 'system:serviceaccount:%' AND impersonated_user IS NOT NULL
"""
#: The impersonation checks behind each impersonated request of a service account (module docstring).
IMPERSONATE_SQL: Final = f"""
WITH r AS ({_IMPERSONATED})
SELECT cluster, impersonator, resource, namespace, name, count(*) AS n, count(*) FILTER (WHERE NOT excluded) AS kept
FROM ({impersonate_checks("r", ("excluded",))}) GROUP BY ALL
"""
#: Every use of :data:`USES_SQL` and :data:`IMPERSONATE_SQL`, one row per request (per impersonated
#: group) instead of one per distinct use, with ``full_resource`` (resource[/subresource]) and ``excluded``: what
#: :func:`account_flags` and :func:`used_grant_pairs` aggregate without building a :class:`Use` each.
EVERY_USE_SQL: Final = f"""
WITH imp AS ({_IMPERSONATED})
SELECT cluster, actor, verb, api_group, resource, subresource, namespace, name, path, excluded,
       resource || CASE WHEN subresource <> '' THEN '/' || subresource ELSE '' END AS full_resource
FROM (
    SELECT cluster, actor, verb, coalesce(api_group, '') AS api_group, resource, subresource, namespace, name,
           CASE WHEN resource IS NULL THEN split_part(request_uri, '?', 1) END AS path,
           {_EXCLUDED.format(who="actor")} AS excluded
    FROM {{src}} r
    WHERE request_received_at >= $lo AND request_received_at < $hi AND actor_kind = 'service_account'
      AND verb IS NOT NULL AND {AUTHORIZED} AND (resource IS NOT NULL OR split_part(request_uri, '?', 1) <> '')
    UNION ALL
    SELECT cluster, impersonator, 'impersonate', '', resource, NULL, namespace, name, NULL, excluded
    FROM ({impersonate_checks("imp", ("excluded",))})
)
"""
#: Per account, what its uses decide about its suggestion (:class:`Flags`, :func:`status_of`); the
#: conditions are :func:`suggest`, :func:`verify` and :func:`review_reasons` read per use: a suggested
#: rule grants exactly the verb x resource pairs used, so it is a wildcard, an RBAC write, a secret
#: read or an impersonation exactly when one kept use is.
FLAGS_SQL: Final = f"""
SELECT cluster, actor,
       bool_or(NOT excluded) AS kept,
       coalesce(bool_or(NOT excluded AND NOT masters), false) AS buildable,
       coalesce(bool_or(NOT excluded AND NOT masters AND (
           verb = '*' OR (resource IS NOT NULL AND (api_group = '*' OR full_resource = '*'))
           OR (resource IS NULL AND suffix(path, '*')))), false) AS wildcard,
       coalesce(bool_or(NOT excluded AND NOT masters AND (
           verb = 'impersonate'
           OR (api_group = '{RBAC_GROUP}' AND full_resource IN ({", ".join(f"'{o}'" for o in sorted(RBAC_OBJECTS))})
               AND verb IN ({", ".join(f"'{v}'" for v in sorted(RBAC_WRITE_VERBS - {"*"}))}))
           OR (api_group = '' AND full_resource = 'secrets'
               AND verb IN ({", ".join(f"'{v}'" for v in sorted(SECRET_READ_VERBS - {"*"}))})))), false) AS sensitive,
       coalesce(bool_or(verb = 'impersonate' AND (name IS NULL OR name = '{MASTERS}')), false) AS python
FROM (SELECT *, coalesce(verb = 'impersonate' AND resource = 'groups' AND name = '{MASTERS}', false) AS masters
      FROM ({EVERY_USE_SQL}))
GROUP BY ALL
"""
#: The registered relations :func:`used_grant_pairs` joins: each grant's explicit pairs, and who holds which grant.
PAIRS_VIEW: Final = "_rightsize_pairs"
HELD_VIEW: Final = "_rightsize_held"
PAIRS_SCHEMA: Final = pa.schema([("grant", pa.int64()), ("pair", pa.int64()), ("verb", pa.string()),
                                 ("api_group", pa.string()), ("resource", pa.string()), ("scope", pa.string()),
                                 ("name", pa.string()), ("url", pa.bool_()), ("url_prefix", pa.string())])
HELD_SCHEMA: Final = pa.schema([("cluster", pa.string()), ("identity", pa.string()), ("grant", pa.int64())])
#: Per (account, grant it holds): how many of the grant's pairs one of its uses covered, by :func:`covers`'
#: rules for a rule without wildcards: the verb and group exactly, the resource exactly or ``*/<sub>``, in
#: the pair's namespace or cluster-wide, its one name if it has one; a non-resource URL exactly, ``*`` or
#: a trailing-``*`` prefix, granted cluster-wide (a namespaced binding grants no URL).
USED_PAIRS_SQL: Final = f"""
WITH u AS ({EVERY_USE_SQL}),
hp AS (SELECT h.cluster, h.identity, p.* FROM {HELD_VIEW} h JOIN {PAIRS_VIEW} p ON p.grant = h.grant)
SELECT cluster, identity, grant, count(DISTINCT pair) AS used FROM (
    SELECT hp.cluster, hp.identity, hp.grant, hp.pair FROM u JOIN hp
      ON hp.cluster IS NOT DISTINCT FROM u.cluster AND hp.identity = u.actor AND hp.verb = u.verb
     AND hp.api_group = u.api_group AND hp.resource = u.full_resource
    WHERE NOT hp.url AND (hp.scope IS NULL OR hp.scope = u.namespace) AND (hp.name IS NULL OR hp.name = u.name)
    UNION ALL
    SELECT hp.cluster, hp.identity, hp.grant, hp.pair FROM u JOIN hp
      ON hp.cluster IS NOT DISTINCT FROM u.cluster AND hp.identity = u.actor AND hp.verb = u.verb
     AND hp.api_group = u.api_group AND hp.resource = '*/' || u.subresource
    WHERE NOT hp.url AND (hp.scope IS NULL OR hp.scope = u.namespace) AND (hp.name IS NULL OR hp.name = u.name)
    UNION ALL
    SELECT hp.cluster, hp.identity, hp.grant, hp.pair FROM u JOIN hp
      ON hp.cluster IS NOT DISTINCT FROM u.cluster AND hp.identity = u.actor AND hp.verb = u.verb
    WHERE hp.url AND u.resource IS NULL AND hp.scope IS NULL
      AND (hp.resource = u.path OR hp.resource = '*' OR starts_with(u.path, hp.url_prefix))
)
GROUP BY ALL
"""
#: Requests left out per account: allowed requests (made as it, or impersonating with it) that are evidence.
LEFT_OUT_SQL: Final = f"""
SELECT x.cluster, x.actor, count(DISTINCT r.audit_id) AS n, list_sort(list(DISTINCT x.finding_id)) AS findings
FROM {{src}} r JOIN {EXCLUDED_VIEW} x
  ON x.cluster IS NOT DISTINCT FROM r.cluster AND x.audit_id = r.audit_id
 AND (x.actor = r.actor OR x.actor = r.impersonator)
WHERE r.request_received_at >= $lo AND r.request_received_at < $hi AND {AUTHORIZED}
GROUP BY ALL
"""

#: (cluster, service account) -> the audit ids to leave out, with every finding each is evidence of.
Excluded = Mapping[tuple[str | None, str], Mapping[str, Sequence[str]]]


def baseline(con: duckdb.DuckDBPyConnection, since: datetime | None, until: datetime | None) -> Window:
    """The period judged: ``[since, until)`` if either is given, else the :data:`BASELINE` before the
    newest audit event (the lake's last 30 days, whatever day the report runs)."""
    if since is not None or until is not None:
        return Window(since, until)
    rows = con.execute("SELECT max(request_received_at) FROM k8s_audit").fetchall()
    last = rows[0][0] if rows else None
    if last is None:
        return Window()
    return Window(last - BASELINE, last + timedelta(microseconds=1))


def evidence_of(findings: Iterable[Mapping[str, Any]]) -> dict[tuple[str | None, str], dict[str, list[str]]]:
    """The audit ids each finding (``cluster``, ``actor``, ``finding_id``, ``evidence``) cites, per account,
    each with every finding that cites it (sorted: the result does not depend on the findings' order).

    Evidence references are ``k8s_audit:<cluster>/<audit id>`` (``detectors/base.py``); others
    (``rbac_grant:``, ``proxy_decision:``) name no request of the account and are skipped.
    """
    out: dict[tuple[str | None, str], dict[str, list[str]]] = defaultdict(dict)
    for f in findings:
        prefix = f"k8s_audit:{f['cluster']}/"
        for ref in f.get("evidence") or []:
            if isinstance(ref, str) and ref.startswith(prefix):
                ids = out[(f["cluster"], str(f["actor"]))].setdefault(ref[len(prefix):], [])
                if str(f["finding_id"]) not in ids:
                    ids.append(str(f["finding_id"]))
                    ids.sort()
    return out


def _register(con: duckdb.DuckDBPyConnection, exclude: Excluded | None) -> None:
    # one row per (request, finding): the EXISTS tests ignore the repeats, LEFT_OUT_SQL lists them all
    rows = [{"cluster": c, "actor": a, "audit_id": aid, "finding_id": fid}
            for (c, a), ids in (exclude or {}).items() for aid, fids in ids.items() for fid in fids]
    con.register(EXCLUDED_VIEW, pa.Table.from_pylist(rows, schema=EXCLUDED_SCHEMA))


Uses = dict[tuple[str | None, str], list[Use]]


def used_by_identity(con: duckdb.DuckDBPyConnection, window: Window,
                     exclude: Excluded | None = None, src: str = REQUESTS) -> Uses:
    """Allowed requests of every service account in ``window``, and the impersonation checks its
    impersonated requests passed, as distinct :class:`Use` values; requests in ``exclude`` (evidence
    of open findings about that account) left out."""
    return uses_and_kept(con, window, exclude, src)[1]


def uses_and_kept(con: duckdb.DuckDBPyConnection, window: Window, exclude: Excluded | None,
                  src: str = REQUESTS) -> tuple[Uses, Uses]:
    """(every use, the uses with the requests in ``exclude`` left out) of :func:`used_by_identity`, in one
    pass over ``src``; the second is the first when nothing is excluded."""
    every: Uses = defaultdict(list)
    kept: Uses = defaultdict(list)
    _register(con, exclude)
    try:
        params = {"lo": window.lo, "hi": window.hi}
        rows = con.execute(USES_SQL.format(src=src), params).fetchall()
        imp = con.execute(IMPERSONATE_SQL.format(src=src), params).fetchall()
    finally:
        con.unregister(EXCLUDED_VIEW)
    uses = [(cluster, actor, Use(verb, grp, res, sub, ns, name, path, int(n)), int(k))
            for cluster, actor, verb, grp, res, sub, ns, name, path, n, k in rows if res is not None or path]
    uses += [(cluster, actor, Use("impersonate", "", res, None, ns, name, None, int(n)), int(k))
             for cluster, actor, res, ns, name, n, k in imp]
    for cluster, actor, use, k in uses:
        every[(cluster, actor)].append(use)
        if exclude and k:
            kept[(cluster, actor)].append(use if k == use.requests else replace(use, requests=k))
    return every, (kept if exclude else every)


def left_out(con: duckdb.DuckDBPyConnection, window: Window, exclude: Excluded,
             src: str = REQUESTS) -> dict[tuple[str | None, str], tuple[int, list[str]]]:
    """Per account: how many allowed requests of ``window`` :func:`used_by_identity` left out, and
    the ids of the findings they are evidence of."""
    if not exclude:
        return {}
    _register(con, exclude)
    try:
        rows = con.execute(LEFT_OUT_SQL.format(src=src), {"lo": window.lo, "hi": window.hi}).fetchall()
    finally:
        con.unregister(EXCLUDED_VIEW)
    return {(c, a): (int(n), list(f)) for c, a, n, f in rows}


@dataclass(frozen=True)
class Flags:
    """What an account's uses of the baseline decide about its suggestion (:data:`FLAGS_SQL`)."""

    kept: bool  # a use is kept (not evidence of an open finding): the account has a rightsize row
    buildable: bool  # a kept use other than a system:masters impersonation: a suggestion can be built
    wildcard: bool  # a kept use with a wildcard verb, group, resource or URL: the replay check fails
    sensitive: bool  # an RBAC write, secret read or impersonation among the kept uses: review
    python: bool  # an impersonation of no name or of system:masters: only the full path decides


NO_USES: Final = Flags(False, False, False, False, False)


def account_flags(con: duckdb.DuckDBPyConnection, window: Window, exclude: Excluded | None,
                  src: str = REQUESTS) -> dict[tuple[str | None, str], Flags]:
    """Per service account with allowed requests in ``window``: its :class:`Flags`, in one aggregation
    (no :class:`Use` per distinct use: an account of a busy cluster has hundreds of thousands)."""
    _register(con, exclude)
    try:
        rows = con.execute(FLAGS_SQL.format(src=src), {"lo": window.lo, "hi": window.hi}).fetchall()
    finally:
        con.unregister(EXCLUDED_VIEW)
    return {(c, a): Flags(bool(k), bool(b), bool(w), bool(s), bool(p)) for c, a, k, b, w, s, p in rows}


def status_of(identity: str, flags: Flags, left_requests: int) -> str | None:
    """The ``status`` :func:`verify` and :func:`review_reasons` give the suggestion of an account with
    ``flags`` (``left_requests`` left out as evidence), or ``None`` when only building it can say: an
    impersonation of no name or of ``system:masters`` (the suggestion leaves it out, review or refusal
    depends on what else was impersonated)."""
    if not valid_service_account(identity):
        return "withheld"
    if flags.python:
        return None
    if not flags.buildable or flags.wildcard:
        return "withheld"
    return "review" if flags.sensitive or left_requests else "verified"


def is_wildcard(rule: Rule) -> bool:
    """A ``*`` verb, group or resource: :func:`unused_grants` counts the rule as one unused grant."""
    return "*" in rule.verbs or "*" in rule.api_groups or "*" in rule.resources


@dataclass(frozen=True)
class GrantPairs:
    """The explicit pairs of each grant (by its index in the grants list), as :func:`unused_grants` counts them."""

    pairs: pa.Table  # PAIRS_SCHEMA
    counts: tuple[int, ...]  # pairs per grant (a wildcard rule: 1, always unused)
    wildcard: tuple[bool, ...]

    def unused(self, grant: int, used: int) -> int:
        """How many pairs of ``grant`` are unused when ``used`` of them were covered."""
        return 1 if self.wildcard[grant] else self.counts[grant] - used


def grant_pairs(grants: Sequence[Mapping[str, Any]]) -> GrantPairs:
    """Each grant's :func:`grants_of` pairs as rows to match in SQL (:data:`USED_PAIRS_SQL`). Pairs of a
    non-resource rule bound in a namespace are counted but left out: :func:`covers` never lets them match."""
    rows: list[dict[str, Any]] = []
    counts: list[int] = []
    wild: list[bool] = []
    for i, g in enumerate(grants):
        rule = rule_of_grant(g)
        wild.append(is_wildcard(rule))
        if wild[-1]:
            counts.append(1)
            continue
        pairs = list(grants_of(rule))
        counts.append(len(pairs))
        url = bool(rule.non_resource_urls)
        if url and rule.scope_namespace is not None:
            continue
        rows += [{"grant": i, "pair": j, "verb": v, "api_group": grp, "resource": res, "scope": scope,
                  "name": name or None, "url": url,
                  "url_prefix": res[:-1] if url and isinstance(res, str) and res.endswith("*") else None}
                 for j, (v, grp, res, scope, name) in enumerate(pairs)]
    return GrantPairs(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), tuple(counts), tuple(wild))


def used_grant_pairs(con: duckdb.DuckDBPyConnection, window: Window, pairs: GrantPairs,
                     held: Iterable[tuple[str | None, str, int]],
                     src: str = REQUESTS) -> dict[tuple[str | None, str, int], int]:
    """(cluster, account, grant index) -> how many of the grant's pairs the account's allowed requests of
    ``window`` used, for the grants ``held`` ((cluster, account, grant index)); absent: none. The SQL
    counterpart of :func:`unused_grants` over every account at once."""
    held_table = pa.Table.from_pylist([{"cluster": c, "identity": a, "grant": g} for c, a, g in held],
                                      schema=HELD_SCHEMA)
    con.register(PAIRS_VIEW, pairs.pairs)
    con.register(HELD_VIEW, held_table)
    _register(con, None)
    try:
        rows = con.execute(USED_PAIRS_SQL.format(src=src), {"lo": window.lo, "hi": window.hi}).fetchall()
    finally:
        for view in (EXCLUDED_VIEW, HELD_VIEW, PAIRS_VIEW):
            con.unregister(view)
    return {(c, a, int(g)): int(n) for c, a, g, n in rows}


def _full(u: Use) -> str:
    return (u.resource or "") + (f"/{u.subresource}" if u.subresource else "")


def masters_uses(uses: Sequence[Use]) -> list[Use]:
    """The impersonation checks of ``uses`` that impersonate ``system:masters`` (never suggested)."""
    return [u for u in uses if u.verb == "impersonate" and u.resource == "groups" and u.name == MASTERS]


def suggest(uses: Sequence[Use]) -> list[Rule]:
    """Least-privilege rules for ``uses`` (see the module docstring), sorted by scope.

    Only ``impersonate`` rules carry ``resourceNames`` (the names impersonated); impersonating
    ``system:masters`` is never suggested.
    """
    # (scope, group, resource) -> verb -> names (only impersonate keeps them)
    res: dict[tuple[str | None, str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    urls: dict[str, set[str]] = defaultdict(set)
    for u in uses:
        if u.resource is None:
            urls[u.path or ""].add(u.verb)
            continue
        names = res[(u.namespace, u.api_group, _full(u))][u.verb]
        if u.verb == "impersonate" and u.name is not None and u.name != MASTERS:
            names.add(u.name)
    # per (scope, group, resource, names): the verbs used with exactly those names (or with any name)
    per: dict[tuple[str | None, str, str, tuple[str, ...]], set[str]] = defaultdict(set)
    for (scope, group, resource), verbs in res.items():
        for verb, seen_names in verbs.items():
            if verb == "impersonate" and not seen_names:
                continue  # only system:masters (or nameless): nothing to grant
            per[(scope, group, resource, tuple(sorted(seen_names)))].add(verb)
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
    """Replay ``uses`` against ``rules`` and list what the rules grant beyond them (see module docstring).

    An ``impersonate`` use counts only for its own name: an impersonation rule without
    ``resourceNames`` (anyone) or with a name nobody impersonated grants more than was used.
    """
    index = RuleIndex(rules)
    allowed = sum(u.requests for u in uses if index.allows(u))
    used: set[tuple[str, str, str, str | None, str | None]] = set()
    for u in uses:
        if u.resource is None:
            used.add((u.verb, "", u.path or "", None, None))
            continue
        used.add((u.verb, u.api_group, _full(u), u.namespace, u.name))
        if u.verb != "impersonate":
            used.add((u.verb, u.api_group, _full(u), u.namespace, None))
    extra = []
    for r in rules:
        if "*" in r.verbs or "*" in r.api_groups or "*" in r.resources or any(p.endswith("*")
                                                                            for p in r.non_resource_urls):
            extra.append(f"wildcard rule {r}")
            continue
        extra += [f"{v} {g + '/' if g else ''}{res}" + (f" {n}" if n else " (any name)" if v == "impersonate" else "")
                  + (f" in {ns}" if ns else "")
                  for v, g, res, ns, n in grants_of(r) if (v, g, res, ns, n) not in used]
    return Check(sum(u.requests for u in uses), allowed, tuple(extra))


def review_reasons(rules: Sequence[Rule]) -> list[str]:
    """Why a suggestion needs a person's review rather than the replay's word (module docstring)."""
    out: list[str] = []
    for r in rules:
        where = f" in {r.scope_namespace}" if r.scope_namespace else ""
        verbs = set(r.verbs)
        if {RBAC_GROUP, "*"} & set(r.api_groups):
            objs = sorted(RBAC_OBJECTS & set(r.resources)) or (["*"] if "*" in r.resources else [])
            writes = sorted(verbs & RBAC_WRITE_VERBS)
            if objs and writes:
                out.append(f"RBAC write: {','.join(writes)} {','.join(objs)}{where}")
        if "impersonate" in verbs:
            out.append(f"impersonate {','.join(r.resources)}{where}")
        if {"", "*"} & set(r.api_groups) and {"secrets", "*"} & set(r.resources):
            reads = sorted(verbs & SECRET_READ_VERBS)
            if reads:
                out.append(f"secret read: {','.join(reads)} secrets{where}")
    return out


def wider_than_granted(rules: Sequence[Rule], grants: Sequence[Mapping[str, Any]]) -> list[str]:
    """The pairs of a suggestion that today's grants allow only on named objects (``resourceNames``):
    a suggestion keeps no resourceNames (module docstring), so applying it would widen them (``get
    secrets [db-pass]`` becomes ``get secrets``, every secret of the namespace). One review reason per
    such (verb, resource, scope), naming today's objects; none when no grant is known (no snapshot).
    Called by ``report nhi`` for each suggestion."""
    granted = [rule_of_grant(g) for g in grants]
    out: list[str] = []
    for r in rules:
        if r.non_resource_urls or "impersonate" in r.verbs:
            continue  # URLs have no objects; impersonate rules keep their names
        for v, grp, res, scope, _ in grants_of(r):
            sub = res.split("/", 1)
            any_object = Use(v, grp, sub[0], sub[1] if len(sub) > 1 else None, scope, None, None, 1)
            if any(covers(g, any_object) for g in granted):
                continue
            names = sorted({n for g in granted if g.resource_names for n in g.resource_names
                            if covers(g, replace(any_object, name=n))})
            if names:
                where = f" in {scope}" if scope else ""
                out.append(f"wider than today's grant: {v} {grp + '/' if grp else ''}{res}{where} "
                           f"(granted only on {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    return out


def valid_service_account(identity: str) -> bool:
    """``system:serviceaccount:<ns>:<name>`` with a DNS-1123 label namespace and subdomain name."""
    parts = identity.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return False
    ns, name = parts[2], parts[3]
    return (0 < len(ns) <= 63 and _LABEL.fullmatch(ns) is not None
            and 0 < len(name) <= MAX_OBJECT_NAME and _SUBDOMAIN.fullmatch(name) is not None)


def object_name(identity: str, hashed: bool = False) -> str:
    """``ztaudit-rightsized-<ns>-<name>`` for a valid service account (:func:`valid_service_account`),
    ending in a hash of the identity when longer than :data:`MAX_OBJECT_NAME` or when ``hashed``
    (the caller found two accounts with the same plain name, e.g. ``a-b``/``c`` and ``a``/``b-c``)."""
    _, _, ns, name = identity.split(":", 3)
    plain = f"{NAME_PREFIX}{ns}-{name}"
    if len(plain) <= MAX_OBJECT_NAME and not hashed:
        return plain
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{plain[:MAX_OBJECT_NAME - 11].rstrip('-.')}-{digest}"


def to_yaml(cluster: str | None, identity: str, rules: Sequence[Rule], name: str | None = None) -> str:
    """Roles, ClusterRole and their bindings for ``identity`` (a :func:`valid_service_account`) as
    Kubernetes YAML; every string from the lake is JSON-quoted (ASCII), so none can break a line."""
    if not valid_service_account(identity):
        raise ValueError(f"not a valid service account name: {identity!r}")
    _, _, sa_ns, sa_name = identity.split(":", 3)
    base = name or object_name(identity)
    docs: list[str] = [f"# least privilege for {identity} on cluster {json.dumps(cluster)}, from its allowed requests"]
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


def rule_of_grant(g: Mapping[str, Any]) -> Rule:
    """The :class:`Rule` of one ``rbac_grant`` row."""
    return Rule(tuple(g["verbs"] or ()), tuple(g["api_groups"] or ()), tuple(g["resources"] or ()),
                tuple(g["resource_names"] or ()), tuple(g["non_resource_urls"] or ()), g["scope_namespace"])


def unused_grants(grants: Sequence[Mapping[str, Any]], uses: Sequence[Use]) -> tuple[int, list[str]]:
    """(granted pairs, the unused ones as labels) for the rules of ``grants`` (rbac_grant rows)."""
    total, unused = 0, []
    by_verb: dict[str, list[Use]] = defaultdict(list)  # a rule without a wildcard verb covers only its verbs
    for u in uses:
        by_verb[u.verb].append(u)
    for g in grants:
        rule = rule_of_grant(g)
        where = f" in {rule.scope_namespace}" if rule.scope_namespace else ""
        if "*" in rule.verbs or "*" in rule.api_groups or "*" in rule.resources:
            total += 1
            what = (",".join(rule.non_resource_urls) if rule.non_resource_urls
                    else f"{','.join(rule.api_groups) or '-'}/{','.join(rule.resources)}")
            unused.append(f"{','.join(rule.verbs)} {what}{where} (wildcard, {g['role_kind']} {g['role_name']})")
            continue
        mine = [u for v in dict.fromkeys(rule.verbs) for u in by_verb.get(v, ()) if covers(rule, u)]
        for v, grp, res, scope, name in grants_of(rule):
            total += 1
            pair = Rule((v,), (grp,), (res,), (name,) if name else (), (), scope) if not rule.non_resource_urls \
                else Rule((v,), (), (), (), (res,), None)
            if not any(covers(pair, u) for u in mine):
                unused.append(f"{v} {grp + '/' if grp else ''}{res}" + (f" {name}" if name else "") + where)
    return total, unused

"""``report nhi``: the non-human identities (service accounts, nodes), what they may do, what they did.

Called by ``ztaudit report nhi`` and ``ztaudit demo``. Reads ``k8s_requests`` over
``[--since, --until)`` (``--cluster``, ``--actor`` narrow it), the newest RBAC snapshot per cluster
whatever the window (``rbac_grant``, :func:`ztaudit.detectors.rbac.latest_grants`: a snapshot's time
is when it was ingested, so an explicit ``--until`` in the past must not drop it; a note names each
snapshot used) and ``findings``; SQL errors propagate. Without a snapshot the inventory comes from
the audit log alone and a note says what is missing. A snapshot whose cluster matches no cluster of
the audit log is named in a warning; a snapshot ingested without a cluster, with exactly one cluster
in the audit log, is taken as that cluster's (and a note says so).

Verdict lines first: the visibility figures (identities granted but never seen = ``unused``, seen
but absent from the snapshot = ``unknown``, seen only with legacy secret-based tokens =
``legacy_only``) and the over-privilege share ("N of M service accounts hold permissions they did
not use in the baseline", the user's own version of the industry's 97 %).

One definition of an identity's requests, for every column and both sections: the requests made
with its credential (its own, and for the proxy's service account those it made impersonating
people) **and** the requests an impersonator made as it (RBAC authorizes them as the account, so
its grants were used: ``kubectl --as=system:serviceaccount:ops:backup`` makes ``ops/backup`` seen).
"Allowed" is :data:`ztaudit.detectors.rbac.AUTHORIZED` (the audit decision, else not 401/403/429).

Grants through groups the account is in (``system:serviceaccounts:<ns>``, ``system:serviceaccounts``,
``system:authenticated``) count for each member like its own grants, except Kubernetes' own defaults
(``system:discovery``, ``system:basic-user``, ...: a binding and role the API server's bootstrap
policy labels and still reconciles, ``rbac_grant.bootstrap``; <https://kubernetes.io/docs/reference/
access-authn-authz/rbac/#default-roles-and-role-bindings>), which are listed as ``(default)`` and
counted apart from the over-privilege share. A ``system:`` name alone does not make a default (anyone
who may create bindings can choose it), except in grants ingested before ztaudit kept the labels.

Sections:

* ``identities`` (primary), one row per cluster and identity:
  ``cluster, identity, kind
  (service_account|node), namespace, status (active|unused|unknown|legacy_only), in_snapshot (yes |
  no | node_authorizer: kubelets are authorized by the Node authorizer, not RBAC), first_seen,
  last_seen, requests, requests_per_day (over the days the period's data spans), credentials (per
  kind: count and the longest time one was used, e.g. ``jti x14, longest 0.8 h``),
  max_credential_age_hours, namespaces, resources, secret_namespaces (reach: allowed requests only),
  granted (rules bound to the identity itself, ``binding: verbs resources``), group_grants (rules it gets through groups
  such as ``system:serviceaccounts``), used (distinct permissions exercised, up to 20), used_count,
  unused_grants (granted verb x resource pairs never used in the baseline, own and group grants, up to
  20), over_privileged (null for nodes and without a snapshot of the cluster: not known),
  impersonable_by (subjects RBAC lets impersonate it, ``system:masters`` left out), findings (detector
  ids with findings about it)``. Flagged rows (findings, over-privileged, unknown, unused) first, then
  by requests.
* ``rightsize``, one row per service account with allowed requests in the baseline (the report's
  window, else the 30 days before the newest audit event; :mod:`ztaudit.reports.rightsize`):
  ``cluster, identity, baseline_days, requests (allowed requests, as above), granted_pairs,
  unused_pairs, unused_grants, left_out_requests, left_out_findings (allowed requests that are
  evidence of open findings about it, left out of the suggestion, and those findings' ids),
  replayed_requests (authorization checks replayed: one per kept request, plus one per impersonated
  user and group), allowed_by_suggestion, verified, status (verified | review | withheld), review (why
  a person must look), suggestion`` (Kubernetes YAML, printed unless withheld).
* ``visibility``: the totals behind the verdict.

``--limit`` cuts the ``identities`` and ``rightsize`` rows; a note says how many were left out.

What decides the order and the figures is worked out per account in SQL, without a Python object per
distinct use (a busy lake has millions): the suggestion's status from flags over the account's kept uses
(:func:`ztaudit.reports.rightsize.account_flags`, :func:`~ztaudit.reports.rightsize.status_of`), the
over-privilege and default-grant figures from the grants' explicit pairs matched against its uses
(:func:`~ztaudit.reports.rightsize.used_grant_pairs`). The ``Use`` lists, the lists of used and unused
grants, the suggestion and its YAML are built for the rows ``--limit`` keeps, and for the accounts whose
status only building the suggestion can tell (an impersonation of ``system:masters`` or of no name:
:func:`_needs_python`), which go through that full path from the start. A suggestion wider than a grant on
named objects (:func:`~ztaudit.reports.rightsize.wider_than_granted`) is a review reason of the rows built;
the SQL status of a row ``--limit`` leaves out does not know it, so the note's count of suggestions to
review can be lower than the rows' (a known limit).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Final

import pyarrow as pa

from ztaudit.core.requests import requests_select
from ztaudit.core.window import Window
from ztaudit.detectors.impersonation_rights import impersonation_rights, impersonators_of
from ztaudit.detectors.rbac import AUTHORIZED, Use, implicit_groups, latest_grants
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.findings import with_triage
from ztaudit.reports.rightsize import (
    NO_USES,
    Excluded,
    Flags,
    Uses,
    account_flags,
    baseline,
    evidence_of,
    grant_pairs,
    left_out,
    masters_uses,
    object_name,
    review_reasons,
    status_of,
    suggest,
    to_yaml,
    unused_grants,
    used_by_identity,
    used_grant_pairs,
    uses_and_kept,
    valid_service_account,
    verify,
    wider_than_granted,
)

NHI_COLUMNS: Final = ["cluster", "identity", "kind", "namespace", "status", "in_snapshot", "first_seen", "last_seen",
                      "requests", "requests_per_day", "credentials", "max_credential_age_hours", "namespaces",
                      "resources", "secret_namespaces", "granted", "group_grants", "used", "used_count",
                      "unused_grants", "over_privileged", "impersonable_by", "findings"]
NHI_DISPLAY: Final = ["cluster", "identity", "status", "last_seen", "requests_per_day", "credentials", "namespaces",
                      "used_count", "over_privileged", "findings"]
RIGHTSIZE_COLUMNS: Final = ["cluster", "identity", "baseline_days", "requests", "granted_pairs", "unused_pairs",
                            "unused_grants", "left_out_requests", "left_out_findings", "replayed_requests",
                            "allowed_by_suggestion", "verified", "status", "review", "suggestion"]
RIGHTSIZE_DISPLAY: Final = ["cluster", "identity", "requests", "granted_pairs", "unused_pairs", "left_out_requests",
                            "status"]
VISIBILITY_COLUMNS: Final = ["identities", "service_accounts", "nodes", "seen", "unused", "unknown", "legacy_only",
                             "with_grants", "over_privileged", "over_privileged_share", "unused_default_grants",
                             "baseline_days", "snapshot_clusters"]
#: Groups every service account is in; their grants alone do not put an account "in" the snapshot.
SHARED_GROUPS: Final = ("system:authenticated", "system:serviceaccounts")
#: Bindings with this prefix are Kubernetes' defaults (module docstring): listed, not charged.
DEFAULT_PREFIX: Final = "system:"
LIST_CAP: Final = 20

#: The one copy of ``k8s_requests`` every query below reads (``{src}``): the report's window, the
#: columns they use, and only the requests of a non-human identity or made through an impersonator
#: (the others count for no row). It is ``k8s_requests`` built by aggregation over these columns
#: (:mod:`ztaudit.core.requests`): at 10M events choosing each request's stage is most of the report's
#: SQL time, so it is done once, and without the view's window over every column.
REQUESTS_TABLE: Final = "_nhi_requests"
REQUESTS_COLUMNS: Final = ["cluster", "audit_id", "request_received_at", "dt", "actor", "actor_kind", "impersonator",
                            "impersonated_user", "impersonated_groups", "verb", "api_group", "resource", "subresource",
                            "namespace", "name", "request_uri", "credential_id", "credential_kind", "is_legacy_token",
                            "decision", "response_code"]
# every condition is on columns all stages of a request share, so it may come before the stage choice
REQUESTS_WHERE: Final = """request_received_at >= $lo AND request_received_at < $hi
  AND (actor_kind IN ('service_account', 'node') OR impersonator IS NOT NULL
       OR actor LIKE 'system:serviceaccount:%' OR actor LIKE 'system:node:%')"""
REQUESTS_SQL: Final = (f"CREATE OR REPLACE TEMP TABLE {REQUESTS_TABLE} AS\n"
                       + requests_select(REQUESTS_COLUMNS, REQUESTS_WHERE))

#: The requests of the accounts whose rows are worked out in Python (:func:`_python_uses`): made as one
#: of them (``actor``) or with its credential (``impersonator``); ``{keys}`` holds (cluster, identity).
SOME_TABLE: Final = "_nhi_some_requests"
KEYS_VIEW: Final = "_nhi_keys"
KEYS_SCHEMA: Final = pa.schema([("cluster", pa.string()), ("identity", pa.string())])
SOME_SQL: Final = f"""
CREATE OR REPLACE TEMP TABLE {SOME_TABLE} AS
SELECT * FROM {REQUESTS_TABLE} r
WHERE EXISTS (SELECT 1 FROM {KEYS_VIEW} k WHERE k.cluster IS NOT DISTINCT FROM r.cluster AND k.identity = r.actor)
   OR EXISTS (SELECT 1 FROM {KEYS_VIEW} k WHERE k.cluster IS NOT DISTINCT FROM r.cluster
                                           AND k.identity = r.impersonator)
"""

#: Requests with the non-human identity they count for (module docstring): the identity whose
#: credential made them (the actor, or the impersonator), and the non-human actor an impersonator
#: acted as. A request of one identity impersonating another counts for both.
NHI_ROWS: Final = """
SELECT *, coalesce(impersonator, actor) AS identity,
       CASE WHEN impersonator IS NULL THEN actor_kind
            WHEN impersonator LIKE 'system:serviceaccount:%' THEN 'service_account'
            WHEN impersonator LIKE 'system:node:%' THEN 'node' END AS identity_kind
FROM {src}
UNION ALL BY NAME
SELECT *, actor AS identity, actor_kind AS identity_kind
FROM {src} WHERE impersonator IS NOT NULL AND actor_kind IN ('service_account', 'node')
"""
#: Requests with the identity whose credential made them (credentials are the caller's, not the target's).
CREDENTIAL_ROWS: Final = """
SELECT *, coalesce(impersonator, actor) AS identity,
       CASE WHEN impersonator IS NULL THEN actor_kind
            WHEN impersonator LIKE 'system:serviceaccount:%' THEN 'service_account'
            WHEN impersonator LIKE 'system:node:%' THEN 'node' END AS identity_kind
FROM {src}
"""
SEEN_SQL: Final = """
SELECT cluster, identity, any_value(identity_kind) AS kind,
       any_value(CASE WHEN identity_kind = 'service_account' THEN split_part(identity, ':', 3) END) AS namespace,
       min(request_received_at) AS first_seen, max(request_received_at) AS last_seen, count(*) AS requests,
       count(DISTINCT namespace) FILTER (WHERE {ok}) AS namespaces,
       count(DISTINCT resource) FILTER (WHERE {ok}) AS resources,
       count(DISTINCT namespace) FILTER (WHERE resource = 'secrets' AND {ok}) AS secret_namespaces,
       bool_and(coalesce(is_legacy_token, false)) AS legacy_only
FROM ({rows}) r
WHERE {where} AND identity_kind IN ('service_account', 'node')
GROUP BY cluster, identity
"""
#: Allowed requests per service account in the right-sizing baseline, by the same definition.
BASE_REQUESTS_SQL: Final = """
SELECT cluster, identity, count(*) AS n FROM ({rows}) r
WHERE request_received_at >= $lo AND request_received_at < $hi AND identity_kind = 'service_account' AND {ok}
GROUP BY ALL
"""
CRED_SQL: Final = """
WITH c AS (
    SELECT cluster, identity AS actor, credential_kind, credential_id,
           epoch(max(request_received_at)) - epoch(min(request_received_at)) AS used_for
    FROM ({rows}) r
    WHERE {where} AND identity_kind IN ('service_account', 'node') AND credential_id IS NOT NULL
    GROUP BY ALL
)
SELECT cluster, actor, credential_kind, count(*) AS n, max(used_for) / 3600.0 AS longest_hours
FROM c GROUP BY ALL ORDER BY cluster, actor, credential_kind
"""
FINDINGS_SQL: Final = """
SELECT finding_id, detector, cluster, actor, namespace, evidence, first_seen, last_seen FROM findings
WHERE actor LIKE 'system:serviceaccount:%' OR actor LIKE 'system:node:%'
QUALIFY row_number() OVER (PARTITION BY finding_id ORDER BY detected_at DESC NULLS LAST) = 1
"""


def _grant_label(g: dict[str, Any]) -> str:
    if not g["role_found"]:
        return f"{g['binding_name']}: {g['role_kind']} {g['role_name']} (not in snapshot)"
    if g["non_resource_urls"]:
        what = "nonResourceURLs " + ",".join(g["non_resource_urls"])
    else:
        groups = ",".join(x or "core" for x in g["api_groups"] or [])
        what = ",".join(g["resources"] or []) + (f" ({groups})" if groups and groups != "core" else "")
    names = f" [{','.join(g['resource_names'])}]" if g["resource_names"] else ""
    where = f" in {g['scope_namespace']}" if g["scope_namespace"] else ""
    return f"{g['binding_name']}: {','.join(g['verbs'] or [])} {what}{names}{where}"


def _is_default(g: dict[str, Any]) -> bool:
    """A grant of Kubernetes' own default policy: ``bootstrap`` (labels on the binding and its role);
    in rows ingested before that column, a ``system:`` binding name."""
    if g.get("bootstrap") is not None:
        return bool(g["bootstrap"])
    return str(g["binding_name"] or "").startswith(DEFAULT_PREFIX)


def _span_days(rows: list[Row]) -> int:
    firsts = [r["first_seen"] for r in rows if r.get("first_seen")]
    lasts = [r["last_seen"] for r in rows if r.get("last_seen")]
    if not firsts:
        return 1
    return max(1, math.ceil(float((max(lasts) - min(firsts)).total_seconds()) / 86400))


def _snapshots(ctx: ReportContext, result_notes: list[str]) -> list[dict[str, Any]]:
    """The newest snapshot per cluster, attached and checked against the audit log's clusters."""
    f = ctx.filters
    grants = latest_grants(ctx.con, None)
    # the clusters of k8s_requests, without its per-request window (every cluster keeps its requests)
    audit = {c for (c,) in ctx.con.execute("SELECT DISTINCT cluster FROM k8s_audit").fetchall()}
    snap = {g["cluster"] for g in grants}
    named = [c for c in audit if c is not None]
    if None in snap and len(named) == 1 and named[0] not in snap:
        result_notes.append(f"the RBAC snapshot ingested without a cluster is taken as cluster {named[0]}'s, the "
                            "only cluster in the audit log (ingest it with --cluster to say so)")
        grants = [{**g, "cluster": named[0]} if g["cluster"] is None else g for g in grants]
        snap = {g["cluster"] for g in grants}
    for c in sorted(snap - audit, key=str):
        result_notes.append(f"warning: the RBAC snapshot of cluster {c} matches no cluster of the audit log "
                            f"({', '.join(sorted(str(x) for x in audit)) or 'none'}); re-ingest it with the "
                            "audit log's --cluster")
    grants = [g for g in grants if f.cluster is None or g["cluster"] == f.cluster]
    when: dict[str | None, tuple[Any, str]] = {}
    for g in grants:
        when.setdefault(g["cluster"], (g["snapshot_at"], str(g["origin"])))
    for c, (at, origin) in sorted(when.items(), key=lambda kv: str(kv[0])):
        late = " (after the window: today's grants)" if (
            f.window.until is not None and at is not None and at >= f.window.until) else ""
        if origin.startswith("file:"):  # the file's name, without its folder and line
            origin = origin[len("file:"):].rsplit("/", 1)[-1].rsplit(":", 1)[0]
        result_notes.append(f"RBAC snapshot of cluster {c}: ingested {at:%Y-%m-%d %H:%M} UTC, {origin}{late}")
    return grants


def nhi(ctx: ReportContext) -> ReportResult:
    """The NHI inventory, right-sizing and visibility figures (``ztaudit report nhi``; module docstring)."""
    f = ctx.filters
    where, params = f.where(time_col="request_received_at", actor_cols=("identity",))
    # the baseline is the window when --since or --until is given, else inside it (all time)
    ctx.con.execute(REQUESTS_SQL, {"lo": f.window.lo, "hi": f.window.hi})
    try:
        return _nhi(ctx, where, params)
    finally:
        ctx.con.execute(f"DROP TABLE IF EXISTS {REQUESTS_TABLE}")
        ctx.con.execute(f"DROP TABLE IF EXISTS {SOME_TABLE}")


def _nhi(ctx: ReportContext, where: str, params: list[Any]) -> ReportResult:
    f = ctx.filters
    notes: list[str] = []
    src = REQUESTS_TABLE
    with ctx.progress.step("non-human identities in the audit log"):
        seen = fetch(ctx.con, SEEN_SQL.format(rows=NHI_ROWS.format(src=src), where=where, ok=AUTHORIZED), params)
        creds = fetch(ctx.con, CRED_SQL.format(rows=CREDENTIAL_ROWS.format(src=src), where=where), params)
    with ctx.progress.step("RBAC snapshot"):
        grants = _snapshots(ctx, notes)
        rights = impersonation_rights(grants)
    all_findings = with_triage(ctx, fetch(ctx.con, FINDINGS_SQL))
    found: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for x in all_findings:
        found[(x["cluster"], x["actor"])].append(x["detector"])
    exclude = evidence_of(x for x in all_findings if x["status"] == "open")
    with ctx.progress.step("right-sizing"):
        base = baseline(ctx.con, f.window.since, f.window.until)
        # per account, in SQL: what its kept uses decide about its suggestion (Use lists come later,
        # for the rows shown and the few accounts only building the suggestion decides)
        flags = account_flags(ctx.con, base, exclude, src)
        left = left_out(ctx.con, base, exclude, src)
        same = _same_requests(ctx, src, base)
        base_requests = {(r["cluster"], r["identity"]): int(r["n"]) for r in fetch(
            ctx.con, BASE_REQUESTS_SQL.format(rows=NHI_ROWS.format(src=src), ok=AUTHORIZED),
            {"lo": base.lo, "hi": base.hi})}

    snap_clusters = {g["cluster"] for g in grants}
    direct: dict[tuple[str | None, str], list[dict[str, Any]]] = defaultdict(list)
    by_group: dict[tuple[str | None, str], list[dict[str, Any]]] = defaultdict(list)
    for g in grants:
        if g["subject_kind"] == "Group":
            by_group[(g["cluster"], g["subject"])].append(g)
        else:
            direct[(g["cluster"], g["subject"])].append(g)

    rows: dict[tuple[str | None, str], Row] = {}
    for r in seen:
        rows[(r["cluster"], r["identity"])] = {**r, "seen": True}
    for cluster, subject in direct:
        if not subject.startswith("system:serviceaccount:") or (cluster, subject) in rows:
            continue
        if f.actor is not None and subject != f.actor:
            continue
        rows[(cluster, subject)] = {"cluster": cluster, "identity": subject, "kind": "service_account",
                                    "namespace": subject.split(":")[2], "first_seen": None, "last_seen": None,
                                    "requests": 0, "namespaces": 0, "resources": 0, "secret_namespaces": 0,
                                    "legacy_only": False, "seen": False}
    cred_text: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    cred_age: dict[tuple[str | None, str], float] = {}
    for c in creds:
        key = (c["cluster"], c["actor"])
        cred_text[key].append(f"{c['credential_kind']} x{c['n']}, longest {c['longest_hours']:.1f} h")
        cred_age[key] = max(cred_age.get(key, 0.0), float(c["longest_hours"] or 0.0))

    # object names of the suggestions: hashed where two accounts of a cluster would share one
    plain = Counter((k[0], object_name(k[1])) for k in {k for k, x in flags.items() if x.kept} | set(left)
                    if valid_service_account(k[1]))

    # each identity's grants: bound to it, through its groups, and of those its own (Kubernetes'
    # defaults through groups apart); for service accounts, how many of each grant's pairs it used,
    # for every account at once in SQL (grants by their index in ``grants``)
    held: dict[tuple[str | None, str], Held] = {}
    for key, r in rows.items():
        cluster, ident = key
        groups = implicit_groups(ident) if r["kind"] == "service_account" else {"system:nodes", "system:authenticated"}
        via_groups = [g for grp in sorted(groups) for g in by_group.get((cluster, grp), [])]
        held[key] = Held(direct.get(key, []), via_groups)
    index = {id(g): i for i, g in enumerate(grants)}
    pairs = grant_pairs(grants)
    accounts = [k for k, r in rows.items() if r["kind"] == "service_account"]
    used_pairs = used_grant_pairs(
        ctx.con, base, pairs, [(*k, index[id(g)]) for k in accounts for g in held[k].own + held[k].defaults],
        src) if grants else {}

    def any_unused(key: tuple[str | None, str], of: list[dict[str, Any]]) -> bool:
        return any(pairs.unused(index[id(g)], used_pairs.get((*key, index[id(g)]), 0)) > 0 for g in of)

    # the accounts only building the suggestion can judge (module docstring), in Python from the start
    # (not those granted on named objects: routing them here cost 10x at 10M events, bench/report.py;
    # the "wider than today's grant" reason is given to the rows built, see the module docstring)
    python_keys = {k for k in accounts if _needs_python(k[1], flags.get(k, NO_USES))}
    py = _python_uses(ctx, python_keys, base, exclude, same)

    days = _span_days(seen)
    # the days of data the baseline holds: its length, or less when the lake covers less
    # (the default baseline ends 1 µs after the newest event: 30 days, not 31)
    base_days = min(days, math.ceil((base.hi - base.lo - timedelta(microseconds=1)).total_seconds() / 86400)
                    ) if base.since else days
    out: list[Row] = []
    sizing: list[Row] = []
    charged: dict[tuple[str | None, str], bool] = {}
    default_unused = 0
    for key in sorted(rows, key=lambda k: (str(k[0]), k[1])):
        r = rows[key]
        cluster, ident = key
        is_sa = r["kind"] == "service_account"
        mine, via_groups, own_grants = held[key].direct, held[key].via_groups, held[key].own
        if key in python_keys:
            is_over = bool(unused_grants(own_grants, py.every.get(key, []))[1])
            default_unused += bool(unused_grants(held[key].defaults, py.every.get(key, []))[1])
        else:
            is_over = is_sa and any_unused(key, own_grants)
            default_unused += is_sa and any_unused(key, held[key].defaults)
        charged[key] = bool(own_grants) and is_sa
        if not is_sa:
            in_snapshot = "node_authorizer"
        elif cluster in snap_clusters:
            in_snapshot = "yes" if mine or any(g["subject"] not in SHARED_GROUPS for g in via_groups) else "no"
        else:
            in_snapshot = "no snapshot"
        # unknown, not "no": a node's rights come from the Node authorizer, and without a snapshot of
        # its cluster nothing says what an account was granted
        over: bool | None = is_over if in_snapshot in ("yes", "no") else None
        status = ("unused" if not r["seen"] else "unknown" if in_snapshot == "no"
                  else "legacy_only" if r["legacy_only"] else "active")
        out.append({
            "cluster": cluster, "identity": ident, "kind": r["kind"], "namespace": r["namespace"],
            "status": status, "in_snapshot": in_snapshot, "first_seen": r["first_seen"], "last_seen": r["last_seen"],
            "requests": r["requests"], "requests_per_day": round(r["requests"] / days, 1),
            "credentials": cred_text.get(key, []), "max_credential_age_hours": cred_age.get(key),
            "namespaces": r["namespaces"], "resources": r["resources"], "secret_namespaces": r["secret_namespaces"],
            "granted": [_grant_label(g) for g in mine][:LIST_CAP],
            "group_grants": [f"{g['subject']} {_grant_label(g)}" + (" (default)" if _is_default(g) else "")
                             for g in via_groups][:LIST_CAP],
            "used": [], "used_count": 0, "unused_grants": [],  # filled in for the rows shown, below
            "over_privileged": over, "impersonable_by": impersonators_of(rights, cluster, ident),
            "findings": sorted(set(found.get(key, []))),
        })
        n_left, left_ids = left.get(key, (0, []))
        if is_sa and (flags.get(key, NO_USES).kept or n_left):
            row = partial(_sizing_row, cluster, ident, n_left=n_left, left_ids=left_ids, base_days=base_days,
                          requests=base_requests.get(key, 0),
                          hashed=plain[(cluster, object_name(ident))] > 1 if valid_service_account(ident) else False)
            if key in python_keys:
                sizing.append(row(*py.sizing_args(key, own_grants)))
            else:  # built for the rows shown only; the status is the SQL's
                sizing.append({"cluster": cluster, "identity": ident, "status": status_of(
                    ident, flags.get(key, NO_USES), n_left), "build": row})
    out.sort(key=lambda x: (not (x["findings"] or x["over_privileged"] or x["status"] in ("unknown", "unused")),
                            -int(x["requests"] or 0), str(x["cluster"]), x["identity"]))
    sas = [x for x in out if x["kind"] == "service_account"]
    with_grants = [x for x in sas if charged.get((x["cluster"], x["identity"]))]
    over_rows = [x for x in with_grants if x["over_privileged"]]
    totals = {
        "identities": len(out), "service_accounts": len(sas), "nodes": len(out) - len(sas),
        "seen": sum(1 for x in out if x["status"] != "unused"),
        "unused": sum(1 for x in out if x["status"] == "unused"),
        "unknown": sum(1 for x in out if x["status"] == "unknown"),
        "legacy_only": sum(1 for x in out if x["status"] == "legacy_only"),
        "with_grants": len(with_grants), "over_privileged": len(over_rows),
        "over_privileged_share": round(len(over_rows) / len(with_grants), 3) if with_grants else None,
        "unused_default_grants": default_unused,
        "baseline_days": base_days, "snapshot_clusters": sorted(str(c) for c in snap_clusters),
    }
    # the rows shown, in Python: the uses behind their lists, their suggestions and the YAML
    shown = _python_uses(ctx, {(x["cluster"], x["identity"]) for x in out[: ctx.limit] + sizing[: ctx.limit]}
                         - python_keys, base, exclude, same).merged(py)
    for x in out[: ctx.limit]:
        key = (x["cluster"], x["identity"])
        labels = sorted({u.label() for u in shown.period.get(key, [])})
        x["used"], x["used_count"] = labels[:LIST_CAP], len(labels)
        if x["kind"] == "service_account":
            x["unused_grants"] = unused_grants(held[key].own, shown.every.get(key, []))[1][:LIST_CAP]
    for i, x in enumerate(sizing[: ctx.limit]):
        if "build" in x:
            key = (x["cluster"], x["identity"])
            x = sizing[i] = x["build"](*shown.sizing_args(key, held[key].own))
        # the YAML of the rows shown only: the status does not depend on it
        x["suggestion"] = x["suggestion"]() if callable(x["suggestion"]) else x["suggestion"]
    result = ReportResult("nhi", "Non-human identities: inventory, visibility and right-sizing", [
        Section("identities", "Service accounts and nodes (flagged first)", NHI_COLUMNS, out[: ctx.limit],
                display=NHI_DISPLAY),
        Section("rightsize", "Right-sizing: unused grants and a least-privilege suggestion, replay-checked",
                RIGHTSIZE_COLUMNS, sizing[: ctx.limit], display=RIGHTSIZE_DISPLAY, detail="suggestion"),
        Section("visibility", "Visibility and over-privilege", VISIBILITY_COLUMNS, [totals], vertical=True),
    ])
    result.verdict.append(
        f"{len(out)} non-human identities ({len(sas)} service accounts, {len(out) - len(sas)} nodes): "
        f"{totals['unused']} granted but never seen (unused), {totals['unknown']} seen but absent from the RBAC "
        f"snapshot (unknown), {totals['legacy_only']} seen only with legacy tokens")
    if with_grants:
        result.verdict.append(
            f"{len(over_rows)} of {len(with_grants)} service accounts with RBAC grants hold permissions they did not "
            f"use in {base_days:g} days ({100 * len(over_rows) / len(with_grants):.0f} %)")
    if not grants:
        result.notes.append("no RBAC snapshot ingested" + (f" for cluster {f.cluster}" if f.cluster else "")
                            + ": granted, unused and over-privilege figures need one (docs/nhi.md)")
    result.notes.extend(notes)
    if default_unused:
        result.notes.append(f"{default_unused} service accounts hold unused Kubernetes default grants "
                            "(bootstrap policy), not in the share")
    for name, rows_ in (("identities", out), ("rightsize", sizing)):
        if len(rows_) > ctx.limit:
            result.notes.append(f"{name}: {len(rows_) - ctx.limit} of {len(rows_)} rows left out by --limit "
                                f"{ctx.limit} (the figures count them all)")
    statuses = Counter(x["status"] for x in sizing)
    if statuses["review"] or statuses["withheld"]:
        result.notes.append(f"right-sizing: {statuses['review']} suggestions to review before applying, "
                            f"{statuses['withheld']} withheld (rightsize: status, review)")
    result.params["baseline"] = {"since": base.since, "until": base.until}
    return result


def _same_requests(ctx: ReportContext, src: str, base: Window) -> bool:
    """True when the report's period holds the same requests as the right-sizing baseline: the same
    window, or (without --since/--until: all time) no request older than the baseline (a lake of
    less than 30 days), so the baseline's uses are the period's."""
    if base == ctx.filters.window:
        return True
    first = ctx.con.execute(f"SELECT min(request_received_at) FROM {src}").fetchall()[0][0]
    return first is None or bool(first >= base.lo)


@dataclass(frozen=True)
class Held:
    """An identity's grants: bound to it, through its groups; its own are both without Kubernetes'
    defaults bound to groups, which are counted apart (module docstring)."""

    direct: list[dict[str, Any]]
    via_groups: list[dict[str, Any]]

    @property
    def own(self) -> list[dict[str, Any]]:
        return [g for g in self.direct + self.via_groups if not (g["subject_kind"] == "Group" and _is_default(g))]

    @property
    def defaults(self) -> list[dict[str, Any]]:
        return [g for g in self.via_groups if _is_default(g)]


@dataclass(frozen=True)
class PythonUses:
    """The :class:`Use` lists of some accounts: every use and the kept ones in the baseline, the period's."""

    every: Uses
    kept: Uses
    period: Uses

    def merged(self, other: PythonUses) -> PythonUses:
        return PythonUses({**self.every, **other.every}, {**self.kept, **other.kept}, {**self.period, **other.period})

    def sizing_args(self, key: tuple[str | None, str], own_grants: list[dict[str, Any]]) -> tuple[Any, ...]:
        """The arguments of :func:`_sizing_row` that need the account's uses (and its own grants)."""
        return (self.kept.get(key, []), *unused_grants(own_grants, self.every.get(key, [])), own_grants)


def _needs_python(identity: str, flags: Flags) -> bool:
    """True when only building the suggestion can tell its status (:func:`ztaudit.reports.rightsize.status_of`
    says ``None``); the report then works the account out from its :class:`Use` lists."""
    return status_of(identity, flags, 0) is None


def _python_uses(ctx: ReportContext, keys: set[tuple[str | None, str]], base: Window, exclude: Excluded,
                 same: bool) -> PythonUses:
    """The :class:`Use` lists of the accounts ``keys`` (cluster, identity), from a copy of the requests
    made as them or with their credential: as :func:`uses_and_kept` and :func:`used_by_identity` give
    them for every account, for a few."""
    if not keys:
        return PythonUses({}, {}, {})
    ctx.con.register(KEYS_VIEW, pa.Table.from_pylist([{"cluster": c, "identity": i} for c, i in keys],
                                                     schema=KEYS_SCHEMA))
    try:
        ctx.con.execute(SOME_SQL)
    finally:
        ctx.con.unregister(KEYS_VIEW)
    every, kept = uses_and_kept(ctx.con, base, exclude, SOME_TABLE)
    period = every if same else used_by_identity(ctx.con, ctx.filters.window, src=SOME_TABLE)
    return PythonUses(every, kept, period)


def _sizing_row(cluster: str | None, ident: str, own_uses: list[Use], granted_pairs: int, unused: list[str],
                own_grants: list[dict[str, Any]], *, n_left: int, left_ids: list[str], base_days: int, requests: int,
                hashed: bool) -> Row:
    """One ``rightsize`` row: the suggestion, its replay check and its status (module docstring). A
    printable suggestion is left as a call to :func:`to_yaml`, made for the rows ``--limit`` keeps."""
    masters = masters_uses(own_uses)
    kept = [u for u in own_uses if u not in masters]
    rules = suggest(kept)
    check = verify(rules, kept)
    review = review_reasons(rules) + wider_than_granted(rules, own_grants)
    if n_left:
        review.append(f"{n_left} requests left out: evidence of open findings {', '.join(left_ids[:5])}")
    if masters:
        review.append(f"{sum(u.requests for u in masters)} impersonations of system:masters left out")
    text: str | Callable[[], str]
    if not valid_service_account(ident):
        status, text = "withheld", "not printed: the identity is not a valid service account name (DNS-1123)"
    elif not kept:
        status, text = "withheld", "not printed: every allowed request is evidence of an open finding"
    elif not check.ok:
        status = "withheld"
        text = (f"not printed: replay allowed {check.allowed} of {check.requests}; grants unused "
                f"{', '.join(check.never_used[:5])}")
    else:
        status = "review" if review else "verified"
        text = partial(to_yaml, cluster, ident, rules, object_name(ident, hashed=hashed))
    return {
        "cluster": cluster, "identity": ident, "baseline_days": base_days, "requests": requests,
        "granted_pairs": granted_pairs, "unused_pairs": len(unused), "unused_grants": unused[:LIST_CAP],
        "left_out_requests": n_left, "left_out_findings": left_ids[:LIST_CAP],
        "replayed_requests": check.requests, "allowed_by_suggestion": check.allowed,
        "verified": status == "verified", "status": status, "review": review, "suggestion": text,
    }

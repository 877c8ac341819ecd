"""``report nhi``: the non-human identities (service accounts, nodes), what they may do, what they did.

Called by ``ztaudit report nhi`` and ``ztaudit demo``. Reads ``k8s_requests`` over
``[--since, --until)`` (``--cluster``, ``--actor`` narrow it), the latest RBAC snapshot per cluster
(``rbac_grant``, :func:`ztaudit.detectors.rbac.latest_grants`) and ``findings``; SQL errors
propagate. Without a snapshot the inventory comes from the audit log alone and a note says what is
missing.

Verdict lines first: the visibility figures (identities granted but never seen = ``unused``, seen
but absent from the snapshot = ``unknown``, seen only with legacy secret-based tokens =
``legacy_only``) and the over-privilege share ("N of M service accounts hold permissions they did
not use in the baseline", the user's own version of the industry's 97 %).

Sections:

* ``identities`` (primary), one row per cluster and identity (an identity's requests are those made
  with its credential, so the proxy's service account is seen through the people it impersonates):
  ``cluster, identity, kind
  (service_account|node), namespace, status (active|unused|unknown|legacy_only), in_snapshot (yes |
  no | node_authorizer: kubelets are authorized by the Node authorizer, not RBAC), first_seen,
  last_seen, requests, requests_per_day (over the days the period's data spans), credentials (per
  kind: count and the longest time one was used, e.g. ``jti x14, longest 0.8 h``),
  max_credential_age_hours, namespaces, resources, secret_namespaces (reach: allowed requests only),
  granted (rules bound to the identity itself, ``binding: verbs resources``), group_grants (rules it gets through groups
  such as ``system:serviceaccounts``), used (distinct permissions exercised, up to 20), used_count,
  unused_grants (granted verb x resource pairs never used in the baseline, up to 20),
  over_privileged, impersonable_by (subjects RBAC lets impersonate it, ``system:masters`` left
  out), findings (detector ids with findings about it)``. Flagged rows (findings, over-privileged,
  unknown, unused) first, then by requests.
* ``rightsize``, one row per service account with allowed requests in the baseline (the report's
  window, else the 30 days before the newest audit event; :mod:`ztaudit.reports.rightsize`):
  ``cluster, identity, baseline_days, requests, granted_pairs, unused_pairs, unused_grants,
  replayed_requests, allowed_by_suggestion, verified, suggestion`` (Kubernetes YAML, printed only
  when the replay check passed).
* ``visibility``: the totals behind the verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Final

from ztaudit.detectors.impersonation_rights import impersonation_rights, impersonators_of
from ztaudit.detectors.rbac import Use, implicit_groups, latest_grants
from ztaudit.reports.base import ReportContext, ReportResult, Row, Section, fetch
from ztaudit.reports.rightsize import baseline, suggest, to_yaml, unused_grants, used_by_identity, verify

NHI_COLUMNS: Final = ["cluster", "identity", "kind", "namespace", "status", "in_snapshot", "first_seen", "last_seen",
                      "requests", "requests_per_day", "credentials", "max_credential_age_hours", "namespaces",
                      "resources", "secret_namespaces", "granted", "group_grants", "used", "used_count",
                      "unused_grants", "over_privileged", "impersonable_by", "findings"]
NHI_DISPLAY: Final = ["cluster", "identity", "status", "last_seen", "requests_per_day", "credentials", "namespaces",
                      "used_count", "over_privileged", "findings"]
RIGHTSIZE_COLUMNS: Final = ["cluster", "identity", "baseline_days", "requests", "granted_pairs", "unused_pairs",
                            "unused_grants", "replayed_requests", "allowed_by_suggestion", "verified", "suggestion"]
RIGHTSIZE_DISPLAY: Final = ["cluster", "identity", "requests", "granted_pairs", "unused_pairs", "verified"]
VISIBILITY_COLUMNS: Final = ["identities", "service_accounts", "nodes", "seen", "unused", "unknown", "legacy_only",
                             "with_grants", "over_privileged", "over_privileged_share", "baseline_days",
                             "snapshot_clusters"]
#: Groups every service account is in; their grants are shared defaults, not one account's.
SHARED_GROUPS: Final = ("system:authenticated", "system:serviceaccounts")
LIST_CAP: Final = 20

#: An allowed request (reach counts what an identity could do, not what it was refused).
OK: Final = "coalesce(response_code, 200) < 400 AND coalesce(decision, 'allow') <> 'forbid'"
#: Requests with the non-human identity whose credential made them: the actor, or the impersonator
#: (the proxy's service account impersonating people is seen, through its own credential).
NHI_ROWS: Final = """
SELECT *, coalesce(impersonator, actor) AS identity,
       CASE WHEN impersonator IS NULL THEN actor_kind
            WHEN impersonator LIKE 'system:serviceaccount:%' THEN 'service_account'
            WHEN impersonator LIKE 'system:node:%' THEN 'node' END AS identity_kind
FROM k8s_requests
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


def _grant_label(g: dict[str, Any]) -> str:
    if not g["role_found"]:
        return f"{g['binding_name']}: {g['role_kind']} {g['role_name']} (not in snapshot)"
    what = ",".join(g["resources"] or []) or ",".join(g["non_resource_urls"] or [])
    names = f" [{','.join(g['resource_names'])}]" if g["resource_names"] else ""
    where = f" in {g['scope_namespace']}" if g["scope_namespace"] else ""
    return f"{g['binding_name']}: {','.join(g['verbs'] or [])} {what}{names}{where}"


def _span_days(rows: list[Row]) -> int:
    firsts = [r["first_seen"] for r in rows if r.get("first_seen")]
    lasts = [r["last_seen"] for r in rows if r.get("last_seen")]
    if not firsts:
        return 1
    return max(1, math.ceil(float((max(lasts) - min(firsts)).total_seconds()) / 86400))


def nhi(ctx: ReportContext) -> ReportResult:
    """The NHI inventory, right-sizing and visibility figures (``ztaudit report nhi``; module docstring)."""
    f = ctx.filters
    where, params = f.where(time_col="request_received_at", actor_cols=("identity",))
    with ctx.progress.step("non-human identities in the audit log"):
        seen = fetch(ctx.con, SEEN_SQL.format(rows=NHI_ROWS, where=where, ok=OK), params)
        creds = fetch(ctx.con, CRED_SQL.format(rows=NHI_ROWS, where=where), params)
    with ctx.progress.step("RBAC snapshot"):
        grants = [g for g in latest_grants(ctx.con, f.window.until)
                  if f.cluster is None or g["cluster"] == f.cluster]
        rights = impersonation_rights(grants)
    with ctx.progress.step("right-sizing"):
        base = baseline(ctx.con, f.window.since, f.window.until)
        uses = used_by_identity(ctx.con, base)
        period_uses = uses if base == f.window else used_by_identity(ctx.con, f.window)
    findings = fetch(ctx.con, """SELECT cluster, actor, list_sort(list(DISTINCT detector)) AS d FROM findings
                                 WHERE actor LIKE 'system:serviceaccount:%' OR actor LIKE 'system:node:%'
                                 GROUP BY ALL""")
    found: dict[tuple[str | None, str], list[str]] = {(r["cluster"], r["actor"]): r["d"] for r in findings}

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

    days = _span_days(seen)
    # the days of data the baseline holds: its length, or less when the lake covers less
    base_days = min(days, math.ceil((base.hi - base.lo).total_seconds() / 86400)) if base.since else days
    out: list[Row] = []
    sizing: list[Row] = []
    for key in sorted(rows, key=lambda k: (str(k[0]), k[1])):
        r = rows[key]
        cluster, ident = key
        is_sa = r["kind"] == "service_account"
        mine = direct.get(key, [])
        groups = implicit_groups(ident) if is_sa else {"system:nodes", "system:authenticated"}
        via_groups = [g for grp in sorted(groups) for g in by_group.get((cluster, grp), [])]
        own_uses: list[Use] = uses.get(key, [])
        labels = sorted({u.label() for u in period_uses.get(key, [])})
        granted_pairs, unused = unused_grants(mine, own_uses) if is_sa else (0, [])
        if not is_sa:
            in_snapshot = "node_authorizer"
        elif cluster in snap_clusters:
            in_snapshot = "yes" if mine or any(g["subject"] not in SHARED_GROUPS for g in via_groups) else "no"
        else:
            in_snapshot = "no snapshot"
        status = ("unused" if not r["seen"] else "unknown" if in_snapshot == "no"
                  else "legacy_only" if r["legacy_only"] else "active")
        out.append({
            "cluster": cluster, "identity": ident, "kind": r["kind"], "namespace": r["namespace"],
            "status": status, "in_snapshot": in_snapshot, "first_seen": r["first_seen"], "last_seen": r["last_seen"],
            "requests": r["requests"], "requests_per_day": round(r["requests"] / days, 1),
            "credentials": cred_text.get(key, []), "max_credential_age_hours": cred_age.get(key),
            "namespaces": r["namespaces"], "resources": r["resources"], "secret_namespaces": r["secret_namespaces"],
            "granted": [_grant_label(g) for g in mine][:LIST_CAP],
            "group_grants": [f"{g['subject']} {_grant_label(g)}" for g in via_groups][:LIST_CAP],
            "used": labels[:LIST_CAP], "used_count": len(labels), "unused_grants": unused[:LIST_CAP],
            "over_privileged": bool(unused), "impersonable_by": impersonators_of(rights, cluster, ident),
            "findings": found.get(key, []),
        })
        if is_sa and own_uses:
            rules = suggest(own_uses)
            check = verify(rules, own_uses)
            sizing.append({
                "cluster": cluster, "identity": ident, "baseline_days": base_days,
                "requests": sum(u.requests for u in own_uses), "granted_pairs": granted_pairs,
                "unused_pairs": len(unused), "unused_grants": unused[:LIST_CAP],
                "replayed_requests": check.requests, "allowed_by_suggestion": check.allowed, "verified": check.ok,
                "suggestion": to_yaml(cluster, ident, rules) if check.ok
                else f"not printed: replay allowed {check.allowed} of {check.requests}; grants unused "
                     f"{', '.join(check.never_used[:5])}",
            })
    out.sort(key=lambda x: (not (x["findings"] or x["over_privileged"] or x["status"] in ("unknown", "unused")),
                            -int(x["requests"] or 0), str(x["cluster"]), x["identity"]))
    sas = [x for x in out if x["kind"] == "service_account"]
    with_grants = [x for x in sas if direct.get((x["cluster"], x["identity"]))]
    over = [x for x in with_grants if x["over_privileged"]]
    totals = {
        "identities": len(out), "service_accounts": len(sas), "nodes": len(out) - len(sas),
        "seen": sum(1 for x in out if x["status"] != "unused"),
        "unused": sum(1 for x in out if x["status"] == "unused"),
        "unknown": sum(1 for x in out if x["status"] == "unknown"),
        "legacy_only": sum(1 for x in out if x["status"] == "legacy_only"),
        "with_grants": len(with_grants), "over_privileged": len(over),
        "over_privileged_share": round(len(over) / len(with_grants), 3) if with_grants else None,
        "baseline_days": base_days, "snapshot_clusters": sorted(str(c) for c in snap_clusters),
    }
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
            f"{len(over)} of {len(with_grants)} service accounts with RBAC grants hold permissions they did not use "
            f"in {base_days:g} days ({100 * len(over) / len(with_grants):.0f} %)")
    else:
        result.notes.append("no RBAC snapshot ingested: granted, unused and over-privilege figures need one "
                            "(docs/nhi.md)")
    failed = [x["identity"] for x in sizing if not x["verified"]]
    if failed:
        result.notes.append(f"suggestions withheld (replay check failed): {', '.join(failed[:10])}")
    result.params["baseline"] = {"since": base.since, "until": base.until}
    return result


"""What counts as a revocation: the SQL of the ``revocations`` view and of its rows in a window.

:data:`REVOCATIONS_SQL` is the view (``core/views/revocations.sql``; ``tests/core/test_views.py``
fails if the two drift); :data:`REVOCATIONS_IN_WINDOW_SQL` gives the view's rows with ``revoked_at``
in a window without reading the rest of the lake. Used by :mod:`ztaudit.detectors.revocation_status`
(the revocations it judges) and by the view tests. Each row's ``restored_at`` is the first
restoration of the same subject after it, where judgement stops.

What counts as a revocation (the ``revocations`` view):

* IdP events with ``is_revocation`` (Okta deactivate/suspend/session clear, Entra disable /
  StsRefreshTokensValidFrom, Google SUSPEND/DELETE_USER, Keycloak, Pomerium ``identity_manager``
  "deleting session"; docs/proxy-and-idp.md §3, §1.4, §4 step 1). ``revocation_scope`` says what
  is cut; when it is missing, a Pomerium line is a ``session`` and anything else an ``identity``.
  Pomerium's "deleting expired session" is a session reaching its lifetime, not a revocation.
* Keycloak disables inferred from their confirmation: Keycloak logs a disable as an admin event
  ``operationType=UPDATE resourcePath=users/<id>`` with no representation unless configured, so the
  disable itself is not visible; the refresh that follows fails with ``REFRESH_TOKEN_ERROR``
  ``reason="User disabled"`` for ``refresh_token_sub`` = the id (real-stack.md §4). Such a
  confirmation makes an ``identity`` revocation at the latest admin update of that user in the day
  before it (else at the day's first confirmation), unless an explicit revocation of the user (a
  DELETE, a disable with its representation) in that day is what it confirms; ``inferred_from``
  names the confirmation.
* The audit log itself (docs/kubernetes-audit.md §5.3): a 2xx ``delete`` of a ``serviceaccounts``
  object (the service account ``system:serviceaccount:NS:NAME``), of a ``secrets`` object that
  was used as a legacy token (credential ``SECRET=NS/NAME``, §5.2), or of a ``rolebindings`` /
  ``clusterrolebindings`` object (the binding).

Failure: SQL errors propagate; an empty lake gives an empty table.
"""

from __future__ import annotations

from typing import Final

from ztaudit.core.window import Window

#: Restorations end a revocation's judgement: the lifecycle events that give an identity back (Okta
#: user.lifecycle.activate / reactivate / unsuspend, user.account.unlock; Google UNSUSPEND_USER /
#: UNDELETE_USER; Entra "Enable account"; Teleport lock.deleted), matched whole, so an MFA factor's
#: "user.mfa.factor.activate" or a "deactivate" is not one. A Keycloak LOGIN of the subject is one too:
#: a disabled Keycloak user cannot log in; and so is an admin UPDATE whose representation enables the
#: user (``admin:UPDATE:USER:enabled``, pipeline/normalize/idp_vendors.py; without the representation
#: the re-enable says nothing, §3.4), which is also never taken for the disable an inference dates.
#: A restoration is the revoking IdP's own (an Okta deactivation is not given back by a Google
#: unsuspend of the same login, nor by a Keycloak login of the same id); a revocation-list row, which
#: records a revocation made anywhere, is given back by any IdP's.
_RESTORE_RE: Final = (r"(?i)^(user\.lifecycle\.(re)?activate|user\.lifecycle\.unsuspend|user\.account\.unlock"
                      r"|unsuspend_user|undelete_user|enable account|restore user|lock\.deleted"
                      r"|(re)?activate|unsuspend|enable|restore|unlock)$")

#: The audit-log side reads creates and deletes of these resources once (``zt_cd``): deletions are the
#: revocations, creations of the same object after them restore it. ``verb`` is also bounded as a
#: range so the Parquet reader applies the filter itself (an ``IN`` list is only a hint to it).
_REVOKED_RESOURCES: Final = "('serviceaccounts', 'secrets', 'rolebindings', 'clusterrolebindings')"

#: The revocations SELECT with three slots for time bounds: ``{idp_window}`` (IdP revocations),
#: ``{cd_window}`` (the creates and deletes read) and ``{delete_window}`` (the deletions).
_REVOCATIONS: Final = f"""
    WITH zt_cd AS MATERIALIZED (
        SELECT cluster, audit_id, request_received_at, verb, resource, namespace, name, actor, response_code
        FROM k8s_audit
        WHERE verb >= 'create' AND verb <= 'delete' AND verb IN ('create', 'delete') AND subresource IS NULL
          AND resource IN {_REVOKED_RESOURCES} {{cd_window}}
    )
    SELECT 'idp' AS source, i.idp AS system, CAST(NULL AS VARCHAR) AS cluster,
           coalesce(i.revocation_scope, CASE WHEN i.idp = 'pomerium' THEN 'session' ELSE 'identity' END) AS kind,
           CASE WHEN coalesce(i.revocation_scope, CASE WHEN i.idp = 'pomerium' THEN 'session' END) = 'session'
                     AND i.session_id IS NOT NULL THEN i.session_id
                ELSE coalesce(lower(i.subject_login), i.subject_id, i.session_id) END AS subject,
           lower(i.subject_login) AS login, i.subject_id, i.session_id,
           i.occurred_at AS revoked_at, i.actor AS revoked_by, i.event_type,
           'idp_event:' || coalesce(i.origin, i.idp || '/' || CAST(i.occurred_at AS VARCHAR)) AS evidence,
           CAST(NULL AS VARCHAR) AS inferred_from,
           (SELECT min(e.occurred_at) FROM idp_event e
             WHERE NOT coalesce(e.is_revocation, false) AND e.occurred_at > i.occurred_at
               AND (e.idp = i.idp OR i.idp = 'list')
               AND coalesce(upper(e.outcome), 'SUCCESS') NOT IN ('FAILURE', 'DENY', 'DENIED')
               AND (regexp_matches(e.event_type, '{_RESTORE_RE}')
                    OR (e.idp = 'keycloak' AND i.idp = 'keycloak'
                        AND (e.event_type = 'LOGIN' OR e.event_type LIKE 'admin:UPDATE:%:enabled')))
               AND ((e.subject_id IS NOT NULL AND e.subject_id = i.subject_id)
                    OR (e.subject_login IS NOT NULL AND lower(e.subject_login) = lower(i.subject_login)))
           ) AS restored_at
    FROM idp_event i
    WHERE i.is_revocation AND coalesce(upper(i.outcome), 'SUCCESS') NOT IN ('FAILURE', 'DENY', 'DENIED')
      AND NOT (i.idp = 'pomerium' AND i.event_type LIKE '%expired session%') {{idp_window}}
    UNION ALL
    SELECT 'idp', 'keycloak', NULL, 'identity', c.subject_id, NULL, c.subject_id, NULL,
           coalesce(c.updated_at, c.first_confirmed_at),
           (SELECT min(u.actor) FROM idp_event u WHERE u.idp = 'keycloak' AND u.subject_id = c.subject_id
              AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled'
              AND u.occurred_at = c.updated_at),
           CASE WHEN c.updated_at IS NULL THEN c.event_type ELSE 'admin:UPDATE:USER' END,
           'idp_event:' || coalesce(
               (SELECT min(u.origin) FROM idp_event u WHERE u.idp = 'keycloak' AND u.subject_id = c.subject_id
                  AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled'
              AND u.occurred_at = c.updated_at), c.origin),
           'idp_event:' || c.origin || ' (' || c.event_type || ' "' || c.reason || '")' || coalesce(
               (SELECT '; ' || count(*) || ' earlier admin update(s) of the user that day may be the disable, '
                       || 'the first idp_event:' || arg_min(u.origin, u.occurred_at)
                FROM idp_event u WHERE u.idp = 'keycloak' AND u.subject_id = c.subject_id
                  AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled'
                  AND u.occurred_at < c.updated_at AND u.occurred_at > c.occurred_at - INTERVAL 1 DAY
                HAVING count(*) > 0), ''),
           (SELECT min(e.occurred_at) FROM idp_event e
             WHERE e.idp = 'keycloak' AND e.subject_id = c.subject_id AND e.occurred_at > c.occurred_at
               AND coalesce(upper(e.outcome), 'SUCCESS') NOT IN ('FAILURE', 'DENY', 'DENIED')
               AND (regexp_matches(e.event_type, '{_RESTORE_RE}') OR e.event_type = 'LOGIN'
                    OR e.event_type LIKE 'admin:UPDATE:%:enabled'))
    FROM (SELECT k.*,
                 (SELECT max(u.occurred_at) FROM idp_event u
                  WHERE u.idp = 'keycloak' AND u.subject_id = k.subject_id
                    AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled'
                    AND u.occurred_at <= k.occurred_at
                    AND u.occurred_at > k.occurred_at - INTERVAL 1 DAY) AS updated_at,
                 -- without the admin event, the earliest confirmation of the day stands for the disable,
                 -- so every client's failed refresh gives the same instant (one revocation)
                 (SELECT min(f.occurred_at) FROM idp_event f
                  WHERE f.idp = 'keycloak' AND f.subject_id = k.subject_id AND f.event_type = 'REFRESH_TOKEN_ERROR'
                    AND regexp_matches(f.reason, '(?i)user disabled') AND f.occurred_at <= k.occurred_at
                    AND f.occurred_at > k.occurred_at - INTERVAL 1 DAY) AS first_confirmed_at
          FROM idp_event k
          WHERE k.idp = 'keycloak' AND k.event_type = 'REFRESH_TOKEN_ERROR' AND k.subject_id IS NOT NULL
            AND regexp_matches(k.reason, '(?i)user disabled')
            -- an explicit revocation of the subject (a disable logged with its representation, a
            -- DELETE) in the day before is what this confirms: nothing to infer
            AND NOT EXISTS (SELECT 1 FROM idp_event x
                            WHERE x.idp = 'keycloak' AND x.is_revocation AND x.subject_id = k.subject_id
                              AND x.revocation_scope = 'identity' AND x.occurred_at <= k.occurred_at
                              AND x.occurred_at > k.occurred_at - INTERVAL 1 DAY)
            {{idp_window_k}}) c
    UNION ALL
    SELECT 'k8s_audit', d.cluster, d.cluster,
           CASE d.resource WHEN 'serviceaccounts' THEN 'service_account' WHEN 'secrets' THEN 'legacy_token'
                ELSE 'binding' END,
           CASE d.resource WHEN 'serviceaccounts' THEN 'system:serviceaccount:' || d.namespace || ':' || d.name
                WHEN 'secrets' THEN 'SECRET=' || d.namespace || '/' || d.name
                WHEN 'rolebindings' THEN 'RoleBinding/' || d.namespace || '/' || d.name
                ELSE 'ClusterRoleBinding/' || d.name END,
           NULL, NULL, NULL, d.request_received_at, d.actor, 'delete ' || d.resource,
           'k8s_audit:' || coalesce(d.cluster, 'None') || '/' || d.audit_id, NULL,
           (SELECT min(c.request_received_at) FROM zt_cd c
             WHERE c.cluster IS NOT DISTINCT FROM d.cluster AND c.verb = 'create' AND c.resource = d.resource
               AND c.name = d.name AND coalesce(c.namespace, '') = coalesce(d.namespace, '')
               AND c.response_code BETWEEN 200 AND 299 AND c.request_received_at > d.request_received_at)
    FROM (
        SELECT cluster, audit_id, request_received_at, any_value(resource) AS resource,
               any_value(namespace) AS namespace, any_value(name) AS name, any_value(actor) AS actor
        FROM zt_cd
        WHERE verb = 'delete' {{delete_window}}
        GROUP BY cluster, audit_id, request_received_at
        HAVING max(response_code) BETWEEN 200 AND 299
    ) d
    WHERE d.resource <> 'secrets' OR ('SECRET=' || d.namespace || '/' || d.name) IN (
        SELECT credential_id FROM k8s_audit WHERE credential_id LIKE 'SECRET=%' AND cluster = d.cluster)
"""

#: The ``revocations`` view (``core/views/revocations.sql``; ``tests/core/test_views.py`` fails if the file
#: and this drift): every revocation in the lake.
REVOCATIONS_SQL: Final = _REVOCATIONS.format(cd_window="", idp_window="", idp_window_k="", delete_window="")

#: Keycloak confirmations read for a window: a confirmation comes after the disable it confirms, so
#: no upper bound (a disable just before $hi confirmed after it is still found).
_CONFIRMATION_WINDOW: Final = "AND k.occurred_at >= $lo AND CAST(k.dt AS VARCHAR) >= $lo_day"

#: The view's rows with ``revoked_at`` in [$lo, $hi), read without the rest of the lake: whole day
#: partitions (``dt``, the UTC day of the event time) outside the window are skipped. Restorations are
#: still looked up at any time after the revocation, and a deleted secret counts as a legacy token if
#: it was used as one at any time, as in the view.
REVOCATIONS_IN_WINDOW_SQL: Final = f"""
    SELECT * FROM ({_REVOCATIONS.format(
        cd_window="AND request_received_at >= $lo AND CAST(dt AS VARCHAR) >= $lo_day",
        idp_window="AND " + Window.sql("occurred_at", "i"),
        idp_window_k=_CONFIRMATION_WINDOW,
        delete_window="AND request_received_at < $hi")}) v
    WHERE v.revoked_at >= $lo AND v.revoked_at < $hi
"""

WITH zt_cd AS MATERIALIZED (
        SELECT cluster, audit_id, request_received_at, verb, resource, namespace, name, actor, response_code
        FROM k8s_audit
        WHERE verb >= 'create' AND verb <= 'delete' AND verb IN ('create', 'delete') AND subresource IS NULL
          AND resource IN ('serviceaccounts', 'secrets', 'rolebindings', 'clusterrolebindings') 
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
               AND (regexp_matches(e.event_type, '(?i)^(user\.lifecycle\.(re)?activate|user\.lifecycle\.unsuspend|user\.account\.unlock|unsuspend_user|undelete_user|enable account|restore user|lock\.deleted|(re)?activate|unsuspend|enable|restore|unlock)$') OR (e.idp = 'keycloak' AND i.idp = 'keycloak'
                        AND (e.event_type = 'LOGIN' OR e.event_type LIKE 'admin:UPDATE:%:enabled')))
               AND ((e.subject_id IS NOT NULL AND e.subject_id = i.subject_id)
                    OR (e.subject_login IS NOT NULL AND lower(e.subject_login) = lower(i.subject_login)))
           ) AS restored_at
    FROM idp_event i
    WHERE i.is_revocation AND coalesce(upper(i.outcome), 'SUCCESS') NOT IN ('FAILURE', 'DENY', 'DENIED')
      AND NOT (i.idp = 'pomerium' AND i.event_type LIKE '%expired session%') 
    UNION ALL
    SELECT 'idp', 'keycloak', NULL, 'identity', c.subject_id, NULL, c.subject_id, NULL,
           coalesce(c.updated_at, c.first_confirmed_at),
           (SELECT min(u.actor) FROM idp_event u WHERE u.idp = 'keycloak' AND u.subject_id = c.subject_id
              AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled' AND u.occurred_at = c.updated_at),
           CASE WHEN c.updated_at IS NULL THEN c.event_type ELSE 'admin:UPDATE:USER' END,
           'idp_event:' || coalesce(
               (SELECT min(u.origin) FROM idp_event u WHERE u.idp = 'keycloak' AND u.subject_id = c.subject_id
                  AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled' AND u.occurred_at = c.updated_at), c.origin),
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
               AND (regexp_matches(e.event_type, '(?i)^(user\.lifecycle\.(re)?activate|user\.lifecycle\.unsuspend|user\.account\.unlock|unsuspend_user|undelete_user|enable account|restore user|lock\.deleted|(re)?activate|unsuspend|enable|restore|unlock)$') OR e.event_type = 'LOGIN' OR e.event_type LIKE 'admin:UPDATE:%:enabled'))
    FROM (SELECT k.*,
                 (SELECT max(u.occurred_at) FROM idp_event u
                  WHERE u.idp = 'keycloak' AND u.subject_id = k.subject_id
                    AND u.event_type LIKE 'admin:UPDATE:%' AND u.event_type NOT LIKE '%:enabled' AND u.occurred_at <= k.occurred_at
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
            ) c
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
        WHERE verb = 'delete' 
        GROUP BY cluster, audit_id, request_received_at
        HAVING max(response_code) BETWEEN 200 AND 299
    ) d
    WHERE d.resource <> 'secrets' OR ('SECRET=' || d.namespace || '/' || d.name) IN (
        SELECT credential_id FROM k8s_audit WHERE credential_id LIKE 'SECRET=%' AND cluster = d.cluster)

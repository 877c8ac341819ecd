WITH zt_p AS MATERIALIZED (
    SELECT hash(d.origin, d.request_id, d.check_request_id, d.decided_at) AS pk,
           substr(md5(coalesce(d.origin, '') || chr(0) || coalesce(d.request_id, '') || chr(0) || coalesce(d.check_request_id, '')), 1, 12) AS tb,
           hash(coalesce(h.cluster, d.cluster, s.single_cluster), lower(d.email), upper(d.method), d.path) AS k,
           coalesce(h.cluster, d.cluster, s.single_cluster) AS cluster,
           epoch_us(d.decided_at) AS d_us,
           CASE WHEN epoch_us(d.decided_at) % 1000000 = 0 THEN 1000000 ELSE 0 END AS prec_us,
           hash(coalesce(d.check_request_id, d.request_id)) AS rid_h,
           CASE WHEN coalesce(d.session_id, '') <> ''
                THEN hash(coalesce(h.cluster, d.cluster, s.single_cluster), d.session_id, lower(d.email),
                          upper(d.method), d.path)
           END AS kb, lower(d.email) AS who, upper(d.method) AS method, d.path, d.decided_at,
           d.request_id, d.check_request_id, d.session_id, d.user_id, d.host
    FROM proxy_decision d
    CROSS JOIN zt_correlation_settings s
    LEFT JOIN zt_proxy_hosts h ON h.host = CASE WHEN regexp_matches(d.host, '[^ -~]') THEN d.host WHEN substr(lower(d.host), 1, 1) = '[' AND strpos(lower(d.host), ']') > 0 THEN substr(lower(d.host), 1, strpos(lower(d.host), ']')) WHEN strpos(substr(lower(d.host), strpos(lower(d.host), ':') + 1), ':') > 0 THEN lower(d.host) ELSE split_part(lower(d.host), ':', 1) END
    LEFT JOIN (SELECT DISTINCT x.check_request_id AS rid FROM proxy_decision x
               WHERE x.record_type = 'authorize' AND x.check_request_id IS NOT NULL) az
           ON az.rid = d.request_id AND coalesce(d.record_type, '') = 'access'
    WHERE d.is_allowed AND d.email IS NOT NULL AND d.email <> ''
      AND NOT coalesce(list_bool_or(list_transform(s.unaudited_paths, lambda g: d.path GLOB g)), false)
      AND (NOT s.has_hosts OR h.cluster IS NOT NULL OR (d.host IS NULL AND d.cluster IS NOT NULL))
      AND az.rid IS NULL
    ),
         zt_a AS MATERIALIZED (
    SELECT hash(r.cluster, r.audit_id, r.request_received_at) AS pk, substr(md5(coalesce(any_value(r.audit_id), '')), 1, 12) AS tb,
           any_value(hash(coalesce(r.cluster, s.single_cluster), lower(coalesce(r.impersonated_user, r.user_name)), CASE r.verb WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET' WHEN 'watch' THEN 'GET' WHEN 'create' THEN 'POST' WHEN 'update' THEN 'PUT' WHEN 'patch' THEN 'PATCH' WHEN 'delete' THEN 'DELETE' WHEN 'deletecollection' THEN 'DELETE' ELSE upper(r.verb) END, split_part(r.request_uri, '?', 1))) AS k,
           any_value(coalesce(r.cluster, s.single_cluster)) AS cluster, any_value(hash(r.audit_id)) AS audit_h,
           lower(any_value(coalesce(r.impersonated_user, r.user_name))) AS who,
           epoch_us(any_value(r.request_received_at)) AS r_us,
           any_value(CASE WHEN r.proxy_session_id IS NOT NULL THEN hash(coalesce(r.cluster, s.single_cluster), r.proxy_session_id, lower(coalesce(r.impersonated_user, r.user_name)), CASE r.verb WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET' WHEN 'watch' THEN 'GET' WHEN 'create' THEN 'POST' WHEN 'update' THEN 'PUT' WHEN 'patch' THEN 'PATCH' WHEN 'delete' THEN 'DELETE' WHEN 'deletecollection' THEN 'DELETE' ELSE upper(r.verb) END, split_part(r.request_uri, '?', 1)) END) AS kb, any_value(r.impersonator) AS impersonator, any_value(r.verb) AS verb,
           CASE any_value(r.verb) WHEN 'get' THEN 'GET' WHEN 'list' THEN 'GET' WHEN 'watch' THEN 'GET' WHEN 'create' THEN 'POST' WHEN 'update' THEN 'PUT' WHEN 'patch' THEN 'PATCH' WHEN 'delete' THEN 'DELETE' WHEN 'deletecollection' THEN 'DELETE' ELSE upper(any_value(r.verb)) END AS method,
           split_part(any_value(r.request_uri), '?', 1) AS path, any_value(r.audit_id) AS audit_id,
           any_value(r.request_received_at) AS request_received_at, max(r.response_code) AS response_code
    FROM k8s_audit r CROSS JOIN zt_correlation_settings s
    WHERE ((r.impersonator IS NOT NULL AND r.impersonated_user IS NOT NULL
            AND (coalesce(r.impersonator IN (SELECT username FROM zt_approved_impersonators WHERE cluster = '*'), false) OR coalesce(coalesce(coalesce(r.cluster, s.single_cluster), '') || chr(0) || r.impersonator IN (SELECT cluster || chr(0) || username FROM zt_approved_impersonators), false)))
           OR r.proxy_session_id IS NOT NULL)
      AND NOT coalesce(list_bool_or(list_transform(s.unaudited_paths, lambda g: split_part(r.request_uri, '?', 1) GLOB g)), false)
    GROUP BY hash(r.cluster, r.audit_id, r.request_received_at)
    ),
         zt_pa0 AS MATERIALIZED (
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'A' AS tier
    FROM zt_p p JOIN zt_a a ON a.audit_h = p.rid_h AND a.cluster = p.cluster
    CROSS JOIN zt_correlation_settings s
    WHERE abs(a.r_us - p.d_us) <= s.exact_window_us
    QUALIFY row_number() OVER (PARTITION BY p.pk ORDER BY abs(a.r_us - p.d_us), a.tb, a.pk) = 1
        AND row_number() OVER (PARTITION BY a.pk ORDER BY abs(a.r_us - p.d_us), p.tb, p.pk) = 1
),
         zt_pb AS MATERIALIZED (
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'B' AS tier
    FROM (SELECT * FROM zt_p WHERE kb IS NOT NULL) p JOIN (SELECT * FROM zt_a WHERE kb IS NOT NULL) a ON a.kb = p.kb
    CROSS JOIN zt_correlation_settings s
    WHERE abs(a.r_us - (p.d_us + p.prec_us // 2)) <= s.window_us + p.prec_us // 2
      AND p.pk NOT IN (SELECT p_pk FROM zt_pa0) AND a.pk NOT IN (SELECT a_pk FROM zt_pa0)
    QUALIFY row_number() OVER (PARTITION BY p.pk ORDER BY abs(a.r_us - p.d_us), a.tb, a.pk) = 1
        AND row_number() OVER (PARTITION BY a.pk ORDER BY abs(a.r_us - p.d_us), p.tb, p.pk) = 1
),
         zt_pa AS MATERIALIZED (SELECT * FROM zt_pa0 UNION ALL SELECT * FROM zt_pb),
         zt_c0 AS MATERIALIZED (
             WITH r AS MATERIALIZED (
    WITH u AS (
        SELECT pk, tb, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half, kb IS NOT NULL AS has_sid
        FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_pa)
        UNION ALL
        SELECT pk, tb, true AS is_a, k, r_us AS t, 0 AS half, kb IS NOT NULL AS has_sid
        FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_pa)
    )
    SELECT pk, is_a, k, t, half, has_sid, 0 AS grp, row_number() OVER (PARTITION BY k, is_a ORDER BY t, tb, pk) AS n
    FROM u
    ) 
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM r p JOIN r a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half AND NOT (p.has_sid AND a.has_sid)
),
         zt_x0 AS MATERIALIZED (SELECT * FROM zt_pa UNION ALL SELECT * FROM zt_c0),
         zt_c1 AS MATERIALIZED (WITH r AS MATERIALIZED (
    WITH u AS (
        SELECT pk, tb, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half, kb IS NOT NULL AS has_sid
        FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_x0)
        UNION ALL
        SELECT pk, tb, true AS is_a, k, r_us AS t, 0 AS half, kb IS NOT NULL AS has_sid
        FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_x0)
    ), l1 AS (
        SELECT u.*,
               coalesce(t - lag(t) OVER w > (SELECT window_us + 500000 FROM zt_correlation_settings), true) AS brk,
               sum(CASE WHEN is_a THEN 0 ELSE 1 END) OVER w AS cp,
               sum(CASE WHEN is_a THEN 1 ELSE 0 END) OVER w AS ca
        FROM u WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    ), l2 AS (
        SELECT pk, tb, is_a, k, t, half, has_sid, cp, ca,
               sum(brk::INT) OVER w AS grp,
               max(CASE WHEN brk THEN cp - (CASE WHEN is_a THEN 0 ELSE 1 END) END) OVER w AS base_p,
               max(CASE WHEN brk THEN ca - (CASE WHEN is_a THEN 1 ELSE 0 END) END) OVER w AS base_a
        FROM l1 WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    )
    SELECT pk, is_a, k, t, half, has_sid, grp, CASE WHEN is_a THEN ca - base_a ELSE cp - base_p END AS n FROM l2
    ) 
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM r p JOIN r a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half AND NOT (p.has_sid AND a.has_sid)
),
         zt_x1 AS MATERIALIZED (SELECT * FROM zt_x0 UNION ALL SELECT * FROM zt_c1),
         zt_c2 AS MATERIALIZED (WITH r AS MATERIALIZED (
    WITH u AS (
        SELECT pk, tb, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half, kb IS NOT NULL AS has_sid
        FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_x1)
        UNION ALL
        SELECT pk, tb, true AS is_a, k, r_us AS t, 0 AS half, kb IS NOT NULL AS has_sid
        FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_x1)
    ), l1 AS (
        SELECT u.*,
               coalesce(t - lag(t) OVER w > (SELECT window_us + 500000 FROM zt_correlation_settings), true) AS brk,
               sum(CASE WHEN is_a THEN 0 ELSE 1 END) OVER w AS cp,
               sum(CASE WHEN is_a THEN 1 ELSE 0 END) OVER w AS ca
        FROM u WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    ), l2 AS (
        SELECT pk, tb, is_a, k, t, half, has_sid, cp, ca,
               sum(brk::INT) OVER w AS grp,
               max(CASE WHEN brk THEN cp - (CASE WHEN is_a THEN 0 ELSE 1 END) END) OVER w AS base_p,
               max(CASE WHEN brk THEN ca - (CASE WHEN is_a THEN 1 ELSE 0 END) END) OVER w AS base_a
        FROM l1 WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    )
    SELECT pk, is_a, k, t, half, has_sid, grp, CASE WHEN is_a THEN ca - base_a ELSE cp - base_p END AS n FROM l2
    ) 
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM r p JOIN r a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half AND NOT (p.has_sid AND a.has_sid)
),
         zt_x2 AS MATERIALIZED (SELECT * FROM zt_x1 UNION ALL SELECT * FROM zt_c2),
         zt_skew AS MATERIALIZED (
    WITH lp AS (
        SELECT cluster, k, d_us + prec_us // 2 AS t,
               row_number() OVER (PARTITION BY k ORDER BY d_us, tb, pk) AS n, count(*) OVER (PARTITION BY k) AS c
        FROM zt_p WHERE pk NOT IN (SELECT p_pk FROM zt_x2)
    ), la AS (
        SELECT k, who, r_us AS t,
               row_number() OVER (PARTITION BY k ORDER BY r_us, tb, pk) AS n, count(*) OVER (PARTITION BY k) AS c
        FROM zt_a WHERE pk NOT IN (SELECT a_pk FROM zt_x2)
    ), d AS (
        SELECT p.cluster, p.k, a.who, a.t - p.t AS diff
        FROM lp p JOIN la a ON a.k = p.k AND a.n = p.n AND a.c = p.c
        CROSS JOIN zt_correlation_settings s
        WHERE abs(a.t - p.t) <= s.max_skew_us
    ), m AS (
        -- the median (the lower of two), by rank: the engines' common SQL
        SELECT cluster, diff AS offset_us
        FROM (SELECT cluster, diff, row_number() OVER (PARTITION BY cluster ORDER BY diff) AS n,
                     count(*) OVER (PARTITION BY cluster) AS c FROM d)
        WHERE n = (c + 1) // 2 AND c >= 10
    ), j AS (
        SELECT m.cluster, m.offset_us, d.k, d.who, abs(d.diff - m.offset_us) <= s.window_us AS agrees
        FROM m JOIN d ON d.cluster IS NOT DISTINCT FROM m.cluster CROSS JOIN zt_correlation_settings s
        WHERE abs(m.offset_us) > s.window_us
    )
    SELECT cluster, offset_us, count(*) AS pairs
    FROM j
    GROUP BY cluster, offset_us
    HAVING 5 * count(CASE WHEN agrees THEN 1 END) >= 4 * count(*)
       AND count(DISTINCT CASE WHEN agrees THEN who END) >= 3
       AND count(DISTINCT CASE WHEN agrees THEN k END) >= 3
    ),
         zt_sp AS MATERIALIZED (
    SELECT p.pk, p.tb, p.k, p.d_us + k.offset_us AS d_us, p.prec_us, p.kb
    FROM zt_p p JOIN zt_skew k ON k.cluster IS NOT DISTINCT FROM p.cluster
    WHERE p.pk NOT IN (SELECT p_pk FROM zt_x2)
    ),
         zt_sa AS MATERIALIZED (
    SELECT a.pk, a.tb, a.k, a.r_us, a.kb
    FROM zt_a a
    WHERE coalesce(a.cluster, chr(0)) IN (SELECT coalesce(cluster, chr(0)) FROM zt_skew)
      AND a.pk NOT IN (SELECT a_pk FROM zt_x2)
    ),
         zt_c3 AS MATERIALIZED (SELECT p_pk, a_pk, 'S' AS tier FROM (WITH r AS MATERIALIZED (
    WITH u AS (
        SELECT pk, tb, false AS is_a, k, d_us + prec_us // 2 AS t, prec_us // 2 AS half, kb IS NOT NULL AS has_sid
        FROM zt_sp WHERE pk NOT IN (SELECT p_pk FROM zt_x2)
        UNION ALL
        SELECT pk, tb, true AS is_a, k, r_us AS t, 0 AS half, kb IS NOT NULL AS has_sid
        FROM zt_sa WHERE pk NOT IN (SELECT a_pk FROM zt_x2)
    ), l1 AS (
        SELECT u.*,
               coalesce(t - lag(t) OVER w > (SELECT window_us + 500000 FROM zt_correlation_settings), true) AS brk,
               sum(CASE WHEN is_a THEN 0 ELSE 1 END) OVER w AS cp,
               sum(CASE WHEN is_a THEN 1 ELSE 0 END) OVER w AS ca
        FROM u WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    ), l2 AS (
        SELECT pk, tb, is_a, k, t, half, has_sid, cp, ca,
               sum(brk::INT) OVER w AS grp,
               max(CASE WHEN brk THEN cp - (CASE WHEN is_a THEN 0 ELSE 1 END) END) OVER w AS base_p,
               max(CASE WHEN brk THEN ca - (CASE WHEN is_a THEN 1 ELSE 0 END) END) OVER w AS base_a
        FROM l1 WINDOW w AS (PARTITION BY k ORDER BY t, is_a, tb, pk ROWS UNBOUNDED PRECEDING)
    )
    SELECT pk, is_a, k, t, half, has_sid, grp, CASE WHEN is_a THEN ca - base_a ELSE cp - base_p END AS n FROM l2
    ) 
    SELECT p.pk AS p_pk, a.pk AS a_pk, 'C' AS tier
    FROM r p JOIN r a ON a.k = p.k AND a.grp = p.grp AND a.n = p.n
    CROSS JOIN zt_correlation_settings s
    WHERE NOT p.is_a AND a.is_a AND abs(a.t - p.t) <= s.window_us + p.half AND NOT (p.has_sid AND a.has_sid)
) sp),
         zt_pairs AS MATERIALIZED (SELECT * FROM zt_x2 UNION ALL SELECT * FROM zt_c3)
    SELECT a.cluster, a.who AS actor, x.tier, p.decided_at, a.request_received_at, p.method, a.verb,
           p.path, p.request_id, p.check_request_id, p.session_id, p.user_id, a.audit_id, a.impersonator,
           a.response_code, true AS matched, 'both' AS side,
           (a.r_us - p.d_us) / 1e6 AS delta_seconds
    FROM zt_pairs x JOIN zt_p p ON p.pk = x.p_pk JOIN zt_a a ON a.pk = x.a_pk
    UNION ALL
    SELECT p.cluster, p.who, NULL, p.decided_at, NULL, p.method, NULL, p.path, p.request_id,
           p.check_request_id, p.session_id, p.user_id, NULL, NULL, NULL, false, 'proxy', NULL
    FROM zt_p p WHERE p.pk NOT IN (SELECT p_pk FROM zt_pairs)
    UNION ALL
    SELECT a.cluster, a.who, NULL, NULL, a.request_received_at, a.method, a.verb, a.path, NULL, NULL,
           NULL, NULL, a.audit_id, a.impersonator, a.response_code, false, 'audit', NULL
    FROM zt_a a WHERE a.pk NOT IN (SELECT a_pk FROM zt_pairs)

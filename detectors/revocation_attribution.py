"""Attribution of anonymous proxy denials to revoked subjects, for the revocation judgement.

After a session is deleted, Pomerium's denials carry no user, email or session id
(``user-unauthenticated``; docs/proxy-and-idp.md §1.4, real-stack.md §4), so the only link to the
person is the address. Called by :func:`ztaudit.detectors.revocation_status.build` through
:func:`attribute_anonymous_denials`, after the subjects' uses are in ``zt_rev_use``; it leaves
``zt_rev_anon`` (per revocation: the first attributed denial, counts attributed and refused, the
first references) for the status statement. The rules are docs/revocation.md §2.

Shared NAT addresses make the obvious plan (every denial joined with every decision of its address)
quadratic; these statements number the denials per address and cut the identified decisions into
runs of one identity, so each revocation needs a few ASOF lookups (``bench/revocation.py``).

Failure: SQL errors propagate.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from ztaudit.core.window import LATEST
from ztaudit.detectors.engine import Engine
from ztaudit.detectors.sql import Table, run

#: Bounds of every proxy scan of the revocation judgement: [$ulo, $until), $ulo being the earliest
#: ``revoked_at`` of the kinds judged less the activity window (nothing a join could keep is dropped),
#: and the day partitions ``dt`` in [$ulo_day, $hi_day].
PROXY_BOUND: Final = ("d.decided_at >= $ulo AND d.decided_at < $until "
                      "AND CAST(d.dt AS VARCHAR) >= $ulo_day AND CAST(d.dt AS VARCHAR) <= $hi_day")

#: The subject's last allowed proxy decision before the revocation (within the notice window: an address
#: used days earlier says nothing of who is there now), with the address it came from, and the
#: subject's last allowed use after the revocation (``last_after``): a denial before it was not the
#: subject's, whose access still worked. Decisions in one second (Pomerium logs whole seconds) tie on
#: ``ts``: address, user agent and proxy are those of the last in (ts, ref, ip, ua, proxy) order, the
#: same row on both engines (``arg_max`` among exact ties picks any row, differently on DuckDB and Spark).
_LAST_SQL: Final = Table("zt_rev_last", """
        SELECT b.*, b.ts - $notice_window AS look_from,
           (SELECT max(u.ts) FROM zt_rev_use u WHERE u.rev_id = b.rev_id AND u.allowed AND u.ts > b.revoked_at
              AND (b.restored_at IS NULL OR u.ts < b.restored_at)) AS last_after
    FROM (SELECT u.rev_id, any_value(r.revoked_at) AS revoked_at, any_value(r.restored_at) AS restored_at,
                 max(u.ts) AS ts, arg_max(u.ip, (u.ts, coalesce(u.ref, ''), u.ip, coalesce(u.ua, ''),
                                                   coalesce(u.proxy, ''))) AS ip,
                 arg_max(u.ua, (u.ts, coalesce(u.ref, ''), u.ip, coalesce(u.ua, ''), coalesce(u.proxy, ''))) AS ua,
                 arg_max(u.proxy, (u.ts, coalesce(u.ref, ''), u.ip, coalesce(u.ua, ''), coalesce(u.proxy, '')))
                   AS proxy
          FROM zt_rev_use u JOIN zt_rev r USING (rev_id)
          WHERE u.plane = 'proxy' AND u.allowed AND u.ts + to_microseconds(u.prec_us) <= r.revoked_at
            AND u.ts >= r.revoked_at - $notice_window AND coalesce(u.ip, '') <> ''
          GROUP BY u.rev_id) b
""")

#: Identified proxy decisions made from the subjects' addresses, cut into runs of one identity per
#: address (``run``), with when the next run (another identity) starts: for a subject whose last allowed
#: decision is at ``since``, the first *other* identity at that address after ``since`` is found by one
#: ASOF lookup instead of a join of every denial with every decision (a shared NAT address would make
#: that quadratic). ``who`` prefers the email, the spelling Pomerium logs on every line of a session.
#: One row per (address, time), the first in ``who`` order: the ASOF lookup takes the row with the
#: smallest ``ts``, and among rows tied on it DuckDB and Spark would each pick their own.
_SEEN_SQL: Final = Table("zt_rev_seen", f"""
        WITH s AS (
        SELECT d.client_ip AS ip, d.decided_at AS ts, lower(nullif(d.email, '')) AS em, nullif(d.user_id, '') AS uid,
               coalesce(lower(nullif(d.email, '')), nullif(d.user_id, '')) AS who
        FROM proxy_decision d
        WHERE d.client_ip IN (SELECT ip FROM zt_rev_last)
          AND (coalesce(d.user_id, '') <> '' OR coalesce(d.email, '') <> '') AND {PROXY_BOUND}
    ), r AS (
        SELECT *, sum(CASE WHEN who IS DISTINCT FROM prev THEN 1 ELSE 0 END)
                    OVER (PARTITION BY ip ORDER BY ts, who ROWS UNBOUNDED PRECEDING) AS run
        FROM (SELECT *, lag(who) OVER (PARTITION BY ip ORDER BY ts, who) AS prev FROM s)
    ), runs AS (
        SELECT ip, run, min(ts) AS start FROM r GROUP BY ip, run
    )
    SELECT r.ip, r.ts, r.em, r.uid, n.start AS next_start
    FROM r LEFT JOIN runs n ON n.ip = r.ip AND n.run = r.run + 1
    QUALIFY row_number() OVER (PARTITION BY r.ip, r.ts ORDER BY r.who, coalesce(r.uid, ''), coalesce(r.em, '')) = 1
""")

#: Anonymous proxy denials (no user, email or session: Pomerium's ``user-unauthenticated`` lines after a
#: session was deleted, §1.4, real-stack.md §4) from the subjects' addresses, numbered per (address,
#: proxy) in time order, so a revocation's share is a range of numbers found by ASOF lookups.
_DENIALS_SQL: Final = Table("zt_rev_dn", f"""
        SELECT d.client_ip AS ip, d.proxy, d.decided_at AS ts, d.user_agent AS ua,
           'proxy_decision:' || coalesce(d.request_id, d.origin) AS ref,
           row_number() OVER (PARTITION BY d.client_ip, d.proxy
                              ORDER BY d.decided_at, coalesce(d.request_id, d.origin)) AS rn
    FROM proxy_decision d
    WHERE NOT d.is_allowed AND coalesce(d.user_id, '') = '' AND coalesce(d.email, '') = ''
      AND coalesce(d.session_id, '') = '' AND d.client_ip IN (SELECT ip FROM zt_rev_last) AND {PROXY_BOUND}
""")

#: Per revocation: its anonymous denials are those of the address and proxy of the subject's last
#: allowed decision, from T0 (a denial logged in T0's second counts; after the subject's last allowed
#: use, if it had any after T0) until the activity window ends or the subject is restored (numbers
#: ``lo`` .. ``hi``). They are attributed to the subject (``client_ip``) up to the first decision of
#: another identity from that address from the notice window before the subject's last allowed one on
#: (``other_at``; number ``mid``; a NAT address where others work is never attributed): after it the
#: address is shared and nothing is attributed (``refused_shared``). Of the first $keep attributable ones,
#: those whose user agent differs
#: from the subject's (where both are logged) are not attributed either (``refused_ua``). The ASOF lookups
#: read ``dts``, the smallest number per (address, proxy, time): denials logged in one second tie on
#: ``ts``, and the lookup must take the first of them on both engines (an ASOF join picks any of tied rows).
_ANON_SQL: Final = Table("zt_rev_anon", """
        WITH dts AS (
        SELECT ip, proxy, ts, min(rn) AS rn FROM zt_rev_dn GROUP BY ip, proxy, ts
    ), b AS (
        SELECT l.rev_id, l.ip, l.proxy, l.ua AS last_ua, r.revoked_at,
               greatest(r.revoked_at - INTERVAL 1 SECOND, coalesce(l.last_after, r.revoked_at - INTERVAL 1 SECOND))
                 AS start,
               least(r.revoked_at + $activity, coalesce(r.restored_at, $forever)) AS stop,
               CASE WHEN s.ts IS NULL THEN NULL
                    WHEN s.uid IS NOT DISTINCT FROM r.subject_id AND s.uid IS NOT NULL OR s.em = r.login
                      THEN s.next_start
                    ELSE s.ts END AS other_at
        FROM zt_rev_last l JOIN zt_rev r USING (rev_id)
        ASOF LEFT JOIN zt_rev_seen s ON s.ip = l.ip AND s.ts >= l.look_from
    ), lo AS (
        SELECT b.rev_id, d.rn AS lo FROM b ASOF JOIN dts d
          ON d.ip = b.ip AND d.proxy IS NOT DISTINCT FROM b.proxy AND d.ts > b.start
    ), hi AS (
        SELECT b.rev_id, d.rn AS hi_next FROM b ASOF JOIN dts d
          ON d.ip = b.ip AND d.proxy IS NOT DISTINCT FROM b.proxy AND d.ts >= b.stop
    ), mid AS (
        SELECT b.rev_id, d.rn AS mid FROM b ASOF JOIN dts d
          ON d.ip = b.ip AND d.proxy IS NOT DISTINCT FROM b.proxy AND d.ts >= b.other_at
    ), top AS (
        SELECT ip, proxy, max(rn) AS top FROM zt_rev_dn GROUP BY ip, proxy
    ), rng AS (
        SELECT b.*, lo.lo, coalesce(hi.hi_next - 1, t.top) AS hi,
               greatest(lo.lo, least(coalesce(mid.mid, t.top + 1), coalesce(hi.hi_next - 1, t.top) + 1)) AS mid
        FROM b JOIN lo USING (rev_id) JOIN top t ON t.ip = b.ip AND t.proxy IS NOT DISTINCT FROM b.proxy
        LEFT JOIN hi USING (rev_id) LEFT JOIN mid USING (rev_id)
    ), sample AS (
        SELECT g.rev_id, d.ts, d.ref, d.ua IS NOT NULL AND g.last_ua IS NOT NULL AND d.ua <> g.last_ua AS ua_differs
        FROM rng g JOIN zt_rev_dn d
          ON d.ip = g.ip AND d.proxy IS NOT DISTINCT FROM g.proxy AND d.rn >= g.lo AND d.rn < g.mid
         AND d.rn < g.lo + $keep
    )
    SELECT g.rev_id, g.ip, g.other_at,
           greatest(g.hi - g.mid + 1, 0) AS refused_shared,
           coalesce(x.refused_ua, 0) AS refused_ua,
           g.mid - g.lo - coalesce(x.refused_ua, 0) AS attributed,
           x.first_anon, coalesce(x.refs, []) AS refs
    FROM rng g LEFT JOIN (
        SELECT rev_id, count(*) FILTER (WHERE ua_differs) AS refused_ua,
               min(ts) FILTER (WHERE NOT ua_differs) AS first_anon,
               list(ref ORDER BY ts, ref) FILTER (WHERE NOT ua_differs) AS refs
        FROM sample GROUP BY rev_id) x USING (rev_id)
    WHERE g.hi >= g.lo
""")


def attribute_anonymous_denials(engine: Engine, bounds: dict[str, Any], notice_window: timedelta,
                                *, keep: int) -> None:
    """Build ``zt_rev_anon`` on ``engine`` from ``zt_rev`` and ``zt_rev_use``.

    ``bounds`` are the use scans' bounds (``$ulo``, ``$until``, ``$ulo_day``, ``$hi_day``,
    ``$activity``); ``keep`` caps the references (and the user-agent check) per revocation. Called by
    :func:`ztaudit.detectors.revocation_status.build`; raises on SQL errors.
    """
    run(engine, _LAST_SQL, {"notice_window": notice_window})
    run(engine, _SEEN_SQL, bounds)
    run(engine, _DENIALS_SQL, bounds)
    run(engine, _ANON_SQL, {"activity": bounds["activity"], "forever": LATEST, "keep": keep})

"""Revocation incidents: a person revoked at the IdP, what the proxy and the API server do after.
"""

from __future__ import annotations

from typing import Any

from ztaudit.synth.clock import DAY, MINUTE, US, iso_us, uuid_from_int
from ztaudit.synth.events import (
    okta_event,
    pomerium_check,
    pomerium_identity,
)
from ztaudit.synth.incident_context import OFF, REVOKED, IncidentContext, spread
from ztaudit.synth.people import human_command, proxied_request, team_reason
from ztaudit.synth.traffic import Buffers, watch_op
from ztaudit.synth.world import (
    PROXY_UTC_OFFSET_MINUTES,
    Cluster,
    Human,
    session_id,
)

_ADMIN = {"alternateId": "it-admin@example.com", "displayName": "IT Admin", "id": "00uadmin0000000000x",
          "type": "User"}


def _okta_revoke(ctx: IncidentContext, h: Human, t: int, event_type: str) -> None:
    target: list[dict[str, Any]] = [{"alternateId": h.email, "detailEntry": None, "displayName": h.display,
                                     "id": h.okta_id, "type": "User"}]
    ctx.bufs.to_okta(t, okta_event(ctx.rng, t, event_type, _ADMIN, target, "192.0.2.10",
                                   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0.0.0",
                                   "102" + ctx.world.namer.b62(22, "adm", t), f"/api/v1/users/{h.okta_id}/lifecycle"))


def _pom_delete(ctx: IncidentContext, h: Human, t: int, sess: str) -> None:
    ctx.bufs.to_identity(t, pomerium_identity(
        t, PROXY_UTC_OFFSET_MINUTES, h.okta_id, sess,
        'oauth2: "invalid_grant" "The refresh token is invalid or expired."'))


def _denied(ctx: IncidentContext, out: Buffers, c: Cluster, h: Human, t: int, path: str, *, identified: bool,
            sess: str) -> None:
    rid = uuid_from_int(ctx.rng.getrandbits(128))
    if identified:
        line = pomerium_check(t, PROXY_UTC_OFFSET_MINUTES, rid, "GET", path, c.host, h.client_ip, sess, h.okta_id,
                              h.email, c.route_id, c.route_checksum, False, ["groups-unauthorized"])
    else:  # no session any more: user "" and no session-id (§1.4)
        line = pomerium_check(t, PROXY_UTC_OFFSET_MINUTES, rid, "GET", path, c.host, h.client_ip, None, "", "",
                              c.route_id, c.route_checksum, False, ["user-unauthenticated"])
    out.to_proxy(t, line)


def revocation(ctx: IncidentContext, i: int) -> None:
    """Revocations: three not enforced (incidents) and three enforced shapes (near-misses)."""
    w = ctx.world
    h = w.humans[REVOKED[i]]
    c = ctx.world.cluster(h.clusters[i % len(h.clusters)])
    d = ctx.day((0.3, 0.5, 0.7, 0.4, 0.6, 0.8)[i], min_day=1)
    t0 = ctx.at(d, 12.0 + (i % 3) * 0.8)
    h.active_until = t0
    local_day = (t0 + OFF) // DAY
    sess = session_id(w, h, local_day)
    rng = ctx.rng
    grace = 900 * US
    if i < 3:
        etype = ("user.lifecycle.deactivate", "user.lifecycle.deactivate", "user.lifecycle.suspend")[i]
        _okta_revoke(ctx, h, t0, etype)
        t1 = t0 + int((1 + 6 * rng.random()) * MINUTE)
        if i != 1:
            _pom_delete(ctx, h, t1, sess)
        # within the grace period: still allowed (latency, not a finding)
        pre = ctx.scratch()
        human_command(w, rng, pre, c, h, t0 + 2 * MINUTE, sess, discovery=0.0, kind="pods")
        ctx.commit(pre, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "allowed inside the 900 s grace period after the revocation (latency, not a violation)")
        s = ctx.scratch()
        sess2 = sess if i != 2 else w.namer.uuid("session", h.email, local_day, 1)
        t = t0 + grace + int((5 + 10 * rng.random()) * MINUTE)
        for _ in range(6):
            t = human_command(w, rng, s, c, h, t, sess2, discovery=0.2)
            t += int((3 + 12 * rng.random()) * MINUTE)
        how = ("the identity_manager deleted the session but the proxy kept allowing it",
               "the proxy never noticed (no identity_manager deletion)",
               "the user was suspended, yet a new proxy session was issued")[i]
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "incident",
                   f"Okta {etype} at {iso_us(t0)}; {how}; allowed proxy decisions and audit events continue after "
                   "the grace period")
    elif i == 3:  # enforced at once: denied, unauthenticated, no audit events afterwards
        _okta_revoke(ctx, h, t0, "user.session.clear")
        t1 = t0 + 3 * MINUTE
        _pom_delete(ctx, h, t1, sess)
        s = ctx.scratch()
        human_command(w, rng, s, c, h, t0 + MINUTE, sess, discovery=0.0, kind="pods")
        for tt in spread(ctx, t1 + 2 * MINUTE, 8, 40):
            _denied(ctx, s, c, h, tt, f"/api/v1/namespaces/{h.team.namespaces[0]}/pods", identified=False, sess="")
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "revocation enforced: after the identity_manager deletion every request is denied "
                   "(user-unauthenticated, no identity on the line) and nothing reaches the API server")
    elif i == 4:  # denied with identity after revocation
        _okta_revoke(ctx, h, t0, "user.lifecycle.suspend")
        s = ctx.scratch()
        for tt in spread(ctx, t0 + grace + 5 * MINUTE, 6, 30):
            _denied(ctx, s, c, h, tt, f"/api/v1/namespaces/{h.team.namespaces[0]}/pods", identified=True, sess=sess)
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "suspended user still presents a session but is denied (allow=false, groups-unauthorized)")
    else:  # a long watch that began before the revocation and ended after the grace period
        s = ctx.scratch()
        ns = h.team.namespaces[0] if not h.team.cluster_admin else "monitoring"
        op = watch_op("pods", team_reason(h, ns), ns=ns)
        proxied_request(w, rng, s, c, h, t0 - 3 * MINUTE, op, sess, watch_seconds=28 * 60)
        _okta_revoke(ctx, h, t0, "user.lifecycle.deactivate")
        _pom_delete(ctx, h, t0 + 2 * MINUTE, sess)
        ctx.commit(s, "revocation.not_enforced", h.email, c.name, "near_miss",
                   "a watch started 3 min before the revocation ended 25 min after it; judge by its start")

"""Revocations: people revoked at the IdP (Okta), and what the proxy and the API server do after.

About two revocations per day of the period, spread over days, clusters and a few people (the
:data:`~.incident_context.REVOKED` ones, whom no other incident family scripts), plus IdP-only people
(a sales team in Okta that never uses Kubernetes). A person may be revoked several times: a
``user.lifecycle.suspend`` ends with ``user.lifecycle.unsuspend`` (then a new login, a new Pomerium
session, normal work again); after ``user.session.clear`` the person logs in again with a new
session, which is legitimate.

After an IdP revocation at T0 (docs/proxy-and-idp.md §1.4, §3.1, §4; real-stack notes §4) the
proxy notices at its own pace: Pomerium's ``identity_manager`` logs ``failed to refresh oauth2
token, deleting session`` (or ``failed to update user info, deleting session``) for the user id
and session id, mostly 30 s to 10 min after T0 (the user-info poll runs every 10 min), sometimes
never; most notices are followed within a second or two by a second line for the same session (the
debug ``deleting session`` line, or the same message twice). From then on the person's kubectl
requests are denied *without identity* (``user-unauthenticated``, ``user:""``, no session id) from
the person's own address. A watch opened before T0 and closed after it is judged by its start.

Shapes built (``intent``; the status is then computed from the written lines by
:mod:`.revocation_truth`): ``enforced`` (notice then anonymous denials; notice and no later
attempt; denials with identity; denials without a notice line; a watch across T0; a session clear
followed by a new login), ``quiet`` (no notice, nothing after), ``not_enforced`` (allowed uses
with the old session after the grace period: notice logged but ignored, never noticed, a new
session issued to a suspended user, a cleared session still used), the shared-address case
(anonymous denials from an address another person used in between: not attributable),
``not_applicable`` (IdP-only people) and ``pending`` (revoked so late that the grace period has
not passed at the data set's last line).

Each Kubernetes revocation also gets a ``revocation.not_enforced`` line in ``labels.jsonl``:
``incident`` spanning the allowed uses after the grace period when it ends ``not_enforced``,
``near_miss`` spanning the person's last command before T0 and their lines after it otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ztaudit.synth.clock import DAY, HOUR, MINUTE, US, iso_us, uuid_from_int, weekday
from ztaudit.synth.events import (
    okta_event,
    pomerium_access,
    pomerium_check,
    pomerium_identity,
    pomerium_session_deleted,
)
from ztaudit.synth.incident_context import OFF, REVOKED, IncidentContext, Revocation
from ztaudit.synth.people import human_command, proxied_request, team_reason
from ztaudit.synth.traffic import Buffers, watch_op
from ztaudit.synth.world import (
    PROXY_UTC_OFFSET_MINUTES,
    Cluster,
    Human,
    session_at,
    session_id,
)

_ADMIN = {"alternateId": "it-admin@example.com", "displayName": "IT Admin", "id": "00uadmin0000000000x",
          "type": "User"}
_ADMIN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0.0.0"
_BROWSER_UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/130.0.0.0 Safari/537.36")
_REFRESH = "failed to refresh oauth2 token, deleting session"
_USERINFO = "failed to update user info, deleting session"
_INVALID_GRANT = 'oauth2: "invalid_grant" "The refresh token is invalid or expired."'
_USERINFO_ERROR = 'identity/oidc: userinfo endpoint returned 401 Unauthorized: {"error":"invalid_token"}'
GRACE = 900 * US

#: People in Okta who never use Kubernetes (their revocations are "not applicable" to it).
IDP_ONLY: tuple[tuple[str, str], ...] = (
    ("quinn.harper", "sales"), ("rosa.jimenez", "sales"), ("sven.larsen", "sales"), ("tara.singh", "sales"),
    ("uma.kaur", "marketing"), ("victor.ames", "sales"), ("wendy.cho", "marketing"),
)

#: Shapes that end enforced, cycled in this order.
_ENFORCED = ("denied", "session_relogin", "notice_only", "denied", "identified", "watch", "no_notice_denied",
             "session_relogin", "denied", "notice_only", "within_grace")
_NOT_ENFORCED = ("ne_deleted_allowed", "ne_unnoticed", "ne_new_session", "ne_session_clear")
#: kubectl commands of scripted work (no RBAC 403s: those would be denials of their own)
_KINDS = ("pods", "pods", "deploy", "logs", "describe", "svc")
#: shapes with refused attempts of the person after T0
_DENYING = frozenset({"denied", "within_grace", "identified", "no_notice_denied", "shared_notice", "shared_quiet",
                      "session_relogin"})
_SESSION_SHAPES = frozenset({"session_relogin", "ne_session_clear"})


@dataclass(slots=True)
class _Subject:
    """Who an Okta event targets: a Kubernetes person or an IdP-only one."""

    email: str
    display: str
    okta_id: str
    ip: str


def _subject(h: Human) -> _Subject:
    return _Subject(h.email, h.display, h.okta_id, h.client_ip)


def _okta(ctx: IncidentContext, who: _Subject, t: int, event_type: str) -> None:
    target: list[dict[str, Any]] = [{"alternateId": who.email, "detailEntry": None, "displayName": who.display,
                                     "id": who.okta_id, "type": "User"}]
    ctx.bufs.to_okta(t, okta_event(ctx.rng, t, event_type, _ADMIN, target, "192.0.2.10", _ADMIN_UA,
                                   "102" + ctx.world.namer.b62(22, "adm", t),
                                   f"/api/v1/users/{who.okta_id}/lifecycle"
                                   + ("/sessions" if event_type == "user.session.clear" else "")))


def _login(ctx: IncidentContext, who: _Subject, t: int) -> None:
    actor = {"alternateId": who.email, "displayName": who.display, "id": who.okta_id, "type": "User"}
    ctx.bufs.to_okta(t, okta_event(ctx.rng, t, "user.session.start", actor, None, who.ip, _BROWSER_UA,
                                   "102" + ctx.world.namer.b62(22, "oktasess", who.email, t), "/api/v1/authn"))


def _notice(ctx: IncidentContext, h: Human, t: int, sess: str) -> None:
    """The identity_manager deletion, often logged twice (debug line or the same message again)."""
    rng = ctx.rng
    userinfo = rng.random() < 0.3
    msg, err = (_USERINFO, _USERINFO_ERROR) if userinfo else (_REFRESH, _INVALID_GRANT)
    ctx.bufs.to_identity(t, pomerium_identity(t, PROXY_UTC_OFFSET_MINUTES, h.okta_id, sess, err, msg))
    u = rng.random()
    if u < 0.45:
        t2 = t + int(rng.random() * 1.5 * US)
        ctx.bufs.to_identity(t2, pomerium_session_deleted(t2, PROXY_UTC_OFFSET_MINUTES, sess))
    elif u < 0.8:
        t2 = t + int((0.2 + rng.random() * 1.8) * US)
        ctx.bufs.to_identity(t2, pomerium_identity(t2, PROXY_UTC_OFFSET_MINUTES, h.okta_id, sess, err, msg))


def _notice_delay(ctx: IncidentContext) -> int:
    """Revocation to deletion line: the user-info poll (every 10 min), now and then the token refresh."""
    r = ctx.rng.random()
    if r < 0.85:
        return int((30 + 570 * ctx.rng.random()) * US)
    return int((600 + 600 * ctx.rng.random()) * US)


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
    if ctx.rng.random() < 0.5:  # Envoy's access line for it: 401 (ext_authz_denied) or 403
        te = t + 2000 + int(ctx.rng.random() * 8000)
        out.to_proxy(te, pomerium_access(te, PROXY_UTC_OFFSET_MINUTES, rid, "GET", path, c.host, h.user_agent,
                                         h.client_ip, 403 if identified else 401, (te - t) / 1000))


def _attempts(ctx: IncidentContext, out: Buffers, c: Cluster, h: Human, t: int, n: int, minutes: float,
              *, identified: bool = False, sess: str = "") -> int:
    """``n`` kubectl runs refused by the proxy from ``t`` on (each stops at its first request)."""
    paths = ("/api", "/apis", f"/api/v1/namespaces/{h.team.namespaces[0]}/pods")
    for _ in range(n):
        _denied(ctx, out, c, h, t, paths[int(ctx.rng.random() * len(paths))], identified=identified, sess=sess)
        last = t
        t += int((0.3 + ctx.rng.random()) * minutes / max(1, n) * MINUTE)
    return last


def _commands(ctx: IncidentContext, out: Buffers, c: Cluster, h: Human, t: int, n: int, sess: str,
              gap_minutes: tuple[float, float] = (3, 15)) -> int:
    w, rng = ctx.world, ctx.rng
    for _ in range(n):
        t = human_command(w, rng, out, c, h, t, sess, discovery=0.2, kind=_KINDS[int(rng.random() * len(_KINDS))])
        t += int((gap_minutes[0] + (gap_minutes[1] - gap_minutes[0]) * rng.random()) * MINUTE)
    return t


class _Planner:
    """Schedules the revocations over the period and builds each one."""

    def __init__(self, ctx: IncidentContext) -> None:
        self.ctx, self.w, self.rng = ctx, ctx.world, ctx.rng
        w = self.w
        self.people = [w.humans[i] for i in REVOKED if i < len(w.humans)]
        self.free_at = {h.email: w.start for h in self.people}
        self.gone: set[str] = set()
        #: people after whose cleared-but-still-used session no later revocation may bring denials: a
        #: session clear has no restoration, so they would be attributable to it too
        self.no_denials: set[str] = set()
        self.count = {h.email: 0 for h in self.people}
        self.deactivated = 0
        self.kcount = 0

    # --- schedule ---------------------------------------------------------------------------

    def run(self) -> None:
        ctx, w = self.ctx, self.w
        days = ctx.days
        total = max(4, 2 * days)
        n_na = max(1, round(0.13 * total))
        n_ne = max(3, round(0.11 * total))
        n_shared = 0 if total < 8 else (2 if total < 40 else 3)
        n_quiet = round(0.16 * total)
        n_enf = max(1, total - 1 - n_na - n_ne - n_shared - n_quiet)
        shapes = ([_NOT_ENFORCED[k % len(_NOT_ENFORCED)] for k in range(n_ne)]
                  + [("shared_notice", "shared_quiet")[k % 2] for k in range(n_shared)]
                  + ["quiet"] * n_quiet + [_ENFORCED[k % len(_ENFORCED)] for k in range(n_enf)])
        self.rng.shuffle(shapes)
        lo, hi = w.start + 12 * HOUR, w.end - 8 * HOUR
        if hi <= lo:
            hi = lo + HOUR
        for j, shape in enumerate(shapes):
            target = lo + int((j + 0.5) / len(shapes) * (hi - lo))
            local_day = (target + OFF) // DAY
            t0 = local_day * DAY - OFF + int((9.5 + 7 * self.rng.random()) * HOUR)
            if not lo <= t0 <= hi:
                t0 = hi - int(self.rng.random() * 2 * HOUR) if t0 > hi else lo + int(self.rng.random() * 2 * HOUR)
            denies = shape in _DENYING
            h = self._pick(t0, denies)
            if h is None:
                nxt = min((self.free_at[p.email] for p in self.people if p.email not in self.gone
                           and not (denies and p.email in self.no_denials)), default=None)
                if nxt is None or nxt + HOUR > hi:
                    continue
                t0 = nxt + HOUR
                h = self._pick(t0, denies)
                if h is None:
                    continue
            self._build(shape, h, t0 - t0 % 1000)
        self._pending()
        self._idp_only(n_na)
        # a restoration ends the judgement of every earlier revocation of the subject (a session clear too)
        restores: dict[str, list[int]] = {}
        for rev in ctx.plan.revocations:
            if rev.restored_at is not None:
                restores.setdefault(rev.subject, []).append(rev.restored_at)
        for rev in ctx.plan.revocations:
            later = [r for r in restores.get(rev.subject, []) if r > rev.revoked_at]
            if later:
                rev.restored_at = min(later)

    def _pick(self, t0: int, denies: bool) -> Human | None:
        free = [h for h in self.people if h.email not in self.gone and self.free_at[h.email] <= t0
                and not (denies and h.email in self.no_denials)]
        if not free:
            return None
        return min(free, key=lambda h: (self.count[h.email], self.free_at[h.email]))

    def _cluster(self, h: Human) -> Cluster:
        self.kcount += 1
        return self.w.cluster(h.clusters[self.kcount % len(h.clusters)])

    # --- one revocation ---------------------------------------------------------------------

    def _build(self, shape: str, h: Human, t0: int) -> None:
        ctx, w, rng = self.ctx, self.w, self.rng
        self.count[h.email] += 1
        shared = shape.startswith("shared")
        c = w.cluster(h.clusters[0]) if shared else self._cluster(h)
        late = t0 > w.start + int(0.75 * (w.end - w.start))
        deactivate = (shape in ("quiet", "notice_only", "denied") and late and self.deactivated < 2
                      and ctx.days >= 7 and rng.random() < 0.5)
        if shape in _SESSION_SHAPES:
            etype = "user.session.clear"
        elif deactivate:
            etype = "user.lifecycle.deactivate"
            self.deactivated += 1
        elif shape.startswith("ne_") and rng.random() < 0.4:
            etype = "user.lifecycle.deactivate" if late and self.deactivated < 2 else "user.lifecycle.suspend"
            if etype.endswith("deactivate"):
                self.deactivated += 1
        else:
            etype = "user.lifecycle.suspend"
        kind = "session" if etype == "user.session.clear" else "identity"
        sess = session_at(w, h, t0)
        label = ctx.scratch()  # the lines the labels.jsonl line spans
        other = ctx.scratch()  # lines merged without a label
        # the person was working just before
        if shape == "watch":
            ns = h.team.namespaces[0] if not h.team.cluster_admin else "monitoring"
            op = watch_op("pods", team_reason(h, ns), ns=ns)
            proxied_request(w, rng, label, c, h, t0 - 3 * MINUTE, op, sess, watch_seconds=28 * 60)
        else:
            human_command(w, rng, label, c, h, t0 - int((4 + 25 * rng.random()) * MINUTE), sess, discovery=0.3,
                          kind="pods")
        _okta(ctx, _subject(h), t0, etype)
        notice = None if shape in ("quiet", "shared_quiet", "identified", "no_notice_denied", "ne_unnoticed",
                                   "ne_new_session", "ne_session_clear") else t0 + _notice_delay(ctx)
        if shape == "watch":
            notice = t0 + int((90 + 60 * rng.random()) * US)
        if notice is not None:
            _notice(ctx, h, notice, sess)
        end = t0 + MINUTE  # last scripted line of the person
        incident = ctx.scratch()
        note = ""
        # within the grace period, before the proxy noticed: still allowed (latency, not a violation)
        if shape in ("denied", "within_grace", "ne_deleted_allowed") and (notice is None or notice - t0 > 150 * US):
            lim = min(600 * US, (notice - t0 - 40 * US) if notice is not None else 600 * US)
            if lim > 70 * US:
                end = human_command(w, rng, label, c, h, t0 + int((60 + (lim / US - 60) * rng.random()) * US), sess,
                                    discovery=0.0, kind="pods")
        if shape in ("denied", "within_grace"):
            start = (notice or t0) + int((20 + 1200 * rng.random()) * US)
            end = _attempts(ctx, label, c, h, start, 1 + int(rng.random() * 5), 20)
            note = "notice, then kubectl refused without identity (user-unauthenticated) from the person's address"
        elif shape == "notice_only":
            note = "the proxy deleted the session; the person never tried again"
        elif shape == "identified":
            end = _attempts(ctx, label, c, h, t0 + GRACE + int((5 + 10 * rng.random()) * MINUTE),
                            3 + int(rng.random() * 4), 30, identified=True, sess=sess)
            note = "the suspended person still presents a session but is denied with identity (groups-unauthorized)"
        elif shape == "no_notice_denied":
            end = _attempts(ctx, label, c, h, t0 + int((4 + 30 * rng.random()) * MINUTE), 2 + int(rng.random() * 3),
                            15)
            note = "no identity_manager line was logged, but kubectl is refused without identity from the address"
        elif shape == "watch":
            end = t0 + 26 * MINUTE
            note = "a watch opened 3 min before the revocation ended 25 min after it: judged by its start"
        elif shape == "quiet":
            note = "nothing after the revocation: no notice line, no attempt"
        elif shape in ("shared_notice", "shared_quiet"):
            end = self._shared(h, c, t0, label, other, notice)
            note = ("anonymous denials from the person's address, but a colleague made identified requests from "
                    "the same address in between (office NAT): not attributable"
                    + ("; the proxy's deletion line shows enforcement" if notice else ""))
        elif shape == "session_relogin":
            start = (notice or t0) + int((10 + 300 * rng.random()) * US)
            last = _attempts(ctx, label, c, h, start, 1 + int(rng.random() * 2), 3)
            relogin = last + int((60 + 180 * rng.random()) * US)
            relogin -= relogin % 1000
            _login(ctx, _subject(h), relogin)
            h.relogins.append(relogin)
            new = session_at(w, h, relogin + US)
            end = _commands(ctx, label, c, h, relogin + int((20 + 60 * rng.random()) * US), 1, new, (1, 4))
            end = max(end, t0 + GRACE + int((2 + 8 * rng.random()) * MINUTE))
            end = _commands(ctx, label, c, h, end, 2, new)
            h.pauses.append((t0, relogin))
            note = "sessions cleared: refused without identity, then a new login and a new session (legitimate)"
        elif shape.startswith("ne_"):
            use = sess if shape != "ne_new_session" else w.namer.uuid("session-reissued", h.email, t0)
            if shape == "ne_new_session":
                _login(ctx, _subject(h), t0 + GRACE + 2 * MINUTE - (t0 + GRACE + 2 * MINUTE) % 1000)
            end = _commands(ctx, incident, c, h, t0 + GRACE + int((5 + 10 * rng.random()) * MINUTE),
                            4 + int(rng.random() * 3), use)
            note = {"ne_deleted_allowed": "the identity_manager deleted the session but the proxy kept allowing it",
                    "ne_unnoticed": "the proxy never noticed (no identity_manager deletion)",
                    "ne_new_session": "the person was suspended, yet a new proxy session was issued",
                    "ne_session_clear": "sessions were cleared, but the old proxy session kept working"}[shape]
            note += "; allowed proxy decisions and audit events continue after the grace period"
        # restoration, pauses, when the person is free again
        restored: int | None = None
        if etype == "user.lifecycle.deactivate":
            h.active_until = t0
            h.pauses.append((t0, w.end))
            self.gone.add(h.email)
        elif kind == "identity":
            r = max(end + int((30 + 120 * rng.random()) * MINUTE), t0 + int((2 + 18 * rng.random()) * HOUR))
            r -= r % 1000
            if r < w.end - 2 * HOUR:
                restored = r
                _okta(ctx, _subject(h), r, "user.lifecycle.unsuspend")
                relogin = r + int((2 + 20 * rng.random()) * MINUTE)
                relogin -= relogin % 1000
                _login(ctx, _subject(h), relogin)
                h.relogins.append(relogin)
                h.pauses.append((t0, relogin))
                self.free_at[h.email] = relogin + HOUR
            else:
                h.pauses.append((t0, w.end))
                self.gone.add(h.email)
        else:
            if shape == "ne_session_clear":  # back the next morning with that day's new session
                self.no_denials.add(h.email)
                nxt = ((t0 + OFF) // DAY + 1) * DAY - OFF + 6 * HOUR
                h.pauses.append((t0, nxt))
            self.free_at[h.email] = t0 + 25 * HOUR
        self.ctx.merge(other)
        rev = Revocation(etype, h.email, h.okta_id, t0, kind, "", note, c.name, restored)
        rev.intent = ("not_enforced" if shape.startswith("ne_") else "quiet" if shape in ("quiet", "shared_quiet")
                      else "enforced")
        if shape.startswith("ne_"):
            ctx.merge(label)
            rev.label = ctx.commit(incident, "revocation.not_enforced", h.email, c.name, "incident",
                                   f"Okta {etype} at {iso_us(t0)}; {note}")
        else:
            rev.label = ctx.commit(label, "revocation.not_enforced", h.email, c.name, "near_miss",
                                   f"Okta {etype} at {iso_us(t0)}; {note}")
        ctx.plan.revocations.append(rev)

    def _shared(self, h: Human, c: Cluster, t0: int, label: Buffers, other: Buffers, notice: int | None) -> int:
        """A colleague works from the person's address after T0; then the person's refused attempts."""
        w, rng = self.w, self.rng
        revocable = {p.email for p in self.people}
        mates = [y for y in w.humans if y.email not in revocable and c.name in y.clusters and y.team is h.team]
        mates = mates or [y for y in w.humans if y.email not in revocable and c.name in y.clusters]
        y = dataclasses.replace(mates[int(rng.random() * len(mates))], client_ip=h.client_ip)
        t = t0 + int((3 + 8 * rng.random()) * MINUTE)
        t = _commands(self.ctx, other, c, y, t, 2, session_id(w, y, (t + OFF) // DAY), (1, 4))
        start = max(t, (notice or t0) + 30 * US) + int((2 + 10 * rng.random()) * MINUTE)
        return _attempts(self.ctx, label, c, h, start, 2 + int(rng.random() * 3), 15)

    def _pending(self) -> None:
        """Revoked minutes before the end: the grace period has not passed at the last line."""
        w, ctx, rng = self.w, self.ctx, self.rng
        t0 = w.end - int((120 + 600 * rng.random()) * US)
        t0 -= t0 % 1000
        free = [h for h in self.people if h.email not in self.gone and self.free_at[h.email] <= t0 - HOUR]
        if not free:
            return
        h = min(free, key=lambda p: (self.count[p.email], p.email))
        self.count[h.email] += 1
        c = self._cluster(h)
        label = ctx.scratch()
        human_command(w, rng, label, c, h, t0 - int((10 + 20 * rng.random()) * MINUTE), session_at(w, h, t0),
                      discovery=0.0, kind="pods")
        _okta(ctx, _subject(h), t0, "user.lifecycle.deactivate")
        h.active_until = t0
        h.pauses.append((t0, w.end))
        self.gone.add(h.email)
        note = "deactivated minutes before the end of the data: the grace period has not passed (pending)"
        rev = Revocation("user.lifecycle.deactivate", h.email, h.okta_id, t0, "identity", "pending", note, c.name)
        rev.label = ctx.commit(label, "revocation.not_enforced", h.email, c.name, "near_miss",
                               f"Okta user.lifecycle.deactivate at {iso_us(t0)}; {note}")
        ctx.plan.revocations.append(rev)

    def _idp_only(self, n: int) -> None:
        """IdP-only people: daily Okta logins, and ``n`` suspensions/deactivations (not applicable)."""
        w, ctx, rng = self.w, self.ctx, self.rng
        people = [_Subject(f"{handle}@example.com", " ".join(p.title() for p in handle.split(".")),
                           "00u" + w.namer.b62(17, "okta", handle), f"198.18.{4 + k}.{30 + 3 * k}")
                  for k, (handle, _) in enumerate(IDP_ONLY)]
        off_from: dict[str, list[tuple[int, int]]] = {p.email: [] for p in people}
        lo, hi = w.start + 10 * HOUR, w.end - 6 * HOUR
        for j in range(n):
            p = people[j % len(people)]
            local_day = (lo + int((j + 0.3) / n * (hi - lo)) + OFF) // DAY
            t0 = min(max(local_day * DAY - OFF + int((10 + 6 * rng.random()) * HOUR), lo), hi)
            t0 -= t0 % 1000
            if any(a <= t0 < b for a, b in off_from[p.email]):
                continue
            deact = j >= len(people) or rng.random() < 0.5
            etype = "user.lifecycle.deactivate" if deact else "user.lifecycle.suspend"
            _okta(ctx, p, t0, etype)
            restored = None
            if deact:
                off_from[p.email].append((t0, w.end))
            else:
                r = t0 + int((20 + 40 * rng.random()) * HOUR)
                r -= r % 1000
                if r < w.end - HOUR:
                    restored = r
                    _okta(ctx, p, r, "user.lifecycle.unsuspend")
                off_from[p.email].append((t0, r))
            ctx.plan.revocations.append(Revocation(
                etype, p.email, p.okta_id, t0, "identity", "not_applicable",
                "IdP-only person (sales/marketing in Okta only): never used Kubernetes", "", restored))
        for p in people:
            for d in range((w.end - w.start) // DAY):
                t = w.start + d * DAY - OFF + int((8 + 1.5 * w.namer.unit("idplogin", p.email, d)) * HOUR)
                if w.start <= t < w.end and weekday(t + OFF) < 5 and not any(
                        a <= t < b for a, b in off_from[p.email]):
                    _login(ctx, p, t - t % 1000)


def revocations(ctx: IncidentContext, i: int) -> None:
    """All revocations of the run (``i`` is ignored: one call plans them all)."""
    if i == 0:
        _Planner(ctx).run()


"""Ground truth for revocations: what each revocation the generator emitted must be judged as.

The engine feeds :class:`Observed` with every ``authorize check`` line and ``identity_manager`` line
it writes (parsed as written) and with the people's API requests (``Buffers.uses``, recorded when
their audit events are built); :func:`judge` then applies the revocation rules to that data and
returns one row per revocation for ``.ztaudit/revocations.jsonl``. Statuses are computed from the
data, not assumed from the plan, so the file agrees with the logs by construction.

Rules (grace 900 s; a proxy line logged at second S happened in ``[S, S+1 s)``):

* uses of the subject: proxy decisions with ``user`` = Okta id or ``lower(email)`` = subject, and,
  for kind ``session``, decisions carrying a session id the subject had before T0; API uses: audit
  requests whose effective user is the subject, judged by ``requestReceivedTimestamp``;
* a restoration (``unsuspend``) ends the judgement of every earlier identity revocation of the
  subject; a session, once cleared, stays cleared (no restoration);
* ``not_enforced``: an allowed use strictly later than T0 + grace and before any restoration (for
  kind ``session`` only proxy uses with a session id the subject had before T0 count: no session id
  reaches the audit log; an API 401 still counts as a denial);
* ``pending``: otherwise, when T0 + grace is later than the latest line of the whole data set;
* ``enforced``: otherwise, when a proxy deletion line for the user id came within 24 h after T0
  (and before restoration) or an attributable denial came at/after T0;
* ``quiet``: otherwise, when the subject had a use (allowed or denied) in the 7 days before T0;
* ``not_applicable``: no use in the 7 days before T0 and nothing after.

An attributable denial names the user id, email or an old session (``exact``; also an API 401 for
the subject: a 403 means the credential still authenticates, so it proves nothing), or is anonymous
(user and email empty) from the address of the subject's last allowed decision in the 24 h before
T0, later than the subject's last allowed use after T0, within 7 days of T0, while no other identity
made an identified decision from that address from 24 h before that decision until the denial
(``client_ip``). Anonymous denials from that address that fail the last condition set
``refused_shared_ip``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from ztaudit.synth.clock import DAY, HOUR, US, iso_ms
from ztaudit.synth.incident_context import Revocation

GRACE_US = 900 * US
LOOKBACK_US = 7 * DAY
NOTICE_WINDOW_US = 24 * HOUR
_INF = 1 << 62


@dataclass(slots=True)
class _Decision:
    t: int  # the logged whole second, µs UTC
    user: str
    email: str
    session: str
    ip: str
    allowed: bool


@dataclass(slots=True)
class Observed:
    """What was written that the revocation rules look at."""

    decisions: list[_Decision] = field(default_factory=list)
    deletions: list[tuple[int, str]] = field(default_factory=list)  # (logged second µs, user id)
    latest: int = 0

    def add_proxy(self, items: list[tuple[int, str]]) -> None:
        for t, line in items:
            if '"authorize check"' not in line:
                continue
            v = orjson.loads(line)
            self.decisions.append(_Decision(t - t % US, v.get("user") or "", (v.get("email") or "").lower(),
                                            v.get("session-id") or "", v.get("ip") or "", v.get("allow") is True))

    def add_identity(self, items: list[tuple[int, str]]) -> None:
        for t, line in items:
            v = orjson.loads(line)
            msg = str(v.get("message", ""))
            if v.get("user-id") and "deleting" in msg and "session" in msg:
                self.deletions.append((t - t % US, str(v["user-id"])))

    def seen(self, items: list[tuple[int, str]]) -> None:
        if items:
            self.latest = max(self.latest, items[-1][0])


def _seconds(us: int) -> float:
    return round(max(0, us) / US, 3)


def judge(revs: list[Revocation], obs: Observed, uses: list[tuple[str, int, int]], start: int, end: int
          ) -> list[dict[str, Any]]:
    """One ``revocations.jsonl`` row per revocation of ``revs``, in that order (see the module doc)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    by_session: dict[str, list[int]] = defaultdict(list)
    by_ip_identified: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    anon_denied: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(obs.decisions):
        if d.user:
            by_key["u:" + d.user].append(i)
        if d.email:
            by_key["e:" + d.email].append(i)
        if d.session:
            by_session[d.session].append(i)
        if d.user or d.email:
            by_ip_identified[d.ip].append((d.t, d.user, d.email))
        elif not d.allowed:
            anon_denied[d.ip].append(i)
    for lst in by_ip_identified.values():
        lst.sort()
    api: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for who, t, code in uses:
        if start <= t < end:
            api[who.lower()].append((t, code))
    deletions: dict[str, list[int]] = defaultdict(list)
    for t, uid in obs.deletions:
        deletions[uid].append(t)
    return [_judge_one(r, obs, by_key, by_session, by_ip_identified, anon_denied, api, deletions) for r in revs]


def _judge_one(r: Revocation, obs: Observed, by_key: dict[str, list[int]], by_session: dict[str, list[int]],
               by_ip_identified: dict[str, list[tuple[int, str, str]]], anon_denied: dict[str, list[int]],
               api: dict[str, list[tuple[int, int]]], deletions: dict[str, list[int]]) -> dict[str, Any]:
    t0, subj, sid = r.revoked_at, r.subject.lower(), r.subject_id
    stop = r.restored_at if r.restored_at is not None and r.kind != "session" else _INF
    dec = obs.decisions
    mine = sorted(set(by_key.get("u:" + sid, [])) | set(by_key.get("e:" + subj, [])), key=lambda i: dec[i].t)
    before = [dec[i] for i in mine if dec[i].t + US <= t0]
    old_sessions = {d.session for d in before if d.session}
    sess_idx = sorted({i for s in old_sessions for i in by_session.get(s, [])}, key=lambda i: dec[i].t)
    judged = sess_idx if r.kind == "session" else mine
    calls = api.get(subj, [])

    def after(t: int) -> bool:  # a proxy line at/after T0 and before any restoration
        return t + US > t0 and t < stop

    # allowed uses after T0 (exposure) and after the grace period (violation)
    allowed_after = [dec[i].t for i in judged if dec[i].allowed and after(dec[i].t)]
    if r.kind != "session":
        allowed_after += [t for t, code in calls if code not in (401, 403) and t0 <= t < stop]
    violation = any(t > t0 + GRACE_US for t in allowed_after)
    exposure = _seconds(max(allowed_after) - t0) if allowed_after else None
    pre_use = any(t0 - LOOKBACK_US <= d.t < t0 for d in (dec[i] for i in set(mine) | set(sess_idx))) or any(
        t0 - LOOKBACK_US <= t < t0 for t, _ in calls)
    # the proxy noticed: a deletion line for the user id within 24 h after T0 (and before restoration)
    notices = [t for t in deletions.get(sid, []) if t + US > t0 and t < min(stop, t0 + NOTICE_WINDOW_US)]
    notice = min(notices) if notices else None
    # attributable denials
    cands: list[tuple[int, int, str]] = []  # (time, 0 = exact first on ties, attribution)
    for i in sorted(set(mine) | set(sess_idx)):
        d = dec[i]
        if not d.allowed and after(d.t):
            cands.append((d.t, 0, "exact"))
    cands += [(t, 0, "exact") for t, code in calls if code == 401 and t0 <= t < stop]
    refused = False
    last_ok = [d for d in before if d.allowed and d.t >= t0 - NOTICE_WINDOW_US]
    # an anonymous denial before the subject's last allowed use after T0 was not the subject's
    any_allowed = [dec[i].t for i in mine if dec[i].allowed and dec[i].t > t0 and dec[i].t < stop] + [
        t for t, code in calls if code not in (401, 403) and t0 < t < stop]
    anon_from = max(any_allowed) if any_allowed else t0 - US
    anything_after = bool(cands) or bool(allowed_after)
    if last_ok:
        last = max(last_ok, key=lambda d: d.t)
        ident = by_ip_identified.get(last.ip, [])
        for i in anon_denied.get(last.ip, []):
            d = dec[i]
            if not after(d.t) or d.t <= anon_from or d.t > t0 + LOOKBACK_US:
                continue
            lo = bisect.bisect_left(ident, (last.t - NOTICE_WINDOW_US, "", ""))
            others = False
            for t, user, email in ident[lo:]:
                if t > d.t:
                    break
                if user != sid and email != subj:
                    others = True
                    break
            if others:
                refused = True
                anything_after = True
            else:
                cands.append((d.t, 1, "client_ip"))
    first = min(cands) if cands else None
    latest = obs.latest
    if violation:
        status = "not_enforced"
    elif t0 + GRACE_US > latest:
        status = "pending"
    elif notice is not None or first is not None:
        status = "enforced"
    elif pre_use or anything_after:
        status = "quiet"
    else:
        status = "not_applicable"
    return {
        "system": "okta",
        "event_type": r.event_type,
        "subject": subj,
        "subject_id": sid,
        "revoked_at": iso_ms(t0),
        "kind": r.kind,
        "expected_status": status,
        "notice_latency_seconds": _seconds(notice - t0) if notice is not None else None,
        "denial_latency_seconds": _seconds(first[0] - t0) if first is not None else None,
        "attribution": first[2] if first is not None else None,
        "refused_shared_ip": refused,
        "exposure_seconds": exposure,
        "cluster": r.cluster or None,
        "restored_at": iso_ms(r.restored_at) if r.restored_at is not None else None,
        "note": r.note,
    }

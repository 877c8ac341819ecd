"""Line builders: Kubernetes audit Events, Pomerium authorize/identity lines, Okta System Log events.

The audit path is hot (a million events in well under two minutes on one core), so an Event is
assembled from precomputed JSON fragments with string concatenation: the user block is built once
per credential (it changes only when a token rotates), the request shape (:class:`Op`) once per
actor and target. Only the ids and timestamps are formatted per event. Field order follows the Go
struct order of ``audit.k8s.io/v1`` ``Event`` and map keys are sorted, as ``encoding/json`` writes
them; ``&`` in ``requestURI`` is escaped as ``\\u0026`` the way Go's HTML-safe encoder does
(docs/kubernetes-audit.md §2, ``requestURI`` row).

Stages (docs/kubernetes-audit.md §2 ``stage``, §9): the simulated audit policy logs ``watch`` requests
with all stages (``RequestReceived``, ``ResponseStarted``, ``ResponseComplete``) and other
requests with ``omitStages: [RequestReceived]``; exec sessions have ``ResponseStarted`` (101) and
``ResponseComplete``. ``RequestReceived`` has no ``responseStatus`` and no ``annotations``
(authorization has not run yet).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ztaudit.synth.clock import MINUTE, US, iso_local_seconds, iso_ms, iso_us, uuid_from_int


def jstr(s: str) -> str:
    """A JSON string literal the way Go encodes it (HTML-safe: ``&``, ``<``, ``>`` escaped)."""
    return (orjson.dumps(s).decode().replace("&", "\\u0026").replace("<", "\\u003c")
            .replace(">", "\\u003e"))


def jlist(items: Sequence[str]) -> str:
    return "[" + ",".join(jstr(i) for i in items) + "]"


_METHOD = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
           "delete": "DELETE", "deletecollection": "DELETE"}


@dataclass(frozen=True, slots=True)
class Op:
    """The shape of one API request, precomputed per actor and target.

    ``ann`` holds the authorization annotations as JSON members (no braces) so per-event
    annotations (issued credential id, legacy-token, stale-token) can be put in front of them,
    keeping Go's sorted key order. For watches ``uri`` ends with ``?`` or ``&`` and the
    watch parameters (resource version, timeout) are appended per event.
    """

    verb: str
    uri: str  # raw request URI (path + query)
    obj: str  # objectRef JSON, "" for non-resource URLs
    ann: str
    status: str = '{"metadata":{},"code":200}'
    level: str = "Metadata"
    watch: bool = False
    exec_: bool = False
    request_object: str = ""  # Request-level body (JSON), "" at Metadata level
    code: int = 200
    namespace: str = ""
    resource: str = ""

    @property
    def path(self) -> str:
        """What Pomerium logs as ``path``: the request path without the query (§1.2)."""
        return self.uri.split("?", 1)[0]

    @property
    def method(self) -> str:
        """The HTTP method kubectl used for this verb (POST for SPDY exec, §2 ``verb`` row)."""
        return _METHOD.get(self.verb, self.verb.upper())


def object_ref(resource: str, namespace: str = "", name: str = "", api_group: str = "",
               api_version: str = "v1", subresource: str = "") -> str:
    """``objectRef`` JSON (core group omits ``apiGroup``; lists carry no ``name``)."""
    parts = [f'"resource":"{resource}"']
    if namespace:
        parts.append(f'"namespace":"{namespace}"')
    if name:
        parts.append(f'"name":{jstr(name)}')
    if api_group:
        parts.append(f'"apiGroup":"{api_group}"')
    parts.append(f'"apiVersion":"{api_version}"')
    if subresource:
        parts.append(f'"subresource":"{subresource}"')
    return "{" + ",".join(parts) + "}"


def allow_ann(reason: str) -> str:
    """Authorization annotations for an allowed request (§7)."""
    return '"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":' + jstr(reason)


FORBID_ANN = '"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""'


def forbidden_status(user: str, verb: str, resource: str, group: str, namespace: str, name: str = "") -> str:
    """The 403 ``responseStatus`` RBAC returns; the message names the effective user (§2)."""
    what = f'resource "{resource}" in API group "{group}"'
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    subject = f'{resource} "{name}"' if name else resource
    msg = f'{subject} is forbidden: User "{user}" cannot {verb} {what}{where}'
    details = f'{{"name":{jstr(name)},"kind":"{resource}"}}' if name else f'{{"kind":"{resource}"}}'
    return (f'{{"metadata":{{}},"status":"Failure","message":{jstr(msg)},"reason":"Forbidden",'
            f'"details":{details},"code":403}}')


def sa_user(username: str, uid: str, namespace: str, extra: dict[str, str] | None) -> str:
    """``user`` for a service-account token: SA groups from ``MakeGroupNames`` (§2 groups row)."""
    groups = f'["system:serviceaccounts","system:serviceaccounts:{namespace}","system:authenticated"]'
    out = f'{{"username":"{username}","uid":"{uid}","groups":{groups}'
    if extra:
        out += ',"extra":{' + ",".join(f'"{k}":[{jstr(v)}]' for k, v in sorted(extra.items())) + "}"
    return out + "}"


def pod_token_user(username: str, sa_uid: str, namespace: str, jti: str, pod_name: str, pod_uid: str,
                   node_name: str, node_uid: str) -> str:
    """A pod-bound projected token: JTI credential id plus pod and node extras (§3)."""
    return sa_user(username, sa_uid, namespace, {
        "authentication.kubernetes.io/credential-id": f"JTI={jti}",
        "authentication.kubernetes.io/node-name": node_name,
        "authentication.kubernetes.io/node-uid": node_uid,
        "authentication.kubernetes.io/pod-name": pod_name,
        "authentication.kubernetes.io/pod-uid": pod_uid,
    })


def x509_user(username: str, groups: Sequence[str], cert_hash: str) -> str:
    """An x509 client-certificate user: no uid, ``X509SHA256=`` credential id (1.31+, §3)."""
    return (f'{{"username":"{username}","groups":{jlist(groups)},'
            f'"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={cert_hash}"]}}}}')


def plain_user(username: str, groups: Sequence[str], uid: str = "") -> str:
    """A user without extras: OIDC users, legacy tokens, the apiserver's loopback identity."""
    u = f',"uid":"{uid}"' if uid else ""
    return f'{{"username":{jstr(username)}{u},"groups":{jlist(groups)}}}'


def impersonated(username: str, groups: Sequence[str]) -> str:
    """``impersonatedUser``: the target; the API server appends ``system:authenticated`` (§6)."""
    return f'{{"username":{jstr(username)},"groups":{jlist([*groups, "system:authenticated"])}}}'


_HEAD = '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"'


def audit_line(audit_id: str, stage: str, op: Op, uri_json: str, user: str, imp: str, ips: str, ua: str,
               t_recv: str, t_stage: str, status: str, ann: str) -> str:
    """One ``audit.k8s.io/v1`` Event line from precomputed fragments."""
    return "".join((
        _HEAD, op.level, '","auditID":"', audit_id, '","stage":"', stage, '","requestURI":', uri_json,
        ',"verb":"', op.verb, '","user":', user,
        (',"impersonatedUser":' + imp) if imp else "",
        ',"sourceIPs":', ips, ',"userAgent":', ua,
        (',"objectRef":' + op.obj) if op.obj else "",
        (',"responseStatus":' + status) if status else "",
        (',"requestObject":' + op.request_object) if op.request_object and stage != "ResponseStarted" else "",
        ',"requestReceivedTimestamp":"', t_recv, '","stageTimestamp":"', t_stage, '"',
        (',"annotations":{' + ann + "}") if ann else "",
        "}",
    ))


AuditSink = Callable[[int, str], None]


@dataclass(slots=True)
class Request:
    """What :func:`emit_request` did: the audit id and the instants of the request."""

    audit_id: str
    received: int
    completed: int


def emit_request(emit: AuditSink, rng: random.Random, t: int, op: Op, user: str, ips: str, ua: str,
                 imp: str = "", extra_ann: str = "", status: str | None = None, ann: str | None = None,
                 watch_seconds: int | None = None, end_limit: int | None = None) -> Request:
    """Write the stage records of one request received at ``t`` (µs) through ``emit(ts, line)``.

    ``extra_ann`` goes in front of the op's authorization annotations (keys sorted as Go does).
    Watches get the query parameters client-go sends and a server timeout between 5 and 10 min;
    their ``ResponseComplete`` is written at ``t + timeout`` unless that is past ``end_limit``.
    """
    audit_id = uuid_from_int(rng.getrandbits(128))
    st = op.status if status is None else status
    a = extra_ann + ("," if extra_ann and (op.ann if ann is None else ann) else "") + (op.ann if ann is None else ann)
    t_recv = iso_us(t)
    if op.watch:
        secs = watch_seconds if watch_seconds is not None else 300 + int(rng.random() * 300)
        rv = 1_000_000 + int(rng.random() * 90_000_000)
        uri = (f"{op.uri}allowWatchBookmarks=true&resourceVersion={rv}&timeout={secs // 60}m{secs % 60}s"
               f"&timeoutSeconds={secs}&watch=true")
        uj = jstr(uri)
        emit(t, audit_line(audit_id, "RequestReceived", op, uj, user, imp, ips, ua, t_recv, t_recv, "", ""))
        t1 = t + 1000 + int(rng.random() * 4000)
        emit(t1, audit_line(audit_id, "ResponseStarted", op, uj, user, imp, ips, ua, t_recv, iso_us(t1), st, a))
        t2 = t + secs * US + int(rng.random() * 2000)
        if end_limit is None or t2 < end_limit:
            emit(t2, audit_line(audit_id, "ResponseComplete", op, uj, user, imp, ips, ua, t_recv, iso_us(t2), st, a))
        return Request(audit_id, t, t2)
    uj = jstr(op.uri)
    if op.exec_:
        t1 = t + 20_000 + int(rng.random() * 80_000)
        s101 = '{"metadata":{},"code":101}'
        emit(t1, audit_line(audit_id, "ResponseStarted", op, uj, user, imp, ips, ua, t_recv, iso_us(t1), s101, a))
        t2 = t1 + int((0.5 + rng.random() * 10) * MINUTE)
        emit(t2, audit_line(audit_id, "ResponseComplete", op, uj, user, imp, ips, ua, t_recv, iso_us(t2), s101, a))
        return Request(audit_id, t, t2)
    lat = 1500 + int(rng.random() * (60_000 if op.verb == "list" else 15_000))
    t2 = t + lat
    emit(t2, audit_line(audit_id, "ResponseComplete", op, uj, user, imp, ips, ua, t_recv, iso_us(t2), st, a))
    return Request(audit_id, t, t2)


# --- Pomerium ------------------------------------------------------------------------------


def pomerium_check(t: int, offset_minutes: int, request_id: str, method: str, path: str, host: str, ip: str,
                   session: str | None, user: str, email: str, route_id: str, route_checksum: int,
                   allow: bool, reasons: Sequence[str]) -> str:
    """A Pomerium ``authorize check`` line with the default fields, hyphen keys (§1.2).

    ``request-id`` equals ``check-request-id`` (current versions); ``session-id`` is absent when no
    session loaded (after revocation); exactly one of ``allow-why-true``/``allow-why-false``.
    """
    sess = f'"session-id":"{session}",' if session else ""
    why = "allow-why-true" if allow else "allow-why-false"
    return (f'{{"level":"info","service":"authorize","request-id":"{request_id}","check-request-id":"{request_id}",'
            f'"method":"{method}","path":{jstr(path)},"host":"{host}","ip":"{ip}",{sess}"user":"{user}",'
            f'"email":"{email}","envoy-route-checksum":{route_checksum & 0xFFFFFFFF},"envoy-route-id":"{route_id}",'
            f'"route-checksum":{route_checksum},"route-id":"{route_id}","allow":{"true" if allow else "false"},'
            f'"{why}":{jlist(reasons)},"deny":false,"deny-why-false":[],'
            f'"time":"{iso_local_seconds(t, offset_minutes)}","message":"authorize check"}}')


def pomerium_access(t: int, offset_minutes: int, request_id: str, method: str, path: str, host: str,
                    user_agent: str, forwarded_for: str, code: int, duration_ms: float) -> str:
    """A Pomerium-emitted Envoy access line (``service=envoy``, ``http-request``, §1.3)."""
    details = "via_upstream" if code < 400 or code == 403 else "ext_authz_denied"
    return (f'{{"level":"info","service":"envoy","upstream-cluster":"pomerium-control-plane-http",'
            f'"method":"{method}","authority":"{host}","path":{jstr(path)},"user-agent":{jstr(user_agent)},'
            f'"referer":"","forwarded-for":"{forwarded_for}","request-id":"{request_id}",'
            f'"duration":{duration_ms:.6f},"size":{200 + (duration_ms * 37) // 1:.0f},"response-code":{code},'
            f'"response-code-details":"{details}","time":"{iso_local_seconds(t, offset_minutes)}",'
            f'"message":"http-request"}}')


def pomerium_identity(t: int, offset_minutes: int, user_id: str, session: str, error: str,
                      message: str = "failed to refresh oauth2 token, deleting session") -> str:
    """A Pomerium ``identity_manager`` session deletion (§1.4)."""
    return (f'{{"level":"error","service":"identity_manager","user-id":"{user_id}","session-id":"{session}",'
            f'"error":{jstr(error)},"time":"{iso_local_seconds(t, offset_minutes)}","message":{jstr(message)}}}')


def pomerium_session_deleted(t: int, offset_minutes: int, session: str) -> str:
    """The debug ``deleting session`` line every deletion path of ``identity_manager`` logs (§1.4)."""
    return (f'{{"level":"debug","service":"identity_manager","session-id":"{session}",'
            f'"time":"{iso_local_seconds(t, offset_minutes)}","message":"deleting session"}}')


# --- Okta ----------------------------------------------------------------------------------

_OKTA_TYPES = {
    "user.session.start": ("core.user_auth.login_success", "User login to Okta"),
    "user.session.end": ("core.user_auth.logout_success", "User logout from Okta"),
    "user.lifecycle.deactivate": ("core.user.config.user_deactivated", "Deactivate Okta user"),
    "user.lifecycle.suspend": ("core.user.config.user_status.suspended", "Suspend Okta user"),
    "user.lifecycle.unsuspend": ("core.user.config.user_status.unsuspended", "Unsuspend Okta user"),
    "user.session.clear": ("core.user.session.clear", "Clear user session"),
}


def okta_event(rng: random.Random, t: int, event_type: str, actor: dict[str, Any], target: list[dict[str, Any]] | None,
               ip: str, user_agent: str, external_session: str, request_uri: str) -> str:
    """An Okta System Log event (§3.1): same layout as the corpus samples, different type/target."""
    legacy, display = _OKTA_TYPES[event_type]
    req = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(27))
    geo = {"city": "New York", "country": "United States", "geolocation": {"lat": 40.7128, "lon": -74.006},
           "postalCode": "10001", "state": "New York"}
    ev = {
        "actor": {**actor, "detailEntry": None},
        "authenticationContext": {"authenticationProvider": None, "authenticationStep": 0,
                                  "credentialProvider": None, "credentialType": None,
                                  "externalSessionId": external_session, "interface": None, "issuer": None},
        "client": {"device": "Computer", "geographicalContext": geo, "id": None, "ipAddress": ip,
                   "userAgent": {"browser": "CHROME", "os": "Mac OS X", "rawUserAgent": user_agent},
                   "zone": "null"},
        "debugContext": {"debugData": {"requestId": req, "requestUri": request_uri, "threatSuspected": "false",
                                       "url": request_uri}},
        "displayMessage": display,
        "eventType": event_type,
        "legacyEventType": legacy,
        "outcome": {"reason": None, "result": "SUCCESS"},
        "published": iso_ms(t),
        "request": {"ipChain": [{"geographicalContext": geo, "ip": ip, "source": None, "version": "V4"}]},
        "securityContext": {"asNumber": None, "asOrg": None, "domain": None, "isProxy": None, "isp": None},
        "severity": "INFO",
        "target": target,
        "transaction": {"detail": {}, "id": req, "type": "WEB"},
        "uuid": uuid_from_int(rng.getrandbits(128)),
        "version": "0",
    }
    return orjson.dumps(ev).decode()

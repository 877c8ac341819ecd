"""``proxy_decision``: identity-aware proxy decisions, one row per decision or proxied request.

Formats (field references: ``docs/proxy-and-idp.md``, cited as §n):

* Pomerium ``"message":"authorize check"`` lines from the authorize service (§1.2), in both key
  styles: current hyphen keys (``check-request-id``) and the underscore keys of older releases
  (``check_request_id``, §1.2 "Version drift"). ``is_allowed = allow and not deny``.
* Pomerium Envoy access lines, ``"service":"envoy","message":"http-request"`` (§1.3):
  ``record_type=access``, ``is_allowed = response-code < 400``, and ``request-id`` is kept as
  ``check_request_id`` too, because it equals the authorize line's ``check-request-id`` (1:1 join).
* Teleport ``kube.request`` audit events (§2.1) and Teleport ``exec`` sessions against a pod
  (``proto: kube``): Teleport logs ``kubectl exec`` through its Kubernetes service as an ``exec``
  event, not as a ``kube.request`` (:mod:`.teleport`).
* oauth2-proxy request-log lines (plain text, §2.2), through :meth:`parse_text`, in the v7+
  layout (with ``{{.RequestID}}``) and the older one without it.

Valid records that are not decisions are **ignored** (counted, not quarantined) by
:meth:`ProxyDecisionNormalizer.ignore`: other Teleport event types, Pomerium log lines of its
services that are not ``authorize check`` / ``http-request``, oauth2-proxy auth and standard
log lines.

What this module does not claim: Kubernetes audit events, Pomerium ``identity_manager`` lines
(they are ``idp_event``), Teleport ``lock.created`` (``idp_event``), Pomerium's other services'
messages, Cloudflare Access login records (a login decision per application session, not a
request; §2.4). Those return ``None`` from :meth:`unwrap`, so the engine tries other kinds or
quarantines them as ``unknown_shape``.

Route checksums (``route-checksum``, uint64, can exceed 2**53, §1.1) are never converted to a
float: they are not stored, and ``route_id`` is the string ``route-id``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import pyarrow as pa

from ztaudit.core.proxy_hosts import host_key
from ztaudit.core.quarantine import IgnoreReason, Reason, Rejected
from ztaudit.core.schema import PROXY_DECISION
from ztaudit.core.timeutil import TimestampError, parse_go_layout, parse_timestamp
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped
from ztaudit.pipeline.normalize.rowmap import RecordMapper, RecordRejected, in_event_range
from ztaudit.pipeline.normalize.teleport import ignore_reason as teleport_ignore_reason
from ztaudit.pipeline.normalize.teleport import is_kube_exec, is_teleport_event

__all__ = ["ProxyDecisionNormalizer"]

SOURCE: Final = "proxy_decision"


def _bare_query(query: str | None) -> str | None:
    """A query string as proxies log it, without its ``?``. Not masked here: every text column,
    ``query`` included, is masked once per batch by the central redaction step in ``process()``
    (``pipeline/redact.py``, docs/redaction.md §3), in one RE2 call for the whole column."""
    return query.removeprefix("?") if query else query


def _split_uri(uri: str | None) -> tuple[str | None, str | None]:
    """``/a/b?x=1`` -> (``/a/b``, ``x=1``)."""
    if uri is None:
        return None, None
    path, sep, query = uri.partition("?")
    return path, (query if sep else None)


# --- small field readers -------------------------------------------------------------------------


def _get(rec: Mapping[str, Any], key: str) -> Any:
    """Value of a hyphen key or its underscore spelling (Pomerium key styles, §1.2)."""
    if key in rec:
        return rec[key]
    return rec.get(key.replace("-", "_"))


def _str(value: Any) -> str | None:
    """A string column value: strings as is ('' -> None), ints as decimal text, others None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _strs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, str) and value.isdigit():
        return int(value) if len(value) < 10 else None
    if isinstance(value, float) and value.is_integer() and -(2**31) <= value < 2**31:
        return int(value)
    return None


_EMAIL: Final = re.compile(r"^[^@\s:]+@[^@\s]+\.[^@\s]+$")


def _email_like(value: Any) -> str | None:
    return value if isinstance(value, str) and _EMAIL.match(value) else None


def _strip_port(addr: Any) -> str | None:
    """``1.2.3.4:5678`` -> ``1.2.3.4``; ``[::1]:43026`` -> ``::1``; a bare IP is returned as is.

    The one rule for ``client_ip`` of every proxy: the address without the client's ephemeral
    port, so it compares with the audit log's ``sourceIPs`` (which carry no port)."""
    if not isinstance(addr, str) or not addr:
        return None
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:
        return addr.split(":", 1)[0]
    return addr


def _cluster_for(host: str | None, ctx: NormalizeContext) -> str | None:
    """Cluster behind a proxy route host: ``proxy_hosts`` (keyed by
    :func:`~ztaudit.core.proxy_hosts.host_key`, as detection compares them), else --cluster."""
    if host and ctx.proxy_hosts:
        hit = ctx.proxy_hosts.get(host_key(host))
        if hit:
            return hit
    return ctx.cluster


def _header(headers: Any, name: str) -> str | None:
    if isinstance(headers, Mapping):
        low = name.lower()
        for k, v in headers.items():
            if isinstance(k, str) and k.lower() == low:
                return _str(v)
    return None


_Reject = RecordRejected  # a builder's refusal: the record goes to quarantine

def _time(rec: Mapping[str, Any], key: str, ctx: NormalizeContext, what: str) -> Any:
    value = rec.get(key)
    if value is None:
        # A decision without any time cannot be correlated with the audit log (the join is a
        # time-window match, §0 tier C), so it is quarantined rather than stored with a null
        # decided_at. Pomerium's unit-test logger writes such lines (§1.2 "Real lines").
        raise _Reject(Reason.MISSING_FIELD, f"{what} has no '{key}': it cannot be placed in time")
    try:
        when = parse_timestamp(value, ctx.proxy_utc_offset)
    except TimestampError as exc:
        raise _Reject(Reason.BAD_TIMESTAMP, f"{what} '{key}': {exc}") from None
    return in_event_range(when, ctx, f"{what} '{key}'")


# --- recognisers ---------------------------------------------------------------------------------


def _kind(value: Any) -> str | None:
    """Which proxy record ``value`` is, or None. Only dicts with the identifying keys match."""
    if not isinstance(value, dict):
        return None
    service = value.get("service")
    message = value.get("message")
    if service == "authorize" and message == "authorize check":
        return "pomerium-authorize"
    if service == "envoy" and message == "http-request":
        return "pomerium-access"
    if value.get("event") == "kube.request" and ("kubernetes_cluster" in value or "request_path" in value):
        return "teleport"
    if is_teleport_event(value) and is_kube_exec(value):
        return "teleport-exec"
    if value.get("form") == "oauth2-proxy" and "line" in value:  # built by parse_text only
        return "oauth2-proxy"
    return None


# oauth2-proxy request template (§2.2):
# {{.Client}} - {{.RequestID}} - {{.Username}} [{{.Timestamp}}] {{.Host}} {{.RequestMethod}}
# {{.Upstream}} {{.RequestURI}} {{.Protocol}} {{.UserAgent}} {{.StatusCode}} {{.ResponseSize}}
# {{.RequestDuration}}; RequestURI and UserAgent are Go %q-quoted.
# Before v7.0.0 the template had no ``{{.RequestID}} - `` (oauth2-proxy CHANGELOG v7.0.0, #829):
# the request id group is optional; with it absent the line is still a request line.
_OAUTH2_REQUEST: Final = re.compile(
    r'^(?P<client>\S+) - (?:(?P<request_id>\S*) - )?(?P<user>\S*) \[(?P<ts>[^\]]*)\] (?P<host>\S+) '
    r'(?P<method>[A-Z]+) (?P<upstream>\S+) "(?P<uri>(?:[^"\\]|\\.)*)" (?P<proto>\S+) '
    r'"(?P<ua>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+) (?P<duration>[\d.]+)\s*$'
)


# oauth2-proxy's other two streams (§2.2): auth lines ``... [ts] [AuthSuccess] message`` and
# standard lines ``[2024/12/12 10:00:00] [file.go:123] message``: valid, not request decisions.
_OAUTH2_AUTH: Final = re.compile(
    r'^\S+ - (?:\S* - )?\S* \[[^\]]*\] \[(?:AuthSuccess|AuthFailure|AuthError)\] ')
_OAUTH2_STANDARD: Final = re.compile(r'^\[\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\] \[[^\]\s]+\] ')
#: Pomerium's services (``service`` of its zerolog lines, §1.2); lines of theirs that no
#: normalizer reads are server logs, not decisions.
_POMERIUM_SERVICES: Final = frozenset({"authorize", "authenticate", "proxy", "databroker", "envoy", "pomerium",
                                       "identity_manager", "controlplane", "registry"})


#: zerolog's level names (Pomerium's logger; rs/zerolog ``LevelFieldMarshalFunc``).
_ZEROLOG_LEVELS: Final = frozenset({"trace", "debug", "info", "warn", "error", "fatal", "panic"})
#: Keys that make a line look like a request decision: such a line is never ignored as a server
#: log line, so a decision format we do not know yet is quarantined (``unknown_shape``), not dropped.
_DECISION_KEYS: Final = frozenset({"allow", "deny", "allowed", "allow-why-true", "allow_why_true", "method", "path",
                                   "response-code", "response_code", "auditID", "kind", "email", "user",
                                   "user-id", "user_id", "session-id", "session_id"})
#: Messages of decisions (and of the session deletions idp_event reads): never a server line.
_DECISION_MESSAGES: Final = frozenset({"authorize check", "http-request"})


def _is_server_log_line(value: Any) -> bool:
    """A Pomerium v0.30 server line with no ``service`` key or one outside the known services (``"all"``)
    (real-stack.md: ``finished call``,
    ``authenticate: signed URL...``, ``clearing session due to missing or invalid session``,
    ``storage/sync-querier: synced latest records``, ``server started``): a zerolog record with a
    level, a time and a message, and none of the keys of a decision."""
    return (isinstance(value, dict) and value.get("level") in _ZEROLOG_LEVELS
            and isinstance(value.get("message"), str) and isinstance(value.get("time"), str)
            and value["message"] not in _DECISION_MESSAGES and _DECISION_KEYS.isdisjoint(value))


def _go_unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s) if "\\" in s else s


# --- row builders --------------------------------------------------------------------------------

Row = dict[str, Any]


def _pomerium_authorize(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    """One ``authorize check`` line (§1.2). Missing ``allow`` or ``time`` -> missing_field."""
    decided_at = _time(rec, "time", ctx, "authorize check")
    allow = rec.get("allow")
    deny = _get(rec, "deny")
    if not isinstance(allow, bool):
        raise _Reject(Reason.MISSING_FIELD, "authorize check without a boolean 'allow': no decision to record")
    path, query = _split_uri(_str(rec.get("path")))  # pre-2022 versions logged path with the query
    if rec.get("query") is not None:
        query = _bare_query(_str(rec.get("query")))
    host = _str(rec.get("host")) or _header(rec.get("headers"), ":authority")
    reasons_allow = _get(rec, "allow-why-true") if allow else _get(rec, "allow-why-false")
    reasons_deny = _get(rec, "deny-why-true") if deny is True else _get(rec, "deny-why-false")
    return {
        "decided_at": decided_at,
        "proxy": "pomerium",
        "request_id": _str(_get(rec, "request-id")),
        "check_request_id": _str(_get(rec, "check-request-id")) or _header(rec.get("headers"), "x-request-id"),
        "session_id": _str(_get(rec, "session-id")),
        "user_id": _str(rec.get("user")),
        "email": _str(rec.get("email")),
        "service_account_id": _str(_get(rec, "service-account-id")),
        "method": (_str(rec.get("method")) or _header(rec.get("headers"), ":method") or "").upper() or None,
        "host": host,
        "path": path,
        "query": query,
        "route_id": _str(_get(rec, "route-id")) or _str(_get(rec, "envoy-route-id")),
        "client_ip": _str(rec.get("ip")),
        "is_allowed": allow and deny is not True,
        "allow_reasons": _strs(reasons_allow),
        "deny_reasons": _strs(reasons_deny),
        "cluster": _cluster_for(host, ctx),
        "user_agent": _str(rec.get("user-agent")) or _header(rec.get("headers"), "user-agent"),
        "response_code": None,
        "record_type": "authorize",
    }


def _pomerium_access(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    """One Envoy ``http-request`` access line as re-emitted by Pomerium (§1.3)."""
    decided_at = _time(rec, "time", ctx, "access line")
    path, query = _split_uri(_str(rec.get("path")))
    if rec.get("query") is not None:
        query = _bare_query(_str(rec.get("query")))
    host = _str(rec.get("authority")) or _header(rec.get("headers"), ":authority")
    code = _int(_get(rec, "response-code"))
    request_id = _str(_get(rec, "request-id"))
    client_ip = _str(rec.get("ip"))
    if client_ip is None:
        fwd = _str(_get(rec, "forwarded-for"))
        if fwd:
            client_ip = fwd.split(",")[-1].strip() or None  # the hop Envoy itself appended
    return {
        "decided_at": decided_at,
        "proxy": "pomerium",
        "request_id": request_id,
        "check_request_id": request_id,  # equals authorize check-request-id (§1.3)
        "method": (_str(rec.get("method")) or "").upper() or None,
        "host": host,
        "path": path,
        "query": query,
        "client_ip": client_ip,
        "is_allowed": None if code is None else code < 400,
        "cluster": _cluster_for(host, ctx),
        "user_agent": _str(_get(rec, "user-agent")) or _header(rec.get("headers"), "user-agent"),
        "response_code": code,
        "record_type": "access",
    }


def _dotted(rec: Mapping[str, Any], key: str) -> Any:
    """Teleport writes ``addr.remote`` as a dotted key; some shippers nest it."""
    if key in rec:
        return rec[key]
    cur: Any = rec
    for part in key.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _teleport(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    """One Teleport ``kube.request`` (T3009I) event (§2.1); ``time`` is ms UTC."""
    decided_at = _time(rec, "time", ctx, "kube.request")
    path, query = _split_uri(_str(rec.get("request_path")))
    code = _int(rec.get("response_code"))
    return {
        **_teleport_common(rec, decided_at, ctx),
        "method": (_str(rec.get("verb")) or "").upper() or None,
        "path": path,
        "query": query,
        "is_allowed": None if code is None else code < 400,
        "response_code": code,
        "record_type": "kube.request",
    }


def _teleport_common(rec: Mapping[str, Any], decided_at: Any, ctx: NormalizeContext) -> Row:
    """The columns every Teleport event gives the same way: who, which session, from where, which
    cluster."""
    user = _str(rec.get("user"))
    return {
        "decided_at": decided_at,
        "proxy": "teleport",
        "request_id": _str(rec.get("uid")),
        "session_id": _str(rec.get("sid")),
        "user_id": user,
        # Teleport impersonates the Teleport user when kubernetes_users is empty (§2.1); an
        # email-shaped user name is the name the audit log's impersonatedUser will carry.
        "email": _email_like(user),
        "client_ip": _strip_port(_dotted(rec, "addr.remote")),
        "cluster": _str(rec.get("kubernetes_cluster")) or ctx.cluster,
    }


def _oauth2_proxy(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    """One oauth2-proxy request line (§2.2), already split by :meth:`parse_text`."""
    fields: Mapping[str, str] = rec["fields"]
    try:
        decided_at = parse_go_layout(fields["ts"], ctx.proxy_utc_offset)
    except TimestampError as exc:
        raise _Reject(Reason.BAD_TIMESTAMP, f"oauth2-proxy request line: {exc}") from None
    decided_at = in_event_range(decided_at, ctx, "oauth2-proxy request line")
    path, query = _split_uri(_go_unquote(fields["uri"]))
    code = int(fields["status"])
    upstream = fields["upstream"]
    user = fields["user"] if fields["user"] not in ("", "-") else None
    host = fields["host"]
    ua = _go_unquote(fields["ua"]) or None
    return {
        "decided_at": decided_at,
        "proxy": "oauth2-proxy",
        "request_id": fields.get("request_id") or None,
        "user_id": user,
        "email": _email_like(user),
        "method": fields["method"],
        "host": host,
        "path": path,
        "query": query,
        "route_id": upstream if upstream != "-" else None,
        "client_ip": _strip_port(fields["client"]) if fields["client"] != "-" else None,
        # Upstream "-" means oauth2-proxy answered itself (sign-in redirect, 401/403, /ping): the
        # request was not let through, whatever the status.
        "is_allowed": code < 400 and upstream != "-",
        "cluster": _cluster_for(host, ctx),
        "user_agent": ua,
        "response_code": code,
        "record_type": "request",
    }


def _teleport_exec(rec: Mapping[str, Any], ctx: NormalizeContext) -> Row:
    """One Teleport ``exec`` event with ``proto: kube`` (``T3002I``; ``T3002E`` when the command
    failed): ``kubectl exec`` into ``kubernetes_pod_namespace/kubernetes_pod_name`` through
    Teleport's Kubernetes service. The path is the pod's ``exec`` subresource the API server logs;
    the command is not kept (its arguments can hold secrets, issue 11 item 15). Teleport logs the
    session when it ends, so the decision was "allowed" (``T3002I``); a failed command (``T3002E``)
    does not say whether Teleport or the command refused, so ``is_allowed`` is left unknown."""
    decided_at = _time(rec, "time", ctx, "exec")
    ns, pod = _str(rec.get("kubernetes_pod_namespace")), _str(rec.get("kubernetes_pod_name"))
    if ns is None or pod is None:
        raise _Reject(Reason.MISSING_FIELD, "teleport kube exec without kubernetes_pod_namespace/_name")
    code = _str(rec.get("code")) or ""
    return {
        **_teleport_common(rec, decided_at, ctx),
        "method": None,
        "path": f"/api/v1/namespaces/{ns}/pods/{pod}/exec",
        "query": None,
        "is_allowed": True if code.endswith("I") else None,
        "response_code": None,
        "record_type": "exec",
    }


_BUILDERS: Final[dict[str, Callable[[Mapping[str, Any], NormalizeContext], Row]]] = {
    "pomerium-authorize": _pomerium_authorize,
    "pomerium-access": _pomerium_access,
    "teleport": _teleport,
    "teleport-exec": _teleport_exec,
    "oauth2-proxy": _oauth2_proxy,
}

_MAPPER: Final = RecordMapper(SOURCE, PROXY_DECISION, _BUILDERS, lambda v: _kind(v),
                             "not a proxy decision record",
                             text_forms=("oauth2-proxy",), envelope_cluster=True)




class ProxyDecisionNormalizer:
    """Normalizer for the ``proxy_decision`` source kind (see the module docstring for formats)."""

    source: ClassVar[str] = SOURCE

    def unwrap(self, value: Any) -> list[Unwrapped] | None:
        """Recognise a decoded JSON value as proxy decisions; ``None`` when it is not this kind.

        Called by the engine on every decoded value before any mapping. A JSON array is claimed
        only when every element is a proxy record. Never raises.
        """
        if isinstance(value, list):
            if not value:
                return None
            kinds = [_kind(v) for v in value]
            if any(k is None for k in kinds):
                return None
            return [Unwrapped(record=v, form=k or "raw") for v, k in zip(value, kinds, strict=True)]
        kind = _kind(value)
        if kind is None:
            return None
        return [Unwrapped(record=value, form=kind)]

    def parse_text(self, line: str) -> list[Unwrapped] | None:
        """Recognise a non-JSON line: only oauth2-proxy request lines (§2.2). Never raises."""
        m = _OAUTH2_REQUEST.match(line.rstrip("\r\n"))
        if not m:
            return None
        record = {"form": "oauth2-proxy", "line": line.rstrip("\r\n"), "fields": m.groupdict()}
        return [Unwrapped(record=record, form="oauth2-proxy")]

    def ignore(self, value: Any, text: str | None) -> IgnoreReason | None:
        """Called on a record no normalizer claimed: other Teleport events (:mod:`.teleport`),
        Pomerium server lines, oauth2-proxy auth and standard lines are valid, not decisions."""
        if text is not None:
            if _OAUTH2_AUTH.match(text):
                return IgnoreReason.UNUSED_EVENT_TYPE
            return IgnoreReason.NOT_AN_EVENT if _OAUTH2_STANDARD.match(text) else None
        why = teleport_ignore_reason(value)
        if why is not None:
            return why
        if (isinstance(value, dict) and isinstance(value.get("service"), str)
                and value["service"] in _POMERIUM_SERVICES
                and isinstance(value.get("message"), str) and "level" in value):
            return IgnoreReason.NOT_AN_EVENT
        if _is_server_log_line(value):
            return IgnoreReason.NOT_AN_EVENT
        return None

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Map recognised records to a ``proxy_decision`` table.

        Called once per batch with the records :meth:`unwrap` / :meth:`parse_text` returned and
        their origins. A record that cannot be mapped (no time, unreadable time, an authorize line
        without ``allow``) becomes a :class:`Rejected` with a named reason; nothing raises for bad
        input. Columns a format does not carry are null.
        """
        return _MAPPER.to_table(records, origins, ctx)


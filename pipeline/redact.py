"""Secret scrubbing: what must never reach the lake, and how it is kept out.

Called by the normalizers (query strings, via :data:`QUERY_SECRET_RE` in SQL or :func:`mask_query`
in Python) and by :func:`ztaudit.pipeline.process.process` on every rejected record before it
becomes a :class:`~ztaudit.core.quarantine.Rejected` (:func:`scrub_raw`). None of these raise:
a value that cannot be scrubbed precisely is cut short instead, so failure means *less* is stored,
never more.

What counts as secret (docs/kubernetes-audit.md §2, §4, §10; docs/design.md "Secret material is never
stored"):

* Request and response bodies. ``responseObject.status.token`` of a TokenRequest
  (``serviceaccounts/<name>/token`` create at RequestResponse) is a live JWT; Secrets logged at
  Request/RequestResponse carry ``data``/``stringData``. The ``k8s_audit`` table has **no body
  columns at all**, so rows never hold them; quarantine keeps raw bytes and is scrubbed here.
* Query-string credentials in ``requestURI`` (``?token=``, ``access_token=`` ...): masked to ``***``.
* Anything that looks like a JWT (``eyJ...``) in raw bytes we could not parse.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

#: Query parameter names whose value is a credential: any name containing one of these words
#: (``access_token``, ``X-Amz-Security-Token``, ``client_secret``, ``X-Goog-Signature``, ...) or
#: one of the short exact names (OAuth ``code``, ``key``, ``sig``). Over-masking a harmless
#: parameter costs little; storing a token is the failure we cannot undo. Kept RE2-compatible:
#: the same pattern runs in DuckDB's ``regexp_replace`` on the columnar audit path and in
#: Python's ``re`` for proxy and IdP lines.
CREDENTIAL_PARAM_NAMES: Final = (
    r"[^=&;#?/]*(?:token|secret|passw(?:or)?d|signature|credential|assertion|"
    r"api[_-]?key|jwt|auth)[^=&;#?/]*|code|key|sig|pwd")
QUERY_SECRET_RE: Final = r"([?&;](?:" + CREDENTIAL_PARAM_NAMES + r")=)[^&;#]*"
_QUERY_SECRET = re.compile(QUERY_SECRET_RE, re.IGNORECASE)
#: A JWT anywhere in a URI (a bearer token pasted into any parameter or path segment).
JWT_RE: Final = r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.?[A-Za-z0-9_-]*"
_JWT_IN_URI = re.compile(JWT_RE)
MASK: Final = "***"

#: Keys whose *values* are dropped wherever they appear in a quarantined JSON record.
SECRET_KEYS: Final = frozenset({"requestObject", "responseObject", "data", "stringData", "token", "password",
                                "request", "response"})
# ``request``/``response`` are GKE's names for requestObject/responseObject (docs/kubernetes-audit.md §8.1).

#: In bytes we cannot parse, everything from the first of these keys on is cut. The optional
#: backslashes catch the same key inside a JSON string (AKS ``properties.log``, EKS ``message``).
_CUT_AT = re.compile(rb'\\*"(?:requestObject|responseObject|data|stringData|token|password|request|response)'
                     rb'\\*"\s*:')
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWT_STR = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_DEPTH = 64


def mask_query(uri: str | None, *, bare_query: bool = False) -> str | None:
    """``uri`` with credential-looking query parameter values and JWTs replaced by ``***``.

    ``bare_query`` says ``uri`` is only a query string without its ``?`` (proxies log the path
    and the query in separate fields). Names and order are kept, so the URI still says what was
    asked. ``None`` and ``""`` pass through.
    """
    if not uri:
        return uri
    if bare_query:
        masked = mask_query("?" + uri.removeprefix("?"))
        return masked[1:] if masked else masked
    if "=" in uri:
        uri = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, uri)
    if "eyJ" in uri:
        uri = _JWT_IN_URI.sub(MASK, uri)
    return uri


def scrub_bytes(raw: bytes) -> bytes:
    """Scrub bytes that are not parseable JSON: cut at the first secret-bearing key, mask JWTs."""
    m = _CUT_AT.search(raw)
    if m is not None:
        raw = raw[: m.start()] + b"...[cut by ztaudit: secret-bearing key]"
    return _JWT.sub(b"***", raw)


def _scrub_str(s: str, depth: int) -> str:
    stripped = s.lstrip()
    if stripped[:1] in ("{", "["):
        # A JSON document inside a string (AKS properties.log, EKS message, Sekoia input.message).
        try:
            inner = orjson.loads(s)
        except orjson.JSONDecodeError:
            return scrub_bytes(s.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
        return orjson.dumps(scrub_value(inner, depth + 1)).decode()
    if "eyJ" in s:
        return _JWT_STR.sub(MASK, s)
    return s


def scrub_value(value: Any, depth: int = 0) -> Any:
    """A copy of a decoded JSON value with secret-bearing keys dropped, recursively.

    Strings that hold JSON are scrubbed too. Deeper than 64 levels the value is replaced by a
    marker (an attacker could nest deeply to hide a body from a shallow scrub).
    """
    if depth > _MAX_DEPTH:
        return "...[cut by ztaudit: too deep]"
    if isinstance(value, dict):
        return {k: scrub_value(v, depth + 1) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [scrub_value(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _scrub_str(value, depth)
    return value


def scrub_raw(raw: bytes, *, parse: bool = True) -> bytes:
    """Raw record bytes safe to store in quarantine.

    If ``raw`` parses as JSON (and ``parse`` is true; it is false for oversized records, which are
    never parsed), secret-bearing keys are dropped recursively and the value is re-serialised.
    Otherwise the bytes are cut at the first secret-bearing key and JWT-looking strings masked.
    """
    if parse:
        try:
            value = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            pass
        else:
            try:
                return orjson.dumps(scrub_value(value))
            except (TypeError, orjson.JSONEncodeError):
                pass
    return scrub_bytes(raw)

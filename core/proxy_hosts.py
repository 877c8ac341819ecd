"""The one spelling of a proxy route host: how ``impersonation.proxy_hosts`` keys and logged hosts meet.

A proxy decision logs the route's host as the client sent it in the HTTP ``Host`` header (or HTTP/2
``:authority``): any case, with or without a port, and an IPv6 literal in brackets (RFC 9110 §7.2,
RFC 3986 §3.2.2: ``host = IP-literal / IPv4address / reg-name``, ``IP-literal = "[" ... "]"``, then
``[ ":" port ]``). Host names are ASCII (internationalised names travel as IDNA ``xn--`` labels) and
compare case-insensitively in ASCII only (RFC 4343). The config maps host → cluster, written by a
person in any of those spellings.

:func:`host_key` is the key both sides are reduced to: lower case, without the port, an IPv6 literal
kept with its brackets (``[::1]:6443`` → ``[::1]``; cutting at the first colon gave ``[``). A bare
address with several colons and no brackets (``fe80::1``) cannot carry a port and is kept whole. A
logged host with a character outside printable ASCII is kept exactly as logged: it is no valid host,
and no config key (validated by :func:`host_map`) can equal it, on either side (Unicode lower-casing
differs between Python, DuckDB and Spark: ``İ``). Not unified: a trailing dot (``k8s.example.com.``)
and other spellings of one IPv6 address (``[0::1]``); write the config key as the proxy logs the host.

:func:`host_key_sql` is the same function in SQL for the detectors' joins on the lake's ``host``
column (both engines: ``regexp_matches``, ``lower``, ``substr``, ``strpos``, ``split_part``). Ingest
(``pipeline/normalize``), detection (``detectors/correlate.py``) and config validation
(:func:`host_map`) all use these, so a spelling one accepts is never missed by another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

#: A character outside printable ASCII (the same class in Python, RE2 and Java regular expressions).
_NOT_PRINTABLE: Final = "[^ -~]"
_NOT_PRINTABLE_RE: Final = re.compile(_NOT_PRINTABLE)
#: A config key, lower-cased: a bracketed IPv6 literal (zone id allowed) or a reg-name / IPv4 address
#: (RFC 3986 unreserved, sub-delims and %-escapes), then an optional port. Not a URL, not blank.
#: No ``*``: a Pomerium ``from: https://*.example.com`` wildcard is not a host and would match nothing.
#: At most 253 characters of name (DNS) and a port.
_HOST_RE: Final = re.compile(r"(\[[0-9a-z:.%]{1,253}\]|[a-z0-9._~%!$&'()+,;=-]{1,253})(:[0-9]{1,5})?")


def host_key(host: str) -> str:
    """``host`` as :data:`impersonation.proxy_hosts` keys are compared: see the module docstring.

    Called per proxy record by ingest and per config key; pure, idempotent, linear in ``len(host)``."""
    if _NOT_PRINTABLE_RE.search(host):
        return host
    h = host.lower()
    end = h.find("]")
    if h.startswith("[") and end > 0:
        return h[: end + 1]
    if h.count(":") > 1:
        return h
    return h.split(":", 1)[0]


def host_key_sql(expr: str) -> str:
    """SQL computing :func:`host_key` of ``expr`` (a column reference from code, never from input)."""
    h = f"lower({expr})"
    return (f"CASE WHEN regexp_matches({expr}, '{_NOT_PRINTABLE}') THEN {expr} "
            f"WHEN substr({h}, 1, 1) = '[' AND strpos({h}, ']') > 0 THEN substr({h}, 1, strpos({h}, ']')) "
            f"WHEN strpos(substr({h}, strpos({h}, ':') + 1), ':') > 0 THEN {h} "  # a second colon
            f"ELSE split_part({h}, ':', 1) END")


def host_map(hosts: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(``hosts`` keyed by :func:`host_key`, problems): a key that is no host (blank, a URL, spaces, a
    wildcard, over 253 characters, a character outside printable ASCII), and two spellings of one host
    naming different clusters (routes told apart only by port), are problems: config validation refuses
    them; the map leaves such a key out, or keeps the first spelling's cluster. Two spellings naming the
    same cluster are one entry."""
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}
    problems: list[str] = []
    for host, cluster in hosts.items():
        if _NOT_PRINTABLE_RE.search(host) or not _HOST_RE.fullmatch(host.lower()):
            shown = repr(host) if len(host) <= 80 else f"{host[:60]!r}... ({len(host)} characters)"
            problems.append(f"{shown} is not a host name, IPv4 address or [IPv6] literal (with an optional "
                            ":port)" + ("; wildcards are not supported: list each host" if "*" in host else ""))
            continue
        key = host_key(host)
        if key in out and out[key] != cluster:
            problems.append(f"{spelled[key]!r} and {host!r} are the same host ({key}) but name clusters "
                            f"{out[key]!r} and {cluster!r}: routes told apart only by port are not supported")
            continue
        out.setdefault(key, cluster)
        spelled.setdefault(key, host)
    return out, problems

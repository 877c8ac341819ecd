"""Redaction: what must never reach the lake, and the one place where it is kept out.

The written policy, with its reasons, is ``docs/redaction.md``; this module is its implementation
and cites it as §n. In short:

* **Every string column of every table the pipeline writes has a rule** in :data:`COLUMN_POLICY`
  (§3): ``keep`` (ztaudit's own closed vocabulary), ``ident`` (identifiers: JWT-shaped values are
  masked), ``text`` (text a client, user or attacker chooses: every text rule), ``annotations``
  (audit annotations: values are text, mutating-webhook JSON patches lose their values),
  ``raw`` (quarantine bytes: :func:`scrub_raw`) and ``derived`` (built by ``detect`` from columns
  that were already masked). :func:`redact_result` applies it to the assembled tables and the
  rejects of every batch; it is called once, by :func:`ztaudit.pipeline.process.process` in its
  "assemble" step, which both ``ztaudit ingest`` and ``ztaudit consume`` go through, so no
  unmasked value reaches the lake sink.
* **The text rules** (§2) are one RE2 pattern, :data:`TEXT_PATTERN`: credential-named parameters
  (``token=``, ``%74oken=``, ``bearer=``, ``"client_secret":"..."``, ``refresh_token: ...``,
  ``pin=``, ``SAMLResponse=``, ``q=%7B%22access_token%22%3A...``), quoted values to their closing
  quote (``token="..."``, ``token=\\"...\\"``), array and object values to their closing bracket,
  ``Authorization``/``Cookie`` header values to the end of the line, ``Bearer``/``Basic``
  credentials, exec ``command=`` arguments, URL passwords, PEM blocks and JWT/base64-JSON blobs.
  The quarantine's :func:`scrub_raw` uses the same pattern on every string it keeps.
* **Linear time** (§5). An attacker chooses the query string a proxy logs and the user agent an
  API server logs, so masking must not backtrack: every pattern runs in RE2 (pyarrow's
  ``replace_substring_regex``/``match_substring_regex``), which is linear by construction, never
  in Python's backtracking ``re``. The Python ``re`` left (:data:`_KEY_COLON`, which finds JSON
  keys in bytes that do not parse; :data:`_NAME_PARTS`, which splits a key at non-alphanumerics)
  has no nested quantifier, and :data:`_KEY_COLON` starts only at a quote, so each byte is
  examined a bounded number of times. ``bench/hostile.py`` measures it.
* **Cheap on the common path** (§5). RE2 compilation costs ~0.3 ms per call, so columns are masked
  whole: one ``match_substring_regex`` over every text column's data buffer at once
  (:data:`TEXT_SCAN_PATTERN`) tells which columns hold anything to mask at all; only those are
  masked, and only their matching rows.

Nothing here raises for bad input: a value that cannot be masked precisely is cut or replaced by
:data:`MASK`, so failure means *less* is stored, never more (§4).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ztaudit.core.quarantine import QUARANTINE_RAW_CAP, Reason, Rejected

MASK: Final = "***"
CUT: Final = b"...[cut by ztaudit: secret-bearing key]"

# --- the text rules (docs/redaction.md §2) -----------------------------------------------------
#
# Each alternative of TEXT_PATTERN is (kept prefix)(secret); the replacement TEXT_REPLACEMENT
# re-emits whichever prefix group took part (the others are empty) followed by ***. A quoted value
# keeps its opening quote (a group of the prefix) and its closing quote (never consumed), so
# '"client_secret":"x"' stays a JSON string: '"client_secret":"***"'. RE2 rewrites know only \1-\9,
# so alternatives whose values are alike share one prefix group. RE2 tries the alternatives at the
# leftmost position first, so an ``Authorization:`` header is masked whole before its ``Bearer``
# word is looked at. All patterns are ASCII and run on bytes (RE2's Latin-1 mode): a match starts
# and ends at an ASCII byte, so masking never splits a UTF-8 character. No pattern uses a word
# boundary or a lookaround; the one anchor, the '^' that lets a short name (WHOLE_WORDS) start a
# value, is left out of TEXT_SCAN_PATTERN, so a TEXT_PATTERN match inside one value contains a
# TEXT_SCAN_PATTERN match inside any string that contains the value: that makes the whole-buffer
# prefilter of _needs_masking safe ("no match in the buffer" proves "no match in any value").

#: Words that make a parameter, key or header name a credential name, anywhere in the name
#: (``access_token``, ``X-Amz-Security-Token``, ``client_secret``, ``sessionToken``, ``JSESSIONID``,
#: ``X-Goog-Signature``, ``x-api-key``, ``bearer``, OAuth ``code``, Google ``key``, ``sig``, ``pwd``,
#: ``SAMLResponse``, CAS ``ticket``). Substrings, not whole words: ``encode=`` or ``monkey=`` are
#: masked too. Over-masking a harmless name costs a value; storing a credential cannot be undone
#: (§1). No Kubernetes API query parameter contains one of them.
CREDENTIAL_WORDS: Final = ("token", "secret", "pass", "pw", "signature", "sig", "credential", "assertion",
                           "key", "jwt", "auth", "bearer", "session", "cookie", "private", "code", "saml",
                           "ticket")
#: One-time codes and PINs (§1): words too short to match as substrings (``spinner``, ``mapping``,
#: ``rootPath``, ``footprint``), so they make a credential name only as the whole name or a whole
#: part of it between characters that are not letters or digits (``pin``, ``user_pin``, ``x-otp``,
#: ``auth[pin]``; not ``pinned``).
WHOLE_WORDS: Final = ("otp", "totp", "hotp", "pin")
#: Body keys: their values are request/response bodies or whole user representations, dropped from
#: quarantined JSON and cut at in bytes that do not parse (§4). ``request``/``response`` are GKE's
#: names for requestObject/responseObject (docs/kubernetes-audit.md §8.1); ``representation`` is a
#: Keycloak admin event's user/client body, credentials included (docs/proxy-and-idp.md §3.4).
BODY_KEYS: Final = frozenset({"requestObject", "responseObject", "request", "response", "data", "stringData",
                              "representation", "password", "token"})

# Brackets belong to names: PHP/Rails-style 'auth[token]=x' is a credential-named parameter.
_DELIM = r"""\s=&;#?/\\"'<>{}(),:"""  # what ends a parameter/key name
_NC = rf"[^{_DELIM}]"  # a character of a parameter/key name
_NCP = rf"[^{_DELIM}%]"  # ... of a key of percent-encoded JSON ('%22' ends it)
_PS = rf"[^{_DELIM}A-Za-z0-9]"  # ... that separates the parts of a name ('_', '-', '.', '[', ']')
_WORDS = "|".join(CREDENTIAL_WORDS)
_WHOLE = "|".join(WHOLE_WORDS)


def _name(guard: str) -> str:
    """A credential name: a credential word or a '%' (a name hidden by percent-encoding, §2.2)
    anywhere in it, or a short word as a whole part of it after ``guard`` (the start of the value
    or a delimiter, which the match keeps in its prefix group; empty for the scan pattern)."""
    return (rf"(?:{_NC}*(?:{_WORDS}|%){_NC}*|"
            rf"{guard}(?:{_NC}*{_PS})?(?:{_WHOLE})(?:{_PS}{_NC}*)?)")


# A credential-named key of percent-encoded JSON between its encoded quotes (the '%22' before it
# is its guard).
_ENCODED_NAME = rf"(?:{_NCP}*(?:{_WORDS}){_NCP}*|(?:{_NCP}*{_PS})?(?:{_WHOLE})(?:{_PS}{_NCP}*)?)"
# A bare value after '=' (or a key of percent-encoded JSON): up to the next parameter separator,
# blank or quote; an escaped quote (\") ends it too, so a key inside a JSON string (AKS
# properties.log) keeps the rest of its document.
_VALUE = r"""(?:[^&;#\s"'\\]|\\[^"'\s])*"""
_EQ = r"(?:=|%3[dD]|%253[dD])"  # '=', percent-encoded once (a nested redirect URL) or twice
_COLON = r"""(?:\\*["']\s*:\s*|\s*:\s+)"""  # after a JSON key ('"k":', '\"k\":') or a header ('k: ')
# Quoted values: the opening quote is a group (kept); the content is masked up to, not including,
# its closing quote or the end of the line. '"...' and "'...": a backslash escapes any character.
# '\"...' (quotes escaped because the text is inside a JSON string): a backslash run before a
# quote closes the value if it is one backslash (\"), is part of the value if it is odd and longer
# (\\\", a quote escaped inside the value), and ends it if it is even (\\", the JSON string's end).
_DQUOTED = r'(")(?:[^"\\\r\n]|\\[^\r\n])*'
_SQUOTED = r"(')(?:[^'\\\r\n]|\\[^\r\n])*"
_EQUOTED = r'(\\+")(?:[^"\\\r\n]|\\+[^"\\\r\n]|(?:\\\\)+\\")*'
# An array or object value, masked whole up to the bracket that closes it: a string is one unit
# (a bracket inside it does not count), three levels are matched, a fourth or an unclosed bracket
# masks to the end of the line. What follows is then masked like a bare value of the same form
# ('token=[a]b' is one value), so masking its own output changes nothing.
_UNIT = r'(?:[^\[\]{}"\\\r\n]|\\[^\r\n]|"(?:[^"\\\r\n]|\\[^\r\n])*"?)'
_DEEP = r"[\[{][^\r\n]*"
_LEVEL3 = rf"[\[{{](?:{_UNIT}|{_DEEP})*[\]}}]?"
_LEVEL2 = rf"[\[{{](?:{_UNIT}|{_LEVEL3})*[\]}}]?"
_BRACKETED = rf"(?:[\[{{](?:{_UNIT}|{_LEVEL2})*[\]}}]?)?"
_SCHEMES = "bearer|basic|digest|negotiate|ntlm"
# 7. a JWT or any base64-encoded JSON object ('eyJ' is base64 of '{"'), dots included; case-sensitive
_JWT = r"eyJ[A-Za-z0-9_+/=.-]{8,}"


def _text_pattern(guard: str) -> str:
    """The text rules as one RE2 pattern, in the order RE2 tries them at one position; ``guard``
    as for :func:`_name`."""
    name = _name(guard)
    alternatives = (
        # 1a. an Authorization/Proxy-Authorization/Cookie/Set-Cookie header: the whole value to the
        #     end of the line, quotes included (Digest: 'username="x", response="..."').
        rf"({_NC}*(?:authorization|cookie)\s*:\s*)[^\r\n]*",
        # 1b/3/4. a credential name in any form, then a quoted value
        rf"({name}{_COLON}|{name}{_EQ}|command{_EQ})(?:{_DQUOTED}|{_SQUOTED}|{_EQUOTED})",
        # 1c. header or JSON key form, an array/object or bare value: 'refresh_token: x', '"n": 3'
        #     -> up to a quote, a backslash or the end of the line. The colon needs a quote before it
        #     or a blank after it, so 'system:serviceaccount:auth:x' is not a header.
        rf"""({name}{_COLON}){_BRACKETED}[^"'\r\n\\]*""",
        # 2/3/4. a bare value after '=' ('%3D', '%253D'), after a key of percent-encoded JSON
        #     ('%22access_token%22%3A', once or twice encoded: the rest of the parameter), exec/attach
        #     'command=' arguments (§2.3), or after an HTTP authorization scheme (RFC 9110 §11.6.2;
        #     Basic: RFC 7617)
        rf"({name}{_EQ}|command{_EQ}|(?:%22|%2522){_ENCODED_NAME}(?:%22|%2522)(?:%3[aA]|%253[aA])|"
        rf"(?:{_SCHEMES})\s+){_BRACKETED}{_VALUE}",
        # 5. the password of a URL's userinfo: 'postgres://user:PASSWORD@host'
        r"""([a-z][a-z0-9+.-]*://[^/\s:@"'?#]*:)[^/\s@"'?#]*(@)""",
        # 6. a PEM block (private keys, certificates)
        r"-----BEGIN [A-Z0-9 ]+-----[A-Za-z0-9+/=\s]*(?:-----END [A-Z0-9 ]+-----)?",
    )
    return "(?i)" + "|".join(f"(?:{a})" for a in alternatives) + "|(?-i:" + _JWT + ")"


TEXT_PATTERN: Final = _text_pattern(rf"(?:^|[{_DELIM}])")
#: TEXT_PATTERN without the condition before a short name (the start of a value, which a data
#: buffer of many values does not show): it matches wherever TEXT_PATTERN does; the prefilter's.
TEXT_SCAN_PATTERN: Final = _text_pattern("")
# Groups: 1 the header prefix; 2 the prefix of a quoted value and 3-5 its opening quote (", ', \");
# 6 the prefix of a header/JSON-key value; 7 of an '=', JSON-in-query or scheme value; 8 and 9 the
# userinfo prefix and its '@' (re-emitted after the mask).
TEXT_REPLACEMENT: Final = r"\1\2\3\4\5\6\7\8" + MASK + r"\9"
#: Identifiers (§3): only a value that is a credential by its shape is masked.
IDENT_PATTERN: Final = f"(){_JWT}"
IDENT_REPLACEMENT: Final = "\\1" + MASK

#: Lower-case literals at least one of which every TEXT_PATTERN match contains. Checked with
#: ``in`` (linear) before a single value is handed to RE2, whose per-call compile costs ~0.3 ms.
_TRIGGERS: Final = (*CREDENTIAL_WORDS, *WHOLE_WORDS, "%", "bearer", "basic", "digest", "negotiate",
                    "ntlm", "command", "://", "-----begin", "eyj")
_BTRIGGERS: Final = tuple(t.encode() for t in _TRIGGERS)


def _may_hold_secret(text: str | bytes) -> bool:
    low = text.lower()
    if isinstance(low, bytes):
        return any(t in low for t in _BTRIGGERS)
    return any(t in low for t in _TRIGGERS)


def _as_binary(arr: pa.Array) -> pa.Array:
    """A zero-copy bytes view of a string array (so RE2 runs in Latin-1 mode, see above)."""
    if pa.types.is_large_string(arr.type):
        return arr.view(pa.large_binary())
    if pa.types.is_string(arr.type):
        return arr.view(pa.binary())
    return arr


def _replace(arr: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """``arr`` (string or binary) with every match replaced; only matching rows are rewritten."""
    data = _as_binary(arr)
    hit = pc.fill_null(pc.match_substring_regex(data, pattern=pattern), False)
    n_hit = pc.sum(hit).as_py() or 0
    if n_hit == 0:
        return arr
    if n_hit == len(data):
        out = pc.replace_substring_regex(data, pattern=pattern, replacement=replacement)
    else:
        masked = pc.replace_substring_regex(data.filter(hit), pattern=pattern, replacement=replacement)
        out = pc.replace_with_mask(data, hit, masked)
    return out.view(arr.type) if out.type != arr.type else out


def mask_texts(values: pa.Array) -> pa.Array:
    """A string/binary array with the text rules applied (§2); linear time (RE2)."""
    return _replace(values, TEXT_PATTERN, TEXT_REPLACEMENT)


def mask_idents(values: pa.Array) -> pa.Array:
    """A string array with JWT-shaped values masked (the ``ident`` rule, §3)."""
    return _replace(values, IDENT_PATTERN, IDENT_REPLACEMENT)


def mask_text(text: str | None) -> str | None:
    """One value with the text rules applied (§2). ``None`` and ``""`` pass through.

    For single values (quarantine strings, a proxy's query field); columns go through
    :func:`mask_texts`. A value without any trigger literal skips RE2 entirely.
    """
    if not text or not _may_hold_secret(text):
        return text
    out = mask_texts(pa.array([text], pa.large_string()))[0].as_py()
    return str(out)


def mask_query(uri: str | None, *, bare_query: bool = False) -> str | None:
    """``uri`` with credential query parameters, exec arguments and JWTs masked (the text rules, §2).

    ``bare_query`` says ``uri`` is a query string without its ``?`` (proxies log path and query in
    separate fields): a leading ``?`` is dropped; the rules themselves do not depend on it.
    Names and order are kept, so the URI still says what was asked.
    """
    if bare_query and uri:
        uri = uri.removeprefix("?")
    return mask_text(uri)


# --- quarantine bytes (docs/redaction.md §4) ---------------------------------------------------

#: A JSON key in bytes that did not parse, with the first byte of its value. Python ``re``, but
#: linear: a match can only start at '"', the key part stops at the next quote or backslash, and
#: no quantifier is nested, so every byte is scanned a bounded number of times.
_KEY_COLON = re.compile(rb'"([^"\\]{1,256})\\*"\s*:\s*([\[{]?)')
_BODY_KEYS_LOWER: Final = frozenset(k.lower().encode() for k in BODY_KEYS)
_BODY_KEYS_LOWER_STR: Final = frozenset(k.lower() for k in BODY_KEYS)
_WHOLE_WORDS: Final = frozenset(WHOLE_WORDS)
_MAX_DEPTH = 64


_NAME_PARTS = re.compile(r"[^a-z0-9]+")  # one character class under one quantifier: linear


def _is_credential_name(name: str) -> bool:
    """The name rule of the text rules (:func:`_name`) for a whole key: a credential word or '%'
    anywhere, or a short word (:data:`WHOLE_WORDS`) as a part between non-alphanumerics."""
    low = name.lower()
    if any(w in low for w in CREDENTIAL_WORDS) or "%" in low:
        return True
    return any(w in low for w in WHOLE_WORDS) and not _WHOLE_WORDS.isdisjoint(_NAME_PARTS.split(low))


def _cut_position(raw: bytes) -> int | None:
    """Where bytes that did not parse must be cut: the first body key, or the first credential-named
    key whose value is an object or array (a value RE2 cannot delimit)."""
    for m in _KEY_COLON.finditer(raw):
        key = m.group(1)
        if key.lower() in _BODY_KEYS_LOWER or (m.group(2) and _is_credential_name(key.decode("latin-1"))):
            start = m.start()
            while start > 0 and raw[start - 1:start] == b"\\":  # the key's own escape backslashes
                start -= 1
            return start
    return None


#: Keys whose string values bytes that do not parse may keep (§4): the words that say what a
#: record was (its kind, level, stage, verb, service, event type, resource and times) and the
#: request and its user, which the tables keep too; none holds a body value, and the text rules
#: (§2) still run over them afterwards. Lower-case.
_LOOSE_KEEP: Final = frozenset(k.encode() for k in (
    "kind", "apiversion", "level", "stage", "verb", "auditid", "service", "eventtype", "type",
    "operationname", "category", "resource", "subresource", "namespace", "apigroup", "logname",
    "requestreceivedtimestamp", "stagetimestamp", "time", "timestamp", "message", "reason", "status",
    # what the tables keep anyway, after the text rules: who asked for what
    "requesturi", "username", "method", "host", "path"))
_MASK_B: Final = MASK.encode()
_BLANKS: Final = b" \t\r\n"


def _string_end(raw: bytes, start: int) -> int:
    """Index of the quote that closes the JSON string opened at ``raw[start - 1]``, or -1 when it
    is not closed. Linear over the whole input: each quote is found once by ``bytes.find`` and
    only the run of backslashes right before it is counted."""
    j = start
    while True:
        e = raw.find(b'"', j)
        if e < 0:
            return -1
        k = e - 1
        while k >= start and raw[k] == 0x5C:  # backslash
            k -= 1
        if (e - 1 - k) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return e
        j = e + 1


def mask_loose_strings(raw: bytes) -> bytes:
    """Bytes that do not parse, with every JSON string that is neither a key nor the value of a
    :data:`_LOOSE_KEEP` key replaced by ``***`` (§4); an unclosed string at the end is masked to
    the end.

    Why: when bytes do not parse, nothing says which value belongs to which key, and the pieces of
    a broken document carry no key at all (a pretty-printed Secret's ``"db-pass": "<base64>",``
    line inside a JSON-lines file, or a bare ``"<base64>"`` array element). Keys, numbers and
    punctuation are kept, so the quarantine still shows the record's shape and why it failed.
    Linear time (:func:`_string_end`).
    """
    out = bytearray()
    n = len(raw)
    i = 0
    key: bytes | None = None  # the key the next string would be the value of
    while i < n:
        q = raw.find(b'"', i)
        if q < 0:
            out += raw[i:]
            break
        between = raw[i:q]
        out += between
        owner = key if between.strip(_BLANKS) == b":" else None
        e = _string_end(raw, q + 1)
        if e < 0:
            out += b'"' + (_MASK_B if q + 1 < n else b"")
            break
        m = e + 1
        while m < n and raw[m] in _BLANKS:
            m += 1
        is_key = m < n and raw[m] == 0x3A  # ':'
        content = raw[q + 1:e]
        keep = is_key or not content or (owner is not None and owner.lower() in _LOOSE_KEEP)
        out += b'"' + (content if keep else _MASK_B) + b'"'
        key = content if is_key else None
        i = e + 1
    return bytes(out)


class _Pending:
    """What scrubbing a batch of quarantined records leaves for the end: the strings that need the
    text rules (masked for the whole batch in one RE2 call, :meth:`apply`), then the steps that
    depend on them (a key renamed to its masked form; a JSON document inside a string serialised
    again), run in the order they were registered, innermost first.

    One RE2 call per batch, not per record: Arrow compiles the pattern on every call (~0.3 ms),
    which made a flood of quarantined records that merely contain a trigger word (``auth`` in
    ``system:authenticated``) 20x slower to ingest than clean ones.
    """

    def __init__(self) -> None:
        self.slots: list[tuple[dict[str, Any] | list[Any], Any]] = []
        self.values: list[str] = []
        self.after: list[Callable[[], None]] = []

    def add(self, holder: dict[str, Any] | list[Any], key: Any, value: str) -> None:
        self.slots.append((holder, key))
        self.values.append(value)

    def rename(self, d: dict[str, Any], key: str) -> None:
        """Mask the text of dict key ``key`` too (``{"x?token=SECRET": 1}``)."""
        box: list[Any] = [key]
        self.add(box, 0, key)

        def move() -> None:
            if box[0] != key and key in d:
                d[box[0]] = d.pop(key)
        self.after.append(move)

    def apply(self) -> None:
        if self.values:
            masked = mask_texts(pa.array(self.values, pa.large_string())).to_pylist()
            for (holder, key), v in zip(self.slots, masked, strict=True):
                holder[key] = v
        for step in self.after:
            step()


def _prepare_bytes(raw: bytes) -> bytes:
    """Bytes that do not parse, up to the text rules (§4): the first QUARANTINE_RAW_CAP bytes (all
    the quarantine keeps; a cut input scrubs safely, an unclosed string is masked to the end), cut
    at the first secret-bearing key, every string that is not a key or a :data:`_LOOSE_KEEP` value
    masked."""
    raw = raw[:QUARANTINE_RAW_CAP]
    cut = _cut_position(raw)
    if cut is not None:
        raw = raw[:cut] + CUT
    return mask_loose_strings(raw)


def scrub_bytes(raw: bytes) -> bytes:
    """Bytes that are not parseable JSON, safe to keep (:func:`_prepare_bytes`, then the text
    rules of §2)."""
    raw = _prepare_bytes(raw)
    if not _may_hold_secret(raw):
        return raw
    out = mask_texts(pa.array([raw], pa.binary()))[0].as_py()
    return bytes(out)


def _scrub(value: Any, depth: int, pend: _Pending, holder: dict[str, Any] | list[Any], key: Any) -> Any:
    if depth > _MAX_DEPTH:
        return "...[cut by ztaudit: too deep]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k.lower() in _BODY_KEYS_LOWER_STR:  # 'StringData' is no less a body than 'stringData'
                continue
            # An empty, null or boolean value under a credential name holds nothing to hide, and
            # masking it would claim a credential was there (a revocation CSV's empty session_id).
            hides = _is_credential_name(k) and v not in ("", None) and not isinstance(v, bool)
            out[k] = MASK if hides else _scrub(v, depth + 1, pend, out, k)
            if _may_hold_secret(k):
                pend.rename(out, k)
        return out
    if isinstance(value, list):
        lst: list[Any] = [None] * len(value)
        for i, v in enumerate(value):
            lst[i] = _scrub(v, depth + 1, pend, lst, i)
        return lst
    if isinstance(value, str):
        if value.lstrip()[:1] in ("{", "["):
            # A JSON document inside a string (AKS properties.log, EKS message, Keycloak
            # representation): scrubbed as JSON, or as bytes when it does not parse.
            try:
                inner = orjson.loads(value)
            except orjson.JSONDecodeError:
                text = _prepare_bytes(value.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
                if _may_hold_secret(text):
                    pend.add(holder, key, text)
                return text
            box: list[Any] = [None]
            box[0] = _scrub(inner, depth + 1, pend, box, 0)

            def serialise() -> None:
                holder[key] = orjson.dumps(box[0]).decode()
            pend.after.append(serialise)
            return value  # replaced by serialise() once the batch's strings are masked
        if _may_hold_secret(value):
            pend.add(holder, key, value)
        return value
    return value


def _bare_string(value: Any) -> bool:
    """A record that is a bare JSON string is no log record: a line of a broken document (a
    pretty-printed array element), whose key, if any, was on another line (§4)."""
    return isinstance(value, str) and value.lstrip()[:1] not in ("{", "[")


def scrub_raws(items: Sequence[tuple[bytes, bool]]) -> list[bytes]:
    """Raw record bytes safe to store in quarantine (§4), for a whole batch: ``(raw, parse)`` each.

    Called once per batch by :func:`redact_rejects` (so by ``process()``), and through
    :func:`scrub_raw` for a single record. If ``raw`` parses as JSON (and ``parse`` is true; it is
    false for oversized records, which are never parsed), it is scrubbed (§4: bodies dropped in any
    case, values of credential-named keys masked, text rules on strings and keys, JSON inside
    strings scrubbed the same way, 64 levels deep at most) and re-serialised; otherwise like
    :func:`scrub_bytes`. All the text rules of the batch run in
    two RE2 calls. Never raises.
    """
    pend = _Pending()
    loose: list[bytes] = []
    plan: list[tuple[str, Any]] = []
    for raw, parse in items:
        if parse:
            try:
                value = orjson.loads(raw)
            except (orjson.JSONDecodeError, TypeError):
                pass
            else:
                if _bare_string(value):
                    plan.append(("done", orjson.dumps(MASK if value else value)))
                    continue
                box: list[Any] = [None]
                box[0] = _scrub(value, 0, pend, box, 0)
                plan.append(("json", (box, raw)))
                continue
        b = _prepare_bytes(raw)
        if _may_hold_secret(b):
            plan.append(("loose", len(loose)))
            loose.append(b)
        else:
            plan.append(("done", b))
    pend.apply()
    masked = [bytes(v) for v in mask_texts(pa.array(loose, pa.binary())).to_pylist()] if loose else []
    out: list[bytes] = []
    for kind, what in plan:
        if kind == "json":
            box, raw = what
            try:
                out.append(orjson.dumps(box[0]))
            except (TypeError, orjson.JSONEncodeError):
                out.append(scrub_bytes(raw))
        elif kind == "loose":
            out.append(masked[what])
        else:
            out.append(what)
    return out


def scrub_raw(raw: bytes, *, parse: bool = True) -> bytes:
    """One record's raw bytes safe to store in quarantine (:func:`scrub_raws` of one). Called
    where a reject is made outside ``process()`` (the file readers); inside it, rejects are
    scrubbed in one batch by :func:`redact_rejects`."""
    return scrub_raws([(raw, parse)])[0]


# --- the column policy (docs/redaction.md §3) --------------------------------------------------


class Rule(StrEnum):
    """How a column is treated before it is written (docs/redaction.md §3)."""

    KEEP = "keep"  # ztaudit's own vocabulary, or filled by the API server from a verified credential
    IDENT = "ident"  # an identifier a client or IdP chooses: JWT-shaped values masked
    TEXT = "text"  # text a client, user or attacker chooses: every text rule
    ANNOTATIONS = "annotations"  # audit annotations: values are text; webhook patches lose their values
    COPY = "copy"  # a copy of another column's values: masked as text when that column needed it
    RAW = "raw"  # quarantine bytes: scrub_raw where the Rejected is made
    DERIVED = "derived"  # built by ``detect`` from lake columns that were already masked


_K, _I, _T = Rule.KEEP, Rule.IDENT, Rule.TEXT


def _derived(*names: str) -> dict[str, Rule]:
    return dict.fromkeys(names, Rule.DERIVED)


#: (table, column) -> rule, for every string, binary, list and map column of every table in
#: :data:`ztaudit.core.schema.TABLES` (a test holds it to that). Numbers, booleans and timestamps
#: cannot carry text and are not listed. A column missing here is masked as text (fail safe).
COLUMN_POLICY: Final[dict[str, dict[str, Rule]]] = {
    "k8s_audit": {
        # Typed by the client: the URI, the user agent, the Audit-ID header, the URL path's parts.
        "request_uri": _T, "user_agent": _T, "audit_id": _I, "verb": _I, "resource": _I, "subresource": _I,
        "namespace": _I, "name": _I, "api_group": _I, "api_version": _I, "cluster": _I,
        # Set by admission, authorization and authentication plugins, webhooks included.
        "annotations": Rule.ANNOTATIONS, "authz_reason": Rule.COPY, "decision": Rule.COPY,
        # Filled by the API server from the authenticated credential, validated, or computed by
        # ztaudit from them (docs/kubernetes-audit.md §2, §3, §6): kept (docs/redaction.md §3.2).
        "stage": _K, "level": _K, "user_name": _K, "user_uid": _K, "user_groups": _K, "credential_id": _K,
        "credential_kind": _K, "issued_credential_id": _K, "sa_namespace": _K, "sa_name": _K, "pod_name": _K,
        "node_name": _K, "impersonator": _K, "impersonated_user": _K, "impersonated_groups": _K, "actor": _K,
        "actor_kind": _K, "source_ip": _K, "source_ips": _K, "origin": _K,
        # user.extra[correlation.session_extra_key]: the authenticator's claim mapping of an IdP
        # token's session claim; an identifier (a JWT-shaped value would be masked).
        "proxy_session_id": _I,
    },
    "proxy_decision": {
        "path": _T, "query": _T, "user_agent": _T, "allow_reasons": _T, "deny_reasons": _T,
        "request_id": _I, "check_request_id": _I, "session_id": _I, "user_id": _I, "email": _I,
        "service_account_id": _I, "method": _I, "host": _I, "route_id": _I, "client_ip": _I, "cluster": _I,
        "proxy": _K, "record_type": _K, "origin": _K,
    },
    "idp_event": {
        "event_type": _T, "outcome": _T, "reason": _T,
        "subject_id": _I, "subject_login": _I, "session_id": _I, "actor": _I,
        "idp": _K, "revocation_scope": _K, "origin": _K,
    },
    "rbac_snapshot": {
        "non_resource_urls": _T,
        "cluster": _I, "subject_kind": _I, "subject_name": _I, "subject_namespace": _I, "subject": _I,
        "binding_kind": _I, "binding_name": _I, "binding_namespace": _I, "role_kind": _I, "role_name": _I,
        "verbs": _I, "api_groups": _I, "resources": _I, "resource_names": _I, "scope_namespace": _I,
        "origin": _K,
    },
    "quarantine": {"detail": _T, "origin": _I, "source_guess": _K, "reason": _K, "raw": Rule.RAW},
    "findings": _derived("finding_id", "detector", "severity", "actor", "credential_id", "cluster", "namespace",
                         "summary", "evidence", "context", "first_run"),
    # Triage rows are written by ztaudit from an operator's command; the reason is masked as free
    # text before it is stored (core/triage.py), so here they are derived like findings.
    "triage": _derived("finding_id", "action", "reason", "triaged_by"),
    "detect_runs": _derived("run_id", "detectors"),
    "reach": _derived("window", "actor", "actor_kind", "cluster", "peer_group", "secret_namespace_list",
                      "new_namespace_list"),
    "credentials": _derived("credential_key", "credential_id", "key_kind", "credential_kind", "holder",
                            "holder_kind", "issued_by", "clusters", "source_ips", "user_agents", "pods", "nodes"),
}

#: Rule.COPY columns and the column whose values they copy: ``authz_reason`` and ``decision`` are
#: ``annotations['authorization.k8s.io/reason' | '/decision']`` (k8s_audit_sql.py). A copy holds
#: nothing to mask unless its source does (no text rule is anchored, see above), so it is only
#: scanned then; this keeps the central step within its cost budget (§5).
COPY_OF: Final[dict[tuple[str, str], str]] = {
    ("k8s_audit", "authz_reason"): "annotations",
    ("k8s_audit", "decision"): "annotations",
}

#: Audit annotations whose value is a mutating webhook's JSON patch (docs/kubernetes-audit.md §7;
#: Kubernetes "Mutating webhook auditing annotations"): recorded at audit level Request and above,
#: and a patch value can be a Secret's ``/data/...``. Only the configuration, webhook, patch type
#: and each operation's ``op`` and ``path`` are kept (§3.1).
PATCH_ANNOTATION_PREFIX: Final = "patch.webhook.admission.k8s.io/"


def _patch_summary(value: str | None) -> str | None:
    """A webhook patch annotation without the patch values (§3.1); ``***`` if it is not the
    documented JSON shape."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return MASK
    if not isinstance(doc, dict):
        return MASK
    out: dict[str, Any] = {k: doc[k] for k in ("configuration", "webhook", "patchType")
                           if isinstance(doc.get(k), str)}
    ops = doc.get("patch")
    if isinstance(ops, list):
        out["patch"] = [{k: op[k] for k in ("op", "path", "from") if isinstance(op.get(k), str)}
                        for op in ops if isinstance(op, dict)]
    return orjson.dumps(out).decode()


def _string_leaves(arr: pa.Array) -> list[pa.Array]:
    """The string arrays holding ``arr``'s text: itself, a list's values, a map's items."""
    if pa.types.is_map(arr.type):
        return [arr.items]
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return [arr.values]
    return [arr]


def _buffer_of(arr: pa.Array) -> pa.Array | None:
    """One binary value spanning ``arr``'s whole data buffer (zero copy), for the prefilter. Any
    :data:`TEXT_SCAN_PATTERN` (or :data:`IDENT_PATTERN`) match inside one of ``arr``'s values is a
    match inside the buffer, so "no match" proves that no value needs masking."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type)
            or pa.types.is_large_binary(arr.type)):
        return None
    data = arr.buffers()[2]
    if data is None or data.size == 0:
        return None
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def _needs_masking(columns: Sequence[pa.ChunkedArray], pattern: str) -> list[bool]:
    """For each column, whether any of its string values may match ``pattern``: one RE2 call over
    all their data buffers (one compile for the whole batch)."""
    spans: list[tuple[int, pa.Array]] = []
    for i, col in enumerate(columns):
        for chunk in col.chunks:
            for leaf in _string_leaves(chunk):
                buf = _buffer_of(leaf)
                if buf is not None:
                    spans.append((i, buf))
    out = [False] * len(columns)
    if not spans:
        return out
    # Two halves of about equal bytes, scanned on two threads (RE2 in Arrow releases the GIL):
    # the scan is on the critical path of every batch and DuckDB is idle while it runs.
    spans.sort(key=lambda s: -s[1].buffers()[2].size)
    halves: tuple[list[tuple[int, pa.Array]], list[tuple[int, pa.Array]]] = ([], [])
    sizes = [0, 0]
    for span in spans:
        h = 0 if sizes[0] <= sizes[1] else 1
        halves[h].append(span)
        sizes[h] += span[1].buffers()[2].size

    def scan(part: list[tuple[int, pa.Array]]) -> list[bool]:
        if not part:
            return []
        hits = pc.match_substring_regex(pa.chunked_array([b for _, b in part], pa.large_binary()),
                                        pattern=pattern)
        return [bool(h) for h in hits.to_pylist()]

    second = _scan_pool().submit(scan, halves[1]) if sizes[1] >= _PARALLEL_SCAN_BYTES else None
    results = [(halves[0], scan(halves[0]))]
    results.append((halves[1], second.result() if second is not None else scan(halves[1])))
    for part, hits in results:
        for (i, _), hit in zip(part, hits, strict=True):
            out[i] = out[i] or hit
    return out


#: Below this many bytes in the second half, the prefilter scans on one thread (a hand-over to
#: the pool costs more than it saves).
_PARALLEL_SCAN_BYTES: Final = 1 << 20
_POOL: list[ThreadPoolExecutor] = []


def _scan_pool() -> ThreadPoolExecutor:
    """The one worker thread of the prefilter scan (created on first use, daemon, never joined:
    it holds no state)."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztaudit-redact"))
    return _POOL[0]


def _mask_array(arr: pa.Array, text: bool) -> pa.Array:
    """One chunk with the text rules (``text``) or the identifier rule applied, lists and maps
    element by element (map keys are kept: they are plugin-chosen names, §3.1)."""
    mask = mask_texts if text else mask_idents
    validity = arr.is_null() if arr.null_count else None
    if pa.types.is_map(arr.type):
        return pa.MapArray.from_arrays(arr.offsets, arr.keys, mask(arr.items),
                                       type=arr.type, mask=validity)
    if pa.types.is_list(arr.type):
        return pa.ListArray.from_arrays(arr.offsets, mask(arr.values),
                                        type=arr.type, mask=validity)
    if pa.types.is_large_list(arr.type):
        return pa.LargeListArray.from_arrays(arr.offsets, mask(arr.values),
                                             type=arr.type, mask=validity)
    return mask(arr)


def _cut_patch_annotations(arr: pa.Array) -> pa.Array:
    """A map chunk with webhook patch annotation values reduced to op and path (§3.1)."""
    if not pa.types.is_map(arr.type):
        return arr
    keys, items = arr.keys, arr.items
    if len(keys) == 0:
        return arr
    is_patch = pc.fill_null(pc.starts_with(keys, PATCH_ANNOTATION_PREFIX), False)
    if not pc.any(is_patch).as_py():
        return arr
    idx = np.flatnonzero(is_patch.to_numpy(zero_copy_only=False))
    summaries = pa.array([_patch_summary(items[int(i)].as_py()) for i in idx], items.type)
    validity = arr.is_null() if arr.null_count else None
    return pa.MapArray.from_arrays(arr.offsets, keys, pc.replace_with_mask(items, is_patch, summaries),
                                   type=arr.type, mask=validity)


def _is_texty(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_map(t))


def redact_table(kind: str, table: pa.Table) -> pa.Table:
    """``table`` (of source kind ``kind``) with :data:`COLUMN_POLICY` applied (§3).

    Called by :func:`redact_tables`. Columns the policy does not name are treated as text. Cost
    on clean data: two RE2 prefilter calls over the data buffers of the text and the identifier
    columns; a column is rewritten only if its buffer matched, and in it only the matching rows.
    """
    policy = COLUMN_POLICY.get(kind, {})
    rules = {f.name: policy.get(f.name, Rule.TEXT) for f in table.schema if _is_texty(f.type)}
    columns = {name: table.column(name) for name, rule in rules.items()
               if rule in (Rule.TEXT, Rule.IDENT, Rule.ANNOTATIONS, Rule.COPY)}
    changed: set[str] = set()
    for name, col in columns.items():
        if rules[name] is Rule.ANNOTATIONS:
            cut = [_cut_patch_annotations(c) for c in col.chunks]
            if any(a is not b for a, b in zip(cut, col.chunks, strict=True)):
                columns[name] = pa.chunked_array(cut, col.type)
                changed.add(name)
    for pattern, wanted, text in ((TEXT_SCAN_PATTERN, (Rule.TEXT, Rule.ANNOTATIONS), True),
                                  (IDENT_PATTERN, (Rule.IDENT,), False)):
        names = [n for n in columns if rules[n] in wanted]
        for name, hit in zip(names, _needs_masking([columns[n] for n in names], pattern), strict=True):
            if not hit:
                continue
            columns[name] = pa.chunked_array([_mask_array(c, text) for c in columns[name].chunks], columns[name].type)
            changed.add(name)
            for (tkind, copy), source in COPY_OF.items():
                if tkind == kind and source == name and copy in columns:
                    columns[copy] = pa.chunked_array([_mask_array(c, True) for c in columns[copy].chunks],
                                                     columns[copy].type)
                    changed.add(copy)
    for name in [n for n in columns if rules[n] is Rule.COPY and (kind, n) not in COPY_OF]:
        # A copy without a declared source is masked as text (fail safe).
        columns[name] = pa.chunked_array([_mask_array(c, True) for c in columns[name].chunks], columns[name].type)
        changed.add(name)
    for name in changed:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), columns[name])
    return table


def redact_tables(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Every table of a batch with :data:`COLUMN_POLICY` applied (see :func:`redact_table`).

    Called once per batch by :func:`ztaudit.pipeline.process.process` ("assemble"), so both
    ``ztaudit ingest`` and ``ztaudit consume`` write only redacted tables. Never raises for bad
    values: a value that matches is rewritten, nothing else changes.
    """
    return {kind: redact_table(kind, table) for kind, table in tables.items()}


def redact_rejects(rejected: Iterable[Rejected]) -> list[Rejected]:
    """``rejected`` safe to store (§4): raw bytes scrubbed (:func:`scrub_raws`), ``detail`` text
    and ``origin`` identifier masked (§3), the whole batch in a few RE2 calls.

    Called by ``process()`` next to :func:`redact_tables`. Inside ``process()`` (its own steps and
    the normalizers it calls) a reject carries its raw bytes unscrubbed until this step; rejects
    made elsewhere (the file readers) were scrubbed where made, and scrubbing is idempotent.
    Oversized records are never parsed."""
    rejected = list(rejected)
    if not rejected:
        return rejected
    raws = scrub_raws([(r.raw, r.reason is not Reason.OVERSIZED) for r in rejected])
    details = mask_texts(pa.array([r.detail for r in rejected], pa.large_string())).to_pylist()
    origins = mask_idents(pa.array([r.origin for r in rejected], pa.large_string())).to_pylist()
    return [dataclasses.replace(r, raw=w, detail=d or "", origin=o or "")
            for r, w, d, o in zip(rejected, raws, details, origins, strict=True)]

"""Classify one raw record: oversized, not UTF-8, empty, JSON value, truncated JSON or text.

Called by :func:`ztaudit.pipeline.process.process` for records the columnar fast path did not
take (everything that is not a plain Kubernetes Event line). Never raises: every outcome is a
:class:`Decoded` value whose ``reason`` is set when the record must go to quarantine.

Order matters (falco k8saudit ``source.go``: "bound the input before mapping fields"): the size
cap is checked first, so an oversized record is never decoded or parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ztaudit.core.quarantine import Reason

#: CloudWatch Logs cuts messages over its event size limit and appends this marker; such a
#: message cannot be parsed (falcosecurity/plugins k8saudit-eks skips them; docs/kubernetes-audit.md §8.2).
CLOUDWATCH_TRUNCATED: Final = "[Truncated...]"


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a raw record is. Exactly one of ``reason``/``value``/``text`` is meaningful:

    * ``reason`` set: reject with that reason and ``detail``;
    * ``is_json``: ``value`` is the decoded JSON value (may be ``None`` for JSON ``null``);
    * else ``text`` is a non-JSON line for the normalizers' ``parse_text``, and ``json_error``
      says how it failed as JSON (``invalid_json`` or ``truncated``) in case no one claims it.
    """

    reason: Reason | None = None
    detail: str = ""
    is_json: bool = False
    value: Any = None
    text: str | None = None
    json_error: Reason | None = None


def loads(data: bytes | str) -> Any:
    """Parse JSON with orjson, falling back to the standard library for what orjson refuses
    (e.g. ``NaN``). Raises ``ValueError`` (``json.JSONDecodeError`` is one) when neither parses;
    ``RecursionError`` from very deep nesting is turned into ``ValueError`` too.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        try:
            return json.loads(data)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc
        except ValueError:
            raise first from None


def dumps(value: Any) -> bytes:
    """Serialise a decoded JSON value (orjson; stdlib fallback for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")


def json_failure(text: str, exc: Exception) -> tuple[Reason, str]:
    """(``truncated`` | ``invalid_json``, detail) for a parse failure of ``text``.

    Truncated means the parser ran off the end of the input mid-value (``{"a": 1``), or a
    CloudWatch ``[Truncated...]`` marker ends it; anything else is invalid JSON. The detail is
    the parser's message only, never the record's content (it may hold secrets).
    """
    msg = str(exc).split(":", 1)[0] if str(exc) else type(exc).__name__
    if text.rstrip().endswith(CLOUDWATCH_TRUNCATED):
        return Reason.TRUNCATED, "message ends with CloudWatch's [Truncated...] marker"
    if "unexpected end of data" in str(exc) or "Unterminated string" in str(exc) or (
        isinstance(exc, json.JSONDecodeError) and exc.pos >= len(text.rstrip())
    ):
        return Reason.TRUNCATED, f"JSON ends mid-value ({msg})"
    return Reason.INVALID_JSON, msg[:200]


def decode_record(raw: bytes, max_bytes: int) -> Decoded:
    """Classify ``raw`` (see the module docstring). ``max_bytes`` is the record size cap."""
    if len(raw) > max_bytes:
        return Decoded(Reason.OVERSIZED, f"{len(raw)} bytes > cap {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Decoded(Reason.NOT_UTF8, f"invalid UTF-8 at byte {exc.start}")
    stripped = text.strip()
    if not stripped:
        return Decoded(Reason.EMPTY, "empty record" if not raw else "whitespace-only record")
    if stripped[0] not in '{["-0123456789tfn':
        return Decoded(text=stripped, json_error=Reason.INVALID_JSON)
    try:
        value = loads(stripped)
    except ValueError as exc:
        reason, _ = json_failure(stripped, exc)
        return Decoded(text=stripped, json_error=reason, detail=_)
    return Decoded(is_json=True, value=value)

"""Timestamp parsing shared by the normalizers.

Every function returns a tz-aware UTC ``datetime`` with microsecond precision (the lake's one
time type, ``timestamp[us, tz=UTC]``; see schema.py). Finer precision is truncated, never rounded
up, so an event never moves past a later one.

The layouts met in practice (docs/proxy-and-idp.md §1.1, §2.1, §2.2, §3, §4 "Clocks and zones";
docs/kubernetes-audit.md §2):

* RFC 3339 with ``Z`` or an offset and 0-9 fractional digits: Kubernetes ``MicroTime`` (µs, Z),
  Pomerium zerolog ``time`` (seconds, *local offset*), Okta ``published`` and Google ``id.time``
  (ms, Z), Entra ``activityDateTime`` (100 ns, ``+00:00``), Keycloak ECS ``@timestamp`` (ns).
* Epoch milliseconds (Keycloak event ``time``, some shippers' CloudWatch ``timestamp``).
* Go layout ``2006/01/02 15:04:05`` (oauth2-proxy), which has no zone.

A timestamp without a zone is read in ``naive_offset`` (``correlation.proxy_utc_offset``, e.g.
``"+02:00"``) when that is set, else as UTC.

Failure: every parser raises :class:`TimestampError` (a ``ValueError``) naming the value; the
normalizers turn it into a ``bad_timestamp`` quarantine record, so one bad clock never stops a run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Final

from ztaudit.core.errors import ConfigError

__all__ = [
    "TimestampError",
    "parse_epoch",
    "parse_go_layout",
    "parse_offset",
    "parse_rfc3339",
    "parse_timestamp",
    "to_utc",
]

# RFC 3339 / ISO 8601 subset: date, 'T' or space, time with optional seconds and fraction, optional
# zone. Stricter than datetime.fromisoformat, which also takes week dates and bare years.
_RFC3339: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,12}))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_GO_LAYOUT: Final = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})$")
_OFFSET: Final = re.compile(r"^(?:UTC|GMT)?([+-])(\d{2}):?(\d{2})?$")

# Epoch values are accepted between 2000-01-01 and 2100-01-01, whatever their unit.
_EPOCH_MIN_S: Final = 946_684_800
_EPOCH_MAX_S: Final = 4_102_444_800


class TimestampError(ValueError):
    """A timestamp that cannot be read. ``value`` is the offending input (repr-truncated)."""

    def __init__(self, value: Any, why: str) -> None:
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"bad timestamp {shown}: {why}")


@lru_cache(maxsize=64)
def parse_offset(offset: str) -> timezone:
    """``"+02:00"``, ``"-0430"``, ``"+02"``, ``"Z"``, ``"UTC"`` or ``""`` (UTC) -> a fixed timezone.

    Called when a config value or a log line names a zone. Raises :class:`TimestampError` for
    anything else, so a typo in ``correlation.proxy_utc_offset`` is reported, not ignored.
    """
    s = offset.strip()
    if s in ("", "Z", "z", "UTC", "GMT", "+00:00", "-00:00"):
        return UTC
    m = _OFFSET.match(s)
    if not m:
        raise TimestampError(offset, "not a UTC offset like +02:00")
    sign, hh, mm = m.group(1), int(m.group(2)), int(m.group(3) or 0)
    if hh > 23 or mm > 59:
        raise TimestampError(offset, "offset out of range")
    delta = timedelta(hours=hh, minutes=mm)
    return timezone(-delta if sign == "-" else delta)


def to_utc(dt: datetime, naive_offset: str = "") -> datetime:
    """``dt`` in UTC; a naive ``dt`` is first placed in ``naive_offset`` (default UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=parse_offset(naive_offset))
    return dt.astimezone(UTC)


def parse_rfc3339(value: str, naive_offset: str = "") -> datetime:
    """Parse RFC 3339 (``2023-08-07T09:48:03-04:00``, ``...T14:30:45.987654321Z``) to UTC µs.

    Fractions beyond microseconds (Entra's 100 ns, Keycloak's ns) are truncated. Seconds may be
    absent (``HH:MM``). A value without a zone is read in ``naive_offset`` (else UTC).
    """
    m = _RFC3339.match(value.strip())
    if not m:
        raise TimestampError(value, "not RFC 3339")
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    zone = m.group(8)
    leap = second == 60  # RFC 3339 allows a leap second; fold it into the next second
    try:
        tz = parse_offset(zone) if zone else parse_offset(naive_offset)
        dt = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=tz)
    except ValueError as exc:
        if isinstance(exc, TimestampError):
            raise
        raise TimestampError(value, str(exc)) from None
    if leap:
        dt += timedelta(seconds=1)
    return dt.astimezone(UTC)


def parse_go_layout(value: str, naive_offset: str = "") -> datetime:
    """Parse Go's ``2006/01/02 15:04:05`` (oauth2-proxy, docs/proxy-and-idp.md §2.2) to UTC.

    The layout has no zone: it is read in ``naive_offset`` (else UTC).
    """
    m = _GO_LAYOUT.match(value.strip())
    if not m:
        raise TimestampError(value, "not in the layout 2006/01/02 15:04:05")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=parse_offset(naive_offset))
    except TimestampError:
        raise
    except ValueError as exc:
        raise TimestampError(value, str(exc)) from None
    return dt.astimezone(UTC)


def parse_epoch(value: float | int | str, unit: str = "auto") -> datetime:
    """Epoch seconds / ms / µs / ns to UTC.

    ``unit`` is ``"s"``, ``"ms"``, ``"us"``, ``"ns"`` or ``"auto"`` (chosen by magnitude: a
    plausible date between 2000 and 2100 in exactly one unit). Booleans and non-finite values
    are rejected.
    """
    if isinstance(value, bool):
        raise TimestampError(value, "a boolean is not a time")
    if isinstance(value, str):
        try:
            num: float | int = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise TimestampError(value, "not a number") from None
    else:
        num = value
    if num != num or num in (float("inf"), float("-inf")):
        raise TimestampError(value, "not finite")
    scales = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
    if unit == "auto":
        for name in ("s", "ms", "us", "ns"):
            if _EPOCH_MIN_S <= num / scales[name] < _EPOCH_MAX_S:
                unit = name
                break
        else:
            raise TimestampError(value, "epoch value outside 2000..2100 in any unit")
    if unit not in scales:
        raise TimestampError(value, f"unknown epoch unit {unit!r}")
    if isinstance(num, int):
        # integer arithmetic: no float rounding for ns values
        micros = num * 1_000_000 // scales[unit]
    else:
        micros = int(num * 1_000_000 / scales[unit])
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    except OverflowError:
        raise TimestampError(value, "out of range") from None


def parse_timestamp(value: Any, naive_offset: str = "") -> datetime:
    """Any supported form to UTC µs: ``datetime``, epoch number, RFC 3339 or Go-layout string.

    Called by normalizers for a field whose form varies between producers. Raises
    :class:`TimestampError` for ``None``, empty strings and anything unreadable.
    """
    if isinstance(value, datetime):
        return to_utc(value, naive_offset)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return parse_epoch(value)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise TimestampError(value, "empty")
        if s[0].isdigit() and s.lstrip("-").replace(".", "", 1).isdigit():
            return parse_epoch(s)
        if _GO_LAYOUT.match(s):
            return parse_go_layout(s, naive_offset)
        return parse_rfc3339(s, naive_offset)
    raise TimestampError(value, f"unsupported type {type(value).__name__}")


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """Parse an absolute ISO-8601 time or a relative duration (``90m``, ``24h``, ``7d``, ``2w``).

    Relative values count back from ``now`` (default: the current UTC time). A time without a
    zone is read as UTC. Returns a tz-aware UTC datetime. Raises :class:`ConfigError` (exit code
    2) naming ``option`` for anything else.
    """
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value)
    if m:
        try:
            return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
        except (OverflowError, ValueError):  # beyond datetime's range (year 1..9999)
            raise ConfigError(option, f"{value!r} reaches before year 1",
                              fix="use a shorter duration, or an ISO-8601 time") from None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(option, f"{value!r} is not a time",
                          fix="use ISO-8601 (2026-11-26, 2026-11-26T10:00:00Z) or a duration like "
                              "24h, 7d, 90m") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)

"""Time and identifier helpers for the generator: integer microseconds, fast string formatting.

Every instant inside the generator is an ``int`` of microseconds since the Unix epoch (UTC). The
three log families format time differently, and the generator reproduces each exactly:

* Kubernetes audit: RFC 3339, UTC, microseconds, ``2026-11-02T14:03:07.123456Z``
  (docs/kubernetes-audit.md §2, ``requestReceivedTimestamp``/``stageTimestamp``).
* Pomerium (zerolog default): RFC 3339 with **second** precision and the process's **local**
  offset, ``2026-11-02T09:03:07-05:00`` (docs/proxy-and-idp.md §1.1).
* Okta System Log ``published``: milliseconds, UTC, ``2026-11-02T14:03:07.123Z`` (§3.1).

Identifiers that must be stable across the run (service-account UIDs, pod UIDs, token JTIs per
rotation, certificate hashes) are derived by hashing the seed with a name, so the world can be
rebuilt lazily without storing state. Per-event identifiers (``auditID``, request ids) come from
the seeded ``random.Random`` stream, which is faster.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

US = 1_000_000
MINUTE = 60 * US
HOUR = 3600 * US
DAY = 86400 * US

_EPOCH = date(1970, 1, 1)
_DAY_CACHE: dict[int, str] = {}
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def day_str(day_index: int) -> str:
    """``YYYY-MM-DD`` for a day number since the epoch (cached; a run touches few days)."""
    s = _DAY_CACHE.get(day_index)
    if s is None:
        s = (_EPOCH + timedelta(days=day_index)).isoformat()
        _DAY_CACHE[day_index] = s
    return s


def parse_day(text: str) -> int:
    """Microseconds at 00:00 UTC of ``YYYY-MM-DD``."""
    d = date.fromisoformat(text)
    return (d - _EPOCH).days * DAY


def iso_us(t: int) -> str:
    """Audit-log MicroTime: ``2026-11-02T14:03:07.123456Z``."""
    s, us = divmod(t, US)
    d, r = divmod(s, 86400)
    h, r = divmod(r, 3600)
    m, sec = divmod(r, 60)
    return f"{day_str(d)}T{h:02d}:{m:02d}:{sec:02d}.{us:06d}Z"


def iso_ms(t: int) -> str:
    """Okta ``published``: ``2026-11-02T14:03:07.123Z``."""
    s, us = divmod(t, US)
    d, r = divmod(s, 86400)
    h, r = divmod(r, 3600)
    m, sec = divmod(r, 60)
    return f"{day_str(d)}T{h:02d}:{m:02d}:{sec:02d}.{us // 1000:03d}Z"


def iso_local_seconds(t: int, offset_minutes: int) -> str:
    """zerolog's default ``time``: whole seconds (truncated, not rounded) in a local offset."""
    s = t // US + offset_minutes * 60
    d, r = divmod(s, 86400)
    h, r = divmod(r, 3600)
    m, sec = divmod(r, 60)
    sign = "-" if offset_minutes < 0 else "+"
    oh, om = divmod(abs(offset_minutes), 60)
    return f"{day_str(d)}T{h:02d}:{m:02d}:{sec:02d}{sign}{oh:02d}:{om:02d}"


def to_datetime(t: int) -> datetime:
    """A tz-aware UTC datetime (for labels and the manifest, not the hot path)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t)


def weekday(t: int) -> int:
    """Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return (t // DAY + 3) % 7


def uuid_from_int(n: int) -> str:
    """Format a 128-bit integer as a version-4-looking UUID string."""
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


class Namer:
    """Stable identifiers derived from the seed and a name (no state to keep or replay)."""

    def __init__(self, seed: int) -> None:
        self._salt = f"ztaudit-generate/{seed}/".encode()

    def _digest(self, *parts: object, size: int = 16) -> bytes:
        h = hashlib.blake2b(self._salt, digest_size=size)
        h.update("/".join(str(p) for p in parts).encode())
        return h.digest()

    def uuid(self, *parts: object) -> str:
        """A UUID for an object UID, a token JTI, a session id."""
        return uuid_from_int(int.from_bytes(self._digest(*parts), "big"))

    def sha256_hex(self, *parts: object) -> str:
        """64 lowercase hex digits, the shape of an ``X509SHA256=`` credential id (§3)."""
        return self._digest(*parts, size=32).hex()

    def hex(self, n: int, *parts: object) -> str:
        """``n`` hex digits (ReplicaSet hashes, git commit abbreviations)."""
        return self._digest(*parts, size=max(1, (n + 1) // 2)).hex()[:n]

    def b62(self, n: int, *parts: object) -> str:
        """``n`` base-62 characters (Okta ids ``00u…``, ``externalSessionId``)."""
        v = int.from_bytes(self._digest(*parts, size=32), "big")
        out = []
        for _ in range(n):
            v, r = divmod(v, 62)
            out.append(_B62[r])
        return "".join(out)

    def pod_suffix(self, *parts: object) -> str:
        """The 5-character random suffix of a generated pod name (bcdfghjklmnpqrstvwxz2456789)."""
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        v = int.from_bytes(self._digest(*parts, size=8), "big")
        out = []
        for _ in range(5):
            v, r = divmod(v, len(alphabet))
            out.append(alphabet[r])
        return "".join(out)

    def unit(self, *parts: object) -> float:
        """A stable float in [0, 1)."""
        return int.from_bytes(self._digest(*parts, size=8), "big") / 2**64

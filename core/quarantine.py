"""Quarantine: a record that could not be read travels as a :class:`Rejected` value to ``LAKE/quarantine``.

docs/design.md: "A bad record is a value, not an exception". Its raw bytes must already be scrubbed of
secrets (``ztaudit.pipeline.redact``) by whoever made it; the sink keeps at most
:data:`QUARANTINE_RAW_CAP` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Raw bytes kept per quarantined record: enough to see what it was, bounded so a flood of
#: oversized records cannot fill the disk.
QUARANTINE_RAW_CAP = 64 * 1024


class Reason(StrEnum):
    """Why a record went to quarantine. The values are what users see in reports."""

    INVALID_JSON = "invalid_json"
    NOT_UTF8 = "not_utf8"
    OVERSIZED = "oversized"
    UNKNOWN_SHAPE = "unknown_shape"
    WRONG_TYPE = "wrong_type"
    TRUNCATED = "truncated"
    EMPTY = "empty"
    MISSING_FIELD = "missing_field"
    BAD_TIMESTAMP = "bad_timestamp"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be normalized, with why and where."""

    origin: str
    reason: Reason
    detail: str
    raw: bytes
    source_guess: str | None = None
    raw_size: int = -1

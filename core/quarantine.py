"""Quarantine: a record that could not be read travels as a :class:`Rejected` value to ``LAKE/quarantine``.

docs/design.md: "A bad record is a value, not an exception". Its raw bytes must be scrubbed of
secrets (``ztaudit.pipeline.redact``, docs/redaction.md §4) before it reaches the sink: rejects made
inside ``process()`` are scrubbed there in one batch (``redact_rejects``), rejects made elsewhere
(the file readers) where they are made. The sink keeps at most :data:`QUARANTINE_RAW_CAP` bytes.
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


class IgnoreReason(StrEnum):
    """Why a valid record was **ignored**: it is well-formed data, just not data ztaudit reads.

    Ignored records are counted per (source, reason) and never stored (they are not bad data, so
    they do not belong in quarantine; docs/design.md §1). The values are what users see in the
    ingest summary and the consumer's metrics file.
    """

    #: a record of another service: a Cloud Logging entry whose ``protoPayload.serviceName`` is
    #: not ``k8s.io``, a Teleport session of another protocol (``proto`` ``ssh``, ``db``, ...)
    NOT_KUBERNETES = "not_kubernetes"
    #: a log line of a known producer that is not an event: Keycloak server lines, AKS
    #: diagnostic records of other categories, EKS control-plane messages that are not audit Events
    NOT_AN_EVENT = "not_an_event"
    #: an event of a known producer that ztaudit has no use for (Teleport ``session.start``, ...)
    UNUSED_EVENT_TYPE = "unused_event_type"
    #: an envelope that holds nothing: ``[]``, an EventList without items, ``{"records": []}``
    EMPTY_ENVELOPE = "empty_envelope"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be normalized, with why and where."""

    origin: str
    reason: Reason
    detail: str
    raw: bytes
    source_guess: str | None = None
    raw_size: int = -1

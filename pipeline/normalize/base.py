"""The normalizer contract, shared by every source kind (the registry is :mod:`.registry`).


* :meth:`Normalizer.unwrap` is called on each decoded JSON value *before* any field is mapped. It
  returns the inner records this normalizer recognises (an ``EventList``'s items, a GKE
  ``protoPayload`` rebuilt as an Event, an Okta event, ...) each with envelope metadata (for
  example the cluster name an envelope carries), or ``None`` when the value is not this kind.
  That answer is also how the source kind is detected when the user did not name it.
* :meth:`Normalizer.parse_text` does the same for a non-JSON line (oauth2-proxy request lines,
  Keycloak jboss-logging lines); ``None`` when it is not this kind.
* :meth:`Normalizer.ignore` is called on a JSON value or text line that *no* normalizer's
  ``unwrap``/``parse_text`` claimed: a reason (:class:`~ztaudit.core.quarantine.IgnoreReason`) when it
  is a valid record of a producer this normalizer knows but not one ztaudit reads (a Teleport
  ``session.start``, a Keycloak server line, a non-Kubernetes Cloud Logging entry), else ``None``
  (then it is quarantined ``unknown_shape``). Inside an envelope, ``unwrap`` marks such an entry
  with :attr:`Unwrapped.ignored` instead.
* :meth:`Normalizer.to_table` maps recognised records to a table of this kind's schema. A record
  that cannot be mapped becomes a :class:`~ztaudit.core.quarantine.Rejected` value with a named
  reason; it never raises for bad input.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Protocol

import pyarrow as pa

from ztaudit.core.proxy_hosts import host_map
from ztaudit.core.quarantine import IgnoreReason, Rejected

#: The valid range of an event's time, one rule for every source kind and both paths of
#: ``process()`` (the SQL mapping reads the same constants). Earlier than 2000-01-01 is a zero or
#: garbage clock (Kubernetes, Okta, Keycloak, Pomerium and Teleport all postdate it; the epoch
#: parser in ``core/timeutil.py`` uses the same lower bound). Later than the ingestion time plus
#: :data:`EVENT_TIME_MAX_AHEAD` cannot have happened yet: a day covers the largest UTC offset
#: (+14:00, so a local time misread as UTC is at most 14 h ahead) and ordinary clock skew. An
#: event outside the range is quarantined ``bad_timestamp``: stored, it would create ``dt=0000-...``
#: or far-future partitions and sort before or after every real event.
EVENT_TIME_MIN: Final = datetime(2000, 1, 1, tzinfo=UTC)
EVENT_TIME_MAX_AHEAD: Final = timedelta(days=1)


def event_time_problem(when: datetime, ingested_at: datetime | None) -> str | None:
    """Why ``when`` is not a plausible event time (see :data:`EVENT_TIME_MIN`), or None.

    Called by the per-record builders after a time parsed; the k8s SQL mapping applies the same
    bounds. ``ingested_at`` None (a library caller without a context time) means now.
    """
    if when < EVENT_TIME_MIN:
        return f"{when.isoformat()} is before {EVENT_TIME_MIN.date().isoformat()}"
    latest = (ingested_at or datetime.now(UTC)) + EVENT_TIME_MAX_AHEAD
    if when > latest:
        return f"{when.isoformat()} is more than {EVENT_TIME_MAX_AHEAD.days} day(s) after ingestion"
    return None


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """One recognised record and what its envelope said about it.

    ``ignored`` set: an entry of an envelope this normalizer claimed that is valid but not for
    ztaudit (``record`` is then not mapped; process() counts it per source and reason). ``text``:
    the record's original JSON text when it is the whole input record, so the k8s SQL mapping
    reads the very bytes the columnar fast path would have read (duplicate keys, number forms).
    """

    record: Mapping[str, Any]
    cluster: str | None = None
    form: str = "raw"  # raw | eventlist | gke | aks | eks | sekoia-like | text ...
    ignored: IgnoreReason | None = None
    text: str | None = None


def ignored_entry(reason: IgnoreReason, form: str = "raw") -> Unwrapped:
    """An envelope entry that is counted as ignored with ``reason`` (see :class:`Unwrapped`)."""
    return Unwrapped(record={}, form=form, ignored=reason)


@dataclass(frozen=True)
class NormalizeContext:
    """Settings a normalizer needs: default cluster, ingestion time, proxy settings."""

    cluster: str | None = None
    ingested_at: datetime | None = None
    #: impersonation.proxy_hosts; stored keyed by :func:`~ztaudit.core.proxy_hosts.host_key` (a host
    #: the config spells twice keeps its first cluster; config validation refuses such a config)
    proxy_hosts: Mapping[str, str] = field(default_factory=dict)
    proxy_utc_offset: str = ""
    #: correlation.idp_utc_offset: for identity-provider times without a zone (Keycloak text lines)
    idp_utc_offset: str = ""
    #: identities.system_user_patterns (regexes); empty = the config defaults. Used by k8s_audit's
    #: actor_kind (control-plane components and cloud agents are ``system``).
    system_user_patterns: Sequence[str] = ()
    #: correlation.session_extra_key: the audit ``user.extra`` key whose first value is the proxy
    #: session id (k8s_audit ``proxy_session_id``, tier B); empty = off.
    session_extra_key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "proxy_hosts", host_map(self.proxy_hosts)[0])


class Normalizer(Protocol):
    """One source kind's normalizer; ``source`` is its id (registry key, lake folder, table)."""

    source: ClassVar[str]

    def unwrap(self, value: Any) -> list[Unwrapped] | None:
        """Called on every decoded JSON value: its records of this kind, or None if it is not.

        Must never raise and must not claim another kind's records (source detection relies on it).
        """
        ...

    def parse_text(self, line: str) -> list[Unwrapped] | None:
        """Called on every line that is not JSON: its records of this kind, or None."""
        ...

    def ignore(self, value: Any, text: str | None) -> IgnoreReason | None:
        """Called on a JSON ``value`` (``text`` None) or a text line that no normalizer claimed:
        why it is a valid record that ztaudit does not read, or None. Must never raise."""
        ...

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Called once per batch with the recognised records and their origins.

        Returns a table conformed to this kind's schema and the records that could not be mapped,
        each a :class:`~ztaudit.core.quarantine.Rejected` with a named reason. Never raises for
        bad input.
        """
        ...

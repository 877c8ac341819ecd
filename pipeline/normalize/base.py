"""The normalizer contract, shared by every source kind (the registry is :mod:`.registry`).


* :meth:`Normalizer.unwrap` is called on each decoded JSON value *before* any field is mapped. It
  returns the inner records this normalizer recognises (an ``EventList``'s items, a GKE
  ``protoPayload`` rebuilt as an Event, an Okta event, ...) each with envelope metadata (for
  example the cluster name an envelope carries), or ``None`` when the value is not this kind.
  That answer is also how the source kind is detected when the user did not name it.
* :meth:`Normalizer.parse_text` does the same for a non-JSON line (oauth2-proxy request lines,
  Keycloak jboss-logging lines); ``None`` when it is not this kind.
* :meth:`Normalizer.to_table` maps recognised records to a table of this kind's schema. A record
  that cannot be mapped becomes a :class:`~ztaudit.core.quarantine.Rejected` value with a named
  reason; it never raises for bad input.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from ztaudit.core.quarantine import Rejected


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """One recognised record and what its envelope said about it."""

    record: Mapping[str, Any]
    cluster: str | None = None
    form: str = "raw"  # raw | eventlist | gke | aks | eks | sekoia-like | text ...


@dataclass(frozen=True)
class NormalizeContext:
    """Settings a normalizer needs: default cluster, ingestion time, proxy settings."""

    cluster: str | None = None
    ingested_at: datetime | None = None
    proxy_hosts: Mapping[str, str] = field(default_factory=dict)
    proxy_utc_offset: str = ""
    #: identities.system_user_patterns (regexes); empty = the config defaults. Used by k8s_audit's
    #: actor_kind (control-plane components and cloud agents are ``system``).
    system_user_patterns: Sequence[str] = ()


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

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """Called once per batch with the recognised records and their origins.

        Returns a table conformed to this kind's schema and the records that could not be mapped,
        each a :class:`~ztaudit.core.quarantine.Rejected` with a named reason. Never raises for
        bad input.
        """
        ...

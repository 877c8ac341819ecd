"""Teleport audit events: which ones ztaudit reads, and which valid ones it ignores.

Teleport writes one JSON object per audit event with ``event`` (the type), ``code`` (``T3009I``,
``TLK00I``, ...), ``time`` and ``uid`` (gravitational/teleport ``api/proto/teleport/legacy/types/
events/events.proto``; docs/proxy-and-idp.md §2.1). ``proxy_decision`` reads ``kube.request`` and
Kubernetes ``exec`` sessions (``proto: kube``); ``idp_event`` reads locks and user deletions.
Every other Teleport event is valid but not for ztaudit: :func:`ignore_reason` names why, so it
is counted as ignored instead of quarantined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ztaudit.core.quarantine import IgnoreReason

#: Teleport event types the ``proxy_decision`` normalizer maps (``exec`` only with ``proto: kube``).
PROXY_EVENTS: Final = frozenset({"kube.request", "exec"})
#: Teleport event types the ``idp_event`` normalizer maps.
IDP_EVENTS: Final = frozenset({"lock.created", "lock.deleted", "user.delete"})


def is_teleport_event(v: Any) -> bool:
    """A Teleport audit event: a string ``event`` and ``code`` and a ``time`` or ``uid``."""
    return (isinstance(v, Mapping) and isinstance(v.get("event"), str) and isinstance(v.get("code"), str)
            and ("time" in v or "uid" in v))


def is_kube_exec(v: Mapping[str, Any]) -> bool:
    """A Teleport ``exec`` session against a Kubernetes pod (``proto: kube``), a proxy decision."""
    return v.get("event") == "exec" and v.get("proto") == "kube"


def ignore_reason(v: Any) -> IgnoreReason | None:
    """Why a Teleport event that no normalizer claimed is ignored, or None (not Teleport, or a
    type ztaudit reads: then it is quarantined if it could not be read)."""
    if not is_teleport_event(v):
        return None
    event = v["event"]
    if event == "exec" and v.get("proto") != "kube":
        return IgnoreReason.NOT_KUBERNETES  # an SSH or database command, not a Kubernetes request
    if event in PROXY_EVENTS or event in IDP_EVENTS:
        return None
    return IgnoreReason.UNUSED_EVENT_TYPE

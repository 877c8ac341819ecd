"""The one registry of detectors, keyed by the id users see (docs/design.md, "Detector ids").

An explicit dict of id -> detector class, imported directly: a renamed or missing detector fails at
import, in every test, instead of quietly dropping out of ``ztaudit detect``. scikit-learn is
imported only when the reach detector runs (``reach`` and ``reach_scoring`` import :mod:`.ml` inside
their scoring steps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ztaudit.core.names import UnknownName, did_you_mean
from ztaudit.detectors.base import Detector
from ztaudit.detectors.credential_detectors import LegacyToken, OffCluster, Shared, Stale
from ztaudit.detectors.impersonation import ProxyBypass, UnapprovedImpersonator, Unbrokered, Unobserved
from ztaudit.detectors.impersonation_rights import UnapprovedRight
from ztaudit.detectors.reach import AnomalousReach
from ztaudit.detectors.revocation import NotEnforced
from ztaudit.detectors.revocation_stream import StreamSurvived

DETECTORS: Final[dict[str, type[Detector]]] = {
    "impersonation.proxy_bypass": ProxyBypass,
    "impersonation.unobserved": Unobserved,
    "impersonation.unbrokered": Unbrokered,
    "impersonation.unapproved_impersonator": UnapprovedImpersonator,
    "impersonation.unapproved_right": UnapprovedRight,
    "revocation.not_enforced": NotEnforced,
    "revocation.stream_survived": StreamSurvived,
    "reach.anomalous": AnomalousReach,
    "credential.stale": Stale,
    "credential.legacy_token": LegacyToken,
    "credential.shared": Shared,
    "credential.off_cluster": OffCluster,
}


def get(detector_id: str) -> Detector:
    """A new instance of the detector registered as ``detector_id``. KeyError names the valid ids."""
    try:
        cls = DETECTORS[detector_id]
    except KeyError:
        raise KeyError(f"unknown detector {detector_id!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return cls()


def families() -> list[str]:
    """The detector families (the part of each id before the dot: ``credential``, ``reach``...)."""
    return list(dict.fromkeys(d.split(".", 1)[0] for d in DETECTORS))


def resolve(patterns: Iterable[str]) -> list[str]:
    """The registered detector ids that ``patterns`` select, in registry order, each once.

    The one resolver of ``--detector`` for ``ztaudit detect`` and ``ztaudit report findings``, called
    before anything runs. A pattern is an id (``credential.stale``) or a family, with or without
    ``.``/``.*`` (``credential``, ``credential.``, ``credential.*`` select every ``credential.*``
    detector); case does not matter. A pattern that selects nothing raises
    :class:`~ztaudit.core.names.UnknownName` (exit 2) naming the nearest ids and families.
    """
    out: dict[str, None] = {}
    for raw in patterns:
        p = raw.strip().lower()
        p = p[:-1] if p.endswith("*") else p
        p = p.rstrip(".")
        hits = [d for d in DETECTORS if d == p or d.startswith(p + ".")] if p else []
        if not hits:
            raise UnknownName(f"unknown detector {raw!r}{did_you_mean(raw, [*families(), *DETECTORS])}",
                              fix="use a detector id or family (e.g. credential or credential.* for every "
                                  f"credential detector): {', '.join([*families(), *DETECTORS])}")
        out.update(dict.fromkeys(hits))
    return list(out)

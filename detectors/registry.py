"""The one registry of detectors, keyed by the id users see (docs/design.md, "Detector ids").

An explicit dict of id -> detector class, imported directly: a renamed or missing detector fails at
import, in every test, instead of quietly dropping out of ``ztaudit detect``. scikit-learn is
imported only when the reach detector runs (``reach`` and ``reach_scoring`` import :mod:`.ml` inside
their scoring steps).
"""

from __future__ import annotations

from typing import Final

from ztaudit.detectors.base import Detector
from ztaudit.detectors.credential_detectors import LegacyToken, OffCluster, Shared, Stale
from ztaudit.detectors.impersonation import ProxyBypass, UnapprovedImpersonator, Unbrokered, Unobserved
from ztaudit.detectors.reach import AnomalousReach
from ztaudit.detectors.revocation import NotEnforced

DETECTORS: Final[dict[str, type[Detector]]] = {
    "impersonation.proxy_bypass": ProxyBypass,
    "impersonation.unobserved": Unobserved,
    "impersonation.unbrokered": Unbrokered,
    "impersonation.unapproved_impersonator": UnapprovedImpersonator,
    "revocation.not_enforced": NotEnforced,
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

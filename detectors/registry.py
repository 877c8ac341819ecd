"""The one registry of detectors, keyed by the id users see (DESIGN.md, "Detector ids").

An explicit dict of id -> "module:ClassName", imported on use: grep-able, reviewable, and
``ztaudit detect --detector ID`` does not import scikit-learn unless a reach detector runs.
"""

from __future__ import annotations

import importlib

from .base import Detector

DETECTORS: dict[str, str] = {
    "impersonation.proxy_bypass": "ztaudit.detectors.impersonation:ProxyBypass",
    "impersonation.unobserved": "ztaudit.detectors.impersonation:Unobserved",
    "impersonation.unbrokered": "ztaudit.detectors.impersonation:Unbrokered",
    "impersonation.unapproved_impersonator": "ztaudit.detectors.impersonation:UnapprovedImpersonator",
    "revocation.not_enforced": "ztaudit.detectors.revocation:NotEnforced",
    "reach.anomalous": "ztaudit.detectors.reach:AnomalousReach",
    "credential.stale": "ztaudit.detectors.credentials:Stale",
    "credential.legacy_token": "ztaudit.detectors.credentials:LegacyToken",
    "credential.shared": "ztaudit.detectors.credentials:Shared",
    "credential.off_cluster": "ztaudit.detectors.credentials:OffCluster",
}


def get(detector_id: str) -> Detector:
    """Instantiate the detector registered as ``detector_id``. KeyError names the valid ids."""
    try:
        target = DETECTORS[detector_id]
    except KeyError:
        raise KeyError(f"unknown detector {detector_id!r}; known: {', '.join(sorted(DETECTORS))}") from None
    module_name, cls = target.split(":")
    obj = getattr(importlib.import_module(module_name), cls)()
    return obj  # type: ignore[no-any-return]


def available() -> list[str]:
    """Detector ids whose module is importable in this checkout."""
    out = []
    for did, target in DETECTORS.items():
        try:
            importlib.import_module(target.split(":")[0])
        except ModuleNotFoundError:
            continue
        out.append(did)
    return out

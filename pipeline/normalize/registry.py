"""The one registry of normalizers, keyed by the source id users see (docs/design.md, "Source kinds").

The source id is also the lake folder, the table name and the ``source`` column value. The order
is the detection order when a batch's source kind is not named: Kubernetes first (most volume, and
its envelopes are the most specific), then the others. Normalizers hold no per-batch state, so one
instance each serves every batch and thread.
"""

from __future__ import annotations

from typing import Final

from ztaudit.pipeline.normalize.base import Normalizer
from ztaudit.pipeline.normalize.idp_event import IdpEventNormalizer
from ztaudit.pipeline.normalize.k8s_audit import K8sAuditNormalizer
from ztaudit.pipeline.normalize.proxy_decision import ProxyDecisionNormalizer
from ztaudit.pipeline.normalize.rbac_snapshot import RbacSnapshotNormalizer

NORMALIZERS: Final[dict[str, Normalizer]] = {
    "k8s_audit": K8sAuditNormalizer(),
    "proxy_decision": ProxyDecisionNormalizer(),
    "idp_event": IdpEventNormalizer(),
    "rbac_snapshot": RbacSnapshotNormalizer(),
}


def get(source: str) -> Normalizer:
    """The normalizer for ``source``. KeyError names the valid source ids."""
    try:
        return NORMALIZERS[source]
    except KeyError:
        raise KeyError(f"unknown source kind {source!r}; known: {', '.join(NORMALIZERS)}") from None

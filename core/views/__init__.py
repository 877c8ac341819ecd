"""The lake's derived views: one literal dict, each view's SELECT in a ``.sql`` file beside this module.

:func:`ztaudit.core.lake.open_lake` creates them, in this order, after the base table views, on
every connection (``ztaudit sql``, reports, detectors, notebooks, ``ztaudit catalog``), so every
lake has the same views whatever was imported first. A view may read the base tables, the views
before it and the macros of :data:`ztaudit.core.lake.MACROS`; it takes no user input (values from a
user or a log are bound as parameters by the code that queries it).

``zt_*`` are the configuration as relations, with the built-in defaults;
:func:`ztaudit.detectors.correlate.install_config` points them at the configuration in force.
``proxy_audit_match`` and ``revocations`` are the detectors' correlation and revocation queries
without time bounds; a test holds each file equal to the SQL the detectors build
(``tests/core/test_views.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Final


@dataclass(frozen=True)
class View:
    """A derived view: its name, the ``.sql`` file holding its SELECT, and what a row is."""

    name: str
    description: str

    @property
    def sql(self) -> str:
        """The view's SELECT (read once from ``<name>.sql``)."""
        return _read(self.name)


@cache
def _read(name: str) -> str:
    return (files(__package__) / f"{name}.sql").read_text(encoding="utf-8")


_CONFIG = "Configuration as a relation ({}); built-in defaults until detect installs the config in force."

#: name -> view, in creation order (a view reads only tables and the views above it).
VIEWS: Final[dict[str, View]] = {v.name: v for v in (
    View("k8s_requests", "One row per Kubernetes API request (most complete stage of each (cluster, audit_id, "
                         "request_received_at))."),
    View("rbac_grant", "RBAC grants (one row per subject × rule × binding) from rbac_snapshot ingests."),
    View("zt_approved_impersonators", _CONFIG.format("zt_approved_impersonators")),
    View("zt_proxy_hosts", _CONFIG.format("zt_proxy_hosts")),
    View("zt_correlation_settings", _CONFIG.format("zt_correlation_settings")),
    View("proxy_audit_match", "Proxy decisions paired with the impersonated audit requests they caused (tier A "
                              "exact id, tier C composite key + time window, multiset); side = both | proxy (no "
                              "audit request) | audit (no decision)."),
    View("revocations", "Revocations seen in the IdP log (is_revocation; Keycloak disables inferred from their "
                        "REFRESH_TOKEN_ERROR 'User disabled' confirmation, inferred_from) and in the audit log "
                        "(deleted service accounts, legacy-token secrets, role bindings), one row per logged line "
                        "(report revocation folds duplicates); subject and kind say what was cut."),
)}

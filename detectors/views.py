"""DuckDB views the impersonation and revocation checks add to the catalog.

Imported by ``catalog.connect`` (``VIEW_PROVIDERS``), so every connection — ``ztaudit sql``,
reports, notebooks — has them. They read the built-in default configuration; ``detect`` and the
report functions call :func:`ztaudit.detectors.correlate.install_config` to point the ``zt_*``
config views at the configuration in force (the dependent views re-bind on each query).

* ``zt_approved_impersonators`` (cluster, username), ``zt_proxy_hosts`` (host, cluster),
  ``zt_correlation_settings``: the configuration as relations.
* ``proxy_audit_match``: proxy decisions paired with audit requests (see ``correlate``).
* ``revocations``: every revocation seen in the IdP log or the audit log (see ``revocation``).
"""

from __future__ import annotations

from ztaudit.pipeline.catalog import register_view
from ztaudit.pipeline.config import Config

from . import correlate, revocation

for _name, _sql in correlate.default_config_view_sql(Config()).items():
    register_view(_name, f"Configuration as a relation ({_name}); defaults until detect installs the "
                  "config in force.", _sql)

register_view("proxy_audit_match", correlate.VIEW_DESCRIPTION, correlate.view_sql())
register_view("revocations", revocation.REVOCATIONS_DESCRIPTION, revocation.REVOCATIONS_SQL)

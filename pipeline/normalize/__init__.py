"""Normalizers: bytes decoded to JSON (or text lines) -> rows of one source kind's table.

:mod:`.base` is the contract every normalizer follows, :mod:`.registry` the one registry keyed by
the source id, and one module per source kind (``k8s_audit``, ``proxy_decision``, ``idp_event``,
``rbac_snapshot``); :mod:`.rowmap` is the record-mapping loop the per-record normalizers share.
"""

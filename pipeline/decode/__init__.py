"""Decoding: raw record bytes to JSON values or text, and envelope unwrapping.

``values`` classifies one raw record (size cap, UTF-8, empty, JSON, truncated JSON, text) and is
called by :func:`ztaudit.pipeline.process.process` on every record the columnar fast path did not
take. ``k8s_envelopes`` rebuilds Kubernetes audit Events from the envelopes clouds and webhooks
wrap them in; it is called by the ``k8s_audit`` normalizer's ``unwrap``.
"""

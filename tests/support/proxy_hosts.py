"""Proxy route hosts and their keys (core/proxy_hosts.py), for the DuckDB and the Spark tests alike."""

from __future__ import annotations

#: (logged or configured host, its key): tests/core/test_proxy_hosts.py, and on Spark
#: tests/detectors/test_spark_dialect.py.
CASES = [
    ("k8s.example.com", "k8s.example.com"),
    ("K8S.Example.COM:443", "k8s.example.com"),
    ("[::1]:6443", "[::1]"),          # cut at the first colon it was "["
    ("[2001:DB8::7]", "[2001:db8::7]"),
    ("fe80::1", "fe80::1"),           # bare IPv6: no port possible, kept whole
    ("10.0.0.5:6443", "10.0.0.5"),
    ("[::1", "[::1"),                 # unclosed bracket: several colons, kept whole
    (" k8s-x ", " k8s-x "),           # blanks are kept: the SQL side sees the logged value as is
    ("K8S-\u0130", "K8S-\u0130"),     # not printable ASCII: kept as logged (engines lower İ differently)
    ("Host\u00a0:1", "Host\u00a0:1"),
    (":6443", ""),
    ("", ""),
]


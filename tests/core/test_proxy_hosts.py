"""core/proxy_hosts.py: one spelling of a proxy route host, the same in Python and in SQL (on Spark:
tests/detectors/test_spark_dialect.py)."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.proxy_hosts import CASES

from ztaudit.core.proxy_hosts import host_key, host_key_sql, host_map


@pytest.mark.parametrize(("host", "key"), CASES)
def test_host_key(host: str, key: str) -> None:
    assert host_key(host) == key
    assert host_key(key) == key  # idempotent: a key reduces to itself


HOSTS = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="abcXYZ09.-:[] \u0130\u212a", max_size=20),
    st.builds(lambda a, p: f"[{a}]" + (f":{p}" if p else ""), st.ip_addresses(v=6).map(str),
              st.one_of(st.none(), st.integers(1, 65535))),
    st.builds(lambda a, p: f"{a}:{p}", st.ip_addresses(v=4).map(str), st.integers(1, 65535)),
)


@given(st.lists(HOSTS, min_size=1, max_size=30))
def test_the_sql_is_the_python_function(hosts: list[str]) -> None:
    """The detectors' join key (SQL over the lake's ``host``) equals ingest's and the config's (Python)."""
    hosts = [h.replace("\x00", "") for h in hosts]  # a lake string holds no NUL (ingest drops it)
    con = duckdb.connect()
    got = con.execute(f"SELECT {host_key_sql('h')} FROM unnest($hosts) t(h)", {"hosts": hosts}).fetchall()
    assert [g for (g,) in got] == [host_key(h) for h in hosts]


def test_host_map_merges_spellings_and_names_problems() -> None:
    hosts, problems = host_map({"K8S-X:443": "a", "k8s-x": "a", "[::1]:6443": "v6"})
    assert hosts == {"k8s-x": "a", "[::1]": "v6"} and problems == []
    hosts, problems = host_map({"K8S-X:443": "a", "k8s-x:8443": "b", "": "c", "https://k8s-y": "d",
                                "k8s z": "e", "fe80::1": "f", "k8s-\u0130": "g", "*.example.com": "h",
                                "a" * 254: "i"})
    assert hosts == {"k8s-x": "a"}
    assert problems[0] == ("'K8S-X:443' and 'k8s-x:8443' are the same host (k8s-x) but name clusters 'a' and "
                           "'b': routes told apart only by port are not supported")
    assert [p.split(" is not")[0] for p in problems[1:]] == [
        "''", "'https://k8s-y'", "'k8s z'", "'fe80::1'", "'k8s-\u0130'", "'*.example.com'",
        f"{'a' * 60!r}... (254 characters)"]
    assert problems[-2].endswith("wildcards are not supported: list each host")
    assert host_map({"a" * 253 + ":443": "ok"})[1] == []

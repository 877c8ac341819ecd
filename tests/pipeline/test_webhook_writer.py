"""The webhook's write step and its settings, in process: split and merged batches give the same
lake rows as ``ingest`` of the same events (a hypothesis property), a re-send across midnight
leaves one quarantine copy, tokens and listen addresses are read as documented."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztaudit.core.errors import ConfigError
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.sources.webhook import ServeOptions, TokenTable, check_cluster_source, parse_listen
from ztaudit.pipeline.sources.webhook_writer import PostWriter, post_key


def event(i: int, stage: str) -> dict[str, Any]:
    ts = f"2026-11-0{1 + i % 2}T23:59:59.{i:06d}Z"  # two days
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"p-{i:04d}",
            "stage": stage, "requestURI": f"/api/v1/namespaces/n{i % 3}/secrets?token=hunter{i}", "verb": "get",
            "user": {"username": f"user{i % 4}@example.com", "groups": ["system:authenticated"]},
            "impersonatedUser": {"username": "bob@example.com"} if i % 5 == 0 else None,
            "sourceIPs": [f"10.0.0.{i}"], "objectRef": {"resource": "secrets", "namespace": f"n{i % 3}",
                                                        "name": f"s{i}", "apiVersion": "v1"},
            "responseStatus": {"code": 200 if i % 3 else 403},
            "requestReceivedTimestamp": ts, "stageTimestamp": ts}


#: 16 requests with two stages each: 32 Events
EVENTS: list[dict[str, Any]] = [event(i, s) for i in range(16) for s in ("RequestReceived", "ResponseComplete")]
COLUMNS_SQL = "* EXCLUDE (origin, ingested_at)"


def lake_rows(lake: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    try:
        return sorted(con.execute(f"SELECT {COLUMNS_SQL} FROM read_parquet('{lake}/k8s_audit/dt=*/*.parquet')")
                      .fetchall(), key=repr)
    finally:
        con.close()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The rows ``ztaudit ingest`` makes of the same Events (JSON lines, --cluster prod)."""
    d = tmp_path_factory.mktemp("ingest")
    src = d / "audit.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    ingest_paths([src], d / "lake", cluster="prod")
    got = lake_rows(d / "lake")
    assert len(got) == len(EVENTS)
    return got


def writer(lake: Path) -> PostWriter:
    return PostWriter(LakeSink(lake), NormalizeContext(cluster=None), 1 << 24)


def body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events},
                      separators=(",", ":")).encode()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_of=st.lists(st.integers(0, 5), min_size=len(EVENTS), max_size=len(EVENTS)),
       resend=st.lists(st.integers(0, 5), max_size=6), order=st.randoms(use_true_random=False),
       single=st.booleans())
def test_any_split_into_batches_and_any_resends_give_the_ingest_rows(
        ingested: list[tuple[Any, ...]], batch_of: list[int], resend: list[int], order: Any, single: bool) -> None:
    batches: dict[int, list[dict[str, Any]]] = {}
    for ev, b in zip(EVENTS, batch_of, strict=True):
        batches.setdefault(b, []).append(ev)
    posts = [body(evs) if not (single and len(evs) == 1) else json.dumps(evs[0]).encode()
             for evs in batches.values()]
    posts += [posts[k % len(posts)] for k in resend]  # the API server re-sends a batch whole
    order.shuffle(posts)
    with tempfile.TemporaryDirectory() as d:
        lake = Path(d) / "lake"
        w = writer(lake)
        for p in posts:
            res = w.write(p, "127.0.0.1", "prod")
            assert res.result.balanced() and not res.result.rejected
        assert lake_rows(lake) == ingested
        assert len(list(lake.glob("k8s_audit/dt=*/*.parquet"))) <= 2 * len(batches)


def test_a_resend_across_midnight_leaves_one_quarantine_copy(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    w = writer(lake)
    garbage = b'{"kind":"Pod"}'
    key = post_key("prod", garbage)
    for delta in (-1, 1):  # copies an earlier attempt left on the neighbouring days
        day = (datetime.now(UTC) + timedelta(days=delta)).strftime("%Y-%m-%d")
        stale = w.sink.path_for("quarantine", day, key)
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"PAR1 stale")
    res = w.write(garbage, "127.0.0.1", "prod")
    assert res.result.quarantined == 1
    files = sorted(lake.glob("quarantine/dt=*/*.parquet"))
    assert [f.name for f in files] == [f"{key}.parquet"]
    assert files[0].parent.name == f"dt={datetime.now(UTC):%Y-%m-%d}"


def test_the_cluster_is_the_callers_not_a_field_of_the_body(tmp_path: Path) -> None:
    """A shipper-style ``cluster`` field in a posted Event or EventList does not rename the rows:
    the cluster comes from the token (or --cluster), so one cluster's token cannot write another's."""
    w = writer(tmp_path / "lake")
    ev = {**event(1, "ResponseComplete"), "cluster": "other"}
    for posted in (json.dumps(ev).encode(), body([ev])[:-1] + b',"cluster":"other"}'):
        res = w.write(posted, "127.0.0.1", "prod")
        assert res.result.tables["k8s_audit"].column("cluster").to_pylist() == ["prod"]


def test_post_keys_are_deterministic_per_cluster_and_body() -> None:
    assert post_key("prod", b"x") == post_key("prod", b"x")
    assert len({post_key("prod", b"x"), post_key("staging", b"x"), post_key("prod", b"y"), post_key(None, b"x")}) == 4
    assert post_key("prod", b"x").startswith("webhook+")


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# comment\n\n" + "a" * 32 + ",prod\n" + " " + "b" * 32 + " \n")
    f.chmod(0o600)
    t = TokenTable.load(f)
    assert len(t) == 2 and not t.all_have_cluster
    assert t.lookup("a" * 32) == (True, "prod")
    assert t.lookup("b" * 32) == (True, None)
    assert t.lookup("a" * 31) == (False, None)
    assert "a" * 32 not in repr(vars(t))  # only digests are kept
    f.write_text("a" * 32 + ",prod\n" + "a" * 32 + ",staging\n")
    with pytest.raises(ConfigError, match="line 1 again") as err:
        TokenTable.load(f)
    assert "a" * 32 not in str(err.value)
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no token"):
        TokenTable.load(f)


def _opts(**kw: Any) -> ServeOptions:
    base: dict[str, Any] = dict(lake=Path("lake"), cluster=None, host="127.0.0.1", port=0, tls_cert=Path("c"),
                                tls_key=Path("k"), client_ca=None, token_file=None, max_body_bytes=4096,
                                max_concurrent=1)
    base.update(kw)
    return ServeOptions(**base)


def test_a_cluster_name_source_is_required(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("a" * 32 + ",prod\n")
    with pytest.raises(ConfigError, match="no way to authenticate"):
        check_cluster_source(_opts(cluster="prod"), None)
    with pytest.raises(ConfigError, match="client certificate"):
        check_cluster_source(_opts(client_ca=Path("ca")), None)
    check_cluster_source(_opts(token_file=f), TokenTable.load(f))  # every token names its cluster
    f.write_text("a" * 32 + "\n")
    with pytest.raises(ConfigError, match="name no cluster"):
        check_cluster_source(_opts(token_file=f), TokenTable.load(f))
    check_cluster_source(_opts(token_file=f, cluster="prod"), TokenTable.load(f))


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8443", "127.0.0.1", "host:99999", ":80"):
        with pytest.raises(ConfigError):
            parse_listen(bad)

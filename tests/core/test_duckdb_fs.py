"""DuckDB reads the lake's Parquet objects on S3 through ``ztaudit.core.duckdb_fs.attach`` (pyarrow's S3
client), with no DuckDB extension: httpfs is downloaded at run time, which an air-gapped machine cannot.

Every test reads from the real S3Proxy of the session (``s3proxy`` fixture). Where the bytes on the
wire matter (ranged reads, requests per object), the client goes through a counting relay
(``support.tcp_count``) so the figures are the server's, not the client's own account.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyarrow import fs
from support.s3proxy import REGION, S3Store
from support.tcp_count import CountingRelay

from ztaudit.core.duckdb_fs import attach

pytestmark = pytest.mark.s3

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def _events(n: int, offset: int = 0, seed: int = 0) -> pa.Table:
    """Shaped like the lake's audit rows: strings, a timestamp, ints."""
    rng = np.random.default_rng(seed)
    i = np.arange(offset, offset + n)
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    return pa.table({
        "audit_id": pa.array([f"a-{k:09d}" for k in i], pa.string()),
        "ts": pa.array([t0 + timedelta(milliseconds=int(k) * 37) for k in i], pa.timestamp("us", tz="UTC")),
        "actor": pa.array([f"user{k % 50}@example.com" for k in rng.integers(0, 10_000, n)], pa.string()),
        "verb": pa.array([VERBS[k % len(VERBS)] for k in i], pa.string()),
        "code": pa.array(np.where(i % 11 == 0, 403, 200), pa.int32()),
        "seq": pa.array(i, pa.int64()),
        # incompressible, so a column that is not read is bytes not fetched
        "payload": pa.array([rng.bytes(64).hex() for _ in range(n)], pa.string()),
    })


def _fs(s3proxy: S3Store, endpoint: str | None = None, secret: str | None = None) -> fs.S3FileSystem:
    return fs.S3FileSystem(access_key=s3proxy.access_key, secret_key=secret or s3proxy.secret_key,
                           endpoint_override=endpoint or s3proxy.endpoint, scheme="http", region=REGION,
                           force_virtual_addressing=False)


def _write(s3proxy: S3Store, table: pa.Table, name: str, files: int, **kw: object) -> list[str]:
    """``files`` objects ``<prefix>/k8s_audit/dt=2026-03-02/<n>.parquet``; their s3:// URIs."""
    s3 = s3proxy.pyarrow_fs()
    root = f"{s3proxy.prefix(name)}/k8s_audit/dt=2026-03-02"
    per = -(-table.num_rows // files)
    keys = []
    for n in range(files):
        key = f"{root}/{n:04d}-{name}.parquet"
        pq.write_table(table.slice(n * per, per), key, filesystem=s3, **kw)
        keys.append(key)
    return [f"s3://{k}" for k in keys]


def _files(uris: list[str]) -> str:
    return "[" + ", ".join(f"'{u}'" for u in uris) + "]"


def _connect(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """A connection that *would* auto-install and auto-load httpfs (DuckDB's defaults), from a local
    repository that does not have it: any attempt fails the query with "Failed to install ... httpfs"
    and would leave a file in the extension directory."""
    (tmp_path / "repo").mkdir()
    return duckdb.connect(config={"autoinstall_known_extensions": True, "autoload_known_extensions": True,
                                  "extension_directory": str(tmp_path / "ext"),
                                  "custom_extension_repository": str(tmp_path / "repo")})


def _assert_no_httpfs(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    [(installed, loaded)] = con.sql(
        "SELECT installed, loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchall()
    assert (installed, loaded) == (False, False)
    assert not [p for p in (tmp_path / "ext").rglob("*") if p.is_file()]


def test_without_attach_duckdb_wants_httpfs(s3proxy: S3Store, tmp_path: Path) -> None:
    # The control for every other test: the connection of _connect() does try httpfs for s3://, and fails.
    [uri] = _write(s3proxy, _events(10), "control", 1)
    con = _connect(tmp_path)
    with pytest.raises(duckdb.Error, match="httpfs"):
        con.sql(f"SELECT count(*) FROM read_parquet({_files([uri])})").fetchall()


def test_reads_the_same_rows_as_pyarrow(s3proxy: S3Store, tmp_path: Path) -> None:
    table = _events(30_000)
    uris = _write(s3proxy, table, "rows", 3)
    s3 = s3proxy.pyarrow_fs()
    expected = pa.concat_tables([pq.read_table(u.removeprefix("s3://"), filesystem=s3) for u in uris])

    con = _connect(tmp_path)
    attach(con, s3)
    got = con.sql(f"SELECT * FROM read_parquet({_files(uris)}) ORDER BY seq").to_arrow_table()
    assert got.num_rows == expected.num_rows == 30_000
    # DuckDB adds the hive partition column of the path (dt) and names UTC Etc/UTC.
    assert got.column_names == [*expected.column_names, "dt"]
    got = got.select(expected.column_names).cast(expected.schema)
    assert got.equals(expected.sort_by("seq"))
    [(rows, total, chars, first, last)] = con.sql(
        f"SELECT count(*), sum(seq * code), sum(length(actor) + length(payload)), min(ts), max(ts) "
        f"FROM read_parquet({_files(uris)})").fetchall()
    assert rows == expected.num_rows
    assert total == pc.sum(pc.multiply(expected["seq"], pc.cast(expected["code"], pa.int64()))).as_py()
    assert chars == (pc.sum(pc.utf8_length(expected["actor"])).as_py()
                     + pc.sum(pc.utf8_length(expected["payload"])).as_py())
    assert (first, last) == (pc.min(expected["ts"]).as_py(), pc.max(expected["ts"]).as_py())
    _assert_no_httpfs(con, tmp_path)


def test_projection_and_filter_are_ranged_reads(s3proxy: S3Store, tmp_path: Path) -> None:
    # One object, 8 row groups ordered by seq: a filter on seq keeps one of them, a projection two columns
    # of seven. What comes over the wire must be a small part of the object, not the object.
    table = _events(80_000, seed=3)
    [uri] = _write(s3proxy, table, "ranged", 1, row_group_size=10_000)
    size = s3proxy.pyarrow_fs().get_file_info(uri.removeprefix("s3://")).size
    relay = CountingRelay(s3proxy.endpoint)
    try:
        con = _connect(tmp_path)
        attach(con, _fs(s3proxy, endpoint=relay.endpoint))

        [(n,)] = con.sql(f"SELECT count(*) FROM read_parquet({_files([uri])})").fetchall()
        _, footer_bytes = relay.snapshot()
        assert n == 80_000
        assert footer_bytes < size * 0.05, (footer_bytes, size)

        relay.reset()
        rows = con.sql(f"SELECT verb, count(*) FROM read_parquet({_files([uri])}) "
                       "WHERE seq BETWEEN 40000 AND 49999 AND code = 403 GROUP BY verb ORDER BY verb").fetchall()
        requests, scanned = relay.snapshot()
    finally:
        relay.close()
    chosen = table.filter(pc.and_(pc.and_(pc.greater_equal(table["seq"], 40_000), pc.less_equal(table["seq"], 49_999)),
                                  pc.equal(table["code"], 403)))
    expected = sorted((v, chosen["verb"].to_pylist().count(v)) for v in set(chosen["verb"].to_pylist()))
    assert rows == expected and sum(c for _, c in rows) == chosen.num_rows > 0
    # seq, code and verb of one row group of eight: well under a tenth of the object (the payload column
    # alone is most of it); a whole-object download would be `size`.
    assert 0 < scanned < size * 0.1, (scanned, size)
    assert requests.get("GET", 0) >= 1
    _assert_no_httpfs(con, tmp_path)


def test_a_list_of_many_objects(s3proxy: S3Store, tmp_path: Path) -> None:
    # The views pass lists of hundreds of files; each costs two HEAD requests (exists, open), not seven.
    files = 150
    table = _events(15_000, seed=5)
    uris = _write(s3proxy, table, "many", files)
    relay = CountingRelay(s3proxy.endpoint)
    try:
        con = _connect(tmp_path)
        attach(con, _fs(s3proxy, endpoint=relay.endpoint))
        [got] = con.sql(f"SELECT count(*), sum(seq), count(DISTINCT actor), max(ts) FROM read_parquet({_files(uris)})"
                        ).fetchall()
        requests, _ = relay.snapshot()
        by_verb = con.sql(f"SELECT verb, count(*) FROM read_parquet({_files(uris)}) WHERE code = 403 "
                          "GROUP BY verb ORDER BY verb").fetchall()
    finally:
        relay.close()
    assert got == (15_000, pc.sum(table["seq"]).as_py(), len(set(table["actor"].to_pylist())),
                   pc.max(table["ts"]).as_py())
    forbidden = table.filter(pc.equal(table["code"], 403))["verb"].to_pylist()
    assert by_verb == sorted((v, forbidden.count(v)) for v in set(forbidden))
    assert requests.get("HEAD", 0) <= 2 * files, requests
    _assert_no_httpfs(con, tmp_path)


def test_missing_object_names_the_uri(s3proxy: S3Store, tmp_path: Path) -> None:
    [uri] = _write(s3proxy, _events(100), "missing", 1)
    missing = uri.replace("0000-missing.parquet", "0001-missing.parquet")
    con = _connect(tmp_path)
    attach(con, s3proxy.pyarrow_fs())
    with pytest.raises(duckdb.Error, match=re.escape(missing)):
        con.sql(f"SELECT count(*) FROM read_parquet({_files([uri, missing])})").fetchall()
    no_bucket = f"s3://no-such-bucket-{tmp_path.name.lower()[-8:]}/k8s_audit/x.parquet"
    with pytest.raises(duckdb.Error, match=re.escape(no_bucket)):
        con.sql(f"SELECT count(*) FROM read_parquet({_files([no_bucket])})").fetchall()
    # The connection still works afterwards.
    assert con.sql(f"SELECT count(*) FROM read_parquet({_files([uri])})").fetchall() == [(100,)]
    _assert_no_httpfs(con, tmp_path)


def test_refused_credentials_name_the_uri_not_the_secret(s3proxy: S3Store, tmp_path: Path) -> None:
    [uri] = _write(s3proxy, _events(100), "denied", 1)
    wrong_secret = s3proxy.secret_key + "x"
    con = _connect(tmp_path)
    attach(con, _fs(s3proxy, secret=wrong_secret))
    with pytest.raises(duckdb.Error) as caught:
        con.sql(f"SELECT count(*) FROM read_parquet({_files([uri])})").fetchall()
    message = str(caught.value)
    assert f"PermissionError: [Errno 13] {uri}: AWS Error ACCESS_DENIED" in message, message
    for secret in (s3proxy.secret_key, wrong_secret):
        assert secret not in message
        assert secret not in caught.getrepr(showlocals=False).__str__()
    _assert_no_httpfs(con, tmp_path)


def test_attach_is_idempotent_and_replaces_another_filesystem(s3proxy: S3Store, tmp_path: Path) -> None:
    [uri] = _write(s3proxy, _events(500), "idem", 1)
    con = _connect(tmp_path)
    good = s3proxy.pyarrow_fs()
    attach(con, good)
    attach(con, good)
    attach(con, s3proxy.pyarrow_fs())  # an equal filesystem: nothing to do
    assert con.list_filesystems().count("s3") == 1
    query = f"SELECT count(*) FROM read_parquet({_files([uri])})"
    assert con.sql(query).fetchall() == [(500,)]

    attach(con, _fs(s3proxy, secret=s3proxy.secret_key + "x"))  # another one replaces it
    with pytest.raises(duckdb.Error, match="ACCESS_DENIED"):
        con.sql(query).fetchall()
    attach(con, good)
    assert con.sql(query).fetchall() == [(500,)]
    assert con.list_filesystems().count("s3") == 1
    _assert_no_httpfs(con, tmp_path)


def test_another_scheme(s3proxy: S3Store, tmp_path: Path) -> None:
    [uri] = _write(s3proxy, _events(700), "scheme", 1)
    con = _connect(tmp_path)
    attach(con, s3proxy.pyarrow_fs(), scheme="lakeobj")
    other = uri.replace("s3://", "lakeobj://", 1)
    assert con.sql(f"SELECT count(*) FROM read_parquet({_files([other])})").fetchall() == [(700,)]
    with pytest.raises(ValueError, match="not a URI scheme"):
        attach(con, s3proxy.pyarrow_fs(), scheme="file")
    _assert_no_httpfs(con, tmp_path)


def test_an_object_replaced_under_its_key_is_read_anew_after_a_re_attach(s3proxy: S3Store, tmp_path: Path) -> None:
    """The lake replaces objects under the same key (each ``detect``'s derived tables, a replay): the
    views are made again after such a write, and their re-attach must forget the cached size and handle,
    or DuckDB would read the new bytes at the old object's offsets."""
    [uri] = _write(s3proxy, _events(500), "replaced", 1)
    con = _connect(tmp_path)
    fs_ = s3proxy.pyarrow_fs()
    attach(con, fs_)
    query = f"SELECT count(*), max(audit_id) FROM read_parquet({_files([uri])})"
    first = con.sql(query).fetchall()
    assert first[0][0] == 500
    pq.write_table(_events(3000, offset=10_000), uri[len("s3://"):], filesystem=fs_)  # same key, other bytes
    attach(con, fs_)  # what create_views does before it names the files again
    again = con.sql(query).fetchall()
    assert again[0][0] == 3000 and again != first

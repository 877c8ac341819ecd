"""S3Proxy (``scripts/s3proxy``) is a real S3 for everything the Iceberg lake needs (issue 16, item 7).

Each test talks to the running S3Proxy through the same clients the lake uses: pyarrow's
``S3FileSystem`` (AWS SDK for C++), pyiceberg's ``PyArrowFileIO`` with a ``SqlCatalog``, and DuckDB
fed an Arrow table. Where the session's store was started here (``s3proxy.dir`` known), a test also
looks at S3Proxy's filesystem backend, so a write that never left the process would fail.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs
from support.s3proxy import SCRIPT, S3Store

pytestmark = pytest.mark.s3


def _events(n: int, offset: int = 0) -> pa.Table:
    return pa.table({
        "audit_id": pa.array([f"id-{offset + i}" for i in range(n)], pa.string()),
        "verb": pa.array([("get", "list", "create")[i % 3] for i in range(n)], pa.string()),
        "code": pa.array([200 + (i % 5) for i in range(n)], pa.int32()),
    })


def _backend_file(s3proxy: S3Store, key: str) -> Path | None:
    """Where S3Proxy's filesystem backend keeps ``bucket/key`` (None when the store is not ours)."""
    return None if s3proxy.dir is None else s3proxy.dir / "data" / key


def test_pyarrow_writes_and_reads_parquet(s3proxy: S3Store) -> None:
    s3 = s3proxy.pyarrow_fs()
    key = f"{s3proxy.prefix('parquet')}/dt=2026-03-02/part-0.parquet"
    table = _events(5000)
    pq.write_table(table, key, filesystem=s3)

    info = s3.get_file_info(key)
    assert info.type == fs.FileType.File and info.size > 0
    assert pq.read_table(key, filesystem=s3).equals(table)
    # A ranged read (Parquet's footer first, then one column chunk) is what DuckDB and Spark do.
    assert pq.ParquetFile(s3.open_input_file(key)).read(columns=["verb"]).column("verb") == table.column("verb")
    backend = _backend_file(s3proxy, key)
    if backend is not None:
        assert backend.stat().st_size == info.size


def test_wrong_secret_is_refused(s3proxy: S3Store) -> None:
    key = f"{s3proxy.prefix('auth')}/x.parquet"
    pq.write_table(_events(3), key, filesystem=s3proxy.pyarrow_fs())
    wrong = fs.S3FileSystem(access_key=s3proxy.access_key, secret_key=s3proxy.secret_key + "x",
                            endpoint_override=s3proxy.endpoint, scheme="http", region="us-east-1",
                            force_virtual_addressing=False)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        wrong.open_input_file(key).read()


def test_listing_overwrite_and_delete(s3proxy: S3Store) -> None:
    s3 = s3proxy.pyarrow_fs()
    root = s3proxy.prefix("list")
    keys = [f"{root}/dt=2026-03-0{d}/f-{i}.parquet" for d in (1, 2) for i in range(3)]
    for n, key in enumerate(keys):
        pq.write_table(_events(n + 1, offset=100 * n), key, filesystem=s3)

    listed = s3.get_file_info(fs.FileSelector(root, recursive=True))
    assert sorted(i.path for i in listed if i.type == fs.FileType.File) == sorted(keys)
    one_day = s3.get_file_info(fs.FileSelector(f"{root}/dt=2026-03-02"))
    assert sorted(i.path for i in one_day) == sorted(k for k in keys if "03-02" in k)

    # Overwriting a key replaces the whole object: a reader sees the old or the new bytes, never a
    # mix. A rename, by contrast, is a copy and a delete on S3 (not atomic); Iceberg never relies
    # on one: data and metadata files are written once under new names and a commit swaps the
    # table's metadata pointer in the catalog (Iceberg spec, "File System Operations":
    # https://iceberg.apache.org/spec/#file-system-operations).
    replacement = _events(7, offset=9000)
    pq.write_table(replacement, keys[0], filesystem=s3)
    assert pq.read_table(keys[0], filesystem=s3).equals(replacement)

    s3.delete_file(keys[1])
    assert s3.get_file_info(keys[1]).type == fs.FileType.NotFound
    listed = s3.get_file_info(fs.FileSelector(root, recursive=True))
    assert sorted(i.path for i in listed if i.type == fs.FileType.File) == sorted(k for k in keys if k != keys[1])


def test_pyiceberg_table_on_s3(s3proxy: S3Store, tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    warehouse = f"s3://{s3proxy.prefix('wh')}"
    catalog = SqlCatalog("ztaudit", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=warehouse,
                         **s3proxy.iceberg_properties())
    catalog.create_namespace("lake")
    first, second = _events(1000), _events(500, offset=1000)
    table = catalog.create_table("lake.k8s_audit", schema=first.schema)
    table.append(first)
    table.append(second)

    table = catalog.load_table("lake.k8s_audit")
    assert table.metadata_location.startswith(f"{warehouse}/lake/k8s_audit/metadata/")
    assert len(table.snapshots()) == 2
    got = table.scan().to_arrow().sort_by("audit_id")
    assert got.equals(pa.concat_tables([first, second]).sort_by("audit_id"))
    assert table.scan(row_filter="verb == 'create'").to_arrow().num_rows == \
        sum(1 for v in pa.concat_tables([first, second]).column("verb").to_pylist() if v == "create")

    # Every file the snapshot plans is on the store (read back through S3, not from a local path).
    s3 = s3proxy.pyarrow_fs()
    planned = [t.file.file_path for t in table.scan().plan_files()]
    assert len(planned) == 2
    for path in planned:
        assert path.startswith(f"{warehouse}/lake/k8s_audit/data/")
        assert s3.get_file_info(path.removeprefix("s3://")).type == fs.FileType.File

    # An overwrite commit replaces the rows; the snapshot before it still reads the old ones.
    before = table.current_snapshot()
    assert before is not None
    table.overwrite(_events(10, offset=5000))
    table = catalog.load_table("lake.k8s_audit")
    assert table.scan().to_arrow().num_rows == 10
    assert table.scan(snapshot_id=before.snapshot_id).to_arrow().num_rows == 1500


def test_duckdb_reads_s3_parquet_through_arrow(s3proxy: S3Store) -> None:
    # DuckDB's own s3:// reader is the httpfs extension, downloaded at run time: not allowed (issue 16
    # item 4). pyarrow reads the object and DuckDB queries the Arrow table in place.
    s3 = s3proxy.pyarrow_fs()
    key = f"{s3proxy.prefix('duckdb')}/events.parquet"
    table = _events(3000)
    pq.write_table(table, key, filesystem=s3)

    events = pq.read_table(key, filesystem=s3)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.register("events", events)
    rows = con.execute("SELECT verb, count(*) FROM events WHERE code >= ? GROUP BY verb ORDER BY verb",
                       [202]).fetchall()
    expected: dict[str, int] = {}
    for verb, code in zip(table.column("verb").to_pylist(), table.column("code").to_pylist(), strict=True):
        if code >= 202:
            expected[verb] = expected.get(verb, 0) + 1
    assert rows == sorted(expected.items())


def _script() -> ModuleType:
    """scripts/s3proxy as a module (it has no .py suffix), for its listener check."""
    loader = importlib.machinery.SourceFileLoader("ztaudit_s3proxy_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_listener_check_refuses_anything_but_127_0_0_1(tmp_path: Path) -> None:
    # 127.0.0.2 is loopback too (nothing leaves the machine) but not the address the check allows.
    code = ("import socket, sys, time\n"
            "s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)\n"
            "print(s.getsockname()[1], flush=True); time.sleep(60)\n")
    script = _script()
    for host, ok in (("127.0.0.1", True), ("127.0.0.2", False)):
        with subprocess.Popen([sys.executable, "-c", code, host], stdout=subprocess.PIPE, text=True,
                              start_new_session=True) as proc:
            try:
                assert proc.stdout is not None
                port = proc.stdout.readline().strip()
                if ok:
                    assert script.check_listeners(proc.pid) == [("tcp", f"127.0.0.1:{port}")]
                else:
                    with pytest.raises(RuntimeError, match=f"outside 127.0.0.1: tcp 127.0.0.2:{port}"):
                        script.check_listeners(proc.pid)
            finally:
                proc.kill()


def test_script_start_status_stop(s3proxy: S3Store, tmp_path: Path) -> None:
    # A second instance of our own (the session's may come from the environment): files, modes, stop.
    d = tmp_path / "store"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(d)], capture_output=True, text=True)

    started = run("start")
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        pid = int((d / "pid").read_text())
        assert (d / "endpoint").read_text().startswith("http://127.0.0.1:")
        for name in ("access_key", "secret_key", "s3proxy.conf"):
            assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
        secret = (d / "secret_key").read_text().strip()
        assert secret not in started.stdout + started.stderr
        assert secret not in (d / "s3proxy.log").read_text()
        assert run("status").returncode == 0
    finally:
        assert run("stop").returncode == 0
    assert not _script().alive(pid)  # gone, or a zombie where no init reaps orphans (a container)
    assert run("status").returncode == 3

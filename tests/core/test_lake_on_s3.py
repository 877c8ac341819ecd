"""An Iceberg lake whose data files and table metadata live on S3-compatible storage (issue 16, item 1).

Each test runs the real ``ztaudit`` commands against the real S3Proxy (``s3proxy`` fixture), with the
warehouse named by ``lake.warehouse`` and the credentials in the AWS environment variables, and
checks what a user relies on: the same rows and findings as a lake on local disk, nothing on local
disk but the catalog, idempotent re-ingest, and no credential in any output or file.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.s3proxy import S3Store, lake_env, objects

from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot, warehouse
from ztaudit.core.errors import LakeError
from ztaudit.core.lake import open_lake
from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.maintain import maintain

pytestmark = pytest.mark.s3

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE = ROOT / "sample_logs"
TABLES = ("k8s_audit", "proxy_decision", "idp_event", "quarantine", "findings", "reach", "credentials")


def _ztaudit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ZTAUDIT_", "AWS_"))}
    full.update(env)
    return subprocess.run([str(ROOT / ".venv" / "bin" / "ztaudit"), *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=600)


def _ok(p: subprocess.CompletedProcess[str], *secrets: str) -> str:
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    for secret in secrets:
        assert secret not in out, "a credential was printed"
    return out


def _table_sums(lake: Path, env: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Per table: rows and an order-independent checksum of the columns a re-run does not change,
    read through ztaudit's own DuckDB views (the reader every report uses)."""
    code = (
        "import json, sys\n"
        "from ztaudit.core.lake import open_lake\n"
        "con = open_lake(sys.argv[1])\n"
        "out = {}\n"
        f"for t in {TABLES!r}:\n"
        "    drop = {'ingested_at', 'origin', 'detected_at', 'first_detected_at', 'first_run', 'dt',\n"
        "            'quarantined_at'}\n"
        "    cols = [r[0] for r in con.execute(f'DESCRIBE \"{t}\"').fetchall() if r[0] not in drop]\n"
        "    if t == 'findings':\n"
        "        cols = ['finding_id', 'detector', 'severity']  # RBAC-only findings are seen at ingest time\n"
        "    expr = ', '.join(f'\"{c}\"' for c in cols)\n"
        "    q = f'SELECT count(*), coalesce(sum(hash(({expr}))), 0)::VARCHAR FROM \"{t}\"'\n"
        "    n, h = con.execute(q).fetchone()\n"
        "    out[t] = [n, h]\n"
        "print(json.dumps(out))\n"
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ZTAUDIT_", "AWS_"))}
    full.update(env)
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code, str(lake)], capture_output=True,
                       text=True, env=full, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    import json

    return {k: (int(v[0]), str(v[1])) for k, v in json.loads(p.stdout).items()}


def test_ingest_detect_report_on_s3_match_a_local_lake(s3proxy: S3Store, tmp_path: Path) -> None:
    env = lake_env(s3proxy, "parity")
    uri = env["ZTAUDIT_LAKE_WAREHOUSE"]
    s3_lake, local_lake = tmp_path / "s3lake", tmp_path / "local"
    local_env = {"ZTAUDIT_LAKE_FORMAT": "iceberg"}
    for lake, e in ((s3_lake, env), (local_lake, local_env)):
        _ok(_ztaudit(["ingest", "--lake", str(lake), "--cluster", "demo", str(SAMPLE)], e, tmp_path),
            s3proxy.secret_key)
        _ok(_ztaudit(["detect", "--lake", str(lake)], e, tmp_path), s3proxy.secret_key)

    # Rows and findings: the same as on local disk.
    on_s3, local = _table_sums(s3_lake, env), _table_sums(local_lake, local_env)
    assert on_s3 == local
    assert on_s3["k8s_audit"][0] > 50 and on_s3["findings"][0] > 5

    # Where things are: every data file and every table's metadata in the bucket, none in the folder.
    stored = objects(s3proxy, uri[len("s3://"):])
    assert any("/k8s_audit/dt=" in o and o.endswith(".parquet") for o in stored)
    assert any("/_iceberg/k8s_audit/metadata/" in o and o.endswith(".metadata.json") for o in stored)
    assert any("/findings/dt=" in o for o in stored)
    assert not [p for p in s3_lake.rglob("*") if p.suffix in (".parquet", ".avro") or p.name.endswith(".metadata.json")]

    # Re-ingesting the same input replaces the same objects: nothing doubles.
    _ok(_ztaudit(["ingest", "--lake", str(s3_lake), "--cluster", "demo", str(SAMPLE)], env, tmp_path))
    again = _table_sums(s3_lake, env)
    assert again["k8s_audit"] == on_s3["k8s_audit"] and again["proxy_decision"] == on_s3["proxy_decision"]
    # A second detect replaces the derived tables and findings under the same keys, then reads them back
    # in the same process (the views made again must not read the old objects' cached sizes).
    _ok(_ztaudit(["detect", "--lake", str(s3_lake)], env, tmp_path), s3proxy.secret_key)
    twice = _table_sums(s3_lake, env)
    assert {t: twice[t] for t in ("findings", "reach", "credentials")} == \
        {t: on_s3[t] for t in ("findings", "reach", "credentials")}

    # A report reads the lake on S3 like any other.
    rep = _ok(_ztaudit(["report", "summary", "--lake", str(s3_lake)], env, tmp_path), s3proxy.secret_key)
    assert "Impersonation observed?" in rep

    # No credential anywhere in the lake folder or the bucket's metadata.
    for f in s3_lake.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert s3proxy.secret_key.encode() not in data and s3proxy.access_key.encode() not in data, f
    s3 = s3proxy.pyarrow_fs()
    for o in stored:
        if o.endswith(".json"):
            with s3.open_input_stream(o[len("s3://"):]) as fh:
                assert s3proxy.secret_key.encode() not in fh.read()


def test_the_warehouse_is_fixed_when_the_lake_is_made(s3proxy: S3Store, tmp_path: Path) -> None:
    env = lake_env(s3proxy, "fixed")
    lake = tmp_path / "lake"
    sample = str(SAMPLE / "proxy_decision")
    _ok(_ztaudit(["ingest", "--lake", str(lake), sample], env, tmp_path))
    recorded = (lake / "_iceberg" / warehouse.WAREHOUSE_FILE).read_text()
    assert env["ZTAUDIT_LAKE_WAREHOUSE"] in recorded and s3proxy.endpoint in recorded
    # Later commands need no lake.warehouse: the lake says where its files are.
    rest = {k: v for k, v in env.items() if k not in ("ZTAUDIT_LAKE_WAREHOUSE", "ZTAUDIT_LAKE_S3_ENDPOINT")}
    out = _ok(_ztaudit(["report", "summary", "--lake", str(lake)], rest, tmp_path))
    assert "proxy_decision" in out
    # Another warehouse named for an existing lake is refused, not silently split across two.
    other = {**env, "ZTAUDIT_LAKE_WAREHOUSE": f"s3://{s3proxy.prefix('other')}"}
    p = _ztaudit(["ingest", "--lake", str(lake), sample], other, tmp_path)
    assert p.returncode == 4 and "keeps its files in" in p.stderr and "Traceback" not in p.stderr


def test_refused_credentials_are_one_clear_error_that_names_no_secret(s3proxy: S3Store, tmp_path: Path) -> None:
    planted = "ZTMARK" + os.urandom(8).hex()
    env = {**lake_env(s3proxy, "denied"), "AWS_SECRET_ACCESS_KEY": planted}
    p = _ztaudit(["ingest", "--lake", str(tmp_path / "lake"), str(SAMPLE / "proxy_decision")], env, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out and planted not in out
    refused = ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "403")
    assert any(c in out for c in refused), out[-2000:]
    assert p.returncode == 2 and out.count("\n") <= 4  # one error line and its fix


@pytest.mark.parametrize("uri", ["s3://AK:SK@bucket/x", "http://bucket/x", "s3://bucket/x?y=1", "s3://b/x",
                                 "s3://bucket/../x", "s3://bucket/a b"])
def test_a_malformed_warehouse_is_a_config_error(uri: str, tmp_path: Path) -> None:
    env = {"ZTAUDIT_LAKE_FORMAT": "iceberg", "ZTAUDIT_LAKE_WAREHOUSE": uri}
    p = _ztaudit(["ingest", "--lake", str(tmp_path / "lake"), str(SAMPLE / "proxy_decision")], env, tmp_path)
    assert p.returncode == 2 and "lake.warehouse" in p.stderr and "Traceback" not in p.stderr
    assert "SK" not in p.stderr.replace("SKIP", "")
    assert not list((tmp_path / "lake").rglob("*.parquet"))
    with pytest.raises(LakeError):
        warehouse.parse(uri)


def test_duckdb_never_loads_httpfs_for_the_lake(s3proxy: S3Store, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    env = lake_env(s3proxy, "nohttpfs")
    lake = tmp_path / "lake"
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "k8s_audit")], env, tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from ztaudit.core.lake import open_lake

    con = open_lake(lake)
    assert con.execute("SELECT count(*) FROM k8s_audit").fetchone()[0] > 0  # type: ignore[index]
    loaded = con.execute("SELECT installed, loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchall()
    assert loaded in ([], [(False, False)])


@pytest.mark.parametrize("command", [["migrate"]])
def test_commands_that_work_on_local_files_refuse_a_lake_on_s3(command: list[str], s3proxy: S3Store,
                                                               tmp_path: Path) -> None:
    """migrate works on the lake folder's files only so far (compact works on S3: tests/pipeline/test_compact.py):
    on a lake whose files are on S3 it changes nothing and says so (not a traceback, not a silent no-op)."""
    env = lake_env(s3proxy, "refuse")
    lake = tmp_path / "lake"
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "k8s_audit")], env, tmp_path))
    before = objects(s3proxy, env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):])
    p = _ztaudit([command[0], "--lake", str(lake), *command[1:]], env, tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "not supported yet, nothing was changed" in p.stderr and "Traceback" not in p.stderr
    assert objects(s3proxy, env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]) == before


def _decisions(n: int, day: int, start: int = 0) -> pa.Table:
    t0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    return pa.table({"request_id": [f"r{start + i}" for i in range(n)],
                     "decided_at": [t0 + timedelta(days=day, seconds=i) for i in range(n)]})


def test_maintain_on_s3_drops_old_days_removes_orphans_and_expires(s3proxy: S3Store, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``ztaudit maintain`` keeps a lake on S3 bounded as it does on disk: retention unlists old days and
    then deletes their objects, an object no snapshot lists (a writer killed before its publish) older
    than the grace is deleted, a younger one stays, and expired snapshots' metadata objects go."""
    env = lake_env(s3proxy, "maintain")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lake = tmp_path / "lake"
    sink = LakeSink(lake, table_format="iceberg")
    for day in range(4):
        sink.write("proxy_decision", _decisions(2, day, start=10 * day), f"d{day}")
        sink.publish()
    orphan = sink.write("proxy_decision", _decisions(3, 3, start=90), "killed-before-publish")[0]
    sink.added.clear()  # the run "dies" here: never published
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    assert f"s3://{orphan}" in objects(s3proxy, prefix)
    meta_before = {o for o in objects(s3proxy, prefix) if "/_iceberg/proxy_decision/metadata/" in o}

    # A grace longer than the orphan's age keeps it (it may be a running writer's).
    kept = maintain(lake, remove_orphans=True, orphan_grace_s=3600)
    assert kept.orphans_removed == 0 and f"s3://{orphan}" in objects(s3proxy, prefix)

    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    r = maintain(lake, retention_days=3, remove_orphans=True, orphan_grace_s=0, now=now)
    assert r.days_dropped == 2 and r.orphans_removed == 1

    def days_of(uris: set[str]) -> set[str]:
        return {o.split("/dt=")[1].split("/")[0] for o in uris if "/proxy_decision/dt=" in o}

    left = objects(s3proxy, prefix)
    listed = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
    assert days_of(set(listed)) == {"2026-11-22", "2026-11-23"} and set(listed) <= left
    # The dropped days' objects stay while older snapshots list them (a late event published into an
    # old day meanwhile keeps its object); the orphan sweep after their expiry takes them.
    assert days_of(left) == {"2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"}
    assert f"s3://{orphan}" not in left
    con = open_lake(lake)
    assert con.execute("SELECT count(*) FROM proxy_decision").fetchone() == (4,)
    con.close()
    # Expiry: one snapshot left; the metadata objects only expired snapshots used go once past their
    # grace (60 s by default: a just-written manifest may be a committer's; here 0), the current ones stay.
    e = maintain(lake, expire_days=0, now=datetime.now(UTC) + timedelta(seconds=1))
    tbl = iceberg.open_catalog(lake).load_table((iceberg.NAMESPACE, "proxy_decision"))
    assert e.snapshots_expired >= 4 and len(tbl.snapshots()) == 1
    removed = iceberg_publish.remove_unreferenced_metadata(lake, tbl, min_age_s=0)
    meta_after = {o for o in objects(s3proxy, prefix) if "/_iceberg/proxy_decision/metadata/" in o}
    assert removed > 0 and not meta_before <= meta_after
    time.sleep(1.1)  # object times are whole seconds
    swept = maintain(lake, remove_orphans=True, orphan_grace_s=0)
    assert swept.orphans_removed == 2 and days_of(objects(s3proxy, prefix)) == {"2026-11-22", "2026-11-23"}
    snap = tbl.current_snapshot()
    assert snap is not None and tbl.metadata_location in meta_after and snap.manifest_list in meta_after
    assert all(m.manifest_path in meta_after for m in snap.manifests(tbl.io))
    con = open_lake(lake)
    assert con.execute("SELECT count(*) FROM proxy_decision").fetchone() == (4,)
    con.close()


def test_two_lake_folders_never_share_a_prefix(s3proxy: S3Store, tmp_path: Path) -> None:
    """A second lake folder made on a prefix another lake owns is refused before it writes anything, so
    neither lake's ``maintain`` can take the other's objects for orphans or replace them; and a lake
    whose claim object names another lake (a restored backup of the folder, say) refuses to write."""
    env = lake_env(s3proxy, "shared")
    a, b = tmp_path / "a", tmp_path / "b"
    _ok(_ztaudit(["ingest", "--lake", str(a), str(SAMPLE / "proxy_decision")], env, tmp_path))
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    before = objects(s3proxy, prefix)
    p = _ztaudit(["ingest", "--lake", str(b), str(SAMPLE / "k8s_audit")], env, tmp_path)
    assert p.returncode == 2 and "a new lake needs a prefix of its own" in p.stderr and "Traceback" not in p.stderr
    assert objects(s3proxy, prefix) == before
    assert not (b / "_iceberg" / "catalog.db").exists() and not (b / "_iceberg" / warehouse.WAREHOUSE_FILE).exists()
    # The claim rewritten by someone else: lake a stops writing (and maintain stops deleting).
    s3 = s3proxy.pyarrow_fs()
    with s3.open_output_stream(f"{prefix}/{warehouse.CLAIM_OBJECT}") as out:
        out.write(b'{"lake_id": "someone-else"}')
    for cmd in (["ingest", "--lake", str(a), str(SAMPLE / "idp_event")],
                ["maintain", "--lake", str(a), "--remove-orphans", "--orphan-grace", "1s"]):
        q = _ztaudit(cmd, env, tmp_path)
        assert q.returncode == 2 and "is not" in q.stderr and "someone-else" in q.stderr, q.stderr[-2000:]
    assert {o for o in objects(s3proxy, prefix) if not o.endswith(warehouse.CLAIM_OBJECT)} == \
        {o for o in before if not o.endswith(warehouse.CLAIM_OBJECT)}


def test_a_mistyped_bucket_leaves_nothing_that_pins_the_folder(s3proxy: S3Store, tmp_path: Path) -> None:
    env = lake_env(s3proxy, "typo")
    lake = tmp_path / "lake"
    wrong = {**env, "ZTAUDIT_LAKE_WAREHOUSE": "s3://no-such-bucket-zz/x"}
    p = _ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "proxy_decision")], wrong, tmp_path)
    assert p.returncode == 2 and "NO_SUCH_BUCKET" in p.stderr.upper().replace(" ", "_") and "Traceback" not in p.stderr
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "proxy_decision")], env, tmp_path))
    assert env["ZTAUDIT_LAKE_WAREHOUSE"] in (lake / "_iceberg" / warehouse.WAREHOUSE_FILE).read_text()


def test_a_lake_made_on_disk_keeps_working_when_lake_warehouse_is_set(s3proxy: S3Store, tmp_path: Path) -> None:
    """lake.warehouse applies to lakes created with it: detect and maintain on an existing lake on disk
    work where it is; only a writer of new source data (ingest) is refused, because its user expects the
    files on S3."""
    lake = tmp_path / "lake"
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE)], {"ZTAUDIT_LAKE_FORMAT": "iceberg"}, tmp_path))
    env = lake_env(s3proxy, "ignored")
    _ok(_ztaudit(["detect", "--lake", str(lake)], env, tmp_path))
    _ok(_ztaudit(["maintain", "--lake", str(lake), "--expire-snapshots", "7d"], env, tmp_path))
    p = _ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "proxy_decision")], env, tmp_path)
    assert p.returncode == 4 and "keeps its files in its own folder" in p.stderr
    assert not objects(s3proxy, env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):])


def test_an_object_deleted_by_hand_is_a_clear_error(s3proxy: S3Store, tmp_path: Path) -> None:
    env = lake_env(s3proxy, "deleted")
    lake = tmp_path / "lake"
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "proxy_decision")], env, tmp_path))
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    victim = sorted(o for o in objects(s3proxy, prefix) if "/proxy_decision/dt=" in o)[0]
    s3proxy.pyarrow_fs().delete_file(victim[len("s3://"):])
    p = _ztaudit(["report", "summary", "--lake", str(lake)], env, tmp_path)
    assert p.returncode == 2 and "cannot be read" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_a_creation_killed_after_its_claim_is_finished_by_the_next_run(s3proxy: S3Store, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake's id is kept in its folder before its claim is written: a run that dies between the claim and
    ``warehouse.json`` is not locked out of its own prefix by its own claim."""
    env = lake_env(s3proxy, "killed")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from ztaudit.core import files

    real = files.write_bytes_atomic

    def dies_at_the_record(path: Path, data: bytes) -> Path:
        if path.name == warehouse.WAREHOUSE_FILE:
            raise KeyboardInterrupt("killed")
        return real(path, data)

    lake = tmp_path / "lake"
    (lake / "_iceberg").mkdir(parents=True)
    wanted = warehouse.configured()
    assert wanted is not None
    monkeypatch.setattr(files, "write_bytes_atomic", dies_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        warehouse.record(lake, wanted)
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    assert objects(s3proxy, prefix) == {f"s3://{prefix}/{warehouse.CLAIM_OBJECT}"}
    monkeypatch.setattr(files, "write_bytes_atomic", real)
    made = warehouse.record(lake, wanted)
    assert made.lake_id and warehouse.of_lake(lake) == made
    assert not (lake / "_iceberg" / warehouse.PENDING_FILE).exists()
    sink = LakeSink(lake, table_format="iceberg")
    sink.write("proxy_decision", _decisions(2, 0), "after")
    sink.publish()
    assert any("/proxy_decision/dt=" in o for o in objects(s3proxy, prefix))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "delete", "publish", "crash"]), st.integers(0, 4),
                              st.integers(0, 2)), min_size=1, max_size=18))
def test_commits_interleaved_with_crashes_on_s3_never_list_a_missing_or_doubled_object(
        s3proxy: S3Store, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        ops: list[tuple[str, int, int]]) -> None:
    """Model test on S3: writes (whole-object PUTs), deletions, publishes and crashes (a sink that dies
    before it publishes) in any order. The snapshot never lists an object that is gone, never one twice;
    and ``maintain --remove-orphans`` then leaves exactly the listed objects in the bucket."""
    env = lake_env(s3proxy, "model")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lake = tmp_path_factory.mktemp("model") / "lake"
    prefix = env["ZTAUDIT_LAKE_WAREHOUSE"][len("s3://"):]
    sink = LakeSink(lake, table_format="iceberg")

    def data_objects() -> set[str]:
        return {o for o in objects(s3proxy, f"{prefix}/proxy_decision") if o.endswith(".parquet")}

    for op, key, day in ops:
        if op == "write":
            sink.write("proxy_decision", _decisions(1 + key, day, start=100 * key), f"k{key}")
        elif op == "delete":
            path = sink.path_for("proxy_decision", (date(2026, 11, 20) + timedelta(days=day)).isoformat(), f"k{key}")
            sink.remove(path)
        elif op == "publish":
            sink.publish()
        else:  # kill -9 before the publish: what was pending is lost with the process
            sink = LakeSink(lake)
        listed = iceberg_snapshot.snapshot_files(lake, "proxy_decision")
        assert len(listed) == len(set(listed)), "an object listed twice"
        assert set(listed) <= data_objects(), "a reader would meet a listed object that is gone"
    maintain(lake, remove_orphans=True, orphan_grace_s=0)
    listed = set(iceberg_snapshot.snapshot_files(lake, "proxy_decision"))
    assert listed == data_objects()
    con = open_lake(lake)
    rows = con.execute("SELECT count(*) FROM proxy_decision").fetchone()
    con.close()
    expected = sum(pq.read_metadata(o[len("s3://"):], filesystem=s3proxy.pyarrow_fs()).num_rows for o in listed)
    assert rows == (expected,)


def test_catalog_out_of_a_lake_on_s3_says_how_a_plain_duckdb_opens_it(s3proxy: S3Store, tmp_path: Path) -> None:
    """``ztaudit catalog --out`` writes views that name s3:// objects: the command says what a DuckDB
    outside ztaudit needs to open them (httpfs and an S3 secret), with placeholders, never a credential."""
    env = lake_env(s3proxy, "catalog")
    lake = tmp_path / "lake"
    _ok(_ztaudit(["ingest", "--lake", str(lake), str(SAMPLE / "proxy_decision")], env, tmp_path))
    out = _ok(_ztaudit(["catalog", "--lake", str(lake), "--out", str(tmp_path / "c.duckdb")], env, tmp_path),
              s3proxy.secret_key, s3proxy.access_key)
    assert "INSTALL httpfs" in out and "<secret access key>" in out and env["ZTAUDIT_LAKE_WAREHOUSE"] in out
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    try:
        view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'proxy_decision'").fetchone()
    finally:
        con.close()
    assert view is not None and env["ZTAUDIT_LAKE_WAREHOUSE"] in str(view[0])

"""Spark reads Iceberg tables whose files live on S3 (S3Proxy), credentials from the environment only.

The table is made with pyiceberg directly, as the lake will hold it on S3: the catalog is pyiceberg's
SQL catalog ``ztaudit`` in ``LAKE/_iceberg/catalog.db`` (a local SQLite file), namespace ``lake``,
table ``k8s_audit`` at ``s3://<prefix>/_iceberg/k8s_audit``, partitioned by ``identity(dt)``, data files
under ``s3://<prefix>/k8s_audit/dt=YYYY-MM-DD/<key>.parquet`` with ztaudit's key names (``+`` in
them). pyiceberg writes through ``PyArrowFileIO`` given only ``s3.endpoint``, ``s3.region`` and
``s3.force-virtual-addressing=false``: its credentials too come from the environment. Three commits,
so the snapshot matters: ``add_files`` of files written beside the table (one per day and one
undated), an ``append``, an ``overwrite`` of the first day (its files stay in the bucket).

Spark reads through :func:`ztaudit.core.spark_session.spark_session` with
:class:`~ztaudit.core.spark_session.S3Settings`: ``S3FileIO`` and the AWS SDK's default credentials
chain. The credentials reach the JVM only through its environment: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (the class of tests below), or ``AWS_SHARED_CREDENTIALS_FILE`` (the last
test). PySpark keeps its JVM for the life of the process and the JVM's environment is fixed when it
starts, so each of these starts a JVM of its own after ending any earlier one (:func:`support.spark.end_jvm`),
one at a time, and ends it again afterwards, so no later test's Spark carries these variables.
Expected rows are checked three ways: what the test knows the snapshot holds, pyarrow reading the
files pyiceberg plans from the bucket, and Spark; equal (rows, checksum) from :mod:`support.spark`.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.s3proxy import REGION, S3Store
from support.spark import arrow_digest, end_jvm, spark_jars, table_digest_spark

from ztaudit.core.iceberg import CATALOG_NAME, ICEBERG_DIR, NAMESPACE, catalog_file
from ztaudit.core.schema import TABLES
from ztaudit.core.spark_session import S3_FILE_IO, S3Settings, SparkUnavailable, spark_conf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.spark,
    pytest.mark.s3,
    # PySpark 4.1's collect()/toArrow() leave their loopback socket to the garbage collector.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

TABLE = "k8s_audit"
DAY1 = date(2026, 3, 2)
DAY2 = date(2026, 3, 3)
CAT = f"spark.sql.catalog.{CATALOG_NAME}"
STRINGS = ["", "alice@example.com", "system:serviceaccount:prod:app", "quote ' and \"", "a\nb", "ünïcødé 🔑"]
#: Every variable the AWS SDKs read credentials or a profile from; each test sets exactly its own.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI")


# --- the JVM --------------------------------------------------------------------------------------

def _settings(store: S3Store) -> S3Settings:
    return S3Settings(endpoint=store.endpoint, region=REGION, path_style=True)


def _jvm_sees(spark: Any, name: str, value: str) -> bool:
    """Whether the JVM's environment holds ``name`` = ``value`` (a bool: no value in a failure message)."""
    return bool(spark.sparkContext._jvm.java.lang.System.getenv(name) == value)


def _secret_nowhere_in_conf(spark: Any, *secrets: str) -> None:
    """Neither the SparkContext's conf nor the session's SQL conf nor the JVM's command line holds any
    of ``secrets`` (checked as bools, so a failure names the property, never the secret)."""
    pairs = list(spark.sparkContext.getConf().getAll()) + list(spark.conf.getAll.items())
    assert len(pairs) > 20
    leaking = sorted({k for k, v in pairs for s in secrets if s in k or s in str(v)})
    assert not leaking, f"a credential is in the Spark properties {leaking}"
    psutil = pytest.importorskip("psutil")
    jvms = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
    assert jvms
    cmdlines = [" ".join(p.cmdline()) for p in jvms]
    assert not any(s in c for c in cmdlines for s in secrets), "a credential is on the JVM's command line"


# --- the table on S3 ------------------------------------------------------------------------------

def _schema() -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in TABLES[TABLE]]
                     + [pa.field("dt", pa.date32(), nullable=True)])


def _value(rng: random.Random, typ: pa.DataType, day: date | None) -> Any:
    if rng.random() < 0.15:
        return None
    if pa.types.is_timestamp(typ):
        if day is None:
            return datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(microseconds=rng.randrange(86_400 * 10**6))
    if pa.types.is_string(typ):
        return rng.choice(STRINGS) + str(rng.randrange(1000))
    if pa.types.is_int32(typ):
        return rng.choice([0, -1, 200, 403, 2**31 - 1, -(2**31)])
    if pa.types.is_boolean(typ):
        return rng.random() < 0.5
    if pa.types.is_map(typ):
        keys = rng.sample(["b", "a", "authorization.k8s.io/decision"], rng.randrange(3))
        return [(k, rng.choice(STRINGS)) for k in keys]
    if pa.types.is_list(typ):
        return [None if rng.random() < 0.1 else rng.choice(STRINGS) for _ in range(rng.randrange(3))]
    raise AssertionError(f"no generator for {typ}")


def _rows(rng: random.Random, n: int, day: date | None) -> pa.Table:
    schema = _schema()
    cols = {f.name: [_value(rng, f.type, day) for _ in range(n)] for f in schema if f.name != "dt"}
    cols["dt"] = [day] * n
    return pa.table(cols, schema=schema)


@dataclass
class S3Lake:
    """A lake whose catalog is local and whose table is in the bucket."""

    root: Path
    prefix: str  # bucket/name-random, no scheme
    io: dict[str, str]  # pyiceberg's FileIO properties, without credentials
    expected: pa.Table | None = None
    dropped: str = ""  # s3:// path of the registered file the overwrite took out of the snapshot
    registered: list[str] = field(default_factory=list)

    def catalog(self) -> Any:
        from pyiceberg.catalog.sql import SqlCatalog

        return SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{catalog_file(self.root)}",
                          warehouse=f"s3://{self.prefix}/{ICEBERG_DIR}", **self.io)

    def plan(self) -> list[str]:
        """The ``s3://`` paths pyiceberg plans for a full scan of the current snapshot."""
        return sorted(t.file.file_path for t in self.catalog().load_table((NAMESPACE, TABLE)).scan().plan_files())


def build_s3_lake(root: Path, store: S3Store) -> S3Lake:
    """The table (module doc); the caller's environment must hold the store's credentials."""
    from pyiceberg.expressions import EqualTo

    (root / ICEBERG_DIR).mkdir(parents=True)
    io = {k: v for k, v in store.iceberg_properties().items() if k in ("s3.endpoint", "s3.region",
                                                                     "s3.force-virtual-addressing", "py-io-impl")}
    lake = S3Lake(root, store.prefix("lake"), io)
    cat = lake.catalog()
    cat.create_namespace(NAMESPACE)
    tbl = cat.create_table((NAMESPACE, TABLE), schema=_schema(), location=f"s3://{lake.prefix}/{ICEBERG_DIR}/{TABLE}",
                           properties={"format-version": "2", "write.data.path": f"s3://{lake.prefix}/{TABLE}"})
    with tbl.update_spec() as spec:
        spec.add_identity("dt")
    tbl = cat.load_table((NAMESPACE, TABLE))
    rng = random.Random("s3:k8s_audit")
    first, second, undated = _rows(rng, 40, DAY1), _rows(rng, 30, DAY2), _rows(rng, 5, None)
    s3 = store.pyarrow_fs()  # the harness writes the files; pyiceberg and Spark find their own way in
    for folder, key, rows in ((str(DAY1), "0123456789abcdef+0", first), (str(DAY2), "0123456789abcdef+4096", second),
                              ("unknown", "0123456789abcdef+8192", undated)):
        path = f"{lake.prefix}/{TABLE}/dt={folder}/{key}.parquet"
        pq.write_table(rows, path, filesystem=s3)
        lake.registered.append(f"s3://{path}")
    tbl.add_files(lake.registered)
    appended = pa.concat_tables([_rows(rng, 20, DAY1), _rows(rng, 20, DAY2)])
    tbl.append(appended)
    replacement = _rows(rng, 25, DAY1)
    tbl.overwrite(replacement, overwrite_filter=EqualTo("dt", DAY1))
    kept = appended.filter(pc.field("dt") != pa.scalar(DAY1, pa.date32()))
    lake.expected = pa.concat_tables([second, undated, kept, replacement])
    lake.dropped = lake.registered[0]
    return lake


def _pyarrow_digest(lake: S3Lake, store: S3Store) -> tuple[int, str]:
    """(rows, checksum) of the planned files as pyarrow reads them from the bucket."""
    s3 = store.pyarrow_fs()
    batches = []
    for path in lake.plan():
        # pyiceberg's own files carry field ids in their schema metadata; the digest reads names.
        batches.extend(pq.read_table(path.removeprefix("s3://"), filesystem=s3).select(_schema().names).to_batches())
    return arrow_digest(batches)


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jars() -> list[Path]:
    js = spark_jars()
    if not any(j.name.startswith("iceberg-aws-bundle-") for j in js):
        pytest.fail(f"scripts/spark-jars does not put iceberg-aws-bundle on the classpath: {[j.name for j in js]}")
    return js


@pytest.fixture(scope="module")
def aws_env(s3proxy: S3Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """The store's credentials in ``os.environ`` (the AWS SDKs' standard variables) and nothing else an
    SDK could take credentials from (no profile file, no instance metadata); restored afterwards."""
    nowhere = tmp_path_factory.mktemp("no-aws-files")
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))  # absent
        mp.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))  # absent
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ACCESS_KEY_ID", s3proxy.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3proxy.secret_key)
        yield s3proxy


@pytest.fixture(scope="module")
def s3_lake(aws_env: S3Store, tmp_path_factory: pytest.TempPathFactory) -> S3Lake:
    return build_s3_lake(tmp_path_factory.mktemp("s3lake") / "lake", aws_env)


# --- Spark with the credentials in environment variables -------------------------------------------

class TestCredentialsFromEnvironmentVariables:
    @pytest.fixture(scope="class")
    @classmethod
    def spark(cls, s3_lake: S3Lake, jars: list[Path], aws_env: S3Store) -> Iterator[Any]:
        from ztaudit.core.spark_session import spark_session

        end_jvm()  # an earlier test's JVM has another environment
        t0 = time.monotonic()
        session = spark_session(s3_lake.root, jars=jars, s3=_settings(aws_env))
        print(f"\nSpark session (new JVM) started in {time.monotonic() - t0:.1f} s")
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            end_jvm()  # its environment holds the credentials: no later test reuses it

    def test_spark_reads_the_snapshot_from_s3(self, s3_lake: S3Lake, spark: Any, aws_env: S3Store) -> None:
        assert s3_lake.expected is not None
        expected = arrow_digest(s3_lake.expected)
        assert expected[0] == 30 + 5 + 20 + 25
        assert _pyarrow_digest(s3_lake, aws_env) == expected, "pyarrow does not read the rows the snapshot holds"
        assert table_digest_spark(spark, TABLE) == expected
        ident = f"{CATALOG_NAME}.{NAMESPACE}.{TABLE}"
        assert spark.table(ident).where(f"dt = DATE'{DAY2}'").count() == 50
        assert spark.table(ident).where("dt IS NULL").count() == 5

    def test_spark_reads_exactly_the_planned_files(self, s3_lake: S3Lake, spark: Any, aws_env: S3Store) -> None:
        files = {r[0] for r in spark.sql(f"SELECT DISTINCT _file FROM {CATALOG_NAME}.{NAMESPACE}.{TABLE}").collect()}
        assert files == set(s3_lake.plan())
        assert all(f.startswith(f"s3://{s3_lake.prefix}/{TABLE}/dt=") for f in files), files
        assert s3_lake.registered[1] in files  # ztaudit's key names, '+' and '=' kept as written
        # The overwritten day's registered file is still in the bucket, yet not read.
        assert s3_lake.dropped not in files
        assert aws_env.pyarrow_fs().get_file_info(s3_lake.dropped.removeprefix("s3://")).size > 0
        # The table's metadata is in the bucket too; the lake folder holds only the catalog.
        meta = spark.sql(f"SELECT file FROM {CATALOG_NAME}.{NAMESPACE}.{TABLE}.metadata_log_entries").collect()
        assert meta and all(r[0].startswith(f"s3://{s3_lake.prefix}/{ICEBERG_DIR}/{TABLE}/metadata/") for r in meta)
        assert sorted(p.name for p in (s3_lake.root / ICEBERG_DIR).iterdir()) == ["catalog.db"]

    def test_the_credentials_come_from_the_jvm_environment_only(self, spark: Any, aws_env: S3Store) -> None:
        conf = dict(spark.sparkContext.getConf().getAll())
        assert conf[f"{CAT}.io-impl"] == S3_FILE_IO
        assert conf[f"{CAT}.s3.endpoint"] == aws_env.endpoint
        assert not [k for k in conf if "access-key" in k or "secret" in k or "credentials" in k]
        _secret_nowhere_in_conf(spark, aws_env.secret_key, aws_env.access_key)
        assert _jvm_sees(spark, "AWS_SECRET_ACCESS_KEY", aws_env.secret_key), "the JVM did not get the environment"
        assert _jvm_sees(spark, "AWS_ACCESS_KEY_ID", aws_env.access_key)


# --- Spark with the credentials in a shared credentials file ---------------------------------------

def test_credentials_from_a_shared_credentials_file(s3_lake: S3Lake, jars: list[Path], aws_env: S3Store,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in the environment, only ``AWS_SHARED_CREDENTIALS_FILE`` naming a 0600 file: Spark reads.

    Nothing else could have authenticated: no key in the Spark conf or the JVM's environment, no
    config file, instance metadata disabled (:func:`aws_env`). (A wrong secret in the file is refused
    too, checked by hand: 403 after ~100 s, as Iceberg retries a failed metadata read 20 times with
    backoff, too slow for the suite.)"""
    from ztaudit.core.spark_session import spark_session

    creds = tmp_path / "credentials"
    creds.touch(mode=0o600)
    creds.write_text(f"[default]\naws_access_key_id = {aws_env.access_key}\n"
                     f"aws_secret_access_key = {aws_env.secret_key}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    assert s3_lake.expected is not None
    end_jvm()
    try:
        spark = spark_session(s3_lake.root, jars=jars, s3=_settings(aws_env))
        spark.sparkContext.setLogLevel("ERROR")
        getenv = spark.sparkContext._jvm.java.lang.System.getenv
        assert getenv("AWS_SECRET_ACCESS_KEY") is None and getenv("AWS_ACCESS_KEY_ID") is None
        assert _jvm_sees(spark, "AWS_SHARED_CREDENTIALS_FILE", str(creds))
        assert table_digest_spark(spark, TABLE) == arrow_digest(s3_lake.expected)
        _secret_nowhere_in_conf(spark, aws_env.secret_key, aws_env.access_key)
    finally:
        end_jvm()


# --- the Spark properties themselves (no JVM) ------------------------------------------------------

def test_the_s3_properties_and_no_credential_among_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, key_id = "s3cr3t-" + "9" * 33, "AKIA" + "Z" * 16
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    lake, jar = tmp_path / "lake", tmp_path / "x.jar"
    plain = spark_conf(lake, jars=[jar])
    conf = spark_conf(lake, jars=[jar], s3=S3Settings(endpoint="http://127.0.0.1:9", region="eu-west-3"))
    # Exactly these are added, nothing else changes; s3=None is the conf of before.
    assert {k: v for k, v in conf.items() if k not in plain} == {
        f"{CAT}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{CAT}.s3.endpoint": "http://127.0.0.1:9",
        f"{CAT}.s3.path-style-access": "true",
        f"{CAT}.client.region": "eu-west-3",
    }
    assert all(conf[k] == v for k, v in plain.items())
    assert not any(secret in k or secret in v or key_id in k or key_id in v for k, v in conf.items())
    assert "io-impl" not in " ".join(plain)
    # AWS itself: no endpoint property, virtual-hosted addressing.
    aws = spark_conf(lake, jars=[jar], s3=S3Settings(region="us-west-2", path_style=False))
    assert f"{CAT}.s3.endpoint" not in aws and aws[f"{CAT}.s3.path-style-access"] == "false"
    # pyiceberg's FileIO properties translate, and their credentials are dropped.
    from_py = S3Settings.from_pyiceberg({"s3.endpoint": "http://127.0.0.1:9", "s3.region": "us-east-1",
                                         "s3.force-virtual-addressing": "false", "s3.access-key-id": key_id,
                                         "s3.secret-access-key": secret})
    assert from_py == S3Settings("http://127.0.0.1:9", "us-east-1", True)
    assert secret not in repr(from_py)


@pytest.mark.parametrize("extra", [
    {f"{CAT}.s3.secret-access-key": "v"}, {f"{CAT}.s3.access-key-id": "v"}, {f"{CAT}.s3.session-token": "v"},
    {"spark.hadoop.fs.s3a.secret.key": "v"}, {"spark.hadoop.fs.s3a.access.key": "v"},
    {f"{CAT}.client.credentials-provider": "v"},
])
def test_a_credential_in_extra_is_refused(tmp_path: Path, extra: dict[str, str]) -> None:
    with pytest.raises(SparkUnavailable, match="must not carry credentials") as err:
        spark_conf(tmp_path / "lake", jars=[tmp_path / "x.jar"], extra=extra, s3=S3Settings("http://127.0.0.1:9"))
    assert next(iter(extra)) in str(err.value)


def test_an_endpoint_with_user_info_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(SparkUnavailable, match="user:password@") as err:
        spark_conf(tmp_path / "lake", jars=[tmp_path / "x.jar"], s3=S3Settings("http://AKIAX:hunter2@127.0.0.1:9"))
    assert "hunter2" not in str(err.value) and "AKIAX" not in str(err.value)
    with pytest.raises(SparkUnavailable, match="http"):
        spark_conf(tmp_path / "lake", jars=[tmp_path / "x.jar"], s3=S3Settings("s3://bucket"))


def test_the_jvm_environment_rule_is_documented() -> None:
    import ztaudit.core.spark_session as mod

    assert mod.__doc__ is not None
    for needle in ("AWS_ACCESS_KEY_ID", "AWS_SHARED_CREDENTIALS_FILE", "S3FileIO", "No credentials in the Spark conf"):
        assert needle in mod.__doc__


# --- a lake ztaudit itself wrote to S3 ---------------------------------------------------------------

def test_spark_reads_a_lake_ztaudit_wrote_on_s3_with_duckdbs_rows(jars: list[Path], aws_env: S3Store,
                                                                   tmp_path: Path) -> None:
    """``ztaudit ingest`` into a lake whose warehouse is on S3 (``lake.warehouse``); Spark, given only the
    lake folder (the S3 settings come from the lake's ``warehouse.json``), reads each table with the rows
    and checksum ztaudit's DuckDB views read."""
    import os

    from support.s3proxy import lake_env
    from support.spark import table_digest_duckdb

    from ztaudit.core.lake import open_lake
    from ztaudit.core.spark_session import spark_session

    lake = tmp_path / "lake"
    root = Path(__file__).resolve().parent.parent.parent
    env = {**os.environ, **lake_env(aws_env, "spark-ztaudit")}
    p = subprocess.run([str(root / ".venv" / "bin" / "ztaudit"), "ingest", "-q", "--lake", str(lake),
                        "--cluster", "demo", str(root / "sample_logs")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    tables = ("k8s_audit", "proxy_decision", "idp_event", "quarantine")
    con = open_lake(lake)
    duck = {t: table_digest_duckdb(con, t) for t in tables}
    con.close()
    assert duck["k8s_audit"][0] > 50
    end_jvm()
    session = spark_session(lake, jars=jars)  # no s3=: the lake says where its files are
    try:
        session.sparkContext.setLogLevel("ERROR")
        assert dict(session.sparkContext.getConf().getAll())[f"{CAT}.io-impl"] == S3_FILE_IO
        for t in tables:
            assert table_digest_spark(session, t) == duck[t], t
    finally:
        end_jvm()

"""A Spark session over the Iceberg lake: the one place ztaudit configures Spark (issue 16 item 8, issue 17).

:func:`spark_session` is called by whatever runs on Spark (the fidelity test of issue 16; ``detect
--engine spark`` of issue 17) once per process, before the first query. It returns a session whose
catalog ``ztaudit`` is the lake's own Iceberg catalog, so ``spark.table("ztaudit.lake.k8s_audit")``
(or ``lake.k8s_audit``: ``ztaudit`` is the default catalog) reads exactly the files of the table's
current snapshot, the same files DuckDB reads (:func:`ztaudit.core.iceberg_snapshot.snapshot_files`).

What it sets, and why:

* **The catalog.** Iceberg's ``SparkCatalog`` over ``org.apache.iceberg.jdbc.JdbcCatalog`` on
  ``jdbc:sqlite:LAKE/_iceberg/catalog.db``, named ``ztaudit`` like pyiceberg's ``SqlCatalog``: the
  JDBC catalog keeps every catalog's rows in the same two tables, told apart by ``catalog_name``, so
  the Spark catalog must carry the name pyiceberg wrote (Iceberg docs, "JDBC Catalog"). The
  warehouse is the same ``file://LAKE/_iceberg``.
* **``jdbc.schema-version=V1``.** pyiceberg 0.12's ``SqlCatalog`` creates ``iceberg_tables`` *with*
  the ``iceberg_type`` column (``'TABLE'`` on each row) and ``iceberg_namespace_properties``: that is
  the JDBC catalog's V1 layout (tables and views in one table). Iceberg's ``JdbcCatalog`` switches
  to V1 on its own when the column exists, whatever the property says; the property only decides
  what happens when it is missing (a catalog of pyiceberg < 0.10): V0 reads it view-less, V1 adds
  the column (``ALTER TABLE``, which pyiceberg reads too). V1 is stated so that Spark and pyiceberg
  agree on one layout; the test proves Spark leaves the catalog's tables as pyiceberg made them.
* **``cache-enabled=false``.** Iceberg's Spark catalog caches a loaded table (30 s by default), so
  a long-running session would not see the commits ``ztaudit consume`` makes meanwhile. Without the
  cache each query plans from the newest snapshot, as DuckDB's readers do.
* **Session time zone UTC**, like every DuckDB lake connection (docs/design.md §3): ``dt`` and day
  buckets are UTC days, and ``timestamptz`` values are shown and cast in UTC.
* **Local and closed.** ``local[2]`` by default; the UI is off; the driver binds and advertises
  ``127.0.0.1`` (``spark.driver.host``, ``spark.driver.bindAddress``, and ``SPARK_LOCAL_IP`` for the
  JVM when unset) so nothing listens beyond loopback; the jars are ``spark.jars`` from the local
  cache that ``scripts/spark-jars`` fills from Maven Central, never ``spark.jars.packages``, so no
  session fetches anything at run time.

**Tables on S3** (``s3=S3Settings(...)``; ``None``, the default, changes nothing above). A lake whose
tables live on S3 or an S3-compatible store (table location ``s3://BUCKET/PREFIX/_iceberg/<table>``,
data files ``s3://BUCKET/PREFIX/<table>/dt=.../<key>.parquet``) keeps its catalog in
``LAKE/_iceberg/catalog.db`` as before; only the files are read through Iceberg's own S3 client:

* ``io-impl=org.apache.iceberg.aws.s3.S3FileIO`` (its AWS SDK v2 is ``iceberg-aws-bundle``, which
  ``scripts/spark-jars`` fetches beside the runtime), not Hadoop's ``s3a``: no ``hadoop-aws`` on the
  classpath, and the paths are read exactly as written (``s3://``, ``+`` and ``=`` kept).
* ``s3.endpoint`` (when set: S3Proxy, MinIO, ...; unset = AWS's own endpoint of the region),
  ``s3.path-style-access`` (``true`` for a store without per-bucket DNS names, as pyiceberg's
  ``s3.force-virtual-addressing=false``), ``client.region``.
* **No credentials in the Spark conf, ever.** Spark prints its properties in logs, the event log and
  the UI, and PySpark hands them to ``spark-submit`` as ``--conf`` arguments, visible to every local
  user in the JVM's command line; so neither :func:`spark_conf` nor ``extra`` may carry a key id,
  secret or session token (:data:`SECRET_PROPERTY_MARKERS`; refused with :class:`SparkUnavailable`),
  nor may the endpoint carry ``user:password@``. S3FileIO given no ``s3.access-key-id`` asks the AWS
  SDK's default credentials chain, which reads the **environment of the JVM**: ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), else the shared credentials file
  ``AWS_SHARED_CREDENTIALS_FILE`` (default ``~/.aws/credentials``, profile ``AWS_PROFILE``), else
  web identity, container or instance credentials. PySpark launches the JVM with a copy of
  ``os.environ`` and keeps that JVM for the life of the process (``session.stop()`` does not end
  it): the variables must be set before the process's first Spark session, and a later change
  does not reach it. ``tests/core/test_spark_reads_s3.py`` proves both ways (variables, credentials
  file) against S3Proxy, and that the secret is in no Spark property.

Failure: without PySpark (the optional ``spark`` extra), without the jars or without the lake's
catalog it raises :class:`SparkUnavailable` or :class:`~ztaudit.core.errors.LakeError` (exit 2)
with the fix; nothing is started. An active session of this process configured for another lake is
refused (:class:`SparkUnavailable`): Spark keeps one session per JVM and its catalogs are fixed once
loaded, so reusing it would silently read the wrong lake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ztaudit.core import warehouse
from ztaudit.core.errors import LakeError, ZtauditError
from ztaudit.core.iceberg import CATALOG_NAME, ICEBERG_DIR, NAMESPACE, catalog_file, is_shared, recorded_catalog

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Driver address: every port Spark opens (driver RPC, block manager) is on loopback.
LOOPBACK: Final = "127.0.0.1"
#: The Spark property that names the session's catalog (the lake's, :func:`catalog_name`).
DEFAULT_CATALOG_KEY: Final = "spark.sql.defaultCatalog"
#: The Spark property that names the lake a session reads (compared when a session is reused).
CATALOG_URI_KEY: Final = f"spark.sql.catalog.{CATALOG_NAME}.uri"
#: Besides the lake, what a reused session must agree on: how it reads the files (local or S3, where).
_REUSE_SUFFIXES: Final = ("uri", "io-impl", "s3.endpoint", "s3.path-style-access", "client.region")


def catalog_name(lake: Path) -> str:
    """The Spark catalog name of ``lake``'s tables: ``ztaudit`` for the lake's own SQLite catalog, the
    name ``catalog.json`` records for one on PostgreSQL (``ztaudit-<12 hex>``). Iceberg's JDBC catalog
    keeps every catalog's rows in the same tables, told apart by that name, so Spark's catalog must
    carry it. In SQL it needs backticks (:func:`qualified`)."""
    if is_shared(lake):
        return recorded_catalog(lake)[1]
    return CATALOG_NAME


def qualified(spark: SparkSession, table: str) -> str:
    """```<catalog>`.lake.<table>`` for the session's own catalog (whatever the lake's catalog is called)."""
    name = spark.conf.get(DEFAULT_CATALOG_KEY, CATALOG_NAME) or CATALOG_NAME
    return f"`{name}`.{NAMESPACE}.{table}"


def _jdbc_postgresql(uri: str) -> tuple[str, str | None]:
    """(JDBC URL, user) of a PostgreSQL URI without password (``postgresql+psycopg2://USER@HOST:PORT/DB``).
    Query parameters other than ``sslmode`` are not carried over."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(uri)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k == "sslmode"]
    url = f"jdbc:postgresql://{host}:{parts.port or 5432}/{parts.path.strip('/')}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query)
    return url, parts.username
#: Iceberg's FileIO for ``s3://`` files (``iceberg-aws-bundle`` carries the AWS SDK it uses).
S3_FILE_IO: Final = "org.apache.iceberg.aws.s3.S3FileIO"
#: A Spark property whose name contains one of these (case-insensitive) carries a credential:
#: Iceberg's ``s3.access-key-id`` / ``s3.secret-access-key`` / ``s3.session-token`` /
#: ``client.credentials-provider.*``, Hadoop's ``fs.s3a.access.key`` / ``fs.s3a.secret.key`` /
#: ``fs.s3a.session.token``, and anything named like a secret or password.
SECRET_PROPERTY_MARKERS: Final = ("access-key", "access.key", "secret", "session-token", "session.token",
                                  "credentials-provider", "password")


class SparkUnavailable(ZtauditError):
    """Spark cannot be started here: PySpark or the jars are missing, or a session for another lake runs."""

    exit_code = 2


@dataclass(frozen=True)
class S3Settings:
    """Where the lake's ``s3://`` files are and how to address them; never credentials (module doc).

    ``endpoint``: ``http://127.0.0.1:PORT`` for S3Proxy or MinIO, ``None`` for AWS itself;
    ``region``: the SDK's signing region (S3Proxy and MinIO take ``us-east-1``); ``path_style``:
    ``http://HOST/BUCKET/KEY`` instead of ``http://BUCKET.HOST/KEY`` (needed where buckets have no
    DNS names, as on 127.0.0.1)."""

    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = True

    @classmethod
    def from_pyiceberg(cls, props: Mapping[str, str]) -> S3Settings:
        """The settings pyiceberg's ``PyArrowFileIO`` properties describe (``s3.endpoint``,
        ``s3.region``, ``s3.force-virtual-addressing``); any credentials among them are ignored."""
        virtual = str(props.get("s3.force-virtual-addressing", "false")).strip().lower() in ("true", "1", "yes")
        return cls(endpoint=props.get("s3.endpoint") or None, region=props.get("s3.region") or "us-east-1",
                   path_style=not virtual)

    def catalog_properties(self) -> dict[str, str]:
        """Iceberg catalog properties (without the ``spark.sql.catalog.<name>.`` prefix)."""
        props = {"io-impl": S3_FILE_IO, "client.region": self.region,
                 "s3.path-style-access": "true" if self.path_style else "false"}
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SparkUnavailable(f"the S3 endpoint {parts.scheme}://{parts.hostname or ''}... is not an "
                                       "http(s) URL", fix="give it as http://HOST:PORT or https://HOST")
            if parts.username is not None or parts.password is not None:
                # Never echo the URL: its user-info is the credential.
                raise SparkUnavailable("the S3 endpoint carries user:password@, which would put a credential "
                                       "into the Spark conf",
                                       fix="give the endpoint without it; the AWS SDK reads the credentials "
                                           "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                                           "AWS_SHARED_CREDENTIALS_FILE in the environment")
            props["s3.endpoint"] = self.endpoint
        return props


def _refuse_credentials(conf: Mapping[str, str]) -> None:
    """Raise when a property is named like a credential (:data:`SECRET_PROPERTY_MARKERS`); the
    message names the property, never its value."""
    bad = sorted(k for k in conf if any(m in k.lower() for m in SECRET_PROPERTY_MARKERS))
    if bad:
        raise SparkUnavailable(f"Spark properties must not carry credentials: {', '.join(bad)}",
                               fix="leave them out; the AWS SDK's default chain reads AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE from the "
                                   "environment of the process that starts Spark")


def spark_conf(lake: Path, *, master: str = "local[2]", jars: Sequence[Path],
               extra: Mapping[str, str] | None = None, s3: S3Settings | None = None) -> dict[str, str]:
    """The Spark properties of a session over ``lake`` (pure; :func:`spark_session` applies them).

    ``s3`` adds the catalog's S3FileIO properties (module doc). ``extra`` is applied last (a
    cluster's memory settings, say) and may override anything but may not carry a credential
    (:class:`SparkUnavailable`)."""
    root = Path(lake).resolve()
    db = catalog_file(root)
    shared = is_shared(root)
    if "?" in str(db) and not shared:  # sqlite-jdbc reads what follows '?' in its URL as connection options
        raise LakeError(f"the lake path {root} contains '?', which a SQLite JDBC URL cannot carry",
                        fix="move or link the lake to a path without '?'")
    name = catalog_name(root)
    cat = f"spark.sql.catalog.{name}"
    conf = {
        "spark.master": master,
        "spark.app.name": "ztaudit",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.jars": ",".join(str(Path(j).resolve()) for j in jars),
        "spark.sql.session.timeZone": "UTC",
        # No Hive metastore (and no metastore_db/ in the working directory); the lake is the catalog.
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        DEFAULT_CATALOG_KEY: name,
        cat: "org.apache.iceberg.spark.SparkCatalog",
        f"{cat}.type": "jdbc",
        f"{cat}.uri": f"jdbc:sqlite:{db}",
        f"{cat}.warehouse": (root / ICEBERG_DIR).as_uri(),
        f"{cat}.jdbc.schema-version": "V1",
        f"{cat}.cache-enabled": "false",
    }
    if shared:
        # The catalog on PostgreSQL (lake.catalog_uri): the URL and user catalog.json records; the
        # password never enters Spark's properties: the PostgreSQL JDBC driver reads libpq's password
        # file ($PGPASSFILE or ~/.pgpass) in the JVM, as psycopg2 does in Python.
        url, user = _jdbc_postgresql(recorded_catalog(root)[0])
        conf[f"{cat}.uri"] = url
        if user:
            conf[f"{cat}.jdbc.user"] = user
    if s3 is None:  # a lake whose warehouse is on S3 (lake.warehouse) says how to reach it
        wh = warehouse.of_lake(root)
        if wh is not None:
            s3 = S3Settings(endpoint=wh.endpoint, region=wh.region, path_style=wh.endpoint is not None)
    if s3 is not None:
        conf.update({f"{cat}.{k}": v for k, v in s3.catalog_properties().items()})
    conf.update(extra or {})
    _refuse_credentials(conf)
    return conf


def spark_session(lake: Path, *, master: str = "local[2]", jars: list[Path],
                  extra: Mapping[str, str] | None = None, s3: S3Settings | None = None) -> SparkSession:
    """A Spark session whose catalog ``ztaudit`` is ``lake``'s Iceberg catalog (see the module doc).

    ``jars`` is the classpath ``scripts/spark-jars`` prints (the Iceberg Spark runtime, the AWS
    bundle and the SQLite JDBC driver). ``s3``: the lake's tables are on S3 (module doc; the
    credentials come from the environment, never from here). Starting the JVM takes seconds (about
    5 s on 2 cores); callers keep the session and stop it with ``session.stop()`` when done."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable("PySpark is not installed", fix="pip install 'ztaudit[spark]'") from exc
    if not catalog_file(lake).is_file() and not is_shared(lake):
        raise LakeError(f"{lake} has no Iceberg catalog ({catalog_file(lake)})",
                        fix=f"Spark reads Iceberg lakes only: `ztaudit migrate --lake {lake}` converts a plain one")
    missing = [str(j) for j in jars if not Path(j).is_file()]
    if missing or not jars:
        raise SparkUnavailable(f"Spark jars missing: {', '.join(missing) or 'none given'}",
                               fix="run scripts/spark-jars and pass the classpath it prints")
    conf = spark_conf(lake, master=master, jars=jars, extra=extra, s3=s3)
    active = SparkSession.getActiveSession()
    if active is not None:
        name = conf[DEFAULT_CATALOG_KEY]
        uri_key = f"spark.sql.catalog.{name}.uri"
        if active.conf.get(DEFAULT_CATALOG_KEY, None) != name or active.conf.get(uri_key, None) != conf[uri_key]:
            raise SparkUnavailable(
                f"this process already runs a Spark session for {active.conf.get(uri_key, None) or 'another lake'}",
                fix="stop it (session.stop()) before opening another lake")
        for key in (f"spark.sql.catalog.{name}.{k}" for k in _REUSE_SUFFIXES):  # the same lake, other files
            if active.conf.get(key, None) != conf.get(key):
                raise SparkUnavailable(f"this process already runs a Spark session for this lake with {key}="
                                       f"{active.conf.get(key, None)}",
                                       fix="stop it (session.stop()) before opening the lake with other S3 settings")
        return active
    if master.startswith("local"):
        # The JVM picks its own address for what the properties above do not cover; keep it on loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()

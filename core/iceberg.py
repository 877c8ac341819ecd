"""The lake's tables as Apache Iceberg v2 tables (issue 16): the catalog and the lake's layout.

An Iceberg lake is a plain lake (the same deterministic ``LAKE/<table>/dt=YYYY-MM-DD/<key>.parquet``
files, written the same way by :class:`~ztaudit.core.sink.LakeSink`) plus an Iceberg catalog that
says which of those files *are* the table::

    LAKE/_iceberg/catalog.db                   pyiceberg's SQL catalog (SQLite), catalog "ztaudit"
    LAKE/_iceberg/catalog.json                 or: the catalog is on PostgreSQL (URI without password, name)
    LAKE/_iceberg/READY                        written once every table exists and (migrate) every file is in
    LAKE/_iceberg/<table>/metadata/...         each table's metadata JSON, manifest lists, manifests
    LAKE/_iceberg/plans/<table>.json           the file list of the snapshot last read (core/plan_cache.py)
    LAKE/<table>/dt=YYYY-MM-DD/<key>.parquet   the data files, each holding a DATE column ``dt``

Tables are ``lake.<table>`` for every table of :data:`~ztaudit.core.schema.TABLES`, format v2,
partitioned by ``identity(dt)`` (rows with no event time have ``dt`` NULL: the ``dt=unknown``
folder). Field ids are Iceberg's; files written without ids are read through the table's name
mapping (``schema.name-mapping.default``), which every engine honours (Iceberg spec, "Column
Projection"), so the same file serves DuckDB, pyiceberg and Spark. A lake is an Iceberg lake only
once ``READY`` exists (:func:`is_iceberg`): a ``migrate`` killed before it registered every file
leaves a plain lake that reads as before, not an Iceberg lake with empty tables.

The catalog is pyiceberg's SQL catalog: SQLite in the lake by default, or a PostgreSQL database when
the lake was created while ``lake.catalog_uri`` named one (``catalog.json`` records the URI without its
password and the lake's own catalog name, so several lakes share one database). The password is never
written to the lake and never appears in a message or log line (:func:`mask_secrets`). pyiceberg's
own commit retry is off (see :data:`TABLE_PROPERTIES`).

This module is the catalog and the lake's layout: opening and creating the tables, the commit lock,
which file belongs to which table and day. Writing files into the tables is
:mod:`ztaudit.core.iceberg_publish`; planning reads and the consumer's recorded offsets are
:mod:`ztaudit.core.iceberg_snapshot`.

Failure: every pyiceberg or catalog error surfaces as :class:`~ztaudit.core.errors.LakeError` (exit 2)
naming the lake and the fix (:func:`lake_error`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import pyarrow as pa

from ztaudit.core import catalog_uri, warehouse
from ztaudit.core.errors import LakeError
from ztaudit.core.files import HIGH_CARDINALITY, UNDATED, file_lock, fsync_dir, makedirs
from ztaudit.core.schema import TABLES

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)


class _NoMissingStatsWarning(logging.Filter):
    """Drop pyiceberg's "PyArrow statistics missing" warning: nested columns (lists, maps) and the
    high-cardinality ones never have Parquet statistics in our files, by design (core/files.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyArrow statistics missing")


logging.getLogger("pyiceberg.io.pyarrow").addFilter(_NoMissingStatsWarning())

#: The folder of the catalog and the tables' metadata inside a lake.
ICEBERG_DIR: Final = "_iceberg"
CATALOG_FILE: Final = "catalog.db"
#: Present instead of ``catalog.db`` when the lake's catalog is on PostgreSQL (``lake.catalog_uri``).
CATALOG_REF_FILE: Final = "catalog.json"
READY_FILE: Final = "READY"
LOCK_FILE: Final = "commit.lock"
CATALOG_NAME: Final = "ztaudit"
NAMESPACE: Final = "lake"
#: Attempts of one publish against a writer outside the lock (each reloads the table and recomputes).
COMMIT_RETRIES: Final = 20
#: How long a publish waits for another process's commit on the same lake.
LOCK_TIMEOUT_S: Final = 600.0
#: Table properties of every table: old metadata JSON files are deleted after a commit (keeping the
#: newest 20), appends merge manifests once 50 accumulated, so planning a scan stays bounded in a lake
#: that takes one commit per flush round (Iceberg table properties, "Write properties").
TABLE_PROPERTIES: Final = {
    "format-version": "2",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "50",
    # No retry inside pyiceberg: its retry re-applies our appends on top of the other writer's commit
    # without asking whether a path is in it already (measured: two writers doubled 4 of 24 files).
    # A lost race raises instead, and :func:`~ztaudit.core.iceberg_publish.publish` recomputes its diff by
    # path on the new head.
    "commit.retry.num-retries": "0",
    # The sink writes no Parquet statistics for these (core/files.py); none to copy into manifests.
    **{f"write.metadata.metrics.column.{c}": "none" for c in sorted(HIGH_CARDINALITY)},
}
#: Description of the ``dt`` column every file carries.
DT_DOC: Final = "UTC day of the row's partition time (the table's event time); NULL when it has none."
#: A ``dt=`` folder name ztaudit writes: ``YYYY-MM-DD`` (``20261120`` is not one, though Python parses it).
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

#: pyiceberg writes metadata files with the process umask; lake files are owner-only.
_UMASK: Final = 0o077
_umask_lock = threading.Lock()
#: Catalogs opened by this process, by lake path (opening one costs ~0.1-0.4 s); tables known to
#: exist with the current schema and properties.
_catalogs: dict[str, SqlCatalog] = {}
#: Passwords of the catalog URIs this process used: masked out of every message (:func:`mask_secrets`).
_secrets: set[str] = set()
_ensured: set[tuple[str, str, tuple[str, ...]]] = set()
_cache_lock = threading.Lock()


def catalog_file(lake: Path) -> Path:
    """The SQLite catalog of ``lake`` (whether or not it exists)."""
    return Path(lake) / ICEBERG_DIR / CATALOG_FILE


def catalog_ref(lake: Path) -> Path:
    """The file that says ``lake``'s catalog is on PostgreSQL (whether or not it exists)."""
    return Path(lake) / ICEBERG_DIR / CATALOG_REF_FILE


def catalog_state(lake: Path) -> tuple[bool, bool]:
    """(marked ``READY``, a catalog is there: ``catalog.db`` or ``catalog.json``) of ``lake``. Raises
    :class:`LakeError` when ``_iceberg`` exists but cannot be read (permissions, an I/O error): the
    lake's kind cannot be told then. Called by :func:`is_iceberg` and by ``migrate``."""
    folder = Path(lake) / ICEBERG_DIR
    try:
        return ((folder / READY_FILE).is_file(),
                catalog_file(lake).is_file() or catalog_ref(lake).is_file())
    except OSError as exc:
        raise LakeError(f"cannot read the Iceberg catalog folder {folder}: {exc.strerror or exc}",
                        fix="make it readable (and writable, to write) by the user running ztaudit") from None


def is_iceberg(lake: Path) -> bool:
    """Whether ``lake`` is an Iceberg lake: its catalog exists and is complete (``READY``). Called by
    every reader and writer to choose between the snapshot and the plain folders.

    Raises :class:`LakeError` when it cannot tell, rather than answer "plain": ``_iceberg`` exists but
    cannot be read (:func:`catalog_state`), or ``READY`` is there and the catalog is gone. Taken for a
    plain lake, such a lake would be read from its folders (files no snapshot lists, or that
    compaction or retention unlisted) and written without registering anything."""
    ready, has_catalog = catalog_state(lake)
    if ready and not has_catalog:
        raise LakeError(f"{lake} is an Iceberg lake ({Path(lake) / ICEBERG_DIR / READY_FILE} exists) but its "
                        f"catalog {catalog_file(lake)} is gone",
                        fix=f"restore it from a backup, or register the lake's files again: ztaudit migrate "
                            f"--lake {lake}")
    return ready and has_catalog


def is_shared(lake: Path) -> bool:
    """Whether ``lake``'s catalog is on PostgreSQL (shared by machines: no ``flock``, retries only).
    Called before every commit; never raises."""
    try:
        return not catalog_file(lake).is_file() and catalog_ref(lake).is_file()
    except OSError:
        return False


def mask_secrets(text: str) -> str:
    """``text`` without any catalog password this process knows, nor any ``user:password@`` of a URI.
    Applied to every message and log line that may quote the catalog's URI or a driver's error."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return catalog_uri.mask_uri(text)


def _public_uri(uri: str) -> str:
    """``uri`` without its password (what ``catalog.json`` records and messages show)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if catalog_uri.query_secrets(uri):  # ?password=...: drop the parameter, keep the others
        from urllib.parse import parse_qsl, urlencode

        kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k.lower() not in catalog_uri.QUERY_SECRETS]
        parts = parts._replace(query=urlencode(kept))
    if parts.password is None:
        return urlunsplit(parts)
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{host}"))


def _remember_secret(uri: str) -> None:
    """Add the password of ``uri`` (if any) to the strings :func:`mask_secrets` removes."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    for secret in [password, *catalog_uri.query_secrets(uri)]:
        if secret:
            _secrets.update({secret, unquote(secret)})


def _write_ref(lake: Path, uri: str) -> None:
    """Record that ``lake``'s catalog is the PostgreSQL database of ``uri`` (without its password),
    under a catalog name of its own. Called by :func:`create` for a new lake. Exclusive create: of two
    processes making the lake, the first one's name wins and the other reads it."""
    import json
    import uuid

    ref = catalog_ref(lake)
    body = json.dumps({"uri": _public_uri(uri), "name": f"{CATALOG_NAME}-{uuid.uuid4().hex[:12]}"}) + "\n"
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    with owner_only():
        tmp.write_text(body)
    try:
        os.link(tmp, ref)  # fails if another process wrote it first: theirs stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(ref.parent)


def _same_database(a: str, b: str) -> bool:
    from urllib.parse import urlsplit

    x, y = urlsplit(a), urlsplit(b)
    return ((x.hostname, x.port or 5432, x.username, x.path.strip("/"))
            == (y.hostname, y.port or 5432, y.username, y.path.strip("/")))


def recorded_catalog(lake: Path) -> tuple[str, str]:
    """(URI without password, catalog name) that ``catalog.json`` records for a lake whose catalog is on
    PostgreSQL: what another engine (Spark's JDBC catalog) is configured from. Raises :class:`LakeError`
    when the file is unreadable."""
    import json

    try:
        ref = json.loads(catalog_ref(lake).read_text())
        return _public_uri(str(ref["uri"])), str(ref["name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LakeError(f"cannot read {catalog_ref(lake)}: {type(exc).__name__}",
                        fix="restore the file from a backup of the lake") from None


def _shared_target(lake: Path) -> tuple[str, str]:
    """(URI, with the password when one is configured; catalog name) of a lake whose catalog is on
    PostgreSQL. The configured ``lake.catalog_uri`` supplies the password when it names the same
    database; without one, psycopg2 finds it as libpq does (``~/.pgpass``, ``$PGPASSFILE``). Raises
    :class:`LakeError` when ``catalog.json`` is unreadable or the configured URI names another database."""
    import json

    try:
        ref = json.loads(catalog_ref(lake).read_text())
        recorded, name = str(ref["uri"]), str(ref["name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LakeError(f"cannot read {catalog_ref(lake)}: {type(exc).__name__}",
                        fix="restore the file from a backup of the lake") from None
    configured = catalog_uri.configured()
    if not configured:
        return recorded, name
    _remember_secret(configured)
    if not _same_database(configured, recorded):
        raise LakeError(f"the Iceberg catalog of {lake} is in {mask_secrets(recorded)}, and lake.catalog_uri names "
                        f"{mask_secrets(_public_uri(configured))}",
                        fix="set lake.catalog_uri to the lake's database, or unset it (the lake names its own)")
    return configured, name


def iceberg_arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema pyiceberg turns into ``table``'s Iceberg schema: the declared columns
    (:data:`~ztaudit.core.schema.TABLES`, descriptions as Iceberg ``doc``) and ``dt`` DATE."""
    fields = [pa.field(f.name, f.type, nullable=True,
                       metadata={b"doc": (f.metadata or {}).get(b"description", b"")})
              for f in TABLES[table]]
    fields.append(pa.field("dt", pa.date32(), nullable=True, metadata={b"doc": DT_DOC.encode()}))
    return pa.schema(fields)


@contextmanager
def owner_only() -> Iterator[None]:
    """Create the catalog's and metadata files 0600 (umask 077) while the block runs. The umask is
    process-wide; another thread creating a file meanwhile gets stricter modes, never looser."""
    with _umask_lock:
        old = os.umask(_UMASK)
        try:
            yield
        finally:
            os.umask(old)


@contextmanager
def commit_lock(lake: Path) -> Iterator[None]:
    """Hold the lake's commit lock (``_iceberg/commit.lock``) while the block runs: one committer at a
    time among the processes of this machine. Waits up to :data:`LOCK_TIMEOUT_S`, then LakeError."""
    def busy() -> Exception:
        return LakeError(f"another process has held the commit lock of {lake} for {LOCK_TIMEOUT_S:.0f} s",
                         fix="check for a hung ztaudit process on this lake (its files stay durable)")

    with file_lock(Path(lake) / ICEBERG_DIR / LOCK_FILE, timeout=LOCK_TIMEOUT_S, busy=busy):
        yield


def lake_location(lake: Path) -> str:
    """Where the tables' metadata folders are: ``LAKE/_iceberg`` (absolute), or
    ``s3://BUCKET/PREFIX/_iceberg`` for a lake whose warehouse is on S3."""
    wh = warehouse.of_lake(lake)
    return f"{wh.uri}/{ICEBERG_DIR}" if wh is not None else str(Path(lake).resolve() / ICEBERG_DIR)


def _io_properties(lake: Path) -> dict[str, str]:
    """pyiceberg FileIO properties of the lake's warehouse (none for the lake folder; no credential)."""
    wh = warehouse.of_lake(lake)
    return wh.iceberg_properties() if wh is not None else {}


def file_key_of(lake: Path, path: PurePath) -> str:
    """The path or URI a manifest records for the lake file ``path``: its resolved local path, or
    ``s3://BUCKET/KEY`` for an object of the lake's S3 warehouse (``BUCKET/KEY``)."""
    wh = warehouse.of_lake(lake)
    return wh.object_uri(path) if wh is not None else str(Path(path).resolve())


def data_root(lake: Path) -> PurePath:
    """Where the tables' ``dt=`` folders are: the lake folder, or ``BUCKET/PREFIX`` on S3."""
    wh = warehouse.of_lake(lake)
    return Path(lake).resolve() if wh is None else wh.root


def open_catalog(lake: Path) -> SqlCatalog:
    """pyiceberg's SQL catalog of ``lake``, opened once per process: the SQLite file in the lake
    (:func:`create` makes it and the tables), or the PostgreSQL database ``catalog.json`` names
    (:func:`_shared_target`). Raises :class:`LakeError` when the catalog cannot be opened (for
    PostgreSQL: a server down, a refused password, a malformed URI): one line naming the lake, the URI
    without its password and the fix, never a traceback or the password."""
    from pyiceberg.catalog.sql import SqlCatalog

    path = catalog_file(lake).resolve()
    with _cache_lock:
        cached = _catalogs.get(str(path))
        if cached is not None:
            return cached
        if is_shared(lake):
            shared = _open_shared(lake)
            _catalogs[str(path)] = shared
            return shared
        if catalog_uri.configured():
            # the setting chooses the catalog of a *new* lake; this one has had its own since it was made
            log.warning("iceberg: lake.catalog_uri is set, but %s keeps its own SQLite catalog (%s), made "
                        "before: the setting applies to lakes created with it, and writers on other machines "
                        "must not share this one", lake, path)
        hollow = _hollow_catalog(path) if (Path(lake) / ICEBERG_DIR / READY_FILE).is_file() else None
        if hollow:
            # pyiceberg would make its tables in it and every table would read as empty: "no events"
            raise LakeError(f"the Iceberg catalog {path} of this lake cannot be its catalog: {hollow}",
                            fix=f"restore it from a backup, or register the lake's files again: ztaudit migrate "
                                f"--lake {lake}")
        try:
            with owner_only():
                # SQLAlchemy decodes %XX in the URL's path: quote it, so '%', ' ' and '#' survive.
                catalog = SqlCatalog(CATALOG_NAME, uri="sqlite:///" + quote(str(path), safe="/"),
                                     warehouse=lake_location(lake), **_io_properties(lake))
        except Exception as exc:
            raise LakeError(f"cannot open the Iceberg catalog {path}: {exc}",
                            fix=f"check that the lake is readable; `ztaudit migrate --lake {lake}` recreates "
                                "it") from exc
        _catalogs[str(path)] = catalog
        return catalog


def _hollow_catalog(path: Path) -> str | None:
    """Why the SQLite file ``path`` cannot be the catalog of a lake that is ``READY`` (emptied,
    replaced by another file, its tables gone), read without writing (``mode=ro``); None when it may
    be, or when it cannot tell (locked by a writer, unreadable: opening it then says why)."""
    try:
        if path.stat().st_size == 0:
            return "it is empty (0 bytes)"
        with closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=5.0)) as con:
            (n,) = con.execute("SELECT count(*) FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ?",
                               (CATALOG_NAME, NAMESPACE)).fetchone()
    except sqlite3.DatabaseError as exc:
        said = str(exc)
        if "no such table" in said:
            return "it holds no Iceberg catalog"
        if "not a database" in said:
            return "it is not a SQLite database"
        return None
    except (OSError, ValueError):
        return None
    return None if n else "it lists none of the lake's tables"


def _open_shared(lake: Path) -> SqlCatalog:
    """Open the PostgreSQL catalog of ``lake`` (called by :func:`open_catalog` under its lock); see there."""
    from pyiceberg.catalog.sql import SqlCatalog

    uri, name = _shared_target(lake)
    _remember_secret(uri)
    last: Exception | None = None
    for attempt in range(3):  # two processes creating the catalog's own tables at once: one retries
        try:
            catalog = SqlCatalog(name, uri=uri, warehouse=lake_location(lake), pool_pre_ping="true",
                                 **_io_properties(lake))
            with catalog.engine.connect():
                pass
            return catalog
        except Exception as exc:  # OperationalError (server down, auth), ArgumentError (URI), ImportError
            last = exc
            if type(exc).__name__ not in ("IntegrityError", "ProgrammingError"):
                break
            time.sleep(0.1 * (attempt + 1))
    detail = mask_secrets(" ".join(str(getattr(last, "orig", None) or last).split()))[:400]
    raise LakeError(f"cannot open the Iceberg catalog of {lake} at {mask_secrets(_public_uri(uri))}: "
                    f"{type(last).__name__}: {detail}",
                    fix="check that PostgreSQL is up and lake.catalog_uri is right; the password comes from "
                        "~/.pgpass, $PGPASSFILE or the URI in $ZTAUDIT_LAKE_CATALOG_URI") from None


def forget_catalog(lake: Path) -> None:
    """Drop this process's cached catalog of ``lake`` (``migrate`` after it recreated the catalog)."""
    path = str(catalog_file(lake).resolve())
    with _cache_lock:
        dropped = _catalogs.pop(path, None)
        if dropped is not None and dropped.engine.dialect.name != "sqlite":
            dropped.engine.dispose()  # a PostgreSQL pool: close its connections now, not at exit
        for key in [k for k in _ensured if k[0] == path]:
            _ensured.discard(key)


def identifier(table: str) -> tuple[str, str]:
    return (NAMESPACE, table)


def lake_error(lake: Path, what: str, exc: Exception) -> LakeError:
    return LakeError(mask_secrets(f"Iceberg catalog of {lake}: {what}: {type(exc).__name__}: {exc}"),
                     fix=f"run the command again; if it persists, `ztaudit migrate --lake {lake}` registers the "
                         "lake's files again")


def ensure_table(catalog: SqlCatalog, lake: Path, table: str) -> Table:
    """Load ``lake.<table>``, creating it (partitioned by ``identity(dt)``) if it does not exist, and
    adding any column the code declares that the table lacks (Iceberg schema evolution: files written
    before read it as NULL), with current properties and name mapping. Called under the commit lock
    (:func:`create`, :func:`~ztaudit.core.iceberg_publish.publish`); the checks are made once per process
    and table."""
    from pyiceberg.exceptions import NoSuchTableError

    wanted = iceberg_arrow_schema(table)
    key = (str(catalog_file(lake).resolve()), table, tuple(wanted.names))
    if key in _ensured:
        return catalog.load_table(identifier(table))
    with owner_only():
        try:
            tbl = catalog.load_table(identifier(table))
        except NoSuchTableError:
            tbl = catalog.create_table_if_not_exists(
                identifier(table), schema=wanted, location=f"{lake_location(lake)}/{table}",
                properties=TABLE_PROPERTIES)
            if not tbl.spec().fields and tbl.metadata.name_mapping() is None:
                # a new table: its partition spec and name mapping in one commit (each metadata
                # version costs a copy of the metadata; a new lake makes ten tables)
                from pyiceberg.table import TableProperties

                with tbl.transaction() as tx:
                    with tx.update_spec() as spec:
                        spec.add_identity("dt")
                    tx.set_properties({TableProperties.DEFAULT_NAME_MAPPING:
                                       tbl.schema().name_mapping.model_dump_json()})
                tbl = catalog.load_table(identifier(table))
        if not tbl.spec().fields:
            with tbl.update_spec() as spec:
                spec.add_identity("dt")
            tbl = catalog.load_table(identifier(table))
        have = {f.name for f in tbl.schema().fields}
        if any(f.name not in have for f in wanted):
            with tbl.update_schema() as upd:
                upd.union_by_name(wanted)
            tbl = _set_name_mapping(catalog, catalog.load_table(identifier(table)))
        elif tbl.metadata.name_mapping() is None:
            tbl = _set_name_mapping(catalog, tbl)
        props = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version"}
        if any(tbl.properties.get(k) != v for k, v in props.items()):
            # a table made by an earlier version of this module: bring its properties up to date
            tbl.transaction().set_properties(props).commit_transaction()
            tbl = catalog.load_table(identifier(table))
    check_location(lake, tbl)
    _ensured.add(key)
    return tbl


def _set_name_mapping(catalog: SqlCatalog, tbl: Table) -> Table:
    """Store the current schema's name mapping, by which engines read our files (they carry no field
    ids) after each schema change; returns the reloaded table."""
    from pyiceberg.table import TableProperties

    mapping = tbl.schema().name_mapping.model_dump_json()
    tbl.transaction().set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping}).commit_transaction()
    return catalog.load_table(tbl.name())


def check_location(lake: Path, tbl: Table) -> None:
    """Refuse a table whose metadata lives outside this lake: the lake was copied or moved, and its
    manifests name the files at the old place (absolute paths, as the Iceberg spec requires)."""
    here = lake_location(lake)
    loc = local_path(tbl.location())
    if loc != here and not loc.startswith(here + "/"):
        raise LakeError(f"the Iceberg tables of {lake} were made for another place ({loc}): the lake was "
                        "copied or moved", fix=f"register its files at the new place: ztaudit migrate --lake {lake}")


def create(lake: Path, *, ready: bool = True) -> None:
    """Make ``lake``'s catalog, namespace and every table (idempotent, safe against other processes).

    ``ready`` writes the ``READY`` marker at once (a new, empty lake); ``migrate`` passes False and
    calls :func:`mark_ready` after it registered every file. Registers nothing itself."""
    from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError

    makedirs(Path(lake) / ICEBERG_DIR)
    with commit_lock(lake):
        wanted = warehouse.configured()  # LakeError for a malformed lake.warehouse, before anything is made
        if not catalog_file(lake).is_file() and not catalog_ref(lake).is_file():
            if wanted is not None:  # first: a refused store leaves no catalog behind to pin the folder
                warehouse.record(lake, wanted)
            uri = catalog_uri.configured()  # read only here and for a PostgreSQL lake: the default stays fast
            if uri:
                _remember_secret(uri)
                _write_ref(lake, uri)
        elif wanted is not None and warehouse.of_lake(lake) is None:
            log.warning("iceberg: lake.warehouse is set, but %s keeps its files in its own folder, as it was "
                        "made: the setting applies to lakes created with it", lake)
        catalog = open_catalog(lake)
        for attempt in range(COMMIT_RETRIES):
            try:
                with owner_only():
                    try:
                        catalog.create_namespace(NAMESPACE)
                    except NamespaceAlreadyExistsError:
                        pass
                for table in TABLES:
                    ensure_table(catalog, lake, table)
                break
            except LakeError:
                raise
            except CommitFailedException:
                # another machine creating the same lake's tables (shared catalog): reload, go on from theirs
                time.sleep(backoff(attempt))
            except Exception as exc:
                raise lake_error(lake, "creating the tables", exc) from exc
        try:
            os.chmod(catalog_file(lake), 0o600)
        except OSError:
            pass
        if ready:
            mark_ready(lake)


def mark_ready(lake: Path) -> None:
    """Write ``_iceberg/READY``: from now on readers and writers treat ``lake`` as an Iceberg lake."""
    marker = Path(lake) / ICEBERG_DIR / READY_FILE
    with owner_only():
        marker.write_text("every table exists; every file of the lake was registered when this was written\n")
    fsync_dir(marker.parent)


def local_path(uri: str) -> str:
    """A data or metadata file's local path from its URI (``file:///...``) or bare path."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def valid_day(day: str) -> bool:
    """Whether ``day`` names a ``dt=`` folder ztaudit writes: ``YYYY-MM-DD`` (a real date) or ``unknown``."""
    if day == UNDATED:
        return True
    if not _DAY.fullmatch(day):
        return False
    try:
        date.fromisoformat(day)
    except ValueError:
        return False
    return True


def epoch_day(day: str) -> int | None:
    """The Iceberg partition value of ``identity(dt)`` for a folder day: days since 1970-01-01."""
    return None if day == UNDATED else (date.fromisoformat(day) - date(1970, 1, 1)).days


def table_day(lake: Path, path: PurePath) -> tuple[str, str] | None:
    """``(table, day)`` of a data file path under ``lake`` (``LAKE/<table>/dt=<day>/<name>.parquet``, or
    ``BUCKET/PREFIX/<table>/...`` for a lake on S3), or None for anything else (a foreign folder name, a
    file elsewhere)."""
    root = data_root(lake)
    try:
        rel = (Path(path).resolve() if isinstance(root, Path) else path).relative_to(root)
    except ValueError:
        return None
    if len(rel.parts) != 3 or rel.parts[0] not in TABLES or not rel.parts[1].startswith("dt="):
        return None
    if not rel.parts[2].endswith(".parquet") or rel.parts[2].startswith("."):
        return None
    day = rel.parts[1][3:]
    return (rel.parts[0], day) if valid_day(day) else None


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a lost commit race: full jitter over an
    exponential bound (20 ms doubling, at most 2 s), so racing writers spread out instead of colliding
    again in step."""
    return float(min(2.0, 0.02 * (2 ** attempt)) * random.random())  # noqa: S311 (jitter, not a secret)



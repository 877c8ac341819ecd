"""The lake's tables as Apache Iceberg v2 tables (issue 16): the catalog, publishing files, planning reads.

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

**Writing.** A writer makes its files durable (temp file, fsync, rename) exactly as in a plain lake,
then calls :func:`publish` at its own durability point (the consumer once per flush round, before it
commits Kafka offsets; ``ingest`` every few seconds and at the end; ``detect``, ``compact`` and
``serve`` when done) with the files it **added** and the files it **removes**, and deletes the removed
files only after the commit: a reader of the previous snapshot never meets a listed file that is gone.
Only what a writer names is registered, so another process's unpublished files stay invisible. One
commit per table touched, carrying the caller's summary properties (the Kafka offsets,
``ztaudit.offsets.<topic>.<partition>``). A path is registered at most once: an added path the
snapshot already lists is replaced (a replay rewrites the same deterministic name). Every added
file's ``dt`` must be its folder's day (else :class:`LakeError`), so looking a path up among the
files of its day's partition finds it wherever it was registered.

Commits of the processes on one machine are serialised by an ``flock`` on ``_iceberg/commit.lock``
(the SQLite catalog lives on one machine anyway); the catalog's compare-and-swap on the metadata
location still guards against anything else, and a lost race reloads, recomputes and retries
(:data:`COMMIT_RETRIES`, jittered exponential backoff). A lake created while ``lake.catalog_uri``
names a PostgreSQL database keeps its catalog there (``catalog.json`` records the URI without its
password and the lake's own catalog name, so several lakes share one database): writers on several
machines cannot share an ``flock``, so there the compare-and-swap and that retry are the only
serialisation (a lost race recomputes its diff by path on the new head, so a file the other writer
registered meanwhile is replaced, never listed twice). The password is never written to the lake
and never appears in a message or log line (:func:`_mask`). pyiceberg's own retry is off (see
:data:`TABLE_PROPERTIES`). Each table keeps at most ``MAX_SNAPSHOTS + 9`` snapshots: the commit that
brings it to ``MAX_SNAPSHOTS + 10`` expires the oldest down to :data:`MAX_SNAPSHOTS` (:func:`_expire_beyond_bound`),
so a table that takes a commit per flush round stays cheap to commit to (measured: 1.7 s per commit
at 460 snapshots, 0.13 s at 100, 0.07 s at 20) and ``maintain --expire-snapshots`` is for shorter
histories.

**Reading.** :func:`snapshot_files` lists the data files of the current snapshot, optionally only
those of a ``dt`` range (Iceberg prunes manifests by partition summaries); DuckDB reads exactly that
list (``read_parquet([...])``, :mod:`ztaudit.core.catalog`), never a glob. Manifests hold absolute
paths (the Iceberg spec has no relative ones): a lake copied or moved elsewhere is refused with the
fix (``ztaudit migrate`` registers its files again at the new place).

Failure: every pyiceberg or catalog error surfaces as :class:`~ztaudit.core.errors.LakeError` (exit 2)
naming the lake and the fix; the data files of a failed publish stay durable, and the next publish of
the same files (a replay) or ``ztaudit migrate`` registers them.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import pyarrow as pa

from ztaudit.core import catalog_uri, plan_cache, warehouse
from ztaudit.core.errors import LakeError
from ztaudit.core.files import HIGH_CARDINALITY, UNDATED, file_lock, fsync_dir, makedirs
from ztaudit.core.schema import TABLES

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.manifest import DataFile
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
#: Snapshot summary keys of the Kafka offsets a publish made durable: ``<prefix><topic>.<partition>``.
OFFSETS_PREFIX: Final = "ztaudit.offsets."
#: ... and the offset the round started at: ``<prefix><topic>.<partition>`` (not a prefix of the above).
STARTS_PREFIX: Final = "ztaudit.offsets_from."
#: Attempts of one publish against a writer outside the lock (each reloads the table and recomputes).
COMMIT_RETRIES: Final = 20
#: How long a publish waits for another process's commit on the same lake.
LOCK_TIMEOUT_S: Final = 600.0
#: With a shared (PostgreSQL) catalog, unreferenced metadata files younger than this are kept: a writer
#: on another machine may have written its manifests and not committed them yet.
SHARED_METADATA_GRACE_S: Final = 600.0
#: Metadata files (manifest lists, manifests) that only expired snapshots used are deleted by the commits'
#: own expiry (and by ``maintain``) once they were *written* this long ago: readers take no lock, and one
#: may be planning a recent snapshot. (A snapshot written long ago that a burst of commits expires is
#: not covered: its reader would have to have planned it just before the burst.)
READER_GRACE_S: Final = 60.0
#: Snapshots kept per table by the commits themselves (the newest; see the module docstring). Every
#: commit pays for the history: each read of pyiceberg 0.12's ``Transaction.table_metadata`` replays the
#: staged updates and deep-copies the whole table metadata, snapshot list included, and one append
#: reads it about 18 times (the per-data-file copies of apache/iceberg-python#2673 were fixed in #2674;
#: the proposed caches of this one, #3302 and #3784, were closed unmerged). ``bench/iceberg_commit.py``:
#: 68-75 ms per commit in steady state at this bound, 130 ms at the earlier bound of 100. The history
#: it buys is short anyway (minutes of a busy consumer); a round older than the bound only means a
#: replay after a crash, made idempotent by the consumer's recovery (:mod:`ztaudit.pipeline.consume.recovery`),
#: instead of a skip (:func:`last_rounds`).
MAX_SNAPSHOTS: Final = 20
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
    # A lost race raises instead, and :func:`publish` recomputes its diff by path on the new head.
    "commit.retry.num-retries": "0",
    # The sink writes no Parquet statistics for these (core/files.py); none to copy into manifests.
    **{f"write.metadata.metrics.column.{c}": "none" for c in sorted(HIGH_CARDINALITY)},
}
#: Description of the ``dt`` column every file carries.
DT_DOC: Final = "UTC day of the row's partition time (the table's event time); NULL when it has none."
#: A ``dt=`` folder name ztaudit writes: ``YYYY-MM-DD`` (``20261120`` is not one, though Python parses it).
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

#: pyiceberg writes metadata files with the process umask; lake files are owner-and-group only.
_UMASK: Final = 0o027
_umask_lock = threading.Lock()
#: Catalogs opened by this process, by lake path (opening one costs ~0.1-0.4 s); tables known to
#: exist with the current schema and properties.
_catalogs: dict[str, SqlCatalog] = {}
#: Passwords of the catalog URIs this process used: masked out of every message (:func:`_mask`).
_secrets: set[str] = set()
_ensured: set[tuple[str, str, tuple[str, ...]]] = set()
_cache_lock = threading.Lock()


def catalog_file(lake: Path) -> Path:
    """The SQLite catalog of ``lake`` (whether or not it exists)."""
    return Path(lake) / ICEBERG_DIR / CATALOG_FILE


def catalog_ref(lake: Path) -> Path:
    """The file that says ``lake``'s catalog is on PostgreSQL (whether or not it exists)."""
    return Path(lake) / ICEBERG_DIR / CATALOG_REF_FILE


def is_iceberg(lake: Path) -> bool:
    """Whether ``lake`` is an Iceberg lake: its catalog exists and is complete (``READY``). Called by
    every reader and writer to choose between the snapshot and the plain folders; never raises."""
    try:
        return ((catalog_file(lake).is_file() or catalog_ref(lake).is_file())
                and (Path(lake) / ICEBERG_DIR / READY_FILE).is_file())
    except OSError:
        return False


def is_shared(lake: Path) -> bool:
    """Whether ``lake``'s catalog is on PostgreSQL (shared by machines: no ``flock``, retries only).
    Called before every commit; never raises."""
    try:
        return not catalog_file(lake).is_file() and catalog_ref(lake).is_file()
    except OSError:
        return False


def _mask(text: str) -> str:
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
    """Add the password of ``uri`` (if any) to the strings :func:`_mask` removes."""
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
        raise LakeError(f"the Iceberg catalog of {lake} is in {_mask(recorded)}, and lake.catalog_uri names "
                        f"{_mask(_public_uri(configured))}",
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
    """Create the catalog's and metadata files 0640 (umask 027) while the block runs. The umask is
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


def _location(lake: Path) -> str:
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
        try:
            with owner_only():
                # SQLAlchemy decodes %XX in the URL's path: quote it, so '%', ' ' and '#' survive.
                catalog = SqlCatalog(CATALOG_NAME, uri="sqlite:///" + quote(str(path), safe="/"),
                                     warehouse=_location(lake), **_io_properties(lake))
        except Exception as exc:
            raise LakeError(f"cannot open the Iceberg catalog {path}: {exc}",
                            fix="check that the lake is readable; `ztaudit migrate --lake DIR` recreates it") from exc
        _catalogs[str(path)] = catalog
        return catalog


def _open_shared(lake: Path) -> SqlCatalog:
    """Open the PostgreSQL catalog of ``lake`` (called by :func:`open_catalog` under its lock); see there."""
    from pyiceberg.catalog.sql import SqlCatalog

    uri, name = _shared_target(lake)
    _remember_secret(uri)
    last: Exception | None = None
    for attempt in range(3):  # two processes creating the catalog's own tables at once: one retries
        try:
            catalog = SqlCatalog(name, uri=uri, warehouse=_location(lake), pool_pre_ping="true",
                                 **_io_properties(lake))
            with catalog.engine.connect():
                pass
            return catalog
        except Exception as exc:  # OperationalError (server down, auth), ArgumentError (URI), ImportError
            last = exc
            if type(exc).__name__ not in ("IntegrityError", "ProgrammingError"):
                break
            time.sleep(0.1 * (attempt + 1))
    detail = _mask(" ".join(str(getattr(last, "orig", None) or last).split()))[:400]
    raise LakeError(f"cannot open the Iceberg catalog of {lake} at {_mask(_public_uri(uri))}: "
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


def _identifier(table: str) -> tuple[str, str]:
    return (NAMESPACE, table)


def _wrap(lake: Path, what: str, exc: Exception) -> LakeError:
    return LakeError(_mask(f"Iceberg catalog of {lake}: {what}: {type(exc).__name__}: {exc}"),
                     fix="run the command again; if it persists, `ztaudit migrate --lake DIR` registers the "
                         "lake's files again")


def ensure_table(catalog: SqlCatalog, lake: Path, table: str) -> Table:
    """Load ``lake.<table>``, creating it (partitioned by ``identity(dt)``) if it does not exist, and
    adding any column the code declares that the table lacks (Iceberg schema evolution: files written
    before read it as NULL), with current properties and name mapping. Called under the commit lock
    (:func:`create`, :func:`publish`); the checks are made once per process and table."""
    from pyiceberg.exceptions import NoSuchTableError

    wanted = iceberg_arrow_schema(table)
    key = (str(catalog_file(lake).resolve()), table, tuple(wanted.names))
    if key in _ensured:
        return catalog.load_table(_identifier(table))
    with owner_only():
        try:
            tbl = catalog.load_table(_identifier(table))
        except NoSuchTableError:
            tbl = catalog.create_table_if_not_exists(
                _identifier(table), schema=wanted, location=f"{_location(lake)}/{table}",
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
                tbl = catalog.load_table(_identifier(table))
        if not tbl.spec().fields:
            with tbl.update_spec() as spec:
                spec.add_identity("dt")
            tbl = catalog.load_table(_identifier(table))
        have = {f.name for f in tbl.schema().fields}
        if any(f.name not in have for f in wanted):
            with tbl.update_schema() as upd:
                upd.union_by_name(wanted)
            tbl = _set_name_mapping(catalog, catalog.load_table(_identifier(table)))
        elif tbl.metadata.name_mapping() is None:
            tbl = _set_name_mapping(catalog, tbl)
        props = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version"}
        if any(tbl.properties.get(k) != v for k, v in props.items()):
            # a table made by an earlier version of this module: bring its properties up to date
            tbl.transaction().set_properties(props).commit_transaction()
            tbl = catalog.load_table(_identifier(table))
    _check_location(lake, tbl)
    _ensured.add(key)
    return tbl


def _set_name_mapping(catalog: SqlCatalog, tbl: Table) -> Table:
    """Store the current schema's name mapping, by which engines read our files (they carry no field
    ids) after each schema change; returns the reloaded table."""
    from pyiceberg.table import TableProperties

    mapping = tbl.schema().name_mapping.model_dump_json()
    tbl.transaction().set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping}).commit_transaction()
    return catalog.load_table(tbl.name())


def _check_location(lake: Path, tbl: Table) -> None:
    """Refuse a table whose metadata lives outside this lake: the lake was copied or moved, and its
    manifests name the files at the old place (absolute paths, as the Iceberg spec requires)."""
    here = _location(lake)
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
                raise _wrap(lake, "creating the tables", exc) from exc
        try:
            os.chmod(catalog_file(lake), 0o640)
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


def _epoch_day(day: str) -> int | None:
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


def _registered(tbl: Table, days: Iterable[str] | None) -> dict[str, DataFile]:
    """Path -> DataFile of the current snapshot, only files of ``days`` when given. Every registered
    file's ``dt`` is its folder's day (:func:`publish` checks it), so this finds a path wherever it is."""
    if tbl.current_snapshot() is None:
        return {}
    expr = "True"
    if days is not None:
        # Iceberg's filter syntax; each value is a date we validated (a folder name is never quoted in).
        wanted = {d for d in days if valid_day(d)}
        parts = []
        values = sorted(d for d in wanted if d != UNDATED)
        if values:
            parts.append("dt IN (" + ", ".join(f"'{v}'" for v in values) + ")")
        if UNDATED in wanted:
            parts.append("dt IS NULL")
        if not parts:
            return {}
        expr = " OR ".join(parts)
    return {task.file.file_path: task.file for task in tbl.scan(row_filter=expr).plan_files()}


@dataclass
class Published:
    """What one :func:`publish` registered: files added and removed, commits made, races lost."""

    added: int = 0
    removed: int = 0
    commits: int = 0
    retries: int = 0

    def __iadd__(self, other: Published) -> Published:
        self.added += other.added
        self.removed += other.removed
        self.commits += other.commits
        self.retries += other.retries
        return self


def _by_table(lake: Path, paths: Iterable[PurePath]) -> dict[str, dict[str, PurePath]]:
    out: dict[str, dict[str, PurePath]] = {}
    for p in paths:
        where = table_day(lake, p)
        if where is not None:
            out.setdefault(where[0], {})[file_key_of(lake, p)] = p
    return out


class ChangedMeanwhile(LakeError):
    """A file :func:`publish` was to unlist is not the one its caller read: a writer replaced it under its
    name since, or unlisted it (``compact`` passes what it merged as ``expect``). Nothing was committed."""


def publish(lake: Path, *, added: Iterable[PurePath] = (), removed: Iterable[PurePath] = (),
            summary: Mapping[str, str] | None = None,
            expect: Mapping[PurePath, tuple[int, int]] | None = None) -> Published:
    """Register ``added`` and unregister ``removed`` data files, one commit per table touched.

    An added path already listed is replaced (its new footer, size and statistics); an added path
    that no longer exists (removed meanwhile by another writer) is skipped; a removed path that is not
    listed is nothing to do, unless ``expect`` names it (see below). The caller deletes ``removed``
    files after this returns, never before. A no-op on a plain lake. Raises :class:`LakeError` when a
    file's ``dt`` is not its folder's day or when the catalog keeps refusing (the files stay durable).

    ``expect`` (path -> bytes, rows as the caller read it) guards a caller whose ``added`` files hold
    the rows of ``removed`` (``compact``): when one of those is no longer listed, or listed with
    another size or row count, at the head the commit would be made on, it raises
    :class:`ChangedMeanwhile` and commits nothing in that table.

    ``summary`` (a consumer round's Kafka offsets, :func:`offsets_summary`) goes on the commit of the
    **last** table only: Iceberg commits one table at a time, so offsets found in a snapshot mean every
    table of that round was committed before it (:func:`last_rounds` relies on it). When that last
    commit has nothing to do (a replay of files already listed), no offsets are recorded: the Kafka
    group's own offsets still hold.
    """
    if not is_iceberg(lake):
        return Published()
    adds, drops = _by_table(lake, added), _by_table(lake, removed)
    expected = {file_key_of(lake, p): v for p, v in (expect or {}).items()}
    out = Published()
    if not adds and not drops:
        return out
    tables = sorted(set(adds) | set(drops))
    with _serialised(lake):
        catalog = open_catalog(lake)
        for table in tables:
            out += _publish_table(lake, catalog, table, adds.get(table, {}), drops.get(table, {}),
                                  summary if table == tables[-1] else None, expected)
    return out


@contextmanager
def _serialised(lake: Path) -> Iterator[None]:
    """Around :func:`publish`'s commits: the commit lock for a SQLite catalog (one machine: commits
    never race); nothing for a shared PostgreSQL catalog, whose writers on other machines no ``flock``
    reaches: the catalog's compare-and-swap and :func:`_publish_table`'s retry keep every file
    registered exactly once. Raises :class:`LakeError` when the lock is not free within the timeout."""
    if is_shared(lake):
        yield
        return
    with commit_lock(lake):
        yield


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a lost commit race: full jitter over an
    exponential bound (20 ms doubling, at most 2 s), so racing writers spread out instead of colliding
    again in step."""
    return float(min(2.0, 0.02 * (2 ** attempt)) * random.random())  # noqa: S311 (jitter, not a secret)


def _publish_table(lake: Path, catalog: SqlCatalog, table: str, adds: Mapping[str, PurePath],
                   drops: Mapping[str, PurePath],
                   summary: Mapping[str, str] | None,
                   expected: Mapping[str, tuple[int, int]] | None = None) -> Published:
    """One table's commit of :func:`publish` (under the commit lock), retried on a lost race."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    out = Published()
    days = {d for p in (*adds.values(), *drops.values()) for _, d in [table_day(lake, p) or ("", UNDATED)]}
    for attempt in range(COMMIT_RETRIES):
        try:
            tbl = ensure_table(catalog, lake, table)
            registered = _registered(tbl, days)
            files = []
            for path_s, path in sorted(adds.items()):
                if path_s in drops:
                    continue
                try:
                    df = parquet_file_to_data_file(tbl.io, tbl.metadata, path_s)
                except FileNotFoundError:
                    continue  # removed since it was written: nothing to register
                day = (table_day(lake, path) or ("", UNDATED))[1]
                if df.partition[0] != _epoch_day(day):
                    raise LakeError(f"{path} holds rows of another day than its folder dt={day} (its dt column "
                                    "is missing or different): registering it would list it under the wrong day",
                                    fix="move the file out of the lake, or run `ztaudit migrate` to give old "
                                        "files their dt column")
                files.append(df)
            new = {f.file_path for f in files}
            for key in drops:
                if expected and key in expected and key not in registered:
                    # another writer unlisted it since it was read: a compaction of the same day on
                    # another machine (or a retention drop); listing outputs made from it would list
                    # its rows twice (they are in that writer's outputs too)
                    raise ChangedMeanwhile(
                        f"{key} is no longer listed: another writer (a compaction of the same day on another "
                        "machine, or retention) unlisted it since it was read: nothing was committed",
                        fix="run the command again (it reads the day as it is now)")
            delete = [df for p, df in registered.items() if p in new or p in drops]
            for df in delete:
                want = (expected or {}).get(df.file_path)
                if want is not None and (df.file_size_in_bytes, df.record_count) != want:
                    raise ChangedMeanwhile(
                        f"{df.file_path} was replaced by another writer since it was read ({df.record_count} "
                        f"rows now, {want[1]} then): nothing was committed",
                        fix="run the command again (it reads the day as it is now)")
            if not files and not delete:
                return out
            with owner_only(), tbl.transaction() as tx:
                props = dict(summary or {})
                if delete:
                    with tx.update_snapshot(snapshot_properties=props).overwrite() as ow:
                        for df in delete:
                            ow.delete_data_file(df)
                        for f in files:
                            ow.append_data_file(f)
                else:
                    with tx.update_snapshot(snapshot_properties=props).merge_append() as app:
                        for f in files:
                            app.append_data_file(f)
        except (CommitFailedException, ValidationException) as exc:
            # Someone committed first (another machine, a shared catalog, a tool): start over from the
            # new head: reload the table, recompute which of our paths are already listed.
            out.retries += 1
            log.info("iceberg: %s: commit lost a race (%s); retrying", table, _mask(str(exc)))
            time.sleep(backoff(attempt))
            continue
        except LakeError:
            raise
        except Exception as exc:
            raise _wrap(lake, f"publishing {table}", exc) from exc
        out.added += len(files)
        out.removed += len(delete) - len([d for d in delete if d.file_path in new])
        out.commits += 1
        _expire_beyond_bound(lake, catalog, table)
        return out
    raise LakeError(f"could not commit to the Iceberg table {table} after {COMMIT_RETRIES} attempts "
                    "(another writer kept committing first)",
                    fix="the files are durable; run the same command again, or `ztaudit migrate` to re-sync")


def _said(exc: BaseException, limit: int) -> str:
    """``exc``'s message for one log line: passwords masked first (a cut could split one), then
    whitespace collapsed and cut to ``limit`` characters."""
    return " ".join(_mask(str(exc)).split())[:limit]


def _expire_beyond_bound(lake: Path, catalog: SqlCatalog, table: str) -> None:
    """Expire the oldest snapshots of ``table`` beyond :data:`MAX_SNAPSHOTS` (once 10 over, so not
    every commit pays: a table that had 30 commits holds 20 to 29) and delete the metadata files only
    they used that were written more than :data:`READER_GRACE_S` ago (with a shared catalog
    :data:`SHARED_METADATA_GRACE_S`). Snapshots a branch or tag points at are kept (Iceberg refuses
    to expire them; a tag made from Spark would otherwise block every expiry). Their data files stay
    (``maintain --remove-orphans`` removes unlisted ones).

    Called after a commit went through, so it never raises. A lost race with another writer (two
    machines on a shared catalog expiring the same snapshots: pyiceberg applies the second expiry on
    the new head and raises ``ValueError`` for ids already gone; a commit in between) is a warning,
    left to a later commit; anything else is logged as an error (masked, no traceback: a driver's
    message may quote the catalog URI), and the history then grows and commits slow down until it
    is fixed. "Oldest" is by sequence number, not by the
    committing machine's clock (a machine whose clock runs behind would see its fresh snapshots go first)."""
    from pyiceberg.exceptions import CommitFailedException

    try:
        tbl = catalog.load_table(_identifier(table))
        snaps = sorted(tbl.snapshots(), key=lambda s: (s.sequence_number or 0, s.timestamp_ms))
        if len(snaps) < MAX_SNAPSHOTS + 10:
            return
        kept = {ref.snapshot_id for ref in tbl.metadata.refs.values()}  # main's head, branches, tags
        old = [s.snapshot_id for s in snaps[:-MAX_SNAPSHOTS] if s.snapshot_id not in kept]
        if not old:
            return
        with owner_only():
            tbl.maintenance.expire_snapshots().by_ids(old).commit()
    except (CommitFailedException, ValueError) as exc:
        log.warning("iceberg: %s: another writer changed the snapshots meanwhile; expiring them is left to a later "
                    "commit (%s)", table, _said(exc, 300))
        return
    except Exception as exc:
        log.error("iceberg: %s: expiring old snapshots failed (the commit before stands; the history grows until "
                  "this is fixed): %s: %s", table, type(exc).__name__, _said(exc, 600))
        return
    try:
        remove_unreferenced_metadata(lake, catalog.load_table(_identifier(table)),
                                     min_age_s=SHARED_METADATA_GRACE_S if is_shared(lake) else READER_GRACE_S)
    except Exception as exc:
        log.error("iceberg: %s: snapshots expired, but deleting the metadata files only they used failed "
                  "(`ztaudit maintain --expire-snapshots` retries): %s: %s", table, type(exc).__name__,
                  _said(exc, 600))


def remove_unreferenced_metadata(lake: Path, tbl: Table, min_age_s: float | None = None) -> int:
    """Delete the files in ``tbl``'s metadata folder that its current metadata no longer uses (the
    manifest lists and manifests only expired snapshots used; pyiceberg's expiry leaves them) and that
    are older than ``min_age_s`` (a committer elsewhere may be writing new ones). Returns how many.
    Called after an expiry (:func:`_expire_beyond_bound`, ``maintain --expire-snapshots``)."""
    keep = {local_path(tbl.metadata_location)}
    keep |= {local_path(e.metadata_file) for e in tbl.metadata.metadata_log}
    for snap in tbl.snapshots():
        keep.add(local_path(snap.manifest_list))
        keep |= {local_path(m.manifest_path) for m in snap.manifests(tbl.io)}
    if min_age_s is None:  # a writer on another machine may be between its manifests and its commit
        min_age_s = SHARED_METADATA_GRACE_S if is_shared(lake) else READER_GRACE_S
    limit = time.time() - min_age_s
    wh = warehouse.of_lake(lake)
    if wh is not None:
        return _remove_unreferenced_objects(lake, tbl, keep, limit)
    folder = Path(local_path(tbl.location())) / "metadata"
    if not str(folder.resolve()).startswith(_location(lake) + "/"):
        return 0  # never delete outside this lake
    removed = 0
    for entry in (os.scandir(folder) if folder.is_dir() else []):
        if not entry.is_file() or str(Path(entry.path).resolve()) in keep:
            continue
        try:
            if entry.stat().st_mtime < limit:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # removed meanwhile by another process cleaning the same table
    return removed


def _remove_unreferenced_objects(lake: Path, tbl: Table, keep: set[str], limit: float) -> int:
    """:func:`remove_unreferenced_metadata` for a table whose metadata is on S3: one listing of its
    ``metadata/`` prefix, a ``DELETE`` per object not in ``keep`` and last modified before ``limit``."""
    from pyarrow.fs import FileSelector, FileType

    wh = warehouse.of_lake(lake)
    loc = tbl.location().rstrip("/")
    if wh is None or not loc.startswith(_location(lake) + "/"):
        return 0  # never delete outside this lake's warehouse
    fs = wh.filesystem
    removed = 0
    for info in fs.get_file_info(FileSelector(loc[len("s3://"):] + "/metadata", allow_not_found=True)):
        if (info.type == FileType.File and f"s3://{info.path}" not in keep and info.mtime is not None
                and info.mtime.timestamp() < limit):
            fs.delete_file(info.path)
            removed += 1
    return removed


def disk_files(lake: Path, table: str) -> dict[str, Path]:
    """Path -> Path of every committed data file of ``table`` in a valid ``dt=`` folder (no temp or
    hidden file): what :func:`publish_all` makes the table."""
    out: dict[str, Path] = {}
    try:
        folders = [e for e in os.scandir(Path(lake) / table) if e.is_dir() and e.name.startswith("dt=")]
    except FileNotFoundError:
        return out
    for folder in folders:
        if not valid_day(folder.name[3:]):
            continue
        for e in os.scandir(folder.path):
            if e.name.endswith(".parquet") and not e.name.startswith(".") and e.is_file():
                out[str(Path(e.path).resolve())] = Path(e.path)
    return out


def publish_all(lake: Path, tables: Iterable[str] | None = None) -> Published:
    """Make each table (default: all) list exactly the committed files of its folders: registers the
    files it lacks or whose size changed, unregisters the files that are gone. ``ztaudit migrate``
    calls it (on a lake not yet READY too); one commit per table that changes."""
    wh = warehouse.of_lake(lake)
    if wh is not None:
        raise LakeError(f"the files of {lake} are in {wh.uri}: registering a lake's files again from a listing is "
                        "not supported on S3 yet", fix="nothing to migrate: a lake on S3 is made an Iceberg lake")
    out = Published()
    with commit_lock(lake):
        catalog = open_catalog(lake)
        for table in tables or TABLES:
            try:
                tbl = ensure_table(catalog, lake, table)
                registered = _registered(tbl, None)
            except LakeError:
                raise
            except Exception as exc:
                raise _wrap(lake, f"reading {table}", exc) from exc
            disk = disk_files(lake, table)
            adds = {p: path for p, path in disk.items()
                    if p not in registered or path.stat().st_size != registered[p].file_size_in_bytes}
            drops = {p: Path(p) for p in registered if p not in disk}
            if adds or drops:
                out += _publish_table(lake, catalog, table, adds, drops, {"ztaudit.operation": "sync"})
    return out


def snapshot_files(lake: Path, table: str, days: tuple[str, str] | None = None) -> list[str]:
    """Local paths of ``table``'s data files in the current snapshot, sorted; only those whose ``dt``
    lies in ``days`` (inclusive ``YYYY-MM-DD`` bounds) when given. Called by the DuckDB views; raises
    :class:`LakeError` for a lake copied or moved since its files were registered, and for a table
    whose metadata file, manifest list or manifests cannot be read."""
    # a whole snapshot planned before in any process: no pyiceberg import (core/plan_cache.py); only
    # for a SQLite catalog and metadata on disk (on S3 the checks of the metadata would be requests)
    location = _location(lake)
    cacheable = days is None and not is_shared(lake) and not location.startswith("s3://")
    folder = Path(lake) / ICEBERG_DIR
    if cacheable:
        known = plan_cache.recall(folder, catalog_file(lake), CATALOG_NAME, NAMESPACE, table, location,
                                  str(data_root(lake)))
        if known is not None:
            return known
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(lake)
    try:
        tbl = catalog.load_table(_identifier(table))
    except NoSuchTableError:
        return []
    except Exception as exc:
        raise _wrap(lake, f"loading {table}", exc) from exc
    _check_location(lake, tbl)
    snap = tbl.current_snapshot()
    if days is not None:
        lo, hi = (date.fromisoformat(d).isoformat() for d in days)  # ValueError on anything but a date
    try:  # a manifest list or manifest lost or damaged: one line naming the table, as for the metadata
        if snap is None:
            files: list[str] = []
        elif days is None:
            files = sorted(local_path(task.file.file_path) for task in tbl.scan().plan_files())
        else:
            scan = tbl.scan(row_filter=f"dt >= '{lo}' AND dt <= '{hi}'")
            return sorted(local_path(task.file.file_path) for task in scan.plan_files())
        # what the remembered list is checked against (read only when it will be remembered)
        planned_from = [] if not cacheable else [tbl.metadata_location] if snap is None else [
            tbl.metadata_location, snap.manifest_list, *(m.manifest_path for m in snap.manifests(tbl.io))]
    except Exception as exc:
        raise _wrap(lake, f"planning {table}", exc) from exc
    if cacheable:
        plan_cache.remember(folder, catalog_file(lake), table, tbl.metadata_location, location,
                            [local_path(p) for p in planned_from], files)
    return files


def snapshot_entries(lake: Path, table: str, days: tuple[str, str] | None) -> dict[str, tuple[int, int]]:
    """Path or URI -> (bytes, rows) of ``table``'s data files in the current snapshot whose ``dt`` lies in
    ``days`` (None: ``dt`` NULL, the ``unknown`` day): what :func:`publish`'s ``expect`` compares. Raises
    :class:`LakeError` as :func:`snapshot_files` does."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        tbl = open_catalog(lake).load_table(_identifier(table))
    except NoSuchTableError:
        return {}
    except Exception as exc:
        raise _wrap(lake, f"loading {table}", exc) from exc
    if tbl.current_snapshot() is None:
        return {}
    if days is None:
        expr = "dt IS NULL"
    else:
        lo, hi = (date.fromisoformat(d).isoformat() for d in days)  # ValueError on anything but a date
        expr = f"dt >= '{lo}' AND dt <= '{hi}'"
    return {local_path(t.file.file_path): (t.file.file_size_in_bytes, t.file.record_count)
            for t in tbl.scan(row_filter=expr).plan_files()}


def snapshot_offsets(lake: Path, table: str) -> dict[tuple[str, int], int]:
    """The Kafka offsets recorded in the summaries of ``table``'s snapshots, newest first per
    partition: ``{(topic, partition): next offset}``; empty on a plain lake or without any."""
    if not is_iceberg(lake):
        return {}
    from pyiceberg.exceptions import NoSuchTableError

    try:
        tbl = open_catalog(lake).load_table(_identifier(table))
    except NoSuchTableError:
        return {}
    found: dict[tuple[str, int], int] = {}
    for snap in sorted(tbl.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True):
        props = snap.summary.additional_properties if snap.summary else {}
        for k, v in props.items():
            if k.startswith(OFFSETS_PREFIX):
                topic, _, part = k[len(OFFSETS_PREFIX):].rpartition(".")
                found.setdefault((topic, int(part)), int(v))
    return found


@dataclass(frozen=True)
class LastRound:
    """The newest consumer round a lake's snapshots record for one Kafka partition: it read offsets
    ``start`` (None when written by a version that did not record it) up to ``end`` (exclusive)."""

    start: int | None
    end: int


def last_rounds(lake: Path) -> dict[tuple[str, int], LastRound]:
    """Per Kafka (topic, partition), the newest round any table's snapshots record (by commit time).

    Every record of that round is registered in the lake (:func:`publish` puts a round's offsets on
    its last commit). Called by the consumer when a partition's first records arrive, to skip a round
    committed to Iceberg but not to Kafka (a crash between the two): only when reading begins inside
    that round, so a re-created topic, a group moved back or another Kafka cluster's offsets (which
    merely share the topic's name) are never taken for it. Empty on a plain lake. Expired snapshots
    take their rounds with them (then the replay, idempotent, happens). Raises :class:`LakeError` or
    the catalog driver's error when the catalog cannot be read."""
    found: dict[tuple[str, int], tuple[int, int, LastRound]] = {}
    if not is_iceberg(lake):
        return {}
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(lake)
    for table in TABLES:
        try:
            tbl = catalog.load_table(_identifier(table))
        except NoSuchTableError:
            continue
        for snap in tbl.snapshots():
            props = snap.summary.additional_properties if snap.summary else {}
            when = (snap.timestamp_ms, snap.sequence_number or 0)
            for k, v in props.items():
                if not k.startswith(OFFSETS_PREFIX):
                    continue
                topic, _, part = k[len(OFFSETS_PREFIX):].rpartition(".")
                start = props.get(f"{STARTS_PREFIX}{topic}.{part}")
                tp = (topic, int(part))
                if tp not in found or found[tp][:2] < when:
                    found[tp] = (*when, LastRound(int(start) if start is not None else None, int(v)))
    return {tp: r for tp, (_, _, r) in found.items()}


def offsets_summary(offsets: Mapping[tuple[str, int], int],
                    starts: Mapping[tuple[str, int], int] | None = None) -> dict[str, str]:
    """Snapshot properties for a round: ``{(topic, partition): next offset}`` (:data:`OFFSETS_PREFIX`)
    and, when given, the offset it started at per partition (:data:`STARTS_PREFIX`)."""
    out = {f"{OFFSETS_PREFIX}{t}.{p}": str(o) for (t, p), o in sorted(offsets.items())}
    out.update({f"{STARTS_PREFIX}{t}.{p}": str(o) for (t, p), o in sorted((starts or {}).items())})
    return out

"""The lake's tables as Apache Iceberg v2 tables (issue 16): the catalog, publishing files, planning reads.

An Iceberg lake is a plain lake (the same deterministic ``LAKE/<table>/dt=YYYY-MM-DD/<key>.parquet``
files, written the same way by :class:`~ztaudit.core.sink.LakeSink`) plus an Iceberg catalog that
says which of those files *are* the table::

    LAKE/_iceberg/catalog.db                   pyiceberg's SQL catalog (SQLite), catalog "ztaudit"
    LAKE/_iceberg/<table>/metadata/...         each table's metadata JSON, manifest lists, manifests
    LAKE/<table>/dt=YYYY-MM-DD/<key>.parquet   the data files, each holding a DATE column ``dt``

Tables are ``lake.<table>`` for every table of :data:`~ztaudit.core.schema.TABLES`, format v2,
partitioned by ``identity(dt)`` (rows with no event time have ``dt`` NULL: the ``dt=unknown``
folder). Field ids are Iceberg's; files written without ids are read through the table's name
mapping (``schema.name-mapping.default``), which every engine honours (Iceberg spec, "Column
Projection"), so the same file serves DuckDB, pyiceberg and Spark.

**Writing.** A writer first makes its files durable (temp file, fsync, rename) exactly as in a
plain lake, then calls :func:`publish` at its own durability point (the consumer once per flush
round, before it commits Kafka offsets; ``ingest`` every few seconds and at the end; ``detect`` and
``compact`` when done). :func:`publish` reconciles each touched ``(table, day)`` with the folder on
disk: files not in the snapshot (or rewritten with another size) are added, files the snapshot has
but the folder no longer holds (an earlier version of a chunk, a compacted day's inputs) are
removed, all in **one** Iceberg commit per table, with the caller's summary properties (the Kafka
offsets, ``ztaudit.offsets.<topic>.<partition>``). A path is registered at most once: the diff is
by path, so a replayed round (same deterministic names) registers nothing new. Two processes
committing to one table race optimistically: the SQL catalog's compare-and-swap on the metadata
location refuses the loser (``CommitFailedException``), which reloads the table, recomputes its
diff and tries again (:data:`COMMIT_RETRIES`).

**Reading.** :func:`snapshot_files` lists the data files of the current snapshot, optionally only
those of a ``dt`` range (Iceberg prunes manifests by partition summaries); DuckDB reads exactly that
list (``read_parquet([...])``, :mod:`ztaudit.core.catalog`), never a glob, so files written but not
yet published, and files a compaction superseded, are invisible.

Failure: a catalog that cannot be opened or committed raises :class:`~ztaudit.core.errors.LakeError`
(exit 2) naming the lake; a publish that keeps losing the race raises it after its retries (the files
stay durable; the next publish of the same days registers them).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from ztaudit.core.errors import LakeError
from ztaudit.core.files import HIGH_CARDINALITY, UNDATED, makedirs
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
CATALOG_NAME: Final = "ztaudit"
NAMESPACE: Final = "lake"
#: Snapshot summary keys of the Kafka offsets a publish made durable: ``<prefix><topic>.<partition>``.
OFFSETS_PREFIX: Final = "ztaudit.offsets."
#: Attempts of one publish against concurrent writers (each reloads the table and recomputes its diff).
COMMIT_RETRIES: Final = 20
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

#: pyiceberg writes metadata files with the process umask; lake files are owner-and-group only.
_UMASK: Final = 0o027
_umask_lock = threading.Lock()


def catalog_file(lake: Path) -> Path:
    """The SQLite catalog of ``lake`` (whether or not it exists)."""
    return Path(lake) / ICEBERG_DIR / CATALOG_FILE


def is_iceberg(lake: Path) -> bool:
    """Whether ``lake`` is an Iceberg lake: its catalog file exists. Called by every reader and
    writer to choose between the snapshot and the plain folders; never raises."""
    try:
        return catalog_file(lake).is_file()
    except OSError:
        return False


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


def open_catalog(lake: Path) -> SqlCatalog:
    """pyiceberg's SQL catalog of ``lake`` (the SQLite file must exist: :func:`create` makes it).

    Raises :class:`LakeError` when the catalog cannot be opened."""
    from pyiceberg.catalog.sql import SqlCatalog

    path = catalog_file(lake).resolve()
    try:
        with owner_only():
            return SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{path}",
                              warehouse=(Path(lake).resolve() / ICEBERG_DIR).as_uri())
    except Exception as exc:
        raise LakeError(f"cannot open the Iceberg catalog {path}: {exc}",
                        fix="check that the lake is readable; `ztaudit migrate --lake DIR` recreates it") from exc


def _identifier(table: str) -> tuple[str, str]:
    return (NAMESPACE, table)


def ensure_table(catalog: SqlCatalog, lake: Path, table: str) -> Table:
    """Load ``lake.<table>``, creating it (partitioned by ``identity(dt)``) if it does not exist, and
    adding any column the code declares that the table lacks (Iceberg schema evolution: files written
    before read it as NULL). Called by :func:`create` and before each publish's first commit."""
    from pyiceberg.exceptions import NoSuchTableError

    wanted = iceberg_arrow_schema(table)
    with owner_only():
        try:
            tbl = catalog.load_table(_identifier(table))
        except NoSuchTableError:
            tbl = catalog.create_table_if_not_exists(
                _identifier(table), schema=wanted,
                location=(Path(lake).resolve() / ICEBERG_DIR / table).as_uri(), properties=TABLE_PROPERTIES)
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
        if any(tbl.properties.get(k) != v for k, v in TABLE_PROPERTIES.items() if k != "format-version"):
            # a table made by an earlier version of this module: bring its properties up to date
            tbl.transaction().set_properties(
                {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version"}).commit_transaction()
            tbl = catalog.load_table(_identifier(table))
    return tbl


def _set_name_mapping(catalog: SqlCatalog, tbl: Table) -> Table:
    """Store the current schema's name mapping, by which engines read our files (they carry no field
    ids) after each schema change; returns the reloaded table."""
    from pyiceberg.table import TableProperties

    mapping = tbl.schema().name_mapping.model_dump_json()
    tbl.transaction().set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping}).commit_transaction()
    return catalog.load_table(tbl.name())


def create(lake: Path) -> None:
    """Make ``lake`` an Iceberg lake: the catalog, the namespace and every table (idempotent).

    Called by writers of a new lake when ``lake.format`` is ``iceberg`` and by ``ztaudit migrate``.
    Registers nothing: :func:`publish` (or :func:`publish_all`) does."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    makedirs(Path(lake) / ICEBERG_DIR)
    catalog = open_catalog(lake)
    with owner_only():
        try:
            catalog.create_namespace(NAMESPACE)
        except NamespaceAlreadyExistsError:
            pass
    for table in TABLES:
        ensure_table(catalog, lake, table)
    try:
        os.chmod(catalog_file(lake), 0o640)
    except OSError:
        pass


def _uri(path: Path) -> str:
    """How a local data file is named in the manifests: its absolute path, no scheme. A ``file:`` URI
    would percent-encode the ``=`` of ``dt=`` and the ``+`` of Kafka keys, which pyiceberg's file IO
    does not decode; every engine reads a scheme-less absolute path from the local filesystem."""
    return str(path.resolve())


def local_path(uri: str) -> str:
    """A data file's local path from its URI (``file:///...``) or bare path."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def _day_value(day: str) -> date | None:
    return None if day == UNDATED else date.fromisoformat(day)


def _registered(tbl: Table, days: Iterable[str] | None) -> dict[str, DataFile]:
    """Path URI -> DataFile of the current snapshot, only files of ``days`` when given."""
    if tbl.current_snapshot() is None:
        return {}
    expr = "True"
    if days is not None:
        # Iceberg's filter syntax; each value is a date we parsed (a folder name is never quoted in).
        parts = []
        values = sorted(v.isoformat() for v in (_day_value(d) for d in _valid_days(days)) if v is not None)
        if values:
            parts.append("dt IN (" + ", ".join(f"'{v}'" for v in values) + ")")
        if UNDATED in set(days):
            parts.append("dt IS NULL")
        if not parts:
            return {}
        expr = " OR ".join(parts)
    return {task.file.file_path: task.file for task in tbl.scan(row_filter=expr).plan_files()}


def _valid_days(days: Iterable[str]) -> list[str]:
    """The ``days`` that are :data:`UNDATED` or a real ``YYYY-MM-DD`` (a foreign ``dt=`` folder is skipped)."""
    out = []
    for d in days:
        try:
            _day_value(d)
        except ValueError:
            continue
        out.append(d)
    return out


def _on_disk(lake: Path, table: str, day: str) -> dict[str, Path]:
    """URI -> path of the committed Parquet files in ``LAKE/<table>/dt=<day>/`` (no temp or hidden
    file, no manifest): what a publish makes the table's content for that day."""
    folder = Path(lake) / table / f"dt={day}"
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return {}
    return {_uri(Path(e.path)): Path(e.path) for e in entries
            if e.name.endswith(".parquet") and not e.name.startswith(".") and e.is_file()}


@dataclass
class Published:
    """What one :func:`publish` registered: files added and removed per table, commits made."""

    added: int = 0
    removed: int = 0
    commits: int = 0
    retries: int = 0


def touched_days(paths: Iterable[Path], lake: Path) -> dict[str, set[str]]:
    """``{table: {day}}`` of written or deleted data file paths under ``lake`` (others are ignored)."""
    root = Path(lake).resolve()
    out: dict[str, set[str]] = {}
    for p in paths:
        try:
            rel = Path(p).resolve().relative_to(root)
        except ValueError:
            continue
        if len(rel.parts) >= 3 and rel.parts[0] in TABLES and rel.parts[1].startswith("dt="):
            out.setdefault(rel.parts[0], set()).add(rel.parts[1][3:])
    return out


def publish(lake: Path, touched: Mapping[str, Iterable[str]], *, summary: Mapping[str, str] | None = None,
            rewritten: Iterable[Path] = ()) -> Published:
    """Make the current snapshot of each touched table hold exactly the files of its touched days.

    ``touched`` is ``{table: days}`` (:func:`touched_days` of the paths a writer wrote or deleted).
    ``rewritten`` are files the caller replaced in place (same name, new content): they are
    registered again even when their size did not change. One commit per table with changes,
    carrying ``summary`` as snapshot properties. A no-op on a plain lake. Raises :class:`LakeError`
    when the commit keeps failing (the data files stay durable).
    """
    if not is_iceberg(lake) or not any(touched.values()):
        return Published()
    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    force = {_uri(Path(p)) for p in rewritten}
    catalog = open_catalog(lake)
    out = Published()
    for table, day_set in sorted(touched.items()):
        days = sorted(set(_valid_days(day_set)))
        if not days or table not in TABLES:
            continue
        for attempt in range(COMMIT_RETRIES):
            tbl = ensure_table(catalog, lake, table)
            registered = _registered(tbl, days)
            disk: dict[str, Path] = {}
            for day in days:
                disk.update(_on_disk(lake, table, day))
            add: list[str] = []
            for uri, path in disk.items():
                old = registered.get(uri)
                if old is None or uri in force:
                    add.append(uri)
                    continue
                try:
                    if path.stat().st_size != old.file_size_in_bytes:
                        add.append(uri)
                except FileNotFoundError:
                    continue
            readd = set(add)
            delete = [df for uri, df in registered.items() if uri not in disk or uri in readd]
            if not add and not delete:
                break
            try:
                files = [parquet_file_to_data_file(tbl.io, tbl.metadata, uri) for uri in add]
            except FileNotFoundError:  # removed meanwhile by another writer: look again
                out.retries += 1
                continue
            except Exception as exc:
                raise LakeError(f"cannot register a file of {table} in the Iceberg catalog: {exc}",
                                fix="the file does not match the table's schema; remove it or run "
                                    "`ztaudit migrate --lake DIR`") from exc
            try:
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
                # pyiceberg retried against the new head itself and found the other writer's files
                # in our partition: start over from the new snapshot (our diff is by path).
                out.retries += 1
                log.info("iceberg: %s: commit lost a race with another writer (%s); retrying", table, exc)
                time.sleep(min(2.0, 0.02 * (2 ** attempt)) * random.random())  # noqa: S311 (jitter, not a secret)
                continue
            out.added += len(files)
            out.removed += len(delete)
            out.commits += 1
            break
        else:
            raise LakeError(f"could not commit to the Iceberg table {table} after {COMMIT_RETRIES} attempts "
                            "(other writers kept committing first)",
                            fix="the files are durable; run the same command again, or `ztaudit migrate` to re-sync")
    return out


def publish_paths(lake: Path, paths: Iterable[Path], *, summary: Mapping[str, str] | None = None,
                  rewritten: Iterable[Path] = ()) -> Published:
    """:func:`publish` the days of ``paths`` (files written or deleted). A no-op on a plain lake."""
    if not is_iceberg(lake):
        return Published()
    return publish(lake, touched_days(paths, lake), summary=summary, rewritten=rewritten)


def publish_all(lake: Path, tables: Iterable[str] | None = None) -> Published:
    """Reconcile every day folder of ``tables`` (default: all) with the catalog: ``migrate`` and
    ``maintain --sync`` call it; also removes snapshot entries of days whose folder is gone."""
    out = Published()
    catalog = open_catalog(lake)
    for table in tables or TABLES:
        tbl = ensure_table(catalog, lake, table)
        days = {p.name[3:] for p in (Path(lake) / table).glob("dt=*") if p.is_dir()}
        for uri in _registered(tbl, None):
            parent = Path(local_path(uri)).parent.name
            if parent.startswith("dt="):
                days.add(parent[3:])
        if days:
            r = publish(lake, {table: days})
            out.added += r.added
            out.removed += r.removed
            out.commits += r.commits
            out.retries += r.retries
    return out


def snapshot_files(lake: Path, table: str, days: tuple[str, str] | None = None) -> list[str]:
    """Local paths of ``table``'s data files in the current snapshot, sorted; only those whose ``dt``
    lies in ``days`` (inclusive ``YYYY-MM-DD`` bounds) when given. Called by the DuckDB views."""
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(lake)
    try:
        tbl = catalog.load_table(_identifier(table))
    except NoSuchTableError:
        return []
    if tbl.current_snapshot() is None:
        return []
    if days is None:
        scan = tbl.scan()
    else:
        lo, hi = (date.fromisoformat(d).isoformat() for d in days)  # ValueError on anything but a date
        scan = tbl.scan(row_filter=f"dt >= '{lo}' AND dt <= '{hi}'")
    return sorted(local_path(task.file.file_path) for task in scan.plan_files())


def snapshot_offsets(lake: Path, table: str) -> dict[tuple[str, int], int]:
    """The Kafka offsets recorded in the summary of ``table``'s newest snapshot that has any:
    ``{(topic, partition): next offset}``; empty on a plain lake or a table without them."""
    if not is_iceberg(lake):
        return {}
    from pyiceberg.exceptions import NoSuchTableError

    try:
        tbl = open_catalog(lake).load_table(_identifier(table))
    except NoSuchTableError:
        return {}
    snaps = sorted(tbl.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True)
    for snap in snaps:
        props = snap.summary.additional_properties if snap.summary else {}
        found = {}
        for k, v in props.items():
            if k.startswith(OFFSETS_PREFIX):
                topic, _, part = k[len(OFFSETS_PREFIX):].rpartition(".")
                found[(topic, int(part))] = int(v)
        if found:
            return found
    return {}


def offsets_summary(offsets: Mapping[tuple[str, int], int]) -> dict[str, str]:
    """Snapshot properties for ``{(topic, partition): next offset}`` (see :data:`OFFSETS_PREFIX`)."""
    return {f"{OFFSETS_PREFIX}{t}.{p}": str(o) for (t, p), o in sorted(offsets.items())}

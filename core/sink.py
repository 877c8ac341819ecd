"""The Parquet lake writer: deterministic names, temp file, fsync, rename.

Layout (docs/design.md, "Lake layout")::

    LAKE/<table>/dt=YYYY-MM-DD/<file_key>.parquet

``file_key`` is a function of the data's origin only (Kafka: ``<topic>+<partition>+<first offset>``;
files: a hash of the content before the chunk and its start), so writing the same input twice
replaces the same files and never duplicates rows. A file is written to ``.<name>.tmp-<pid>``,
fsynced, renamed into place with ``os.replace`` (atomic on one filesystem), and the directory is
fsynced, so a reader or a crash sees either the old file or the new one, never half a file. That
rename is the durability point the Kafka consumer commits offsets after.

Permissions: directories 0700 and files 0600 (owner only), whatever the umask, because audit logs
name people and carry attacker-controlled strings.

**A file key names the unit of replacement** (issue 11, items 1 and 2). A chunk's rows can land in
several tables and ``dt=`` days, and a later chunk with the same key (the same input replayed, or
a grown file whose chunk holds a superset of the earlier chunk's records) may land in other days
than the first: quarantine is partitioned by the day the record was rejected, and a truncated last
line quarantined by the first ingest is a row in the second. :meth:`LakeSink.write_chunk` therefore
writes the chunk's files and then deletes every *other* file of that key in any chunk table and any
day, so exactly one version of each key's rows exists afterwards. Writing first and deleting second
means a crash in between leaves the old and the new version side by side (rows doubled, never
lost) until the same input is ingested again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot
from ztaudit.core.columns import conform
from ztaudit.core.errors import SinkError
from ztaudit.core.files import (
    UNDATED,
    day_dirs,
    fsync_dir,
    makedirs,
    parquet_options,
    safe_key,
    sweep_temp_files,
    table_files,
    write_parquet_atomic,
)
from ztaudit.core.iceberg import is_iceberg
from ztaudit.core.iceberg_publish import Published
from ztaudit.core.keys import MANIFEST, drop_merged, line_runs, read_manifest, within
from ztaudit.core.quarantine import QUARANTINE_RAW_CAP, Rejected
from ztaudit.core.schema import PARTITION_TIME, QUARANTINE, SOURCE_KINDS, TABLES
from ztaudit.core.warehouse import S3Warehouse, verify_claim
from ztaudit.core.warehouse import of_lake as warehouse_of

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

log = logging.getLogger(__name__)

#: Parquet key-value metadata of a chunk file: how many input bytes the chunk covered. Of two
#: versions of one key (the same start in the same input), the one that covered more is the later,
#: grown one, and a shorter one ingested afterwards must not replace it (:meth:`LakeSink.write_chunk`).
CHUNK_EXTENT: Final = b"ztaudit.chunk_extent"
#: Parquet key-value metadata of a Kafka chunk file: a digest of the raw bytes of the chunk's first
#: record. A file under the same key whose digest differs holds other records at that offset (a topic
#: deleted and created again under the same name): ``consume`` refuses to replace it
#: (:mod:`ztaudit.pipeline.consume.recovery`).
CHUNK_FIRST: Final = b"ztaudit.chunk_first_record"

#: The tables an input chunk can write (the normalizers' tables, RBAC snapshots and the
#: quarantine): where :meth:`LakeSink.write_chunk` looks for earlier files of a chunk's key. The
#: derived tables and findings are written by ``detect`` under keys no chunk has.
CHUNK_TABLES: Final = (*SOURCE_KINDS, "rbac_snapshot", "quarantine")


def _dates(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.strftime(col, format="%Y-%m-%d")


def split_by_day(table: pa.Table, time_column: str) -> Iterator[tuple[str, pa.Table]]:
    """Yield (``YYYY-MM-DD``, rows of that UTC day); rows with a null time go to ``unknown``."""
    if table.num_rows == 0:
        return
    days = _dates(table.column(time_column)).fill_null(UNDATED)
    uniq = pc.unique(days).to_pylist()
    if len(uniq) == 1:
        yield str(uniq[0]), table
        return
    for day in sorted(str(d) for d in uniq):
        yield day, table.filter(pc.equal(days, day))


def quarantine_table(rejected: Sequence[Rejected], now: datetime | None = None) -> pa.Table:
    """The ``quarantine`` rows of ``rejected`` (raw capped at :data:`QUARANTINE_RAW_CAP`), all
    quarantined at ``now`` (default: the current time)."""
    ts = now or datetime.now(UTC)
    raws = [r.raw[:QUARANTINE_RAW_CAP] for r in rejected]
    return pa.table(
        {
            "quarantined_at": pa.array([ts] * len(rejected), type=QUARANTINE.field("quarantined_at").type),
            "origin": pa.array([r.origin for r in rejected], pa.string()),
            "source_guess": pa.array([r.source_guess for r in rejected], pa.string()),
            "reason": pa.array([str(r.reason) for r in rejected], pa.string()),
            "detail": pa.array([r.detail[:2000] for r in rejected], pa.string()),
            "raw_size": pa.array([r.raw_size if r.raw_size >= 0 else len(r.raw) for r in rejected], pa.int64()),
            "raw": pa.array(raws, type=pa.binary()),
            "raw_truncated": pa.array([len(r.raw) > QUARANTINE_RAW_CAP or (r.raw_size > len(r.raw))
                                       for r in rejected], pa.bool_()),
        }
    )


@dataclass
class LakeSink:
    """Writes conformed tables into the lake under deterministic names.

    Called by ``ingest`` once per input chunk (:meth:`write_chunk`) and by ``consume`` once per
    flush (:meth:`write` and :meth:`write_quarantine`; the consumer finds and removes its own
    leftovers of a key, ``pipeline.consume.recovery``). Each call is idempotent for the same
    (table, rows, file_key). One sink is used by one thread at a time.

    The first time a sink touches a table it deletes the temporary files killed writers left in
    that table's ``dt=`` directories (:func:`~ztaudit.core.files.sweep_temp_files`) and lists the
    names in each, once; the sink keeps that index up to date with what it writes and deletes, so
    :meth:`write_chunk` looks up a key in memory instead of walking the lake or calling ``stat``
    per day (measured with 730 known (table, day) pairs: no cost above a plain write's 2.5 ms,
    against 16 ms more per chunk for a ``stat`` per day). Files another process adds later are not
    in the index: two ``ingest`` runs of the same input into one lake at once are not supported.
    """

    lake: Path
    #: ``"iceberg"``: make a new lake an Iceberg lake (:func:`~ztaudit.core.iceberg.create`); None or
    #: ``"parquet"``: leave the lake as it is (a lake that is Iceberg already stays Iceberg)
    table_format: str | None = None
    #: files written since the last :meth:`publish` (registered by it in an Iceberg lake)
    added: set[PurePath] = field(default_factory=set, init=False, repr=False)
    #: files to delete: in an Iceberg lake they stay on disk until :meth:`publish` committed their removal
    removed: set[PurePath] = field(default_factory=set, init=False, repr=False)
    #: table -> day -> names in ``dt=<day>``, for the tables :meth:`write_chunk` looked at (a
    #: consumer that only calls :meth:`write` for months keeps no index that grows with its files)
    _index: dict[str, dict[str, set[str]]] = field(default_factory=dict, init=False, repr=False)
    _iceberg: bool | None = field(default=None, init=False, repr=False)
    #: tables whose leftover temporary files this sink swept
    _swept: set[str] = field(default_factory=set, init=False, repr=False)
    _wh: S3Warehouse | None = field(default=None, init=False, repr=False)
    _wh_known: bool = field(default=False, init=False, repr=False)
    #: (table, day) -> the line runs its compacted files hold (read once per day by a re-ingest)
    _compacted_lines: dict[tuple[str, str], list[tuple[str, int, int]]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.lake = Path(self.lake)
        makedirs(self.lake)
        if self.table_format == "iceberg" and not self.iceberg:
            if any(table_files(self.lake / t) for t in TABLES):
                raise SinkError(f"the lake {self.lake} holds plain Parquet tables, and lake.format is iceberg",
                                fix=f"convert it once with `ztaudit migrate --lake {self.lake}`, or set "
                                    "lake.format = \"parquet\"")
            iceberg.create(self.lake)
            self._iceberg = True
        if self.table_format is not None:
            self._check_warehouse()

    def _check_warehouse(self) -> None:
        """Refuse to write source data when ``lake.warehouse`` names another place than the one this lake
        keeps its files in (it is fixed when the lake is made): the user expects the new files there.
        Called for the writers that take ``lake.format`` (ingest, consume, serve); ``detect``,
        ``triage`` and ``maintain`` work on the lake where it is. Raises :class:`SinkError` (exit 4)."""
        from ztaudit.core import warehouse

        wanted = warehouse.configured()
        if wanted is None or not self.iceberg:
            return
        have = self.warehouse
        if have is None or have.uri != wanted.uri:
            where = have.uri if have is not None else "its own folder"
            raise SinkError(f"the lake {self.lake} keeps its files in {where}, and lake.warehouse names {wanted.uri}",
                            fix="unset lake.warehouse (the lake knows where its files are), or give the new "
                                "warehouse a new --lake folder")

    def remove(self, path: PurePath) -> bool:
        """Delete the lake file ``path`` (an earlier version of a chunk, a leftover of an uncommitted
        flush). In a plain lake at once (and the folder fsynced); in an Iceberg lake the file stays
        until :meth:`publish` committed its removal, so no reader of the current snapshot meets a
        listed file that is gone. Returns False when there was no such file. Raises :class:`SinkError`
        when it cannot be deleted."""
        if self.iceberg:
            self.added.discard(path)
            if not self.exists(path):
                return False
            self.removed.add(path)
            return True
        assert isinstance(path, Path)  # a plain lake is a local folder
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SinkError(f"cannot remove {path}: {exc.strerror or exc}",
                            fix="make the lake writable and run the same command again") from exc
        fsync_dir(path.parent)  # the deletion is durable before the run reports success
        return True

    @property
    def warehouse(self) -> S3Warehouse | None:
        """The S3 warehouse of an Iceberg lake whose files live there (:mod:`ztaudit.core.warehouse`),
        None when they are in the lake folder. Looked up once per sink."""
        if not self._wh_known:
            self._wh = warehouse_of(self.lake) if self.iceberg else None
            if self._wh is not None:
                verify_claim(self.lake, self._wh)  # before anything writes or deletes there
            self._wh_known = True
        return self._wh

    @property
    def filesystem(self) -> FileSystem | None:
        """pyarrow's filesystem of the lake's files when they are not local (else None: plain paths)."""
        wh = self.warehouse
        return None if wh is None else wh.filesystem

    @property
    def root(self) -> PurePath:
        """Where the tables' folders are: the lake folder, or ``BUCKET/PREFIX`` of its S3 warehouse."""
        wh = self.warehouse
        return self.lake if wh is None else wh.root

    def exists(self, path: PurePath) -> bool:
        """Whether the lake file ``path`` exists (a ``HEAD`` request on S3). Raises ``OSError`` when the
        store cannot be asked."""
        fs = self.filesystem
        if fs is None:
            return Path(path).exists()
        from pyarrow.fs import FileType

        return bool(fs.get_file_info(str(path)).type == FileType.File)

    def _delete(self, path: PurePath) -> None:
        """Delete ``path`` (raises ``FileNotFoundError`` when it is gone, ``OSError`` when refused)."""
        fs = self.filesystem
        if fs is None:
            Path(path).unlink()
        else:
            fs.delete_file(str(path))

    @property
    def iceberg(self) -> bool:
        """Whether the lake is an Iceberg lake (looked up once per sink)."""
        if self._iceberg is None:
            self._iceberg = is_iceberg(self.lake)
        return self._iceberg

    def publish(self, summary: Mapping[str, str] | None = None) -> Published:
        """Register what this sink wrote since the last call in the lake's Iceberg tables and
        unregister what it removed, one commit per table (:func:`~ztaudit.core.iceberg_publish.publish`),
        then delete the removed files; a no-op on a plain lake.

        Called at each writer's durability point, after its files are renamed into place and
        before it reports them done (the consumer: before it commits Kafka offsets, with the offsets
        as ``summary``). Raises :class:`~ztaudit.core.errors.LakeError` when the catalog refuses;
        what was pending is kept, so the next call tries again.
        """
        if not self.iceberg or not (self.added or self.removed):
            self.added.clear()
            self.removed.clear()
            return Published()
        result = iceberg_publish.publish(self.lake, added=self.added, removed=self.removed, summary=summary)
        dirs = set()
        for path in self.removed:
            try:
                self._delete(path)
                dirs.add(path.parent)
            except FileNotFoundError:
                pass
            except OSError as exc:  # unlisted already: an orphan `maintain --remove-orphans` deletes
                log.warning("lake: cannot delete %s after unlisting it: %s", path, exc.strerror or exc)
        if self.filesystem is None:
            for d in dirs:
                fsync_dir(Path(d))
        self.added.clear()
        self.removed.clear()
        return result

    def sweep(self, table: str) -> None:
        """Delete the leftover temporary files of killed writers in ``table``'s days, once per sink
        (i.e. once per run); called before the sink first writes or indexes the table."""
        if table not in self._swept:
            self._swept.add(table)
            if self.filesystem is not None:
                return  # objects are PUT whole: a killed writer leaves no temporary object
            for d in day_dirs(self.lake / table):
                sweep_temp_files(d)

    def day_index(self, table: str) -> dict[str, set[str]]:
        """Day -> file names of ``table``, listed on the first call per table (after the sweep)."""
        index = self._index.get(table)
        if index is None:
            self.sweep(table)
            index = {}
            if self.filesystem is not None:
                index = self._object_index(table)
            for d in day_dirs(self.lake / table) if self.filesystem is None else []:
                try:
                    index[d.name[3:]] = {e.name for e in os.scandir(d)}
                except OSError:  # vanished (a compaction swap) or unreadable: nothing known there
                    index[d.name[3:]] = set()
            self._index[table] = index
        return index

    def _object_index(self, table: str) -> dict[str, set[str]]:
        """Day -> object names of ``table`` in an S3 warehouse: one recursive listing (``LIST`` pages
        of 1,000 keys). Raises :class:`SinkError` when the store refuses."""
        fs = self.filesystem
        assert fs is not None
        from pyarrow.fs import FileSelector, FileType

        base = str(self.table_dir(table))
        try:
            infos = fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise SinkError(f"cannot list {self.warehouse and self.warehouse.object_uri(PurePath(base))}: {exc}",
                            fix="check that the S3 store is up and the credentials may list the bucket") from exc
        index: dict[str, set[str]] = {}
        for info in infos:
            rel = info.path[len(base) + 1:].split("/")
            if info.type == FileType.File and len(rel) == 2 and rel[0].startswith("dt="):
                index.setdefault(rel[0][3:], set()).add(rel[1])
        self._hide_merged_inputs(table, index)
        return index

    def _hide_merged_inputs(self, table: str, index: dict[str, set[str]]) -> None:
        """Drop from ``index`` the objects ``compact`` merged and the snapshot no longer lists: on S3
        they stay in the bucket until ``maintain --remove-orphans`` (older snapshots list them), and are
        not the day's files any more, as on disk after the directory swap. An object of that name the
        snapshot lists again (a newer version of the chunk) stays."""
        from ztaudit.core.keys import listed_manifests

        merged = listed_manifests(self.lake, table)
        if not merged:
            return
        listed = set(iceberg_snapshot.snapshot_files(self.lake, table))
        for day, manifest in merged.items():
            names = index.get(day)
            if not names:
                continue
            folder = self.table_dir(table) / f"dt={day}"
            for name in manifest.inputs:
                if name in names and iceberg.file_key_of(self.lake, folder / name) not in listed:
                    names.discard(name)

    def named(self, name: str) -> list[PurePath]:
        """Every file called ``name`` in any table and day (sorted): the consumer's leftovers of a
        chunk key (:mod:`ztaudit.pipeline.consume.recovery`). Lists the tables (on S3, all their objects)."""
        return sorted(self.table_dir(t) / f"dt={day}" / name
                      for t in TABLES for day, names in self.listing(t).items() if name in names)

    def named_like(self, stem: str) -> list[PurePath]:
        """Every file whose name starts with ``stem`` in any table and day (sorted)."""
        return sorted(self.table_dir(t) / f"dt={day}" / n
                      for t in TABLES for day, names in self.listing(t).items()
                      for n in names if n.startswith(stem) and n.endswith(".parquet"))

    def listing(self, table: str) -> dict[str, set[str]]:
        """A fresh day -> names listing of ``table`` (not the cached index: another run may have
        written since)."""
        if self.filesystem is not None:
            return self._object_index(table)
        out: dict[str, set[str]] = {}
        for d in day_dirs(self.lake / table):
            try:
                out[d.name[3:]] = {e.name for e in os.scandir(d) if e.is_file()}
            except OSError:
                continue
        return out

    def stat_files(self, table: str) -> list[tuple[PurePath, float]]:
        """Every committed data file of ``table`` with its modification time (seconds since the epoch),
        for ``maintain``'s orphan sweep: the lake folder's own files (:func:`table_files`, which raises
        :class:`~ztaudit.core.errors.LakeError` naming a foreign one), or the objects of the S3 warehouse."""
        fs = self.filesystem
        if fs is None:
            return [(p, p.stat().st_mtime) for p in table_files(self.lake / table)]
        from pyarrow.fs import FileSelector, FileType

        base = str(self.table_dir(table))
        out: list[tuple[PurePath, float]] = []
        for info in fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True)):
            rel = info.path[len(base) + 1:].split("/")
            if (info.type == FileType.File and len(rel) == 2 and rel[0].startswith("dt=")
                    and rel[1].endswith(".parquet") and info.mtime is not None):
                out.append((PurePath(info.path), info.mtime.timestamp()))
        return sorted(out)

    def delete_file(self, path: PurePath) -> None:
        """Delete one file at once (``maintain``: an orphan no snapshot lists). Raises ``OSError``."""
        self._delete(path)

    def delete_day(self, table: str, day: str) -> None:
        """Delete the folder (or the objects under the prefix) of one day of ``table`` at once: called by
        ``maintain`` after a retention commit stopped listing that day. Errors are logged, not raised
        (the files are orphans by then; the next ``--remove-orphans`` takes them)."""
        where = self.table_dir(table) / f"dt={day}"
        fs = self.filesystem
        try:
            if fs is None:
                import shutil

                shutil.rmtree(Path(where))
            else:
                fs.delete_dir(str(where))
        except (OSError, FileNotFoundError) as exc:
            log.warning("lake: cannot delete %s after retention unlisted it: %s", self.display(where), exc)

    def table_dir(self, table: str) -> PurePath:
        return self.root / table

    def path_for(self, table: str, day: str, file_key: str) -> PurePath:
        return self.root / table / f"dt={day}" / f"{safe_key(file_key)}.parquet"

    def write_file(self, part: pa.Table, path: PurePath, meta: dict[bytes, bytes] | None) -> PurePath:
        """Write one lake file: atomically in a local folder, as one whole object on S3 (serialised
        in memory first, so a failed upload never leaves an object the footer of which is missing).
        Raises :class:`SinkError`."""
        fs = self.filesystem
        if fs is None:
            return write_parquet_atomic(part, Path(path), meta)
        table, options = parquet_options(part, path.parent.name[3:], meta)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, **options)
        try:
            with fs.open_output_stream(str(path)) as out:
                out.write(buf.getvalue())
        except OSError as exc:
            where = self.warehouse.object_uri(path) if self.warehouse else str(path)
            raise SinkError(f"cannot write {where}: {exc}",
                            fix="check that the S3 store is up and the credentials may write the bucket") from exc
        return path

    def read_metadata(self, path: PurePath) -> pq.FileMetaData:
        """The Parquet footer of the lake file ``path``. Raises ``OSError`` or ``ArrowException``."""
        return pq.read_metadata(str(path), filesystem=self.filesystem)

    def read_table(self, path: PurePath, columns: list[str] | None = None) -> pa.Table:
        """``columns`` (default: all) of the lake file ``path``. Raises ``OSError`` or ``ArrowException``."""
        return pq.read_table(str(path), columns=columns, filesystem=self.filesystem)

    def display(self, path: PurePath) -> str:
        """How messages name a lake file: its path relative to the lake (or its ``s3://`` URI)."""
        wh = self.warehouse
        if wh is not None:
            return wh.object_uri(path)
        try:
            return str(Path(path).relative_to(self.lake))
        except ValueError:
            return str(path)

    def write(self, table_name: str, table: pa.Table, file_key: str, extent: int | None = None,
              first_record: str | None = None) -> list[PurePath]:
        """Conform ``table`` to its schema, split it by UTC day, write one file per day.

        ``extent`` (input bytes the chunk covered) and ``first_record`` (a Kafka chunk's first record's
        digest) are recorded in each file's metadata (:data:`CHUNK_EXTENT`, :data:`CHUNK_FIRST`).
        Returns the paths written (empty for an empty table). Raises :class:`SinkError`.
        """
        if table.num_rows == 0:
            return []
        schema = TABLES[table_name]
        table = conform(table, schema)
        self.sweep(table_name)
        index = self._index.get(table_name)
        written = []
        for day, part in split_by_day(table, PARTITION_TIME[table_name]):
            meta = {CHUNK_EXTENT: str(extent).encode()} if extent is not None else {}
            if first_record is not None:
                meta[CHUNK_FIRST] = first_record.encode()
            path = self.write_file(part, self.path_for(table_name, day, file_key), meta or None)
            self.added.add(path)
            self.removed.discard(path)
            if index is not None:
                index.setdefault(day, set()).add(path.name)
            written.append(path)
        return written

    def write_chunk(self, tables: Mapping[str, pa.Table], rejected: Sequence[Rejected], file_key: str,
                    now: datetime | None = None, extent: int | None = None,
                    scope: Sequence[str] = CHUNK_TABLES, days: Collection[str] | None = None) -> list[PurePath]:
        """Write one input chunk under ``file_key`` and make it the only version of that key.

        Called by ``ingest`` (on its writer thread) once per chunk, and by ``detect`` for each
        derived table (``scope`` that table alone). Writes every table of ``tables`` (split by
        day) and the ``rejected`` records (quarantined at ``now``), then deletes every other file
        named ``file_key`` in any table of ``scope`` (default :data:`CHUNK_TABLES`) and any day: an
        earlier version of this chunk whose rows fell on other days, or in a table this version
        has no rows for, is stale (see the module docstring); with ``days``, only in those days (a
        derived table rebuilt for a window keeps the days outside it). Returns the paths written. Raises
        :class:`SinkError` when a file cannot be written (the old version then stays whole) or a
        stale one cannot be deleted.

        ``extent`` is how many input bytes the chunk covered. Versions of one key start at the same
        place after the same content, so the one that covered more usually holds the other's
        records and more: when the lake already has a version of ``file_key`` with a larger extent
        *and* it holds every row of this one (:meth:`holds`: an older, shorter copy of a grown
        file), nothing is written and ``[]`` is returned, so re-ingesting prefixes in any order
        leaves one row per record. When its rows differ (the input was edited, as a hand-kept
        revocation list is, or another input starts with the same record), this newer reading
        replaces it, with a warning. Files written without an extent (older lakes) are replaced
        as before.
        """
        if extent is not None:
            longer = self.longer_version(file_key, extent)
            if longer is not None:
                if all(self.holds(name, file_key, t) for name, t in tables.items() if t.num_rows):
                    # published by now, or (after a crash before the publish) registered by this one
                    self._republish_key(file_key)
                    log.info("lake: chunk %s: %s covers more of the input (%s > %d bytes) and holds every "
                             "row of this shorter version; not written again", file_key, longer[0],
                             longer[1], extent)
                    return []
                # Not a prefix: an edited input (a hand-kept revocation list), or another input
                # whose first record is the same. The newer reading replaces the older, loudly.
                log.warning("lake: chunk %s: replaces %s, a longer version whose rows differ from this "
                            "input's (the input was edited, or another input starts with the same "
                            "record)", file_key, longer[0])
        written: list[PurePath] = []
        parts = dict(tables)
        if rejected:
            parts["quarantine"] = quarantine_table(rejected, now)
        for table_name, table in parts.items():
            # Records of this key that `compact` already merged into a day of this table are in
            # the compacted files; writing them again would double them (pipeline/compact.py).
            table, dropped = self._drop_merged(table_name, table, file_key)
            if dropped:
                log.info("lake: chunk %s: %d %s rows are already in compacted files; not written again",
                         file_key, dropped, table_name)
            written += self.write(table_name, table, file_key, extent)
        keep = set(written)
        name = f"{safe_key(file_key)}.parquet"
        for table_name in scope:
            for day, names in self.day_index(table_name).items():
                if name not in names or (days is not None and day not in days):  # a set lookup, no path built
                    continue
                stale = self.path_for(table_name, day, file_key)
                if stale in keep:
                    continue
                names.discard(name)
                if not self.remove(stale):  # merged by a compaction since we listed the day
                    continue
                log.info("lake: removed %s: chunk %s now lives in %s", stale, file_key,
                         ", ".join(self.display(p) for p in written) or "no file (no rows)")
        return written

    def _republish_key(self, file_key: str) -> None:
        """Register again every file of ``file_key`` in the chunk tables (an Iceberg lake: a version
        written by a run killed before its publish is registered by this one; already listed, it is
        replaced by itself)."""
        if not self.iceberg:
            return
        name = f"{safe_key(file_key)}.parquet"
        for table_name in CHUNK_TABLES:
            for day, names in self.day_index(table_name).items():
                if name in names:
                    self.added.add(self.path_for(table_name, day, file_key))

    def longer_version(self, file_key: str, extent: int) -> tuple[PurePath, int] | None:
        """A file of ``file_key`` already in the lake whose recorded extent exceeds ``extent``, with
        that extent; None if there is none (the usual case: one set lookup per table and day).
        An unreadable footer counts as no extent: the new version then replaces it."""
        name = f"{safe_key(file_key)}.parquet"
        for table_name in CHUNK_TABLES:
            for day, names in self.day_index(table_name).items():
                if name not in names:
                    continue
                path = self.path_for(table_name, day, file_key)
                try:
                    meta = self.read_metadata(path).metadata or {}
                    theirs = int(meta.get(CHUNK_EXTENT, b"-1"))
                except (OSError, ValueError, pa.ArrowException):
                    continue
                if theirs > extent:
                    return path, theirs
        return None

    def holds(self, table_name: str, file_key: str, table: pa.Table) -> bool:
        """Whether the lake's files of ``file_key`` in ``table_name`` hold every row of ``table``,
        compared on every column but ``origin`` (the same input under another path spelling) and
        ``ingested_at``. Called by :meth:`write_chunk` only when a longer version of the key exists
        (a rare path: it reads those files)."""
        # Rows `compact` already merged away from this key's files are held by the compacted files.
        table, _ = self._drop_merged(table_name, table, file_key)
        if table.num_rows == 0:
            return True
        name = f"{safe_key(file_key)}.parquet"
        paths = [self.path_for(table_name, day, file_key)
                 for day, names in self.day_index(table_name).items() if name in names]
        if not paths:
            return False
        new = conform(table, TABLES[table_name])
        cols = [c for c in new.column_names if c not in ("origin", "ingested_at")]
        try:
            old = pa.concat_tables([self.read_table(p, cols) for p in paths])
        except (OSError, pa.ArrowException):
            return False

        def rows(t: pa.Table) -> set[bytes]:
            return {orjson.dumps(r, default=str) for r in t.select(cols).to_pylist()}

        return rows(new) <= rows(old)

    def write_quarantine(self, rejected: list[Rejected], file_key: str,
                         now: datetime | None = None, first_record: str | None = None) -> list[PurePath]:
        """Write rejected records (raw capped at :data:`QUARANTINE_RAW_CAP`) to ``quarantine/``.

        The raw bytes must already be scrubbed of secrets (``pipeline.redact``; see
        :mod:`ztaudit.core.quarantine` for who scrubs them).

        Quarantine is partitioned by when the record was rejected but named by its origin's chunk,
        so a replay of the same input replaces its files (another day's: :meth:`write_chunk`).
        """
        if not rejected:
            return []
        return self.write("quarantine", quarantine_table(rejected, now), file_key, first_record=first_record)

    def merged_ranges_by_day(self, table: str, file_key: str) -> dict[str, list[tuple[str, int, int]]]:
        """Day -> the input lines of chunk ``file_key`` that ``compact`` already merged into that day
        of ``table``: the ``_compacted.json`` of each day that has one (cached by mtime), or on S3 the
        manifests in the footers of the compacted objects the current snapshot lists
        (:func:`~ztaudit.core.keys.listed_manifests`, cached per snapshot). Raises :class:`SinkError`
        when those cannot be read."""
        name = f"{safe_key(file_key)}.parquet"
        out: dict[str, list[tuple[str, int, int]]] = {}
        if self.filesystem is not None:
            from ztaudit.core.keys import listed_manifests

            for day, merged in listed_manifests(self.lake, table).items():
                if merged.file_ranges.get(name):
                    out[day] = list(merged.file_ranges[name])
            return out
        for day, names in self.day_index(table).items():
            if MANIFEST not in names:
                continue
            manifest = read_manifest(self.lake / table / f"dt={day}")
            if manifest is not None and manifest.file_ranges.get(name):
                out[day] = list(manifest.file_ranges[name])
        return out

    def _drop_merged(self, table_name: str, table: pa.Table, file_key: str) -> tuple[pa.Table, int]:
        """``table`` (rows of chunk ``file_key``) without the rows ``compact`` already merged, and how
        many. A day's manifest gives each merged chunk's lines as one range per input path; a row is
        dropped only when the compacted files of **its own day** hold its line (read once per day,
        :meth:`_held_lines`): a range may span lines of another day, or lines that were quarantined
        then and are valid now. Quarantine rows (their day is when they were rejected) are looked up
        in every day's quarantine. Raises :class:`SinkError` when a compacted file cannot be read."""
        by_day = self.merged_ranges_by_day(table_name, file_key)
        if not by_day or table.num_rows == 0:
            return table, 0
        time_col = PARTITION_TIME.get(table_name)
        if table_name == "quarantine" or time_col is None or time_col not in table.column_names:
            return drop_merged(table, [r for day, ranges in by_day.items()
                                       for r in within(self._held_lines(table_name, day), ranges)])
        parts, dropped = [], 0
        for day, part in split_by_day(table, time_col):
            ranges = by_day.get(day)
            kept, n = drop_merged(part, within(self._held_lines(table_name, day), ranges) if ranges else [])
            parts.append(kept)
            dropped += n
        return (pa.concat_tables(parts), dropped) if dropped else (table, 0)

    def _held_lines(self, table: str, day: str) -> list[tuple[str, int, int]]:
        """The ``file:`` lines the compacted files of ``table``'s day hold (the outputs its manifest
        names that are the day's files now), as exact runs. Cached for the sink's life (an ingest run)."""
        known = self._compacted_lines.get((table, day))
        if known is not None:
            return known
        if self.filesystem is not None:
            from ztaudit.core.keys import listed_manifests

            manifest = listed_manifests(self.lake, table).get(day)
        else:
            manifest = read_manifest(self.lake / table / f"dt={day}")
        present = self.day_index(table).get(day, set())
        names = sorted(set(manifest.outputs) & present) if manifest else []
        folder = self.table_dir(table) / f"dt={day}"
        try:
            origins = [self.read_table(folder / n, ["origin"]).column("origin") for n in names]
        except (OSError, pa.ArrowException) as exc:
            raise SinkError(f"cannot read the compacted files of {table} dt={day}: {exc}",
                            fix="check that they are readable (or the S3 store reachable), then run again") from exc
        runs = line_runs(pa.chunked_array([c for o in origins for c in o.chunks], pa.string())) if origins else []
        self._compacted_lines[(table, day)] = runs
        return runs

    def files(self, table: str) -> list[Path]:
        """All committed Parquet files of ``table`` (temp and hidden files excluded), sorted.

        Raises :class:`~ztaudit.core.errors.LakeError` naming any foreign file a reader would
        read (:func:`~ztaudit.core.files.table_files`).
        """
        return table_files(self.lake / table)

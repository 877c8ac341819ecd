"""Publishing data files to the lake's Iceberg tables: one commit per table touched, and the history kept short.

A writer makes its files durable (temp file, fsync, rename) exactly as in a plain lake, then calls
:func:`publish` at its own durability point (the consumer once per flush round, before it commits
Kafka offsets; ``ingest`` every few seconds and at the end; ``detect``, ``compact`` and ``serve`` when
done) with the files it **added** and the files it **removes**, and deletes the removed files only
after the commit: a reader of the previous snapshot never meets a listed file that is gone. Only what
a writer names is registered, so another process's unpublished files stay invisible. One commit per
table touched, carrying the caller's summary properties (the Kafka offsets,
``ztaudit.offsets.<topic>.<partition>``, :mod:`ztaudit.core.iceberg_snapshot`). A path is registered
at most once: an added path the snapshot already lists is replaced (a replay rewrites the same
deterministic name). Every added file's ``dt`` must be its folder's day (else :class:`LakeError`), so
looking a path up among the files of its day's partition finds it wherever it was registered.

Commits of the processes on one machine are serialised by an ``flock`` on ``_iceberg/commit.lock``
(the SQLite catalog lives on one machine anyway); the catalog's compare-and-swap on the metadata
location still guards against anything else, and a lost race reloads, recomputes and retries
(:data:`~ztaudit.core.iceberg.COMMIT_RETRIES`, jittered exponential backoff). With a catalog on
PostgreSQL, writers on several machines cannot share an ``flock``: there the compare-and-swap and
that retry are the only serialisation (a lost race recomputes its diff by path on the new head, so a
file the other writer registered meanwhile is replaced, never listed twice). Each table keeps at most
``MAX_SNAPSHOTS + 9`` snapshots: the commit that brings it to ``MAX_SNAPSHOTS + 10`` expires the
oldest down to :data:`MAX_SNAPSHOTS` (:func:`_expire_beyond_bound`), so a table that takes a commit
per flush round stays cheap to commit to (measured: 1.7 s per commit at 460 snapshots, 0.13 s at 100,
0.07 s at 20) and ``maintain --expire-snapshots`` is for shorter histories.

Failure: every pyiceberg or catalog error surfaces as :class:`~ztaudit.core.errors.LakeError` (exit 2)
naming the lake and the fix; the data files of a failed publish stay durable, and the next publish of
the same files (a replay) or ``ztaudit migrate`` (:func:`publish_all`) registers them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final

from ztaudit.core import warehouse
from ztaudit.core.errors import LakeError
from ztaudit.core.files import UNDATED
from ztaudit.core.iceberg import (
    COMMIT_RETRIES,
    backoff,
    commit_lock,
    ensure_table,
    epoch_day,
    file_key_of,
    identifier,
    is_iceberg,
    is_shared,
    lake_error,
    lake_location,
    local_path,
    mask_secrets,
    open_catalog,
    owner_only,
    table_day,
    valid_day,
)
from ztaudit.core.schema import TABLES

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

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
                    if expected:  # compaction: unlisting its inputs without this output would lose rows
                        raise ChangedMeanwhile(f"{path_s} was removed since it was written: nothing was committed",
                                               fix="run the command again") from None
                    continue  # removed since it was written: nothing to register
                day = (table_day(lake, path) or ("", UNDATED))[1]
                if df.partition[0] != epoch_day(day):
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
            log.info("iceberg: %s: commit lost a race (%s); retrying", table, mask_secrets(str(exc)))
            time.sleep(backoff(attempt))
            continue
        except LakeError:
            raise
        except Exception as exc:
            raise lake_error(lake, f"publishing {table}", exc) from exc
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
    return " ".join(mask_secrets(str(exc)).split())[:limit]


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
        tbl = catalog.load_table(identifier(table))
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
        remove_unreferenced_metadata(lake, catalog.load_table(identifier(table)),
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
    if not str(folder.resolve()).startswith(lake_location(lake) + "/"):
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
    if wh is None or not loc.startswith(lake_location(lake) + "/"):
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
                raise lake_error(lake, f"reading {table}", exc) from exc
            disk = disk_files(lake, table)
            adds = {p: path for p, path in disk.items()
                    if p not in registered or path.stat().st_size != registered[p].file_size_in_bytes}
            drops = {p: Path(p) for p in registered if p not in disk}
            if drops:  # deleted by hand, or lost: their rows leave the table; say which
                log.warning("iceberg: %s: %d listed file(s) are gone from the disk and are unlisted (their rows "
                            "leave the table; restore them and run migrate again to bring them back): %s", table,
                            len(drops), ", ".join(sorted(drops)[:10]) + (" ..." if len(drops) > 10 else ""))
            if adds or drops:
                out += _publish_table(lake, catalog, table, adds, drops, {"ztaudit.operation": "sync"})
    return out

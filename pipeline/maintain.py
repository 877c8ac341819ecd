"""Keeping an Iceberg lake bounded, and turning a plain lake into one (issue 16, items 5 and 6).

* :func:`migrate` (``ztaudit migrate``): a plain hive-partitioned lake becomes an Iceberg lake in
  place. Every data file without a DATE ``dt`` column is rewritten with one (same name, same rows,
  same key-value metadata, atomically: :func:`~ztaudit.core.files.write_parquet_atomic`), then the
  catalog and tables are created and every day folder is registered
  (:func:`~ztaudit.core.iceberg_publish.publish_all`). Idempotent: a second run rewrites and registers
  nothing; a run killed half-way is finished by the next.
* :func:`maintain` (``ztaudit maintain``): ``expire_days`` drops snapshots older than that (the
  current one always stays) and the metadata files only they used; ``remove_orphans`` deletes data
  files that no snapshot references and that are older than ``orphan_grace_s`` (younger ones may be
  a running writer's files, published at its next durability point); ``retention_days`` removes
  whole old days: first from the snapshot (one commit per table), then from disk, so a reader never
  meets a listed file that is gone.

Failure: :class:`~ztaudit.core.errors.LakeError` (exit 2) when the lake or its catalog cannot be
read or committed; nothing is deleted before the commit that stops referencing it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from ztaudit.core import iceberg, iceberg_publish, iceberg_snapshot, warehouse
from ztaudit.core.errors import ConfigError, LakeError
from ztaudit.core.files import table_files, write_parquet_atomic
from ztaudit.core.schema import SOURCE_KINDS, TABLES
from ztaudit.core.sink import LakeSink

log = logging.getLogger(__name__)

#: Tables whose old days ``--retention-days`` drops: the events and what is derived from them. Not
#: ``findings`` (evidence outlives its events), ``triage`` (decisions must not resurface findings),
#: ``rbac_snapshot`` (the newest snapshot may be old) or ``detect_runs``.
RETAINED_TABLES: Final = (*SOURCE_KINDS, "quarantine", "reach", "credentials")
#: The longest retention: 100 years (a cutoff further back is out of ``date``'s range).
MAX_RETENTION_DAYS: Final = 36_600


@dataclass
class MigrateResult:
    """What :func:`migrate` did: files given a ``dt`` column, files registered, rows per table."""

    rewritten: int = 0
    registered: int = 0
    #: files the tables listed that are gone from the disk: unlisted, their rows left the lake
    unregistered: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        total = sum(self.rows.values())
        gone = (f", {self.unregistered} listed files that are gone unlisted (their rows left the lake; "
                "the log names them)") if self.unregistered else ""
        return (f"{self.rewritten} files given a dt column, {self.registered} files registered{gone}, "
                f"{total} rows in {len(self.rows)} tables")


def _drop_foreign_catalog(lake: Path) -> None:
    """Remove a catalog that cannot be this lake's, so :func:`migrate` registers the files where they
    are now: made for another place (the lake was copied or moved: its manifests name the old paths),
    unreadable (a damaged metadata file, manifest list or manifest; an emptied catalog file). A lake
    whose catalog is gone but that is still marked ``READY`` loses the mark until migrate is done.
    Raises :class:`LakeError` when the catalog folder cannot be read."""
    folder = Path(lake) / iceberg.ICEBERG_DIR
    ready, has_catalog = iceberg.catalog_state(lake)
    if not iceberg.catalog_file(lake).is_file():  # a PostgreSQL catalog (catalog.json) is not judged here
        if ready and not has_catalog:
            log.warning("migrate: %s was an Iceberg lake but its catalog is gone; registering its files again", lake)
            (folder / iceberg.READY_FILE).unlink()
        return
    # under the commit lock: no commit of this machine is half done while the catalog is judged and removed
    with iceberg.commit_lock(lake):
        try:
            cat = iceberg.open_catalog(lake)
            locations = []
            for t in TABLES:
                if not cat.table_exists((iceberg.NAMESPACE, t)):
                    continue
                tbl = cat.load_table((iceberg.NAMESPACE, t))
                locations.append(iceberg.local_path(tbl.location()))
                for _ in tbl.scan().plan_files():  # every manifest list and manifest can be read
                    pass
        except Exception as exc:  # an unreadable catalog is rebuilt from the folders too
            log.warning("migrate: the Iceberg catalog of %s cannot be read (%s); rebuilding it from the lake's folders",
                        lake, " ".join(iceberg.mask_secrets(str(exc)).split())[:300])
            locations = ["?"]
        here = str(Path(lake).resolve() / iceberg.ICEBERG_DIR)
        if all(loc == here or loc.startswith(here + "/") for loc in locations):
            return
        if locations != ["?"]:
            log.warning("migrate: the Iceberg tables of %s were made for %s; registering the files here again",
                        lake, locations[0])
        iceberg.forget_catalog(lake)
        try:
            # all but the lock file: a process waiting on it must wait on the one migrate goes on using
            for entry in sorted(folder.iterdir()):
                if entry.name == iceberg.LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as exc:
            raise LakeError(f"cannot remove the old Iceberg catalog of {lake}: {exc.strerror or exc}: "
                            f"{getattr(exc, 'filename', None) or Path(lake) / iceberg.ICEBERG_DIR}",
                            fix="run migrate as the user who owns the lake, or remove that folder by hand") from exc


def _needs_dt(path: Path) -> bool:
    schema = pq.read_schema(path)
    return "dt" not in schema.names or schema.field("dt").type != pa.date32()


def migrate(lake: Path) -> MigrateResult:
    """Make ``lake`` an Iceberg lake in place (see the module docstring); returns what it did.

    Called by ``ztaudit migrate``. Raises :class:`LakeError` naming a file it cannot read."""
    lake = Path(lake)
    warehouse.refuse_on_s3(lake, "migrate")
    out = MigrateResult()
    for table in TABLES:
        for path in table_files(lake / table):
            try:
                if not _needs_dt(path):
                    continue
                data = pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {path}: {exc}", fix="move the broken file out of the lake and rerun") \
                    from exc
            write_parquet_atomic(data, path)  # adds dt from its dt= folder, keeps the metadata
            out.rewritten += 1
    _drop_foreign_catalog(lake)
    # READY only once every file is registered: a migration killed before that leaves a plain lake
    # that reads as before (not Iceberg tables that look empty), and the next run finishes it.
    iceberg.create(lake, ready=False)
    published = iceberg_publish.publish_all(lake)
    out.registered, out.unregistered = published.added, published.removed
    iceberg.mark_ready(lake)
    for table in TABLES:
        files = iceberg_snapshot.snapshot_files(lake, table)
        out.rows[table] = sum(pq.read_metadata(f).num_rows for f in files)
    log.info("migrate: %s", out.summary())
    return out


@dataclass
class MaintainResult:
    """What :func:`maintain` removed."""

    snapshots_expired: int = 0
    metadata_files_removed: int = 0
    orphans_removed: int = 0
    days_dropped: int = 0

    def summary(self) -> str:
        return (f"{self.snapshots_expired} snapshots expired, {self.metadata_files_removed} metadata files "
                f"and {self.orphans_removed} orphan data files removed, {self.days_dropped} days dropped")


def _referenced_data(tbl: object) -> set[str]:
    """Local paths (or ``s3://`` URIs) of every data file any live snapshot of ``tbl`` lists."""
    from pyiceberg.table import Table

    assert isinstance(tbl, Table)
    out: set[str] = set()
    seen: set[str] = set()  # snapshots share most manifests: read each once (else quadratic)
    for snap in tbl.snapshots():
        for m in snap.manifests(tbl.io):
            if m.manifest_path in seen:
                continue
            seen.add(m.manifest_path)
            for entry in m.fetch_manifest_entry(tbl.io, discard_deleted=True):
                out.add(iceberg.local_path(entry.data_file.file_path))
    return out


def maintain(lake: Path, *, expire_days: float | None = None, remove_orphans: bool = False,
             orphan_grace_s: float = 86400.0, retention_days: int | None = None,
             now: datetime | None = None) -> MaintainResult:
    """Expire snapshots, drop old days, remove orphans in an Iceberg lake (module docstring).

    Called by ``ztaudit maintain``. Raises :class:`LakeError` on a plain lake (nothing to maintain:
    ``migrate`` first) or when the catalog refuses a commit."""
    lake = Path(lake)
    if retention_days is not None and not 0 < retention_days <= MAX_RETENTION_DAYS:
        raise ConfigError("--retention-days (or lake.retention_days)",
                          f"{retention_days} is not between 1 and {MAX_RETENTION_DAYS} (100 years)",
                          fix="pass a number of days such as 90 (lake.retention_days = 0 keeps all)")
    if not iceberg.is_iceberg(lake):
        raise LakeError(f"{lake} is a plain Parquet lake; snapshots and orphans are Iceberg's",
                        fix=f"convert it with `ztaudit migrate --lake {lake}` first")
    now = now or datetime.now(UTC)
    out = MaintainResult()
    catalog = iceberg.open_catalog(lake)
    files = LakeSink(lake)  # where the lake keeps its files: its folder, or its S3 warehouse
    _ = files.warehouse  # on S3: the prefix's claim is checked before any commit or delete
    for table in TABLES:
        with iceberg.commit_lock(lake):
            tbl = iceberg.ensure_table(catalog, lake, table)
        if retention_days is not None and table in RETAINED_TABLES:
            cutoff = (now - timedelta(days=retention_days)).date()
            old = [d for d in sorted(files.listing(table)) if (_day(d) or cutoff) < cutoff]
            if old:
                # the snapshot stops listing the days first; only then do their files go
                tbl = _commit(lake, catalog, tbl, f"dropping days before {cutoff}",
                              partial(_drop_before, cutoff.isoformat(), str(retention_days)))
                if files.filesystem is None:
                    for d in old:
                        files.delete_day(table, d)
                # On S3 the objects stay until `--remove-orphans` finds no live snapshot listing them: a
                # late event a writer published into an old day after this listing must not lose its
                # object (it is listed, so it stays), nor one being written (the orphans' grace).
                out.days_dropped += len(old)
        if expire_days is not None:
            before = len(tbl.snapshots())
            older = now - timedelta(days=expire_days)
            current = tbl.current_snapshot()
            if current is not None and before > 1:
                tbl = _commit(lake, catalog, tbl, "expiring snapshots", partial(_expire, older))
                out.snapshots_expired += before - len(tbl.snapshots())
            out.metadata_files_removed += iceberg_publish.remove_unreferenced_metadata(lake, tbl)
        if remove_orphans:
            referenced = _referenced_data(tbl)
            limit = time.time() - orphan_grace_s
            for path, mtime in files.stat_files(table):
                if iceberg.file_key_of(lake, path) not in referenced and mtime < limit:
                    files.delete_file(path)
                    out.orphans_removed += 1
                    log.info("maintain: removed orphan %s (in no snapshot)", files.display(path))
    log.info("maintain: %s", out.summary())
    return out


def _drop_before(day: str, retention_days: str, tbl: Any) -> None:
    tbl.delete(delete_filter=f"dt < '{day}'", snapshot_properties={"ztaudit.retention_days": retention_days})


def _expire(older: datetime, tbl: Any) -> None:
    tbl.maintenance.expire_snapshots().older_than(older).commit()


def _commit(lake: Path, catalog: Any, tbl: Any, what: str, change: Callable[[Any], object]) -> Any:
    """Apply ``change`` to the newest version of ``tbl`` and commit it; returns the table as committed.

    The commit lock serialises the processes of this machine; a writer elsewhere (a catalog on
    PostgreSQL shared by machines) can still commit between the load and the commit, which Iceberg's
    compare-and-swap refuses (``CommitFailedException``): the change is then computed again on the new
    head, after a jittered backoff, up to :data:`~ztaudit.core.iceberg.COMMIT_RETRIES` times, then
    :class:`LakeError` (nothing was changed by the lost attempts)."""
    from pyiceberg.exceptions import CommitFailedException

    for attempt in range(iceberg.COMMIT_RETRIES):
        with iceberg.commit_lock(lake), iceberg.owner_only():
            fresh = catalog.load_table(tbl.name())
            try:
                change(fresh)
                return catalog.load_table(tbl.name())
            except CommitFailedException as exc:
                log.info("maintain: %s: %s lost a race with another writer (%s); retrying", tbl.name(), what, exc)
        time.sleep(iceberg.backoff(attempt))
    raise LakeError(f"{what} in {tbl.name()}: another writer kept committing first "
                    f"({iceberg.COMMIT_RETRIES} attempts)", fix="run `ztaudit maintain` again")


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None

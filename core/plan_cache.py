"""The file lists of Iceberg snapshots, remembered per metadata file, so that reading a lake need not
import pyiceberg.

Opening an Iceberg lake plans each table's current snapshot
(:func:`ztaudit.core.iceberg_snapshot.snapshot_files`). In a new process that first imports pyiceberg,
SQLAlchemy and ``pyarrow.dataset``: ~0.65 s of every ``ztaudit report`` or ``ztaudit sql`` on an
Iceberg lake, against ~0.2 s for the whole open of a plain lake. Yet a snapshot never changes, and the
catalog names the current one by its metadata file: every commit writes a new metadata file and swaps
the table's ``metadata_location`` in the catalog to it (the Iceberg spec's atomic commit,
<https://iceberg.apache.org/spec/#overview>). A file list planned for one metadata location is
therefore that location's list for good.

:func:`remember` is called after pyiceberg planned a table's whole snapshot; :func:`recall` before
planning. It reads the table's row of the SQLite catalog with the standard library's ``sqlite3``
(read-only) and returns the remembered list only when that row still names the remembered metadata
file; that file, the snapshot's manifest list and its manifests are still on disk as they were (size,
modification time, inode); the lake's metadata location is the one it was remembered for (a copied or
moved lake is refused by the planner with its own message); and the entry can only have been written
by the catalog's owner. Anything else (no entry, an unreadable, foreign or implausible entry, a newer
commit, a catalog on PostgreSQL or metadata on S3, which the caller never asks about) gives None, and
the caller plans with pyiceberg as before: the cache can make an open faster, never different, and a
lost or damaged metadata file fails the open as it did without it.

Who writes and who is trusted. Without the cache, changing what a reader sees takes writing the
catalog, which only the lake's owner can. So an entry is trusted only when the catalog is a regular
file, and ``_iceberg``, ``plans`` and the entry are owned by the catalog's owner and writable by nobody
else; every data file it lists lies under the lake's data folder and every metadata file under its
metadata folder. Entries are written only by a process running as that owner, relative to directory
handles opened without following links (``O_NOFOLLOW``), so a reader running as anyone else (an
administrator with ``sudo``, an analyst with group access) writes nothing into the lake, and no link
swapped in at any moment leads a write elsewhere. Entries are ``LAKE/_iceberg/plans/<table>.json``,
mode 0600 in a 0700 folder. A ``plans`` folder this process may not use is named once in the log
(info). A temporary entry a killed writer left is removed by the next writer after a minute.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import stat
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

#: The folder of the entries, inside the lake's ``_iceberg`` folder (no table is named so).
PLANS_DIR: Final = "plans"
#: Format of an entry; another value is ignored (planned again and rewritten).
VERSION: Final = 3
#: The table pyiceberg's SQL catalog keeps its tables in, and its key columns.
_ROW_SQL: Final = ("SELECT metadata_location FROM iceberg_tables "
                   "WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TEMP: Final = re.compile(r"^\.[A-Za-z0-9_]+\.json\.tmp-[1-9][0-9]{0,9}$")
#: A temporary entry older than this is a killed writer's (a writer holds one for milliseconds).
_TEMP_GRACE_S: Final = 60.0
_told: set[str] = set()


def current_metadata(catalog_db: Path, catalog: str, namespace: str, table: str) -> str | None:
    """The metadata location the SQLite catalog ``catalog_db`` names for ``table`` now; None when the
    catalog or the row cannot be read (never raises)."""
    try:
        uri = catalog_db.resolve().as_uri() + "?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as con:
            row = con.execute(_ROW_SQL, (catalog, namespace, table)).fetchone()
    except (sqlite3.Error, OSError, ValueError):
        return None
    return str(row[0]) if row and row[0] else None


def _stamps(paths: list[str]) -> dict[str, list[int]] | None:
    """Each local file's (size, modification time in ns, inode); None when one cannot be read."""
    out: dict[str, list[int]] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            return None
        out[p] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _owner(catalog_db: Path) -> int | None:
    """The uid owning the catalog when it is a regular file (not a link); None otherwise."""
    try:
        st = os.lstat(catalog_db)
    except OSError:
        return None
    return st.st_uid if stat.S_ISREG(st.st_mode) else None


def _sound(fd: int, owner: int, kind: int) -> bool:
    """Whether the open ``fd`` is of ``kind`` (``S_IFDIR``/``S_IFREG``), owned by ``owner`` and
    writable by nobody else."""
    st = os.fstat(fd)
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == owner and not st.st_mode & 0o022


def _open_plans(folder: Path, owner: int, *, create: bool) -> int | None:
    """A handle on ``folder/plans`` when both are sound for ``owner`` (made first when ``create``);
    None otherwise. Never follows a link in either name."""
    try:
        ice = os.open(folder, _DIR_FLAGS)
    except OSError:
        return None
    try:
        if not _sound(ice, owner, stat.S_IFDIR):
            return None
        if create:
            with suppress(FileExistsError):
                os.mkdir(PLANS_DIR, 0o700, dir_fd=ice)
        try:
            plans = os.open(PLANS_DIR, _DIR_FLAGS, dir_fd=ice)
        except OSError:
            return None
        if _sound(plans, owner, stat.S_IFDIR):
            return plans
        os.close(plans)
        if create and str(folder) not in _told:
            _told.add(str(folder))
            log.info("iceberg: %s is not a folder of the lake's owner only; plans are not remembered (each "
                     "open plans with pyiceberg) until it is removed", folder / PLANS_DIR)
        return None
    except OSError:
        return None
    finally:
        os.close(ice)


def _valid(entry: Any, location: str, data_root: str) -> bool:
    """Whether ``entry`` has this format, this lake's location, and names only files where this lake
    keeps them (data files once each)."""
    if not isinstance(entry, dict) or entry.get("version") != VERSION or entry.get("location") != location:
        return False
    files, metadata = entry.get("files"), entry.get("metadata")
    if not isinstance(files, list) or not isinstance(metadata, dict) or not metadata:
        return False
    if not all(isinstance(f, str) and f.startswith(data_root + "/") and f.endswith(".parquet") for f in files):
        return False
    if len(set(files)) != len(files) or entry.get("metadata_location") not in metadata:
        return False
    return all(isinstance(k, str) and k.startswith(location + "/") and isinstance(v, list) for k, v in metadata.items())


def recall(folder: Path, catalog_db: Path, catalog: str, namespace: str, table: str,
           location: str, data_root: str) -> list[str] | None:
    """The remembered file list of ``table``'s current snapshot, or None (module docstring).

    ``folder`` is the lake's ``_iceberg`` folder, ``catalog_db`` its SQLite catalog, ``location``
    where the lake's table metadata lives now, ``data_root`` where its data files are. Never raises."""
    owner = _owner(catalog_db)
    if owner is None:
        return None
    plans = _open_plans(folder, owner, create=False)
    if plans is None:
        return None
    try:
        fd = os.open(f"{table}.json", os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=plans)
    except OSError:
        return None
    finally:
        os.close(plans)
    try:
        if not _sound(fd, owner, stat.S_IFREG):
            return None
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            entry = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if not _valid(entry, location, data_root):
        return None
    if current_metadata(catalog_db, catalog, namespace, table) != entry["metadata_location"]:
        return None
    if _stamps(list(entry["metadata"])) != entry["metadata"]:
        return None
    return list(entry["files"])


def _sweep(plans: int) -> None:
    """Remove the temporary entries of writers killed more than a minute ago (ours, regular files)."""
    now = time.time()
    for name in os.listdir(plans):
        if not _TEMP.match(name):
            continue
        with suppress(OSError):
            st = os.stat(name, dir_fd=plans, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and now - st.st_mtime > _TEMP_GRACE_S:
                os.unlink(name, dir_fd=plans)


def remember(folder: Path, catalog_db: Path, table: str, metadata_location: str, location: str,
             metadata_files: list[str], files: list[str]) -> None:
    """Remember ``files`` as the snapshot of ``table`` that ``metadata_location`` names, with the
    local ``metadata_files`` it was planned from (the metadata file, manifest list and manifests:
    :func:`recall` checks they are still as they were). Called right after planning; does nothing
    unless this process runs as the catalog's owner (module docstring); a failure to write is logged
    at debug level and ignored."""
    owner = _owner(catalog_db)
    if owner is None or owner != os.geteuid():
        return
    stamps = _stamps(metadata_files)
    if stamps is None:
        return
    body = json.dumps({"version": VERSION, "location": location, "metadata_location": metadata_location,
                       "metadata": stamps, "files": files}).encode()
    plans = _open_plans(folder, owner, create=True)
    if plans is None:
        return
    name, tmp = f"{table}.json", f".{table}.json.tmp-{os.getpid()}"
    try:
        _sweep(plans)
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=plans)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=plans)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=plans, dst_dir_fd=plans)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=plans)
        log.debug("iceberg: not remembering the plan of %s: %s", table, exc)
    finally:
        os.close(plans)

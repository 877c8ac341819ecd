"""The file lists of Iceberg snapshots, remembered per metadata file, so that reading a lake need not
import pyiceberg.

Opening an Iceberg lake plans each table's current snapshot
(:func:`ztaudit.core.iceberg.snapshot_files`). In a new process that first imports pyiceberg,
SQLAlchemy and ``pyarrow.dataset``: ~0.65 s of every ``ztaudit report`` or ``ztaudit sql`` on an
Iceberg lake, against ~0.2 s for the whole open of a plain lake. Yet a snapshot never changes, and the
catalog names the current one by its metadata file: every commit writes a new metadata file and swaps
the table's ``metadata_location`` in the catalog to it (the Iceberg spec's atomic commit,
<https://iceberg.apache.org/spec/#overview>). A file list planned for one metadata location is
therefore that location's list for good.

:func:`remember` is called after pyiceberg planned a table's whole snapshot; :func:`recall` before
planning. It reads the table's row of the SQLite catalog with the standard library's ``sqlite3``
(read-only) and returns the remembered list only when that row still names the remembered metadata
file, that file, the snapshot's manifest list and its manifests are still on disk with the sizes
they had, and the lake's metadata location is the one it was remembered for (a copied or moved lake
is refused by the planner with its own message; a lost metadata file or manifest fails the open as
before instead of being papered over). Anything else (no entry, an unreadable or foreign entry, a
newer commit, a catalog on PostgreSQL or metadata on S3, which the caller never asks about) gives
None, and the caller plans with pyiceberg as before: the cache can make an open faster, never
different.

Entries are ``LAKE/_iceberg/plans/<table>.json``, written atomically and owner-only like every lake
file, and only by the user who owns the catalog: a reader running as anyone else (an administrator
with ``sudo``, an analyst with group read access) writes nothing into the lake, so it can neither
leave files the owner cannot replace or ``migrate`` cannot remove, nor be led by a ``plans``
symbolic link to overwrite files elsewhere. A ``plans`` that is a symbolic link or not a folder is
never written through. A temporary file a killed writer left there is removed by the next one
(:func:`~ztaudit.core.files.sweep_temp_files`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Final

from ztaudit.core.errors import SinkError
from ztaudit.core.files import makedirs, sweep_temp_files, write_bytes_atomic

log = logging.getLogger(__name__)

#: The folder of the entries, inside the lake's ``_iceberg`` folder (no table is named so).
PLANS_DIR: Final = "plans"
#: Format of an entry; another value is ignored (planned again and rewritten).
VERSION: Final = 2
#: The table pyiceberg's SQL catalog keeps its tables in, and its key columns.
_ROW_SQL: Final = ("SELECT metadata_location FROM iceberg_tables "
                   "WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?")


def _entry(folder: Path, table: str) -> Path:
    return folder / PLANS_DIR / f"{table}.json"


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


def _sizes(paths: list[str]) -> dict[str, int] | None:
    """Each local file's size; None when one is missing or unreadable."""
    out: dict[str, int] = {}
    for p in paths:
        try:
            out[p] = os.stat(p).st_size
        except (OSError, ValueError):
            return None
    return out


def recall(folder: Path, catalog_db: Path, catalog: str, namespace: str, table: str,
           location: str) -> list[str] | None:
    """The remembered file list of ``table``'s current snapshot, or None (module docstring).

    ``folder`` is the lake's ``_iceberg`` folder, ``catalog_db`` its SQLite catalog, ``location``
    where the lake's table metadata lives now. Never raises."""
    try:
        entry = json.loads(_entry(folder, table).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != VERSION or entry.get("location") != location:
        return None
    files, metadata = entry.get("files"), entry.get("metadata")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    if not isinstance(metadata, dict) or not metadata or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in metadata.items()):
        return None
    if current_metadata(catalog_db, catalog, namespace, table) != entry.get("metadata_location"):
        return None
    if _sizes(list(metadata)) != metadata:
        return None
    return files


def _may_write(folder: Path, catalog_db: Path) -> bool:
    """Whether this process may write entries (module docstring): it owns the catalog, and ``plans``
    is absent or a real folder it owns."""
    try:
        if os.stat(catalog_db).st_uid != os.geteuid():
            return False
        st = os.lstat(folder / PLANS_DIR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def remember(folder: Path, catalog_db: Path, table: str, metadata_location: str, location: str,
             metadata_files: list[str], files: list[str]) -> None:
    """Remember ``files`` as the snapshot of ``table`` that ``metadata_location`` names, with the
    local ``metadata_files`` it was planned from (the metadata file, manifest list and manifests:
    :func:`recall` checks they are still there). Called right after planning; does nothing for a
    process that does not own the lake (module docstring); a failure to write is logged at debug
    level and ignored."""
    if not _may_write(folder, catalog_db):
        return
    sizes = _sizes(metadata_files)
    if sizes is None:
        return
    body = {"version": VERSION, "location": location, "metadata_location": metadata_location,
            "metadata": sizes, "files": files}
    path = _entry(folder, table)
    try:
        makedirs(path.parent)
        sweep_temp_files(path.parent)
        write_bytes_atomic(path, json.dumps(body).encode())
    except (OSError, SinkError) as exc:
        log.debug("iceberg: not remembering the plan of %s: %s", table, exc)

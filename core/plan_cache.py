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
file and the lake's metadata location is the one it was remembered for (a copied or moved lake is
refused by the planner with its own message). Anything else (no entry, an unreadable or foreign
entry, a newer commit, a catalog on PostgreSQL, which the caller never asks about) gives None, and
the caller plans with pyiceberg as before: the cache can make an open faster, never different.

Entries are ``LAKE/_iceberg/plans/<table>.json``, written atomically and owner-only like every lake
file. A reader that may not write the lake just does not remember (logged at debug level).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final

from ztaudit.core.errors import SinkError
from ztaudit.core.files import makedirs, write_bytes_atomic

log = logging.getLogger(__name__)

#: The folder of the entries, inside the lake's ``_iceberg`` folder (no table is named so).
PLANS_DIR: Final = "plans"
#: Format of an entry; another value is ignored (planned again and rewritten).
VERSION: Final = 1
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
    files = entry.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    metadata = entry.get("metadata_location")
    if not metadata or current_metadata(catalog_db, catalog, namespace, table) != metadata:
        return None
    return files


def remember(folder: Path, table: str, metadata_location: str, location: str, files: list[str]) -> None:
    """Remember ``files`` as the snapshot of ``table`` that ``metadata_location`` names (module
    docstring). Called right after planning it; a failure to write is logged and ignored."""
    body = {"version": VERSION, "location": location, "metadata_location": metadata_location, "files": files}
    path = _entry(folder, table)
    try:
        makedirs(path.parent)
        write_bytes_atomic(path, json.dumps(body).encode())
    except (OSError, SinkError) as exc:
        log.debug("iceberg: not remembering the plan of %s: %s", table, exc)

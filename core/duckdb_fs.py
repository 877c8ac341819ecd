"""DuckDB reads Parquet objects on S3 through pyarrow's S3 client: no DuckDB extension involved.

DuckDB's own ``s3://`` reader is the httpfs extension, which DuckDB downloads at run time
(``INSTALL httpfs``, or auto-install when a query names an ``s3://`` path). An air-gapped machine
cannot fetch it, so ztaudit never uses it: :func:`attach` registers, on one DuckDB connection, an
fsspec filesystem for the ``s3`` protocol that does its I/O with the ``pyarrow.fs.S3FileSystem``
the lake already uses for writing (the AWS SDK for C++ inside pyarrow: credentials, endpoint,
region, TLS are whatever that filesystem was built with).

**When it is called**: by the lake's DuckDB connection setup, once per connection, for a lake whose
Iceberg warehouse is on S3, before the views (``read_parquet([...explicit list of s3:// URIs...])``)
are created. Local lakes never call it.

**Protocol name: ``s3``, and the URIs are given to DuckDB unchanged.** Measured with DuckDB 2.0.1:
a filesystem registered with ``register_filesystem`` is asked before DuckDB's extension
auto-loading, so once one named ``s3`` is registered, ``read_parquet('s3://bucket/key')`` goes to
it, and DuckDB neither auto-installs nor auto-loads httpfs (``strace``: no access to
``~/.duckdb/extensions`` and no connection but to the store; the tests check that an
auto-install from a repository that would fail is never attempted). Auto-loading therefore does
not have to be switched off, and no URI rewriting is needed: the lake's ``s3://bucket/key`` paths
(as pyiceberg's manifests hold them) are what DuckDB is given. Without :func:`attach` the same
query fails with "requires the extension httpfs" (or a failed download, where auto-install is on).

**Ranged reads.** DuckDB opens each object, seeks and reads what it needs: the footer, then only
the column chunks of the projected columns in the row groups its statistics do not prune. Each read
is one ``GetObject`` with a byte range (``NativeFile.read_at``); an object is never fetched whole
unless DuckDB asks for all of it. DuckDB's external file cache (on by default) rounds remote reads
up to blocks of at most 2 MB and keeps them for the connection, so an object smaller than that is
fetched in one GET, and a query repeated on the connection fetches nothing; it does not trust an
object modified in the last ~10 s and re-reads those. Measured on S3Proxy (``bench/s3_read.py``,
1M rows in 10 objects of 2.4 MB): ``count(*)`` fetched 0.8% of the bytes, a group-by over three
columns 8.9%, a filter pruned by row-group statistics 33%. What DuckDB asks about an object before
reading it (it globs, tests existence, asks size and mtime, opens it twice) would be seven
``HeadObject`` requests per object; object metadata and the opened object are therefore kept for
:data:`METADATA_TTL_SECONDS` per path (long enough for one query to bind and open its objects),
which leaves two ``HeadObject`` per object (200 objects: 1408 -> 400). The lake replaces objects
under the same key (a consumer's replay; each ``detect``'s derived tables and findings), so the cache
is short and :func:`attach`, called each time the views are made, empties it: a replaced object is
read whole and new by the next query that starts after the TTL, or after the views are made again.
A query that is reading an object at the instant another process replaces it can fail
("No magic bytes found"); S3 offers no snapshot of an object across ranged reads. Run it again.

**Failure.** A missing object makes the query fail with DuckDB's ``IO Error: No files found that
match the pattern "s3://bucket/key"``; one that vanishes after that, refused credentials, or any
other error of the store makes it fail with a ``duckdb.Error`` whose message ends in
``s3://bucket/key: <what the store said>`` (for example ``AWS Error ACCESS_DENIED during
HeadObject operation``). Messages name the URI and the store's error code, never a credential:
pyarrow's errors do not contain them and this module adds none.
"""

from __future__ import annotations

import errno
import io
import re
import threading
import time
import weakref
from typing import Any

import duckdb
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow import NativeFile
from pyarrow import fs as pafs

#: How long the metadata (size, mtime) and the opened handle of an object are reused, per path.
#: Bounds how stale a reader can be about an object replaced under the same key; a DuckDB query
#: binds and opens its objects within it, so each object costs two ``HeadObject`` requests, not seven.
#: The lake *does* replace objects under the same key (a consumer's replay, each ``detect``'s derived
#: tables and findings), so every :func:`attach` -- called each time the views are (re)created, e.g.
#: after ``detect`` rewrote the derived tables -- also forgets what the connection cached.
METADATA_TTL_SECONDS = 2.0

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
#: pyarrow's S3 errors start with "When reading information for key 'k' in bucket 'b': ", which
#: the URI replaces.
_PYARROW_PREFIX = re.compile(r"^When [^:]*: ")

#: connection -> scheme -> (the pyarrow filesystem attached, the fsspec filesystem registered)
_ATTACHED: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, dict[str, tuple[pafs.FileSystem, Any]]] = (
    weakref.WeakKeyDictionary())
_ATTACHED_LOCK = threading.Lock()


def attach(con: duckdb.DuckDBPyConnection, filesystem: pafs.FileSystem, scheme: str = "s3") -> None:
    """Make ``read_parquet('<scheme>://bucket/key')`` on ``con`` read ``bucket/key`` through ``filesystem``.

    ``filesystem`` is a ``pyarrow.fs.FileSystem`` whose paths are ``bucket/key`` (no scheme), as
    ``pyarrow.fs.S3FileSystem``'s are. Idempotent per connection: attaching the same (equal)
    filesystem again does nothing; attaching another one under the same scheme replaces it.
    Raises ``ValueError`` for a scheme that is not a URI scheme or is ``file``. Nothing is
    contacted here: a wrong endpoint or refused credentials surface at the first query (see the
    module docstring for how).
    """
    if not _SCHEME.fullmatch(scheme) or scheme == "file":
        raise ValueError(f"attach: {scheme!r} is not a URI scheme an object store can be attached under")
    with _ATTACHED_LOCK:
        mine = _ATTACHED.setdefault(con, {})
        current = mine.get(scheme)
        registered = scheme in con.list_filesystems()
        if current is not None and registered and (current[0] is filesystem or current[0].equals(filesystem)):
            current[1].forget()  # new views may name objects replaced since they were cached
            return
        if registered:
            con.unregister_filesystem(scheme)
        wrapper = _ObjectStore(filesystem, scheme)
        con.register_filesystem(wrapper)
        mine[scheme] = (filesystem, wrapper)


class _ObjectStore(ArrowFSWrapper):  # type: ignore[misc]  # fsspec is untyped
    """fsspec view of a pyarrow filesystem under ``scheme``, with the per-path metadata cache."""

    # fsspec caches filesystem instances by their constructor arguments; two S3FileSystems with
    # different credentials must never share one.
    cachable = False

    def __init__(self, filesystem: pafs.FileSystem, scheme: str) -> None:
        super().__init__(filesystem)
        self._scheme = scheme
        self._lock = threading.Lock()
        self._infos: dict[str, tuple[float, dict[str, Any]]] = {}
        self._handles: dict[str, tuple[float, NativeFile]] = {}

    @property
    def protocol(self) -> str:
        return self._scheme

    def forget(self) -> None:
        """Drop every cached size, mtime and open handle (:func:`attach` calls it on a re-attach)."""
        with self._lock:
            self._infos.clear()
            self._handles.clear()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        scheme_end = path.find("://")
        return (path[scheme_end + 3:] if scheme_end > 0 else path).rstrip("/")

    def uri(self, path: str) -> str:
        return f"{self._scheme}://{self._strip_protocol(path)}"

    def _error(self, path: str, exc: OSError) -> OSError:
        """The store's error as one naming the URI; FileNotFoundError / PermissionError where it says so."""
        said = _PYARROW_PREFIX.sub("", str(exc).strip()).strip()
        message = f"{self.uri(path)}: {said}"
        if isinstance(exc, FileNotFoundError) or "NO_SUCH_KEY" in said or "NO_SUCH_BUCKET" in said:
            return FileNotFoundError(errno.ENOENT, message)
        if isinstance(exc, PermissionError) or "ACCESS_DENIED" in said or "INVALID_ACCESS_KEY" in said \
                or "SIGNATURE_DOES_NOT_MATCH" in said:
            return PermissionError(errno.EACCES, message)
        return OSError(errno.EIO, message)

    def _memo_get(self, table: dict[str, tuple[float, Any]], path: str) -> Any:
        with self._lock:
            hit = table.get(path)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            table.pop(path, None)
            return None

    def _memo_put(self, table: dict[str, tuple[float, Any]], path: str, value: Any) -> None:
        with self._lock:
            table[path] = (time.monotonic() + METADATA_TTL_SECONDS, value)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        hit: dict[str, Any] | None = self._memo_get(self._infos, path)
        if hit is not None:
            return dict(hit)
        try:
            [found] = self.fs.get_file_info([path])
        except OSError as exc:
            raise self._error(path, exc) from None
        if found.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, f"{self.uri(path)}: no such object")
        entry: dict[str, Any] = self._make_entry(found)
        if found.type == pafs.FileType.File:
            self._memo_put(self._infos, path, entry)
        return dict(entry)

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def size(self, path: str) -> int | None:
        size: int | None = self.info(path).get("size")
        return size

    def modified(self, path: str) -> Any:
        return self.info(path)["mtime"]

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if mode != "rb":
            # DuckDB only reads through this filesystem; the lake writes with pyarrow directly.
            raise OSError(errno.EROFS, f"{self.uri(path)}: opened for {mode!r}, but attach() is read-only")
        handle: NativeFile | None = self._memo_get(self._handles, path)
        if handle is None:
            try:
                handle = self.fs.open_input_file(path)
            except OSError as exc:
                raise self._error(path, exc) from None
            self._memo_put(self._handles, path, handle)
        return _ObjectFile(self, path, handle)


class _ObjectFile(io.RawIOBase):
    """One reader's position over a shared object handle; every read is one ranged GET (``read_at``,
    thread-safe in pyarrow's S3 client), so readers on several threads never move each other."""

    def __init__(self, store: _ObjectStore, path: str, handle: NativeFile) -> None:
        super().__init__()
        self._store = store
        self.path = path
        self._handle = handle
        self._size: int = handle.size()
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"{self._store.uri(self.path)}: seek before the start")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if n <= 0:
            return b""
        try:
            data: bytes = self._handle.read_at(n, self._pos)
        except OSError as exc:
            raise self._store._error(self.path, exc) from None
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

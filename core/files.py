"""Files of the lake: owner-only modes, atomic writes, advisory locks.

Every file ztaudit puts in a lake (Parquet, manifests, model state) and every report it writes with
``--out`` goes through :func:`write_atomic` (the DuckDB file of ``catalog --out``, which DuckDB itself
writes, is built in a private temporary directory and renamed the same way): a temporary file created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` beside the target, written, fsynced, renamed over the target with
``os.replace`` (atomic on one filesystem), and the directory fsynced. A reader or a crash sees the
old file or the new one, never half a file; that rename is the durability point the Kafka consumer
commits offsets after. On any error the temporary file is removed and the error propagates.

Permissions: directories 0700 and files 0600 (owner only, nothing for group or others), whatever
the umask, because audit logs name people and carry attacker-chosen strings.

Locks are ``flock`` on a lock file (released by the kernel when the process dies, so a killed
``detect`` or ``compact`` never leaves a stale lock).

Which files are the lake's own (issue 11, items 3 and 4): a committed file is named
``<safe key>.parquet`` (:func:`safe_key`, never hidden) and starts and ends with the Parquet magic
``PAR1``; a temporary file is ``.<final name>.tmp-<pid>`` and is ``flock``-ed by its writer for as
long as it exists. :func:`table_files` lists what readers read and names every foreign file;
:func:`sweep_temp_files` deletes only temporary files that are provably a dead writer's leftovers.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.parquet as pq

from ztaudit.core.errors import LakeError, SinkError

log = logging.getLogger(__name__)

#: Owner-only: audit logs name people and carry what they did (the guide: "owner-only lake files").
#: Readers in another account read through ztaudit run as the owner, or a copy made for them.
DIR_MODE = 0o700
FILE_MODE = 0o600
#: DuckDB parallelises per row group; 122,880 is its own default and within the 100k-1M advice.
ROW_GROUP_ROWS = 122_880

#: Columns whose values are (nearly) unique per row: dictionary pages and min/max statistics cost
#: write time there and buy neither compression nor pruning (measured: ~20% less Parquet write
#: time on 200k audit rows, 3% smaller files).
HIGH_CARDINALITY = frozenset({"audit_id", "origin", "request_uri", "request_id", "check_request_id", "raw",
                              "finding_id", "evidence", "summary", "context", "detail", "annotations"})

#: Columns an identity, credential, session or address is looked up by ("the uses of the revoked
#: subject X", ``kubectl --as``'s target, ``ztaudit report identity``): each row group gets a Parquet
#: bloom filter on them. Min/max statistics cannot skip a row group for ``actor = 'system:serviceaccount:
#: ns:x'`` (every row group's range spans from ``system:...`` to ``user...``); a bloom filter can, and
#: DuckDB (and Spark's and Trino's Parquet readers) use it for ``=`` and ``IN`` filters, including the
#: IN lists a join pushes into the scan. Measured at 10M audit events (bench/report.py): the statement
#: finding the revoked service accounts' uses read 171 MB, all 84 row groups, in 0.39 s without; 0.05 s with.
LOOKUP_COLUMNS: Final = frozenset({
    "user_name", "actor", "impersonator", "impersonated_user", "credential_id", "proxy_session_id", "source_ip",
    "user_id", "email", "session_id", "client_ip", "subject_id", "subject_login", "credential_key", "holder"})
#: Distinct values a row group's bloom filter is sized for: its rows, so even a column of per-pod
#: credentials or session ids keeps ~5 % false positives. pyarrow folds the filter down to the values
#: present, so a column of a few thousand identities costs ~4 KiB; 128 KiB per column and row group
#: at most (32,768 gave 32 KiB but 83 % false positives at 122,880 distinct values: useless).
BLOOM_NDV: Final = ROW_GROUP_ROWS
#: The false-positive rate at that size (pyarrow's default; 0.01 would double the bytes).
BLOOM_FPP: Final = 0.05

_SAFE_KEY = re.compile(r"[^A-Za-z0-9._+=-]")
#: The longest file name stem (file systems allow 255 bytes; ``.parquet`` and temp-file affixes need room).
MAX_KEY = 200
UNDATED = "unknown"


def safe_key(key: str) -> str:
    """File-name-safe form of a file key (topic names may hold characters a path must not).

    Never empty and never hidden: a leading ``.`` becomes ``_``, because readers skip hidden files
    (:func:`table_files`; a Kafka topic may start with ``.``).
    """
    safe = _SAFE_KEY.sub("_", key)
    if len(safe) > MAX_KEY:
        # A Kafka topic name may have 249 characters: cutting the key would cut the chunk's offset at
        # its end, and chunks of one partition would share a name (each replacing the last). The head
        # is shortened with a digest of the whole key instead; the last 21 characters stay.
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = safe[:MAX_KEY - 21 - 17] + "-" + digest + safe[-21:]
    if not safe or safe[0] == ".":
        safe = "_" + safe[1:]
    return safe


def makedirs(path: Path) -> None:
    """Create ``path`` and parents with mode 0700 (umask-independent).

    Raises :class:`SinkError` (exit 4) naming the directory when it cannot be created.
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise SinkError(f"cannot create {d}: {exc.strerror or exc}",
                            fix="pass a --lake directory you can write (its parent must be a directory)") from exc
        os.chmod(d, DIR_MODE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None], *, mode: int = FILE_MODE) -> Path:
    """Write ``path`` atomically through ``write(fh)``: exclusive no-follow temp file, fsync, rename.

    The temporary name is ``.<name>.tmp-<pid>``; a leftover of a killed earlier run of the same
    process id is removed first (``O_EXCL`` then succeeds). The writer holds an exclusive ``flock``
    on the temporary file until it is renamed or removed: that lock (released by the kernel when
    the process dies) is how :func:`sweep_temp_files` tells a live writer's file from a leftover,
    even across PID namespaces. Raises ``OSError``; nothing half-written is left behind.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        tmp.unlink()
        fd = os.open(tmp, flags, mode)
    try:
        # Blocking: only a sweeper can hold it, and only for the instant it looks (it then sees a
        # fresh mtime and leaves the file alone).
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


#: ``.<final name>.tmp-<pid>``: exactly the temporary names :func:`write_atomic` makes in the lake.
TEMP_NAME: Final = re.compile(r"^\.(?P<final>[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*)\.tmp-(?P<pid>[1-9][0-9]{0,9})$")
#: A temporary file modified within this many seconds is never swept: it may be a live writer's
#: between its ``open`` and its ``flock`` (a few microseconds; the margin covers clock steps).
TEMP_GRACE_S: Final = 60.0


def _pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists in our PID namespace (``kill(pid, 0)``, kill(2))."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists (another user's): not provably dead
        return True
    except OverflowError:  # larger than pid_t: no such process can exist
        return False
    return True


def _is_leftover(path: Path, pid: int, now: float) -> bool:
    """Whether the temporary file ``path`` of writer ``pid`` is provably a dead writer's leftover.

    All must hold: the pid is not ours and no process has it in our namespace; ``path`` is a
    regular file (opened with ``O_NOFOLLOW``: a symlink is never followed or deleted), owned by
    us, not modified for :data:`TEMP_GRACE_S`; and its ``flock`` is free -- a live writer holds it
    (:func:`write_atomic`), also one in another PID namespace sharing the directory.
    """
    if pid == os.getpid() or _pid_alive(pid):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # vanished, a symlink (ELOOP), not ours to read
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_mtime < TEMP_GRACE_S:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)  # the unlink below happens after; a dead writer's name cannot come back


def sweep_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``directory``; returns what was deleted.

    Called by :class:`~ztaudit.core.sink.LakeSink` once per run for each ``dt=`` directory of a
    table it writes. Only names matching :data:`TEMP_NAME` exactly are considered, and only
    provable leftovers are deleted (:func:`_is_leftover`); anything else is left alone. A file
    that cannot be deleted is logged and kept: cleaning up never fails a run.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = [e.name for e in os.scandir(directory)]
    except OSError:
        return removed
    for name in entries:
        m = TEMP_NAME.match(name)
        if m is None:
            continue
        path = directory / name
        if not _is_leftover(path, int(m["pid"]), now):
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("lake: cannot remove the leftover temporary file %s: %s", path, exc.strerror or exc)
            continue
        log.info("lake: removed %s, a temporary file of writer pid %s that died before renaming it",
                 path, m["pid"])
        removed.append(path)
    return removed


#: A committed lake file: a :func:`safe_key` name (never hidden) plus ``.parquet``.
OWN_PARQUET: Final = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*\.parquet$")
#: First and last four bytes of every Parquet file (Apache Parquet format specification, "File format").
PARQUET_MAGIC: Final = b"PAR1"
#: How many foreign files an error names before it says "and N more".
_NAMED: Final = 5


def _foreign_reason(path: Path) -> str | None:
    """Why the ``*.parquet`` entry ``path`` is not one of the lake's own files, or None if it is."""
    if OWN_PARQUET.match(path.name) is None:
        return "not a name ztaudit writes"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link (ztaudit never writes one)"
        return f"unreadable ({exc.strerror or exc})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size < 2 * len(PARQUET_MAGIC) + 4:
            return "not a Parquet file (too short)"
        head = os.pread(fd, len(PARQUET_MAGIC), 0)
        tail = os.pread(fd, len(PARQUET_MAGIC), st.st_size - len(PARQUET_MAGIC))
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    finally:
        os.close(fd)
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        return "not a Parquet file (no PAR1 magic at its start and end)"
    return None


def day_dirs(table_dir: Path) -> list[Path]:
    """The ``dt=*`` partition directories of one table, sorted (none when the table has none)."""
    try:
        return sorted(Path(e.path) for e in os.scandir(table_dir) if e.name.startswith("dt=") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _list_day(day: Path, files: list[Path], foreign: list[str]) -> None:
    """Add the lake's own ``*.parquet`` files of one ``dt=`` directory to ``files``, the others
    (with why) to ``foreign``; name hidden ones in a warning (they are not read)."""
    try:
        names = sorted(e.name for e in os.scandir(day))
    except OSError as exc:
        raise LakeError(f"cannot list {day}: {exc.strerror or exc}",
                        fix="make the lake readable by this user") from exc
    for name in names:
        if not name.endswith(".parquet"):
            continue  # manifests, locks, temporary files: not read as data
        path = day / name
        if name.startswith("."):
            log.warning("lake: ignoring hidden file %s: ztaudit never writes one and does not read it; "
                        "move it out of the lake", path)
            continue
        reason = _foreign_reason(path)
        if reason is None:
            files.append(path)
        else:
            foreign.append(f"{path}: {reason}")


def _raise_foreign(where: Path, foreign: list[str]) -> None:
    if foreign:
        more = f"\n  ... and {len(foreign) - _NAMED} more" if len(foreign) > _NAMED else ""
        raise LakeError(f"{where} holds {len(foreign)} file(s) that are not the lake's own, which a reader "
                        "would read as data:\n  " + "\n  ".join(foreign[:_NAMED]) + more,
                        fix="move them out of the lake; if one is a damaged lake file, restore it or "
                            "re-ingest its input")


def day_files(day: Path) -> list[Path]:
    """The committed Parquet files of one ``dt=`` directory, sorted (:func:`table_files` for one day).

    Called by ``compact`` for its inputs. Raises :class:`LakeError` naming any foreign file.
    """
    files: list[Path] = []
    foreign: list[str] = []
    if day.is_dir():
        _list_day(day, files, foreign)
    _raise_foreign(day, foreign)
    return files


def table_files(table_dir: Path) -> list[Path]:
    """The committed Parquet files of one table (``TABLE/dt=*/<key>.parquet``), sorted.

    Called by every reader before it reads a table: the DuckDB views
    (:func:`ztaudit.core.catalog.create_views`) and :meth:`LakeSink.files
    <ztaudit.core.sink.LakeSink.files>`. The set is exactly what the views' glob
    ``dt=*/[!.]*.parquet`` reads, and each file is checked to be the lake's own (name, regular file,
    Parquet magic at both ends): a stray or damaged file would otherwise be read as evidence (rows
    counted twice) or break every query with a traceback. So it raises :class:`LakeError` naming
    every such file and the fix -- it does not skip them, because a damaged file may hold evidence
    that must be restored, not silently dropped. Hidden ``*.parquet`` files are not read (the
    glob skips them); each is named in a warning.
    """
    files: list[Path] = []
    foreign: list[str] = []
    for day in day_dirs(table_dir):
        _list_day(day, files, foreign)
    _raise_foreign(table_dir, foreign)
    return files


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """:func:`write_atomic` of ``data`` (manifests, model state). Raises ``OSError``."""
    def write(fh: BinaryIO) -> None:
        fh.write(data)

    return write_atomic(path, write)


def with_dt(table: pa.Table, day: str) -> pa.Table:
    """``table`` with its ``dt`` column set to ``day`` as a DATE (NULL for :data:`UNDATED`), last.

    Every lake file carries its partition day as a real column (issue 16, item 2), so day
    predicates prune on every engine, with or without hive partitioning; a ``dt`` already there
    (a compaction's input read back, possibly as text) is replaced by the folder's day.
    """
    if "dt" in table.column_names:
        table = table.drop_columns(["dt"])
    value = None if day == UNDATED else date.fromisoformat(day)
    return table.append_column(pa.field("dt", pa.date32()), pa.array([value] * table.num_rows, pa.date32()))


def parquet_options(table: pa.Table, day: str | None,
                    metadata: dict[bytes, bytes] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """``table`` as a lake file holds it (its ``dt`` set to ``day`` when given, ``metadata`` added to
    its key-value metadata) and the ``pq.write_table`` options of every lake file: zstd,
    ``ROW_GROUP_ROWS`` row groups, no dictionary or statistics for :data:`HIGH_CARDINALITY` columns,
    a bloom filter per row group on the :data:`LOOKUP_COLUMNS` it has.
    Shared by the local writer (:func:`write_parquet_atomic`) and the object-store writer
    (:mod:`ztaudit.core.sink`), so a lake's files are the same wherever they live."""
    if day is not None:
        table = with_dt(table, day)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    low_card = [n for n in table.column_names if n not in HIGH_CARDINALITY]
    bloom = {n: {"ndv": BLOOM_NDV, "fpp": BLOOM_FPP} for n in table.column_names if n in LOOKUP_COLUMNS}
    return table, {"compression": "zstd", "row_group_size": ROW_GROUP_ROWS,
                   "use_dictionary": low_card, "write_statistics": low_card, "bloom_filter_options": bloom}


def write_parquet_atomic(table: pa.Table, final: Path, metadata: dict[bytes, bytes] | None = None) -> Path:
    """Write ``table`` to ``final`` atomically as zstd Parquet with ``ROW_GROUP_ROWS`` row groups.

    ``metadata`` is added to the file's key-value metadata (the sink records a chunk's extent
    there). Raises :class:`SinkError` (nothing half-written is left behind) when the disk refuses.
    """
    day = final.parent.name[3:] if final.parent.name.startswith("dt=") else None
    table, options = parquet_options(table, day, metadata)

    def write(fh: BinaryIO) -> None:
        pq.write_table(table, fh, **options)

    try:
        makedirs(final.parent)
        return write_atomic(final, write)
    except OSError as exc:
        raise SinkError(f"cannot write {final}: {exc.strerror or exc}",
                        fix="check free space and that the lake directory is writable") from exc


@contextmanager
def file_lock(path: Path, *, timeout: float | None, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created owner-only, :data:`FILE_MODE`) for the ``with`` block.

    ``timeout`` None: fail at once when another process holds it; else wait up to ``timeout``
    seconds. When the lock cannot be had, raises ``busy()``, the caller's error that says who
    holds it and what to do; when the lock file cannot be created (read-only lake, a file where
    its folder should be), :class:`SinkError` (exit 4) naming it.
    """
    makedirs(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise SinkError(f"cannot create lock file {path}: {exc.strerror or exc}",
                        fix="pass a --lake directory you can write (check its permissions and free space)") from exc
    try:
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is None or time.monotonic() >= deadline:
                    raise busy() from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

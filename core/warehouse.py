"""Where an Iceberg lake keeps its data and table metadata: the lake folder, or S3 (``lake.warehouse``).

By default an Iceberg lake's data files and table metadata live in the lake folder itself
(``LAKE/<table>/dt=...``, ``LAKE/_iceberg/<table>/metadata``). A lake created while
``lake.warehouse`` names an S3-compatible bucket (``s3://BUCKET/PREFIX``) keeps them there instead,
at the same relative places (``s3://BUCKET/PREFIX/<table>/dt=YYYY-MM-DD/<key>.parquet``,
``s3://BUCKET/PREFIX/_iceberg/<table>/metadata/...``); the lake folder keeps the catalog (or the
reference to a PostgreSQL one), the commit lock, and ``_iceberg/warehouse.json``, which records the
bucket, prefix, endpoint and region (never a credential). Every process that opens the lake reads it
from there, so a lake never changes warehouse after it was made (``lake.warehouse`` applies to new
lakes only, like ``lake.catalog_uri``).

Credentials are never taken from a flag, a config file or the URI, and never written or printed:
the AWS SDK of each client finds them as it always does (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in the environment, or the shared credentials file
``AWS_SHARED_CREDENTIALS_FILE`` / ``~/.aws/credentials`` with ``AWS_PROFILE``). ztaudit's own
clients are pyarrow's ``S3FileSystem`` (the sink, recovery) and pyiceberg's ``PyArrowFileIO``
(catalog metadata), both over the AWS SDK for C++; DuckDB reads through the same filesystem
(:mod:`ztaudit.core.duckdb_fs`), Spark through Iceberg's ``S3FileIO`` (AWS SDK for Java).

Objects are written with one ``PUT`` each: S3 makes an object visible whole or not at all (S3 is
strongly read-after-write consistent since December 2020, "Amazon S3 data consistency model"), so
the temporary-file-and-rename of a local lake is not needed, and a killed writer leaves no partial
object. An object written but not yet registered in the table's snapshot is invisible to readers
(they read the snapshot's list, never a listing) until the writer's next publish, or its replay.

A leaf module except for :mod:`ztaudit.core.errors` and :mod:`ztaudit.core.files` (the configuration
imports the sink, which imports this: it cannot import the configuration; :func:`configured` reads
what ``load_config`` recorded, as :mod:`ztaudit.core.catalog_uri` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ztaudit.core.errors import LakeError

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

#: Environment variables of ``lake.warehouse``, ``lake.s3_endpoint`` and ``lake.s3_region``.
ENV: Final = "ZTAUDIT_LAKE_WAREHOUSE"
ENDPOINT_ENV: Final = "ZTAUDIT_LAKE_S3_ENDPOINT"
REGION_ENV: Final = "ZTAUDIT_LAKE_S3_REGION"
DEFAULT_REGION: Final = "us-east-1"
#: In ``LAKE/_iceberg``: the warehouse of a lake whose files are on S3 (absent: the lake folder).
WAREHOUSE_FILE: Final = "warehouse.json"
#: At ``s3://BUCKET/PREFIX/``: the object that says which lake owns the prefix (its id, as
#: ``warehouse.json`` records it). Two lake folders on one prefix would replace and delete each
#: other's objects (the names come from the input, ``maintain`` takes the other's as orphans).
CLAIM_OBJECT: Final = "_ztaudit_lake.json"
#: In ``LAKE/_iceberg``, while a lake on S3 is being made: the id it chose before writing its claim.
PENDING_FILE: Final = "warehouse.pending.json"
#: S3 bucket names (AWS "Bucket naming rules"): 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: A key prefix: path segments of safe characters (no ``..``, no empty segment, no ``%`` escapes).
_PREFIX: Final = re.compile(r"[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*")

#: ``lake.warehouse``, ``lake.s3_endpoint``, ``lake.s3_region`` of the config file this command loaded.
_from_file: dict[str, str] = {}
_fs_lock = threading.Lock()
_filesystems: dict[tuple[str, str], S3FileSystem] = {}
_of_lake: dict[str, S3Warehouse | None] = {}
#: (lake, lake id) pairs whose claim object this process checked (:func:`verify_claim`).
_verified: set[tuple[str, str]] = set()


def remember_file_settings(warehouse: str, endpoint: str, region: str) -> None:
    """Record the config file's ``lake.warehouse``, ``lake.s3_endpoint`` and ``lake.s3_region``
    (called by ``load_config`` for a command's own configuration; "" where the file sets none)."""
    _from_file.update(warehouse=warehouse, endpoint=endpoint, region=region)


def configured() -> S3Warehouse | None:
    """The warehouse a lake created now gets: ``$ZTAUDIT_LAKE_WAREHOUSE``, else the config file's
    ``lake.warehouse``; None when neither names one (the lake folder). Raises :class:`LakeError` for a
    malformed URI (:func:`parse`)."""
    uri = os.environ.get(ENV, "") or _from_file.get("warehouse", "")
    if not uri:
        return None
    endpoint = os.environ.get(ENDPOINT_ENV, "") or _from_file.get("endpoint", "")
    region = os.environ.get(REGION_ENV, "") or _from_file.get("region", "") or DEFAULT_REGION
    return parse(uri, endpoint=endpoint or None, region=region)


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a warehouse URI ztaudit accepts (``s3://BUCKET`` or ``s3://BUCKET/PREFIX``),
    or None. Never raises; the message never repeats the URI (it may hold a mistyped secret)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "is not a URI"
    if parts.scheme != "s3":
        return "must start with s3:// (only S3-compatible object storage is supported)"
    if "@" in parts.netloc or parts.password is not None:
        return ("holds credentials; they come from the environment (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY) or AWS_SHARED_CREDENTIALS_FILE, never from the URI")
    if parts.query or parts.fragment:
        return "has a query or fragment (?, #); give only s3://BUCKET/PREFIX"
    if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        return "names no valid bucket (3-63 lowercase letters, digits, dots and hyphens)"
    prefix = parts.path.strip("/")
    if prefix and (not _PREFIX.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/"))):
        return "has a prefix with characters other than letters, digits and _ . = + - between slashes"
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not an S3 endpoint URL (``http(s)://host[:port]``), or None. Never raises."""
    try:
        parts = urlsplit(endpoint)
        _ = parts.port
    except ValueError:
        return "is not a URL (its port is not a number)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http://HOST[:PORT] or https://HOST[:PORT]"
    if parts.username or parts.password:
        return "holds credentials; they come from the environment or AWS_SHARED_CREDENTIALS_FILE"
    if parts.path.strip("/") or parts.query or parts.fragment:
        return "must be only scheme, host and port (no path or query)"
    return None


def parse(uri: str, *, endpoint: str | None = None, region: str = DEFAULT_REGION) -> S3Warehouse:
    """An :class:`S3Warehouse` from ``s3://BUCKET[/PREFIX]``. Raises :class:`LakeError` (exit 2) saying
    what is wrong, without repeating the value."""
    problem = uri_problem(uri)
    if problem is None and endpoint:
        problem = (p := endpoint_problem(endpoint)) and f"its endpoint (lake.s3_endpoint) {p}"
    if problem:
        raise LakeError(f"lake.warehouse {problem}",
                        fix="set lake.warehouse to s3://BUCKET/PREFIX and lake.s3_endpoint to http(s)://HOST:PORT "
                            "(omit it for AWS itself)")
    parts = urlsplit(uri)
    return S3Warehouse(bucket=parts.netloc, prefix=parts.path.strip("/"),
                       endpoint=endpoint.rstrip("/") if endpoint else None, region=region)


@dataclass(frozen=True)
class S3Warehouse:
    """A bucket and key prefix on an S3-compatible store, and how to reach it (never a credential)."""

    bucket: str
    prefix: str
    #: ``http(s)://host:port`` of an S3-compatible store; None: AWS S3 itself (by region)
    endpoint: str | None
    region: str
    #: the id of the lake that owns the prefix (:data:`CLAIM_OBJECT`); None until one is recorded
    lake_id: str | None = None

    @property
    def uri(self) -> str:
        """``s3://BUCKET/PREFIX`` (no trailing slash)."""
        return f"s3://{self.root}"

    @property
    def root(self) -> PurePosixPath:
        """``BUCKET/PREFIX``: the lake folder's counterpart, as pyarrow names objects (no scheme)."""
        return PurePosixPath(self.bucket, *([self.prefix] if self.prefix else []))

    def object_uri(self, loc: PurePath) -> str:
        """``s3://BUCKET/KEY`` of an object ``BUCKET/KEY`` (what Iceberg manifests record)."""
        return f"s3://{PurePosixPath(loc)}"

    def location(self, uri: str) -> PurePosixPath | None:
        """``BUCKET/KEY`` of ``s3://BUCKET/KEY`` (pyarrow's name for it); None for another scheme."""
        return PurePosixPath(uri[len("s3://"):]) if uri.startswith("s3://") else None

    @property
    def secure(self) -> bool:
        return self.endpoint is None or self.endpoint.startswith("https://")

    @cached_property
    def filesystem(self) -> S3FileSystem:
        """pyarrow's S3 filesystem on this store (one per endpoint and region per process): path-style
        addressing when an endpoint is given (S3-compatible stores on a host name of their own have no
        per-bucket DNS names), credentials from the AWS SDK's default chain."""
        from pyarrow import fs

        key = (self.endpoint or "", self.region)
        with _fs_lock:
            found = _filesystems.get(key)
            if found is None:
                kwargs: dict[str, object] = {"region": self.region}
                if self.endpoint:
                    parts = urlsplit(self.endpoint)
                    kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme,
                                  force_virtual_addressing=False)
                found = fs.S3FileSystem(**kwargs)
                _filesystems[key] = found
            return found

    def iceberg_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties for this store (``pyiceberg.io``): endpoint, region,
        path-style addressing; no credential (pyarrow's default chain finds them)."""
        props = {"s3.region": self.region, "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
        if self.endpoint:
            props.update({"s3.endpoint": self.endpoint, "s3.force-virtual-addressing": "false"})
        return props

    def to_json(self) -> str:
        return json.dumps({"uri": self.uri, "endpoint": self.endpoint, "region": self.region,
                           "lake_id": self.lake_id}) + "\n"

    @property
    def claim_key(self) -> str:
        """``BUCKET/PREFIX/_ztaudit_lake.json`` (pyarrow's name of the claim object)."""
        return str(self.root / CLAIM_OBJECT)


def _store_error(wh: S3Warehouse, what: str, exc: OSError) -> LakeError:
    """One line for a refused or unreachable store (pyarrow's message names the bucket, never a secret)."""
    said = " ".join(str(exc).split())[:300]
    return LakeError(f"cannot {what} {wh.uri}: {said}",
                     fix="check lake.warehouse (bucket and prefix), lake.s3_endpoint, that the store is up, and "
                         "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE)")


def _read_claim(wh: S3Warehouse) -> str | None:
    """The lake id the prefix's claim object names; None when there is none. Raises LakeError."""
    from pyarrow.fs import FileType

    fs = wh.filesystem
    try:
        if fs.get_file_info(wh.claim_key).type != FileType.File:
            return None
        with fs.open_input_stream(wh.claim_key) as fh:
            body = json.loads(fh.read(64 * 1024))
        return str(body["lake_id"])
    except OSError as exc:
        raise _store_error(wh, "read the claim of", exc) from None
    except (ValueError, KeyError, TypeError):
        return "(unreadable claim)"


def record(lake: Path, wh: S3Warehouse) -> S3Warehouse:
    """Claim ``wh``'s prefix for the new ``lake`` and write ``LAKE/_iceberg/warehouse.json``; returns the
    warehouse with the lake's id. Called by the Iceberg layer's ``create`` under the commit lock, before
    the catalog or any table exists, so a refusal leaves nothing behind to pin the folder.

    The prefix must be empty (a mistyped bucket, refused credentials or an unreachable store fail here,
    naming the store's error): a prefix that holds another lake's claim, or any object, is refused with
    :class:`LakeError`, because two lakes on one prefix replace and delete each other's files. The claim
    object is written, read back (of two lakes created on one prefix at the same instant, the one whose
    claim was overwritten is refused), and only then is ``warehouse.json`` written. A lake that recorded
    its warehouse already keeps it: a different one raises :class:`LakeError`."""
    import uuid
    from datetime import UTC, datetime

    from pyarrow.fs import FileSelector

    from ztaudit.core.files import fsync_dir, write_bytes_atomic

    path = Path(lake) / "_iceberg" / WAREHOUSE_FILE
    have = of_lake(lake)
    if have is not None:
        if have.uri != wh.uri:
            raise LakeError(f"the lake {lake} keeps its files in {have.uri}, and lake.warehouse names {wh.uri}",
                            fix="unset lake.warehouse, or give the new warehouse a new lake folder")
        return have
    # The id is chosen (and kept in the folder) before the claim is written: a run killed between the
    # claim and warehouse.json finds its own claim on the next run and goes on, instead of being refused.
    pending = path.with_name(PENDING_FILE)
    lake_id = _pending_id(pending, wh)
    if lake_id is None:
        lake_id = uuid.uuid4().hex
        write_bytes_atomic(pending, dataclasses.replace(wh, lake_id=lake_id).to_json().encode())
    mine = dataclasses.replace(wh, lake_id=lake_id)
    fs = wh.filesystem
    try:
        present = fs.get_file_info(FileSelector(str(wh.root), allow_not_found=True))
    except OSError as exc:
        raise _store_error(wh, "list", exc) from None
    owner = _read_claim(wh) if present else None
    if present and owner != lake_id:
        whose = f"the lake {owner}" if owner else f"{len(present)} object(s) ztaudit did not write there"
        raise LakeError(f"{wh.uri} already holds {whose}: a new lake needs a prefix of its own (two lakes on one "
                        "prefix replace and delete each other's files)",
                        fix="give this lake another prefix in lake.warehouse, or open the lake that owns it with "
                            "its own --lake folder")
    if owner != lake_id:
        claim = json.dumps({"lake_id": lake_id, "created_at": datetime.now(UTC).isoformat(),
                            "folder": str(Path(lake).resolve())}).encode()
        try:
            with fs.open_output_stream(mine.claim_key) as out:
                out.write(claim)
        except OSError as exc:
            raise _store_error(wh, "write to", exc) from None
        if _read_claim(mine) != lake_id:
            raise LakeError(f"another lake claimed {wh.uri} at the same moment", fix="give this lake another prefix")
    write_bytes_atomic(path, mine.to_json().encode())
    pending.unlink(missing_ok=True)
    fsync_dir(path.parent)
    _of_lake.pop(str(Path(lake).resolve()), None)
    _verified.add((str(Path(lake).resolve()), mine.lake_id or ""))
    return mine


def _pending_id(pending: Path, wh: S3Warehouse) -> str | None:
    """The lake id an unfinished creation of this lake on ``wh`` chose (``warehouse.pending.json``)."""
    try:
        body = json.loads(pending.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("uri") != wh.uri or not body.get("lake_id"):
        return None
    return str(body["lake_id"])


def verify_claim(lake: Path, wh: S3Warehouse) -> None:
    """Check, once per process, that ``wh``'s prefix is still claimed by ``lake`` (its claim object names
    the lake's id). Called before anything writes or deletes there (:class:`~ztaudit.core.sink.LakeSink`,
    hence ``maintain``). Raises :class:`LakeError` when another lake owns it or the claim is gone."""
    if wh.lake_id is None:
        return
    key = (str(Path(lake).resolve()), wh.lake_id)
    if key in _verified:
        return
    owner = _read_claim(wh)
    if owner != wh.lake_id:
        raise LakeError(f"{wh.uri} is not {lake}'s any more: its claim object "
                        + (f"names the lake {owner}" if owner else "is gone")
                        + "; nothing was written or deleted",
                        fix="find which lake folder owns the prefix (its _iceberg/warehouse.json names the id); "
                            "restore the claim object from a backup if it was deleted by mistake")
    _verified.add(key)


def refuse_on_s3(lake: Path, command: str) -> None:
    """Raise :class:`LakeError` (exit 2) when ``lake`` keeps its files on S3 and ``command`` (``compact``,
    ``migrate``) works on local files only, so far; nothing was changed then."""
    wh = of_lake(lake)
    if wh is not None:
        raise LakeError(f"ztaudit {command} works on lakes whose files are in the lake folder, and {lake} keeps "
                        f"its files in {wh.uri}: not supported yet, nothing was changed",
                        fix="the lake stays correct without it; see docs/iceberg.md, \"Not yet\"")


def of_lake(lake: Path) -> S3Warehouse | None:
    """The S3 warehouse ``lake`` records (``_iceberg/warehouse.json``), None when its files are in the
    lake folder. Cached per process. Raises :class:`LakeError` when the file is unreadable."""
    key = str(Path(lake).resolve())
    if key in _of_lake:
        return _of_lake[key]
    path = Path(lake) / "_iceberg" / WAREHOUSE_FILE
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None  # not cached: a lake being created may record one a moment later
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read {path}: {type(exc).__name__}",
                        fix="restore the file from a backup of the lake folder") from None
    try:
        wh = parse(str(body["uri"]), endpoint=body.get("endpoint") or None,
                   region=str(body.get("region") or DEFAULT_REGION))
        if body.get("lake_id"):
            wh = dataclasses.replace(wh, lake_id=str(body["lake_id"]))
    except (KeyError, TypeError):
        raise LakeError(f"{path} does not name a warehouse",
                        fix="restore it from a backup of the lake folder") from None
    _of_lake[key] = wh
    return wh

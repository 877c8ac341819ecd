"""pytest plugin: a real S3-compatible object store (S3Proxy, ``scripts/s3proxy``) for
``@pytest.mark.s3`` tests, and the client settings pyarrow and pyiceberg need to reach it.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Where the store comes from:

* ``ZTAUDIT_TEST_S3_ENDPOINT`` set (``scripts/with-s3proxy``): use that store, its bucket
  ``ZTAUDIT_TEST_S3_BUCKET`` and the credentials in ``ZTAUDIT_TEST_S3_ACCESS_KEY_FILE`` /
  ``ZTAUDIT_TEST_S3_SECRET_KEY_FILE`` (files, never values in the environment); not stopped.
* otherwise the session starts one in a temporary directory with ``scripts/s3proxy start``, creates
  the bucket, and stops it by PID (its process group) at the end. Without the fetched S3Proxy
  (``scripts/s3proxy fetch``, which ``.ci/run`` runs) that fails in CI (``CI=true``) and skips
  locally with the command to run.

The bucket is shared by the session: each test writes under its own :meth:`S3Store.prefix`. The
secret is held in memory only and never appears in a repr or a failure message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "s3proxy"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: ``scripts/s3proxy start`` exits with this when S3Proxy is not in the cache.
NOT_FETCHED_EXIT = 3
REGION = "us-east-1"
DEFAULT_BUCKET = "ztaudit-test"


@dataclass(frozen=True)
class S3Store:
    """A running S3Proxy: endpoint, bucket, credentials, and the client settings that reach it."""

    endpoint: str
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    dir: Path | None

    def prefix(self, name: str = "t") -> str:
        """A fresh key prefix ``<bucket>/<name>-<random>`` (no scheme, as pyarrow paths are)."""
        return f"{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"

    def pyarrow_fs(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on the store: plain http, path-style addressing (S3Proxy has
        no per-bucket DNS names on 127.0.0.1), region us-east-1, no proxy from the environment."""
        from pyarrow import fs

        return fs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key,
                               endpoint_override=self.endpoint, scheme="http", region=REGION,
                               force_virtual_addressing=False, allow_bucket_creation=True,
                               allow_bucket_deletion=True)

    def iceberg_properties(self) -> dict[str, str]:
        """pyiceberg's PyArrowFileIO properties for this store (``pyiceberg.io`` names)."""
        return {
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": self.access_key,
            "s3.secret-access-key": self.secret_key,
            "s3.region": REGION,
            "s3.force-virtual-addressing": "false",
            "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
        }


def lake_env(store: S3Store, name: str) -> dict[str, str]:
    """The environment of a ``ztaudit`` process that makes a new Iceberg lake whose warehouse is a fresh
    prefix of ``store`` (``lake.warehouse``), credentials the AWS way (the only way ztaudit takes them).
    Also right for ``monkeypatch.setenv`` when the test process reads that lake itself."""
    return {
        "ZTAUDIT_LAKE_FORMAT": "iceberg",
        "ZTAUDIT_LAKE_WAREHOUSE": f"s3://{store.prefix(name)}",
        "ZTAUDIT_LAKE_S3_ENDPOINT": store.endpoint,
        "ZTAUDIT_LAKE_S3_REGION": REGION,
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": store.secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def objects(store: S3Store, prefix: str) -> set[str]:
    """``s3://`` URIs of every object under ``prefix`` (``bucket/key-prefix``, no scheme), listed."""
    from pyarrow import fs

    infos = store.pyarrow_fs().get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {f"s3://{i.path}" for i in infos if i.type == fs.FileType.File}


def _from_env() -> S3Store | None:
    endpoint = os.environ.get("ZTAUDIT_TEST_S3_ENDPOINT")
    if not endpoint:
        return None
    d = os.environ.get("ZTAUDIT_TEST_S3_DIR")
    return S3Store(
        endpoint=endpoint,
        bucket=os.environ.get("ZTAUDIT_TEST_S3_BUCKET", DEFAULT_BUCKET),
        access_key=Path(os.environ["ZTAUDIT_TEST_S3_ACCESS_KEY_FILE"]).read_text().strip(),
        secret_key=Path(os.environ["ZTAUDIT_TEST_S3_SECRET_KEY_FILE"]).read_text().strip(),
        dir=Path(d) if d else None,
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def s3proxy() -> Iterator[S3Store]:
    """The real S3 store (see the module docstring for where it comes from)."""
    store = _from_env()
    if store is not None:
        yield store
        return
    d = Path(tempfile.mkdtemp(prefix="ztaudit-s3proxy-pytest-"))
    try:
        p = _run("start", "--dir", str(d))
        if p.returncode == NOT_FETCHED_EXIT:
            if IN_CI:
                pytest.fail("CI=true but S3Proxy is not fetched: .ci/run must run `scripts/s3proxy fetch`; "
                            f"S3 tests must not be skipped in CI\n{p.stderr[-2000:]}")
            pytest.skip("S3Proxy is not fetched here: run `scripts/s3proxy fetch` (Maven Central, ~15 s) to run these")
        if p.returncode != 0:
            pytest.fail(f"scripts/s3proxy start failed:\n{p.stderr[-4000:]}")
        p = _run("mb", "--dir", str(d), DEFAULT_BUCKET)
        if p.returncode != 0:
            pytest.fail(f"scripts/s3proxy mb failed:\n{p.stderr[-2000:]}")
        yield S3Store(
            endpoint=(d / "endpoint").read_text().strip(),
            bucket=DEFAULT_BUCKET,
            access_key=(d / "access_key").read_text().strip(),
            secret_key=(d / "secret_key").read_text().strip(),
            dir=d,
        )
    finally:
        _run("stop", "--dir", str(d))
        if not os.environ.get("ZTAUDIT_KEEP_S3PROXY_DIR"):
            shutil.rmtree(d, ignore_errors=True)

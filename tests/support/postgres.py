"""pytest fixture: a real PostgreSQL server (``scripts/postgres``) for ``@pytest.mark.postgres`` tests,
the shared Iceberg catalog of ``lake.catalog_uri``.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Where the server comes from:

* ``ZTAUDIT_TEST_PG_URI`` set (``scripts/with-postgres``, which ``.ci/run`` wraps ``make test`` in):
  that server, its password in ``ZTAUDIT_TEST_PG_PASSWORD_FILE`` and libpq password file
  ``ZTAUDIT_TEST_PG_PGPASS`` (files, never values in the environment); not stopped.
* otherwise the session starts one in a temporary directory with ``scripts/postgres start`` (which
  installs Debian's postgresql when the binaries are missing, as root) and stops it at the end. When
  it cannot be installed, that fails in CI (``CI=true``) and skips locally with the command to run.

Every lake made on it has its own catalog name (``_iceberg/catalog.json``), so the tests share one
database. The password is held in memory only and never appears in a repr or a failure message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "postgres"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: ``scripts/postgres start`` exits with this when the binaries are missing and cannot be installed.
NOT_INSTALLED_EXIT = 3


@dataclass(frozen=True)
class PgServer:
    """A running PostgreSQL: its URI without the password, the password, libpq's password file."""

    uri: str
    password: str = field(repr=False)
    pgpass: Path
    dir: Path | None

    def uri_with_password(self) -> str:
        """The URI with the password in it (what a user puts in ``$ZTAUDIT_LAKE_CATALOG_URI``)."""
        scheme, _, rest = self.uri.partition("://")
        user, _, host = rest.partition("@")
        return f"{scheme}://{user}:{self.password}@{host}"


def _from_env() -> PgServer | None:
    uri = os.environ.get("ZTAUDIT_TEST_PG_URI")
    if not uri:
        return None
    d = os.environ.get("ZTAUDIT_TEST_PG_DIR")
    return PgServer(uri=uri, password=Path(os.environ["ZTAUDIT_TEST_PG_PASSWORD_FILE"]).read_text().strip(),
                    pgpass=Path(os.environ["ZTAUDIT_TEST_PG_PGPASS"]), dir=Path(d) if d else None)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """The real PostgreSQL server (see the module docstring for where it comes from)."""
    server = _from_env()
    if server is not None:
        yield server
        return
    d = Path(tempfile.mkdtemp(prefix="ztaudit-postgres-pytest-"))
    try:
        p = _run("start", "--dir", str(d))
        if p.returncode == NOT_INSTALLED_EXIT:
            if IN_CI:
                pytest.fail("CI=true but PostgreSQL is not installed and could not be: .ci/run must run "
                            f"`scripts/postgres install`; postgres tests must not be skipped in CI\n{p.stderr[-2000:]}")
            pytest.skip("PostgreSQL is not installed: run `scripts/postgres install` (as root) to run these")
        if p.returncode != 0:
            pytest.fail(f"scripts/postgres start failed:\n{p.stderr[-4000:]}")
        yield PgServer(uri=(d / "uri").read_text().strip(), password=(d / "password").read_text().strip(),
                       pgpass=d / "pgpass", dir=d)
    finally:
        _run("stop", "--dir", str(d))
        if not os.environ.get("ZTAUDIT_KEEP_POSTGRES_DIR"):
            shutil.rmtree(d, ignore_errors=True)

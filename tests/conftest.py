"""Shared test fixtures: where ../shared is, the sample logs, and fresh lakes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real Kafka broker (tests/support/kafka_broker.py) and the real kube-apiserver/Pomerium/Keycloak
# stack (tests/support/realstack.py); S3Proxy, a real S3-compatible store (tests/support/s3proxy.py);
# PostgreSQL, the shared Iceberg catalog (tests/support/postgres.py).
pytest_plugins = ["support.kafka_broker", "support.realstack", "support.s3proxy", "support.postgres"]

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ZTAUDIT_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
SAMPLE_LOGS = ROOT / "sample_logs"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared public corpus. Skips in a user's checkout without ../shared; fails in CI."""
    if not CORPUS.is_dir():
        if IN_CI:
            pytest.fail(f"CI must have the shared corpus at {CORPUS}")
        pytest.skip(f"no shared corpus at {CORPUS} (a user's checkout); set ZTAUDIT_SHARED to run these")
    return CORPUS


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """An empty lake directory."""
    return tmp_path / "lake"

"""``report credentials`` (reports/credentials.py) agrees with the credential.* findings it shows.

The lake is written as ingest leaves it (tests/support/cases.py ``row``/``write_rows``), then the
real ``detect`` builds the ``credentials`` table and stores the findings the report joins.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support.cases import row, write_rows

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.run import run_detectors
from ztaudit.reports.base import ReportContext
from ztaudit.reports.credentials import credential_inventory
from ztaudit.reports.filters import Filters

T = datetime(2026, 3, 2, 10, tzinfo=UTC)
CRED = ["credential.stale", "credential.legacy_token", "credential.shared", "credential.off_cluster"]


def _inventory(lake: Path, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    write_rows(rows, lake)
    result = run_detectors(lake, Config(), detector_ids=CRED)
    assert not result.errors, result.errors
    con = open_lake(lake)
    try:
        inv = credential_inventory(ReportContext(con=con, config=Config(), filters=Filters()))
    finally:
        con.close()
    return {str(r["credential_key"]): r for r in inv.rows}


def test_stale_finding_on_a_fallback_key_marks_the_row_stale(tmp_path: Path) -> None:
    """A credential.stale (dormancy) finding on a fallback key (TOKEN?=<service account>: no
    credential id, so the inventory's credential_id is NULL) flags that inventory row stale."""
    sa = "system:serviceaccount:ops:old"
    rows = [row(T - timedelta(days=40), sa), row(T, sa)]
    key = f"TOKEN?={sa}"
    got = _inventory(tmp_path / "lake", rows)[key]
    assert got["credential_id"] is None
    assert got["findings"] == ["credential.stale"]
    assert got["stale"] is True


def test_age_counts_from_first_use_when_the_token_request_is_logged_later(tmp_path: Path) -> None:
    """Clock skew between API servers: the TokenRequest that minted JTI=skew is logged 48 h after the
    token's first use. The age counts from the earlier of the two (72 h at the last use, not 24 h),
    so the row is past the 48 h maximum for a jti."""
    sa = "system:serviceaccount:shop:skew"
    rows = [
        row(T, sa, credential_id="JTI=skew", pod_name="skew-1"),
        row(T + timedelta(hours=48), "system:node:n2", verb="create", resource="serviceaccounts",
            subresource="token", namespace="shop", name="skew", issued_credential_id="JTI=skew"),
        row(T + timedelta(hours=72), sa, credential_id="JTI=skew", pod_name="skew-1"),
    ]
    got = _inventory(tmp_path / "lake", rows)["JTI=skew"]
    assert got["issued_at"] == T + timedelta(hours=48)
    assert abs(got["age_hours"] - 72.0) < 1e-6
    assert got["past_max_age"] is True and got["stale"] is True
    assert "credential.stale" in got["findings"]

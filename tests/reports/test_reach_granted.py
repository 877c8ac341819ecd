"""``report reach --granted``: RBAC grants against their use (:func:`ztaudit.detectors.rbac.granted_vs_used`).

Hand-made lakes (an RBAC snapshot and audit rows); each test fails without its fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from support.cases import row, write_rows
from support.rbac import rbac_item, write_snapshot

from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.reports import run_report
from ztaudit.reports.base import ReportContext, ReportResult
from ztaudit.reports.filters import Filters

T = datetime(2026, 3, 2, 10, tzinfo=UTC)
SA = "system:serviceaccount:"
CI = f"{SA}ci:deployer"
ADMIN = [rbac_item("ClusterRole", "admin-all", rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
         rbac_item("ClusterRoleBinding", "ci", roleRef={"kind": "ClusterRole", "name": "admin-all"},
                   subjects=[{"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}])]


def _granted(lake: Path, limit: int = 50) -> ReportResult:
    con = open_lake(lake, must_exist=False)
    try:
        return run_report("reach", ReportContext(con=con, config=Config(), filters=Filters(), limit=limit,
                                                 options={"granted": True}))
    finally:
        con.close()


def test_reach_granted_puts_never_used_grants_first_and_says_what_limit_cut(lake: Path) -> None:
    """``report reach --granted`` was cut to --limit by name with no note (an analyst trial: the rows that
    mattered were among those dropped): never-used grants come first, and a note counts what was cut."""
    write_snapshot(lake, [
        *ADMIN,
        rbac_item("Role", "reader", "app", rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        rbac_item("RoleBinding", "reader", "app", roleRef={"kind": "Role", "name": "reader"},
                  subjects=[{"kind": "ServiceAccount", "name": f"a{i}"} for i in range(5)])], T)
    write_rows([row(T, f"{SA}app:a{i}", "get", "pods", "app", cluster="c1") for i in range(5)], lake)
    res = _granted(lake, limit=2)
    rows = res.primary.rows
    # the CI account's unused admin-all first, though app:a0..a4 sort before it by name
    assert len(rows) == 2 and rows[0]["identity"] == CI and rows[0]["never_used"], rows
    assert not rows[1]["never_used"]
    assert any("rows left out by --limit 2" in n for n in res.notes), res.notes

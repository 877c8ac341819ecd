"""``ztaudit detect`` through click: summary output, idempotent re-runs, filters, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from support.cases import case_files, load_case, write_case

from ztaudit.cli.main import cli
from ztaudit.core.config import Config
from ztaudit.detectors import findings_store
from ztaudit.detectors.streaming import on_flush

MINE = ["impersonation.proxy_bypass", "impersonation.unobserved", "impersonation.unbrokered",
        "impersonation.unapproved_impersonator", "revocation.not_enforced"]


def _case(family: str, name: str, lake: Path) -> None:
    write_case(load_case(next(p for p in case_files(family) if p.stem == name)), lake)


def _lake(lake: Path) -> None:
    for name in ("pos_human_direct", "pos_decision_without_audit", "pos_system_admin"):
        _case("impersonation", name, lake)
    _case("revocation", "pos_okta_deactivate_proxy_still_allows", lake)


def _detect(lake: Path, *extra: str) -> tuple[int, str]:
    args = ["detect", "--lake", str(lake), "--no-tables"]
    for d in MINE:
        args += ["--detector", d]
    res = CliRunner().invoke(cli, [*args, *extra], catch_exceptions=False)
    return res.exit_code, res.output


def _findings(lake: Path) -> list[tuple[str, str, str]]:
    if not list((lake / "findings").glob("*/*.parquet")):
        return []
    con = duckdb.connect()
    rows = con.execute("SELECT finding_id, detector, actor FROM read_parquet(?) ORDER BY 1",
                       [str(lake / "findings" / "*" / "*.parquet")]).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_detect_prints_counts_and_writes(lake: Path) -> None:
    _lake(lake)
    code, out = _detect(lake)
    assert code == 0, out
    assert "impersonation.proxy_bypass" in out and "total:" in out
    lines = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()
             if ln.startswith(("impersonation.", "revocation."))}
    assert lines["impersonation.proxy_bypass"] == "1"
    assert lines["impersonation.unobserved"] == "2"  # carol's DELETE, and alice's 09:59:58 GET
    assert lines["impersonation.unapproved_impersonator"] == "1"
    assert lines["revocation.not_enforced"] == "1"
    actors = {(d, a) for _, d, a in _findings(lake)}
    assert ("impersonation.proxy_bypass", "dave@example.com") in actors
    assert ("revocation.not_enforced", "alice@example.com") in actors


def test_rerun_replaces_not_duplicates(lake: Path) -> None:
    _lake(lake)
    assert _detect(lake)[0] == 0
    first = _findings(lake)
    code, out = _detect(lake)
    assert code == 0
    assert _findings(lake) == first
    assert "(0 new or changed)" in out
    assert len({fid for fid, _, _ in first}) == len(first)


def test_quiet_and_window(lake: Path) -> None:
    _lake(lake)
    code, out = _detect(lake, "--quiet", "--since", "2026-11-21", "--until", "2026-11-22")
    assert code == 0 and out == ""
    assert _findings(lake) == []
    code, out = _detect(lake, "--since", "2026-11-20T00:00:00Z", "--until", "2026-11-21")
    assert code == 0 and "total: 5 findings" in out


def test_retraction_when_data_changes(lake: Path) -> None:
    """A finding the data no longer supports is removed by the next run over its window."""
    _lake(lake)
    assert _detect(lake)[0] == 0
    assert any(d == "impersonation.unobserved" for _, d, _ in _findings(lake))
    # the missing audit event arrives late
    case = (Path(__file__).parent.parent / "cases" / "impersonation" / "unobserved"
            / "neg_matched_skew_and_repeats.jsonl")
    assert case.exists()
    import pyarrow as pa

    from ztaudit.core.sink import LakeSink
    LakeSink(lake).write("k8s_audit", pa.Table.from_pylist([{
        "audit_id": "late-del", "cluster": "prod", "stage": "ResponseComplete",
        "request_received_at": datetime(2026, 11, 20, 10, 0, 6, 200000, tzinfo=UTC), "verb": "delete",
        "request_uri": "/api/v1/namespaces/pay/pods/api-0",
        "user_name": "system:serviceaccount:pomerium:pomerium-authorize",
        "impersonator": "system:serviceaccount:pomerium:pomerium-authorize", "impersonated_user": "carol@example.com",
        "response_code": 200, "origin": "late"}]), "late")
    assert _detect(lake)[0] == 0
    assert not any(d == "impersonation.unobserved" and a == "carol@example.com" for _, d, a in _findings(lake))


def test_unknown_detector_and_bad_time(lake: Path) -> None:
    from ztaudit.core.errors import ZtauditError

    (lake / "_state").mkdir(parents=True)  # a lake with no table written yet
    with pytest.raises(ZtauditError, match="unknown detector 'nope'"):
        CliRunner().invoke(cli, ["detect", "--lake", str(lake), "--detector", "nope"], catch_exceptions=False)
    with pytest.raises(ZtauditError, match="is not a time"):
        CliRunner().invoke(cli, ["detect", "--lake", str(lake), "--since", "yesterday"], catch_exceptions=False)


def test_empty_lake_is_fine(lake: Path) -> None:
    (lake / "_state").mkdir(parents=True)  # a lake with no table written yet (an empty folder is not a lake)
    code, out = _detect(lake)
    assert code == 0 and "total: 0 findings" in out


def test_streaming_hook_returns_changed_rows(lake: Path) -> None:
    _lake(lake)
    since = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    until = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    rows = on_flush(lake, since, until, Config())
    assert {r["detector"] for r in rows} >= {"impersonation.proxy_bypass", "impersonation.unobserved"}
    assert on_flush(lake, since, until, Config()) == []  # nothing changed


def test_lock_timeout(lake: Path) -> None:
    with findings_store.findings_lock(lake, 1.0), pytest.raises(findings_store.LockTimeout):
        findings_store.write_findings(lake, [], detectors=MINE, lock_timeout=0.2)


def test_streaming_partial_window_keeps_whole_day(lake: Path) -> None:
    """The hook re-judging only the last part of a day must not cut a per-day finding down."""
    _lake(lake)
    assert _detect(lake)[0] == 0
    cfg = Config()
    from ztaudit.core.config import replace

    cfg = replace(cfg, "detect", streaming_lookback_seconds=0)
    on_flush(lake, datetime(2026, 11, 20, 10, 2, tzinfo=UTC), datetime(2026, 11, 20, 12, 0, tzinfo=UTC), cfg,
             detectors=["impersonation.proxy_bypass"])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    (first, evidence), = con.execute(
        "SELECT first_seen, evidence FROM read_parquet(?) WHERE detector = 'impersonation.proxy_bypass'",
        [str(lake / "findings" / "*" / "*.parquet")]).fetchall()
    assert first == datetime(2026, 11, 20, 10, 0, 1, 100000, tzinfo=UTC)
    assert evidence == ["k8s_audit:prod/bp-1", "k8s_audit:prod/bp-2"]

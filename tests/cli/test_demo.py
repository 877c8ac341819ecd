"""``ztaudit demo``: sample logs -> lake -> detect -> summary, findings and revocation reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ztaudit.cli.demo import MARKER, find_sample_logs
from ztaudit.cli.main import cli
from ztaudit.core.errors import LakeError

ROOT = Path(__file__).resolve().parent.parent.parent


def demo(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["demo", *args])
    return res.exit_code, res.stdout, res.stderr


def test_demo_runs_end_to_end_without_kafka(tmp_path: Path) -> None:
    lake = tmp_path / "demo-lake"
    code, out, err = demo("--lake", str(lake))
    assert code == 0, out + err
    for title in ("Lake summary", "Findings", "Revocation enforcement"):
        assert title in out
    assert "ingested" in err and "detect:" in err
    assert (lake / MARKER).exists()
    assert any((lake / "k8s_audit").rglob("*.parquet")) and any((lake / "findings").rglob("*.parquet"))
    assert "carol@example.com" in out  # the sample story's unenforced revocation
    assert all(len(line) <= 100 for line in out.splitlines())


def test_demo_rebuilds_or_keeps(tmp_path: Path) -> None:
    lake = tmp_path / "demo-lake"
    assert demo("--lake", str(lake), "-q")[0] == 0
    (lake / "extra.txt").write_text("x")
    assert demo("--lake", str(lake), "-q", "--keep")[0] == 0
    assert (lake / "extra.txt").exists()
    assert demo("--lake", str(lake), "-q")[0] == 0
    assert not (lake / "extra.txt").exists()


def test_demo_refuses_to_delete_a_foreign_directory(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    res = CliRunner().invoke(cli, ["demo", "--lake", str(precious)])
    assert isinstance(res.exception, LakeError) and "refusing" in str(res.exception)
    assert res.exception.exit_code == 2
    assert (precious / "data.txt").read_text() == "keep me"


def test_sample_logs_are_found_from_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ZTAUDIT_SAMPLE_LOGS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_sample_logs() == ROOT / "sample_logs"

"""Documented exit codes instead of tracebacks (README "Usage"): 2 for a bad option, 4 for a lake
that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztaudit.cli.main import main

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("since", ["99999999999999999999d", "999999999w", "3650000d"])
def test_a_relative_time_beyond_the_calendar_is_a_usage_error(tmp_path: Path, since: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lake").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["report", "summary", "--lake", str(tmp_path / "lake"), "--since", since])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--since" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["ingest", str(ROOT / "sample_logs" / "k8s_audit"), "--cluster", "x"],
                                     ["detect"]])
def test_a_lake_that_cannot_be_created_exits_4(tmp_path: Path, command: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--lake", str(not_a_dir / "lake")])
    assert exit_.value.code == 4
    err = capsys.readouterr().err
    assert f"cannot create {not_a_dir / 'lake'}" in err and "Traceback" not in err

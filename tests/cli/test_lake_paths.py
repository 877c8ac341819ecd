"""Where the lake is (issue 15, items 1, 5 and 6): a path that is not a lake is refused with exit 2
and a fix by every command that reads one, ``detect`` creates nothing there, a lake that cannot be
written is exit 4 without a traceback, ``$ZTAUDIT_LAKE`` is honoured like ``--lake``, notebooks
stop clearly on a missing lake, ``generate`` keeps its metadata out of what ``ingest`` reads, and
the demo's hints use absolute paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from ztaudit.cli.main import cli, main

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "sample_logs"

#: Every command that reads a lake, with the arguments it needs besides --lake.
READERS: dict[str, list[str]] = {
    "detect": ["detect"],
    "report": ["report", "summary"],
    "sql": ["sql", "SELECT 1"],
    "catalog": ["catalog"],
    "compact": ["compact", "--source", "k8s_audit", "--date", "2026-11-20"],
}


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("lakepaths") / "lake"
    res = CliRunner().invoke(cli, ["ingest", str(SAMPLES / "k8s_audit"), "--lake", str(lake), "--cluster", "demo",
                                   "-q"])
    assert res.exit_code == 0, res.output
    return lake


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ztaudit ARGS`` through the real entry point (exit codes mapped in cli/main.py)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", list(READERS))
def test_a_mistyped_lake_is_exit_2_and_nothing_is_created(command: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "lkae"
    code, out, err = run([*READERS[command], "--lake", str(typo)], capsys)
    assert code == 2, out + err
    assert f"lake {typo} does not exist" in err and "fix:" in err and "Traceback" not in err
    assert not typo.exists()
    assert "0 findings" not in out


@pytest.mark.parametrize("command", list(READERS))
def test_an_empty_directory_is_not_a_lake(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run([*READERS[command], "--lake", str(empty)], capsys)
    assert code == 2, out + err
    assert f"{empty} is not a ztaudit lake: it is empty" in err and "fix:" in err
    assert list(empty.iterdir()) == []  # detect created nothing in it


def test_a_folder_of_logs_or_a_lake_s_parent_is_refused_with_the_fix(small_lake: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["report", "summary", "--lake", str(SAMPLES)], capsys)
    assert code == 2 and "looks like a folder of logs" in err and f"ztaudit ingest {SAMPLES}" in err
    code, _, err = run(["detect", "--lake", str(small_lake.parent)], capsys)
    assert code == 2 and f"fix: pass --lake {small_lake}" in err
    code, _, err = run(["sql", "SELECT 1", "--lake", str(tmp_path / "unrelated")], capsys)
    assert code == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    code, _, err = run(["catalog", "--lake", str(tmp_path / "notes")], capsys)
    assert code == 2 and "is not a ztaudit lake: it has no table folders" in err


def test_a_lake_whose_findings_cannot_be_written_is_exit_4(small_lake: Path, tmp_path: Path) -> None:
    """Root ignores permissions, so a file where the findings folder should be makes the write fail."""
    lake = tmp_path / "lake"
    subprocess.run(["cp", "-r", str(small_lake), str(lake)], check=True)
    (lake / "findings").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "ztaudit.cli.main", "detect", "--lake", str(lake), "--no-tables"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ztaudit: error: cannot" in proc.stderr
    assert f"{lake / 'findings'}" in proc.stderr and "fix:" in proc.stderr


@pytest.mark.parametrize("command", ["detect", "report", "sql", "catalog", "compact"])
def test_ztaudit_lake_names_the_lake_like_lake_does(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "from-env"
    monkeypatch.setenv("ZTAUDIT_LAKE", str(typo))
    code, _, err = run(READERS[command], capsys)
    assert code == 2 and f"lake {typo} does not exist" in err
    code, _, err = run([*READERS[command], "--lake", str(tmp_path / "flag")], capsys)
    assert code == 2 and f"lake {tmp_path / 'flag'} does not exist" in err  # the flag wins


def test_ingest_writes_and_sql_reads_the_ztaudit_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "envlake"
    monkeypatch.setenv("ZTAUDIT_LAKE", str(lake))
    monkeypatch.chdir(tmp_path)
    assert run(["ingest", str(SAMPLES / "k8s_audit"), "--cluster", "c", "-q"], capsys)[0] == 0
    assert any((lake / "k8s_audit").rglob("*.parquet")) and not (tmp_path / "lake").exists()
    code, out, err = run(["sql", "SELECT count(*) AS n FROM k8s_audit", "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["n"] > 0


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_stop_at_the_setting_cell_on_a_missing_or_empty_lake(path: Path, tmp_path: Path) -> None:
    """The cell that sets LAKE is run as the kernel would, with ZTAUDIT_LAKE naming no lake."""
    nb = nbformat.read(path, as_version=4)
    setting = next(c.source for c in nb.cells if c.cell_type == "code" and "LAKE =" in c.source)
    (tmp_path / "empty").mkdir()
    for where, says in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is not a ztaudit lake")):
        proc = subprocess.run([sys.executable, "-c", setting], capture_output=True, text=True, check=False,
                              cwd=path.parent, env={**os.environ, "ZTAUDIT_LAKE": str(where)}, timeout=120)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()
        assert any(f"LakeError: {where}" in line or f"LakeError: lake {where}" in line for line in last), proc.stderr
        assert says in proc.stderr and "fix:" in proc.stderr


def test_ingest_of_a_generate_folder_reads_only_the_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lake = tmp_path / "gen", tmp_path / "lake"
    code, said, err = run(["generate", "--out", str(out), "--days", "1", "--clusters", "a", "--events", "1000"], capsys)
    assert code == 0, err
    meta = out / ".ztaudit"
    config = next(p for p in (meta / "ztaudit.toml", out / "ztaudit.toml") if p.exists())
    code, _, err = run(["ingest", "--config", str(config), "--lake", str(lake), str(out), "--strict", "-q"], capsys)
    assert code == 0, err  # --strict: exit 3 if anything (a label, the manifest) was quarantined
    assert not (lake / "quarantine").exists()
    assert {p.name for p in meta.iterdir()} == {"labels.jsonl", "revocations.jsonl", "manifest.json", "ztaudit.toml"}
    assert not [p for p in out.iterdir() if p.is_file()]  # nothing beside the log folders
    assert str(meta.resolve()) in said


def test_demo_hints_use_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["demo", "--lake", "demo-lake"])
    assert res.exit_code == 0, res.output
    hint = next(line for line in res.stderr.splitlines() if line.startswith("next:"))
    lake = tmp_path / "demo-lake"
    assert f"--lake {lake} " in hint and f"ZTAUDIT_LAKE={lake} " in hint
    assert f"jupyter lab {ROOT / 'notebooks'}" in hint
    assert "--lake demo-lake" not in hint

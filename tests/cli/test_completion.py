"""Shell completion through click's own machinery, in a subprocess as the shell runs it (issue 15, item 14).

The shell calls ``ztaudit`` with ``_ZTAUDIT_COMPLETE=bash_complete``, ``COMP_WORDS`` (the line so
far) and ``COMP_CWORD`` (the word being completed); ``ztaudit`` answers one ``type,value`` line per
candidate. Report names and detector ids come from their registries, identities and clusters
from the lake named by ``--lake`` or ``$ZTAUDIT_LAKE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.lakes import build_lake

from ztaudit.detectors.registry import DETECTORS
from ztaudit.reports import REPORTS

ZTAUDIT = str(Path(sys.executable).with_name("ztaudit"))


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("completion") / "lake")


def complete(line: str, *, lake: Path | None = None, shell: str = "bash") -> list[str]:
    """The candidates ``ztaudit`` offers for the last word of ``line`` (``line`` ending in a space:
    a new, empty word)."""
    words = line.split(" ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTAUDIT_")}
    env.update({"_ZTAUDIT_COMPLETE": f"{shell}_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    if lake is not None:
        env["ZTAUDIT_LAKE"] = str(lake)
    res = subprocess.run([ZTAUDIT], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return [ln.split(",", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("plain,")]


def test_the_bash_script_is_click_s() -> None:
    env = {**os.environ, "_ZTAUDIT_COMPLETE": "bash_source"}
    res = subprocess.run([ZTAUDIT], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "_ztaudit_completion()" in res.stdout and "complete -o nosort" in res.stdout


def test_commands_and_report_names() -> None:
    assert complete("ztaudit rep") == ["report"]
    assert complete("ztaudit report ") == list(REPORTS)
    assert complete("ztaudit report fi") == ["findings"]
    assert complete("ztaudit report --format ") == ["table", "json", "csv", "markdown", "html"]


def test_detector_ids_and_families_for_report_and_detect() -> None:
    cred = [d for d in DETECTORS if d.startswith("credential.")]
    assert complete("ztaudit detect --detector cred") == ["credential", *cred]
    assert complete("ztaudit report findings --detector credential.s") == ["credential.stale", "credential.shared"]
    assert set(complete("ztaudit detect --detector ")) >= set(DETECTORS)


def test_identities_and_clusters_from_the_lake(story: Path) -> None:
    assert complete("ztaudit report identity al", lake=story) == ["alice@example.com"]
    assert complete(f"ztaudit report identity --lake {story} AL") == ["alice@example.com"]  # any case
    assert "bob@example.com" in complete("ztaudit report findings --actor ", lake=story)
    assert complete("ztaudit report findings --actor system:serviceaccount:a", lake=story) == [
        "system:serviceaccount:apps:web"]
    assert complete("ztaudit report summary --cluster ", lake=story) == ["prod", "staging"]
    assert complete("ztaudit report summary al", lake=story) == []  # summary takes no identity


def test_a_missing_lake_completes_nothing_quietly(tmp_path: Path) -> None:
    assert complete("ztaudit report identity al", lake=tmp_path / "nope") == []
    assert complete("ztaudit report findings --actor ", lake=tmp_path) == []  # a folder that is not a lake
    assert complete("ztaudit report fi", lake=tmp_path / "nope") == ["findings"]  # registries still work

"""Names that match nothing are errors with a "did you mean", never an empty answer (issue 15, item 2).

Command, report, section and detector names are checked against their registries; identities and
clusters against the lake (another case is used with a note, a typo is exit 2 naming the nearest);
``detect`` and ``report findings`` accept the same detector families; a time window that matched
nothing says what span the lake holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.lakes import build_lake

from ztaudit.cli.main import cli, main
from ztaudit.core.errors import ZtauditError
from ztaudit.detectors.registry import DETECTORS

CREDENTIAL = [d for d in DETECTORS if d.startswith("credential.")]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("names") / "lake")


def run(*args: str) -> Any:
    """``ztaudit ARGS`` through click; exit code and message of a ztaudit error as main() maps them."""
    res = CliRunner().invoke(cli, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        assert isinstance(res.exception, ZtauditError), res.exception
        return type("Failed", (), {"exit_code": res.exception.exit_code, "message": str(res.exception),
                                   "output": res.output, "stdout": res.stdout, "stderr": res.stderr})()
    return res


def failed(*args: str) -> str:
    res = run(*args)
    assert res.exit_code == 2, res.output
    return str(res.message)


# --- registries -----------------------------------------------------------------------------------

def test_an_unknown_command_exits_2_with_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["reprot", "summary"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'reprot'; did you mean 'report'?" in err and "fix:" in err and "Traceback" not in err


def test_an_unknown_report_says_did_you_mean(story: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "findngs", "--lake", str(story)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown report 'findngs'; did you mean 'findings'?" in err and "fix:" in err


def test_an_unknown_section_says_did_you_mean(story: Path) -> None:
    res = run("report", "findings", "--lake", str(story), "--format", "json", "--section", "by_detectr")
    assert res.exit_code == 2 and "did you mean 'by_detector'?" in res.output


def test_a_detector_typo_in_report_findings_is_an_error_not_zero_rows(story: Path) -> None:
    msg = failed("report", "findings", "--lake", str(story), "--detector", "credentail")
    assert "unknown detector 'credentail'; did you mean 'credential'" in msg and "fix:" in msg


def test_a_detector_typo_in_detect_is_an_error_with_the_nearest(tmp_path: Path) -> None:
    lake = build_lake(tmp_path / "lake", derived=False)
    msg = failed("detect", "--lake", str(lake), "--no-tables", "--detector", "credential.stail")
    assert "did you mean 'credential.stale'" in msg


# --- one resolver for detect and report -----------------------------------------------------------

@pytest.mark.parametrize("pattern", ["credential", "credential.", "credential.*", "Credential"])
def test_the_resolver_selects_a_family(pattern: str) -> None:
    from ztaudit.detectors.registry import resolve

    assert resolve([pattern]) == CREDENTIAL
    assert resolve([pattern, "credential.stale", "reach.anomalous"]) == [*CREDENTIAL, "reach.anomalous"]


@pytest.mark.parametrize("pattern", ["credential", "credential.*"])
def test_report_findings_and_detect_accept_the_same_family(story: Path, tmp_path: Path, pattern: str) -> None:
    rows = json.loads(run("report", "findings", "--lake", str(story), "--detector", pattern,
                          "--format", "json").stdout)
    assert sorted(r["detector"] for r in rows) == ["credential.legacy_token", "credential.shared"]
    lake = build_lake(tmp_path / "lake")
    res = run("detect", "--lake", str(lake), "--no-tables", "--detector", pattern)
    assert res.exit_code == 0, res.output
    ran = {line.split()[0] for line in res.stdout.splitlines()[1:] if line.split()[0] in DETECTORS}
    assert ran == set(CREDENTIAL)


def test_no_findings_for_a_valid_filter_says_the_filter_not_run_detect(story: Path) -> None:
    res = run("report", "findings", "--lake", str(story), "--detector", "impersonation.unobserved")
    assert res.exit_code == 0
    assert "no findings match --detector (the lake holds 5 findings)" in res.stdout
    assert "run `ztaudit detect`" not in res.stdout


# --- identities and clusters from the lake --------------------------------------------------------

def test_an_identity_in_another_case_is_found_with_a_note(story: Path) -> None:
    res = run("report", "identity", "ALICE@Example.com", "--lake", str(story), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout), "the timeline of alice@example.com"
    assert "showing 'alice@example.com' (same name, other case)" in res.stderr
    rows = json.loads(run("report", "findings", "--lake", str(story), "--actor", "Bob@Example.com",
                          "--format", "json").stdout)
    assert [r["actor"] for r in rows] == ["bob@example.com"]


def test_an_identity_typo_exits_2_naming_the_nearest(story: Path) -> None:
    msg = failed("report", "identity", "alcie@example.com", "--lake", str(story))
    assert "no identity 'alcie@example.com' in the lake; did you mean 'alice@example.com'" in msg
    msg = failed("report", "findings", "--lake", str(story), "--actor", "bob@exmaple.com")
    assert "did you mean 'bob@example.com'" in msg


def test_a_cluster_typo_exits_2_naming_the_nearest(story: Path) -> None:
    msg = failed("report", "summary", "--lake", str(story), "--cluster", "prdo")
    assert "no cluster 'prdo' in the lake; did you mean 'prod'" in msg


# --- time windows ---------------------------------------------------------------------------------

def test_an_empty_window_says_the_span_of_the_lake(story: Path) -> None:
    # The story lake holds 2026-11-20 .. 2026-11-22; a window after it (or one before it) matches nothing.
    res = run("report", "findings", "--lake", str(story), "--since", "2026-12-01")
    assert res.exit_code == 0, res.output
    assert "nothing in the window 2026-12-01T00:00:00Z .. (now); the lake holds k8s_audit 2026-11-20T09:00:00Z" \
        in res.stdout
    assert "proxy_decision 2026-11-20T08:59:59Z" in res.stdout and "findings 2026-11-20" in res.stdout
    res = run("report", "impersonation", "--lake", str(story), "--until", "2026-01-01", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    assert "ztaudit: note: nothing in the window (start) .. 2026-01-01T00:00:00Z; the lake holds k8s_audit" \
        in res.stderr


def test_a_window_that_matches_keeps_quiet(story: Path) -> None:
    res = run("report", "findings", "--lake", str(story), "--since", "2026-11-21", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout) and res.stderr == ""

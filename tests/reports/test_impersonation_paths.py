"""``report impersonation``'s ``paths`` section beside its findings: a person whose every request came
through the approved proxy, but one of them with no person's decision behind it (the proxy's token used
elsewhere: ``impersonation.unbrokered``), is ``flagged``, not ``ok`` (an all-clear beside a high finding).

The lake is the detector case ``unbrokered/pos_proxy_token_outside_proxy`` (tests/cases), detected and
reported through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from support.cases import CASES, load_case, write_case

from ztaudit.cli.main import cli


def _paths(lake: Path) -> dict[str, dict[str, object]]:
    res = CliRunner().invoke(cli, ["report", "impersonation", "--lake", str(lake), "--format", "json",
                                   "--section", "all"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {r["actor"]: r for r in json.loads(res.stdout)["sections"]["paths"]}


def test_a_person_with_an_open_impersonation_finding_is_flagged_not_ok(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_case(load_case(CASES / "impersonation" / "unbrokered" / "pos_proxy_token_outside_proxy.jsonl"), lake)
    before = _paths(lake)["bob@example.com"]
    assert (before["status"], before["findings"]) == ("ok", [])  # no detect run yet: nothing says otherwise
    res = CliRunner().invoke(cli, ["detect", "--lake", str(lake)], catch_exceptions=False)
    assert res.exit_code in (0, 1), res.output  # 1: findings
    bob = _paths(lake)["bob@example.com"]
    assert bob["direct"] == 0 and bob["via_unapproved"] == 0  # every path is the approved proxy
    assert bob["status"] == "flagged" and "impersonation.unbrokered" in bob["findings"], bob

"""docs/wiring.md quotes the configurations the real stack runs with; this fails when they drift.

Each ``<!-- realstack config NAME -->`` marker in the guide is followed by a JSON block that must
equal ``scripts/realstack config NAME`` (the settings ``scripts/realstack up`` gives the real
kube-apiserver, Pomerium and Keycloak). Needs no running stack.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "wiring.md"
BLOCK = re.compile(r"<!-- realstack config ([a-z-]+) -->\s*```json\n(.*?)\n```", re.S)


def test_every_quoted_configuration_is_the_stacks() -> None:
    blocks = BLOCK.findall(DOC.read_text())
    names = {n for n, _ in blocks}
    assert names == {"audit-policy", "authorize-log-fields", "keycloak-realm-events", "pomerium-route"}, names
    for name, text in blocks:
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "realstack"), "config", name],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(text) == json.loads(out), f"docs/wiring.md's {name} is not what scripts/realstack uses"

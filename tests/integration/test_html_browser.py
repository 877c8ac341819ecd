"""The HTML report in a real browser: attacker-controlled log values never execute.

A lake whose user agents, usernames, paths and finding summaries carry script and markup payloads
is rendered with ``--format html`` and loaded in headless Debian chromium. The test proves, from the
DOM chromium actually built, that no payload ran (the title is unchanged and never PWNED) and no
payload became an element (no script/img/iframe, no event-handler attribute), and that the page
still shows the expected tables. It runs the page twice: as written, and with the
Content-Security-Policy removed, so escaping alone is shown to be enough (the CSP is a second
wall). Screenshots go to ``test-artifacts/`` for a human to look at.

Chromium missing: skipped on a workstation, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.lakes import T0, audit, build_derived_tables, decision, finding, write_rows

from ztaudit.cli.main import cli

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

P_SCRIPT = "<script>document.title='PWNED'</script>"
P_IMG = "<img src=x onerror=\"document.title='PWNED'\">"
P_SVG = "\"><svg onload=\"document.title='PWNED'\">"
P_IFRAME = "</td></tr></table><iframe srcdoc=\"<script>parent.document.title='PWNED'</script>\"></iframe>"
EVIL_USER = f"mallory{P_IMG}@example.com"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if IN_CI:
            pytest.fail("CI must have chromium (scripts/system-deps installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def browse(page: Path, tmp: Path, *, screenshot: Path | None = None) -> str:
    """The DOM chromium built for ``page`` (after a virtual-time budget for onload/onerror handlers)."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=3000", "--window-size=1280,2200"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
        assert screenshot.stat().st_size > 10_000
    return dom


class Dom(HTMLParser):
    """Elements, attributes and text of a DOM dump."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.headings: list[str] = []
        self.title = ""
        self._in: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag not in ("meta", "link", "br", "hr", "img", "input", "source", "wbr", "col", "area", "base"):
            self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            while self._in.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in and self._in[-1] == "title" and "head" in self._in:
            self.title += data
        if self._in and self._in[-1] in ("h1", "h2"):
            self.headings.append(data)


@pytest.fixture(scope="module")
def evil_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("evil") / "lake"
    k8s, px = [], []
    for i in range(6):
        at = T0 + timedelta(hours=6 * i)
        k8s += audit(EVIL_USER, at, via_proxy=True, user_agent=P_SCRIPT, namespace=P_SVG, name=P_IFRAME,
                     request_uri=f"/api/v1/namespaces/x/pods/{P_SCRIPT}")
        k8s += audit("alice@example.com", at, via_proxy=True, namespace=["web", "db", "ops"][i % 3])
        px.append(decision(EVIL_USER, at, path="/api/" + P_SVG, user_agent=P_IMG))
    findings = [
        finding("reach.anomalous", "high", EVIL_USER, T0, T0 + timedelta(days=1), f"read secrets {P_SCRIPT}"),
        finding("impersonation.proxy_bypass", "critical", "alice@example.com", T0, T0 + timedelta(hours=5),
                f"direct access from {P_IFRAME}"),
    ]
    write_rows(lake, {"k8s_audit": k8s, "proxy_decision": px, "findings": findings})
    return build_derived_tables(lake)  # the reach report reads detect's reach table


#: report -> (arguments, page title, headings that must be in the DOM)
CASES = {
    "summary": (["summary"], "Lake summary", ["Lake contents by table and cluster", "Charts"]),
    "findings": (["findings"], "Findings", ["Findings (most severe, most recent first)"]),
    "identity": (["identity", EVIL_USER], f"Identity: {EVIL_USER}",
                 ["Timeline (newest 50 events, oldest first)", "Reach by cluster and namespace"]),
    "reach": (["reach"], "Identity reach (blast radius)", ["Top 50 identities by blast radius"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_payloads_do_not_execute_in_chromium(name: str, evil_lake: Path, tmp_path: Path) -> None:
    args, title, headings = CASES[name]
    page = tmp_path / f"{name}.html"
    res = CliRunner().invoke(cli, ["report", *args, "--lake", str(evil_lake), "--format", "html", "--out",
                                   str(page), "-q"])
    assert res.exit_code == 0, res.output
    no_csp = tmp_path / f"{name}-nocsp.html"
    html = page.read_text()
    stripped = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert stripped != html
    no_csp.write_text(stripped)
    for variant, shot in ((page, ARTIFACTS / f"report-{name}.png"), (no_csp, None)):
        dom = Dom(browse(variant, tmp_path, screenshot=shot))
        assert dom.title == f"ztaudit: {title}"  # exactly as written: no payload set document.title
        assert not {"script", "img", "iframe", "object", "embed"} & set(dom.tags), variant.name
        handlers = [k for k, _ in dom.attrs if k.startswith("on")]
        assert handlers == [], variant.name
        # only in-page anchors and the relative identity-page names the renderer builds from a safe
        # name and a hash (never a character of the log)
        assert not [v for k, v in dom.attrs if k in ("src", "srcdoc")]
        links = [v for k, v in dom.attrs if k == "href"]
        assert all(re.fullmatch(r"#[A-Za-z0-9_-]+|ztaudit-identity-[A-Za-z0-9._@-]*-[0-9a-f]{8}\.html", v or "")
                   for v in links), links
        text = "".join(dom.text)
        for heading in headings:
            assert heading in dom.headings, (heading, dom.headings)
        assert dom.tags.count("table") >= 1 and dom.tags.count("tr") >= 2
        # the payloads are shown to the analyst as text
        shown = {"summary": ["reach.anomalous"], "findings": [P_SCRIPT, P_IFRAME, EVIL_USER],
                 "identity": [P_SCRIPT, P_SVG, EVIL_USER], "reach": [EVIL_USER]}[name]
        for p in shown:
            assert p in text, p

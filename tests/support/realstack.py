"""pytest plugin: the real zero-trust stack (kube-apiserver + etcd + kube-controller-manager, Pomerium,
Keycloak; ``scripts/realstack``) for ``@pytest.mark.realstack`` tests, and the clients that act on it.

Where the stack comes from:

* ``ZTAUDIT_REALSTACK_DIR`` set: a stack already started with ``scripts/realstack up --dir DIR``
  (used as is, not stopped);
* otherwise the session starts one in a temporary directory (once per test run) and stops it, by
  PID, at the end. Without the cached build (``scripts/realstack build``) that fails in CI
  (``CI=true``) and skips locally with the command to run.

Clients: :meth:`Stack.kubectl` (admin, or any kubeconfig), :meth:`Stack.login` (a headless OIDC login
through Pomerium into Keycloak, as a browser would, returning the Pomerium JWT that kubectl sends as
``Pomerium-<jwt>``), :meth:`Stack.user_kubeconfig`, :meth:`Stack.keycloak_set_enabled` (the admin
REST API). No mocks: every call goes to the real processes.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "realstack"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CALLBACK = "http://localhost:65500/callback"


class _LoopbackCookies(http.cookiejar.DefaultCookiePolicy):
    """Keycloak sets ``Secure`` cookies on plain http to 127.0.0.1; browsers send them back on
    loopback, Python's cookie jar does not. Send them (test clients only talk to loopback)."""

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return True


class _Callback(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _StopAtCallback(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never contact the login callback: its URL carries the JWT."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if newurl.startswith(CALLBACK):
            raise _Callback(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class Stack:
    """A running stack: what ``scripts/realstack up`` wrote to ``stack.json``, and clients."""

    info: dict[str, Any]
    dir: Path
    _kubeconfigs: dict[str, Path] = field(default_factory=dict)

    # ------------------------------------------------------------------ kubectl
    def kubectl(self, *args: str, kubeconfig: Path | str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cfg = str(kubeconfig or self.info["admin_kubeconfig"])
        p = subprocess.run(["kubectl", f"--kubeconfig={cfg}", *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def kubeconfig(self, name: str, *, server: str, token: str, via_proxy: bool = False) -> Path:
        """A kubeconfig file ``name`` in the run directory with a bearer ``token``."""
        cluster: dict[str, Any] = {"server": server, "certificate-authority": self.info["ca"]}
        if via_proxy:
            cluster["proxy-url"] = self.info["connect_proxy"]
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
               "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": {"token": token}}],
               "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
        path = self.dir / "kubeconfigs" / f"{name}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(cfg))
        path.chmod(0o600)
        return path

    def user_kubeconfig(self, user: str, *, raw_route: bool = False) -> Path:
        """kubectl as ``user`` through Pomerium (logged in now); ``raw_route`` = the misconfigured route."""
        jwt = self.login(user, raw_route=raw_route)
        server = self.info["pomerium"]["raw_url" if raw_route else "url"]
        return self.kubeconfig(f"{user}{'-raw' if raw_route else ''}", server=server, token=f"Pomerium-{jwt}",
                               via_proxy=True)

    # ------------------------------------------------------------------ Pomerium + Keycloak login
    def _opener(self) -> urllib.request.OpenerDirector:
        ctx = ssl.create_default_context(cafile=self.info["ca"])
        jar = http.cookiejar.CookieJar(policy=_LoopbackCookies())
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": self.info["connect_proxy"]}),
            urllib.request.HTTPSHandler(context=ctx), urllib.request.HTTPCookieProcessor(jar), _StopAtCallback())

    def login(self, user: str, *, raw_route: bool = False) -> str:
        """Log ``user`` in through Pomerium's programmatic login and Keycloak's form; the Pomerium JWT."""
        op = self._opener()
        base = self.info["pomerium"]["raw_url" if raw_route else "url"]
        q = urllib.parse.urlencode({"pomerium_redirect_uri": CALLBACK})
        with op.open(f"{base}/.pomerium/api/v1/login?{q}", timeout=30) as r:
            signin = r.read().decode().strip()
        with op.open(signin, timeout=30) as r:
            page = r.read().decode()
        m = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', page) or \
            re.search(r'action="([^"]+login-actions/authenticate[^"]*)"', page)
        assert m, f"no Keycloak login form in the sign-in page: {page[:300]}"
        action = html.unescape(m.group(1))
        password = self.info["keycloak"]["users"][user]["password"]
        body = urllib.parse.urlencode({"username": user, "password": password, "credentialId": ""}).encode()
        try:
            with op.open(action, data=body, timeout=30) as r:
                raise AssertionError(f"login of {user} did not reach the callback: {r.geturl()} {r.read()[:300]!r}")
        except _Callback as cb:
            jwt = urllib.parse.parse_qs(urllib.parse.urlparse(cb.url).query).get("pomerium_jwt", [""])[0]
        assert jwt, f"no pomerium_jwt in the callback for {user}"
        return jwt

    # ------------------------------------------------------------------ Keycloak admin REST API
    def _kc_admin_token(self) -> str:
        kc = self.info["keycloak"]
        body = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli",
                                       "username": kc["admin_user"], "password": kc["admin_password"]}).encode()
        with urllib.request.urlopen(f"{kc['url']}/realms/master/protocol/openid-connect/token", data=body,
                                    timeout=30) as r:
            return str(json.loads(r.read())["access_token"])

    def keycloak_user_id(self, user: str) -> str:
        kc = self.info["keycloak"]
        req = urllib.request.Request(f"{kc['url']}/admin/realms/{kc['realm']}/users?exact=true&username={user}",
                                     headers={"Authorization": f"Bearer {self._kc_admin_token()}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return str(json.loads(r.read())[0]["id"])

    def keycloak_set_enabled(self, user: str, enabled: bool) -> str:
        """Enable or disable ``user`` in Keycloak as an administrator would; returns the user id."""
        kc = self.info["keycloak"]
        uid = self.keycloak_user_id(user)
        req = urllib.request.Request(f"{kc['url']}/admin/realms/{kc['realm']}/users/{uid}", method="PUT",
                                     data=json.dumps({"enabled": enabled}).encode(),
                                     headers={"Authorization": f"Bearer {self._kc_admin_token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 204, r.status
        return uid

    # ------------------------------------------------------------------ service-account tokens
    def sa_token(self, namespace: str, name: str, duration: str = "1h") -> str:
        return self.kubectl("-n", namespace, "create", "token", name, f"--duration={duration}").stdout.strip()


#: Lines the scenario modules print at the end of the run: what each did and what ztaudit found.
SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for text in SUMMARIES:
        terminalreporter.write_sep("-", "real stack")
        terminalreporter.write_line(text)


def _start(d: Path) -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "up", "--dir", str(d)], capture_output=True, text=True)
    if p.returncode != 0:
        msg = f"scripts/realstack up failed:\n{p.stderr[-4000:]}"
        if "no built stack" in p.stderr and not IN_CI:
            pytest.skip("the real stack is not built here: run `scripts/realstack build` (8-10 min) to run these")
        pytest.fail(msg)


@pytest.fixture(scope="session")
def realstack() -> Iterator[Stack]:
    """The real stack (see the module docstring for where it comes from)."""
    given = os.environ.get("ZTAUDIT_REALSTACK_DIR")
    if given:
        d = Path(given)
        yield Stack(json.loads((d / "stack.json").read_text()), d)
        return
    d = Path(tempfile.mkdtemp(prefix="ztaudit-realstack-"))
    shutil.rmtree(d)
    try:
        _start(d)
        yield Stack(json.loads((d / "stack.json").read_text()), d)
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "down", "--dir", str(d)], capture_output=True)
        if not os.environ.get("ZTAUDIT_KEEP_REALSTACK"):
            shutil.rmtree(d, ignore_errors=True)

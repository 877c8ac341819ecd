"""Review of issue 14, defect 7: ``scripts/realstack-build`` takes a half-built cache as built.

Each step of the build is skipped when its result "exists and is executable" (``[ -x ...]``), and
``.complete`` is then written without checking anything. Results are written in place: ``go build
-o "$CACHE/bin/..."`` (the Go tool copies into the destination when the work directory is on
another filesystem) and ``mv "$WORK/kc/x/keycloak-$KC" "$CACHE/keycloak"`` (a copy across
filesystems), so an interrupted build (CI timeout, Ctrl-C, a full disk) can leave a truncated
``kube-apiserver`` or half a Keycloak that the next build marks complete in 0 s; every later ``up``
then fails far from the cause. Expected: results written beside and renamed into place, and the
cache checked (``kube-apiserver --version`` and friends) before ``.complete`` is written.

The half-built cache is made here (a truncated ELF file, an empty ``kc.sh``); the build script runs
for real against it through ``ZTAUDIT_REALSTACK_CACHE`` and must not mark it complete (``go`` and
``mvn`` are shims that fail, so a fixed build stops at once instead of rebuilding).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "k8s-v1.32.13_pomerium-v0.30.0_envoy-1.36.4_keycloak-26.7.3"


@pytest.mark.skipif(shutil.which("etcd") is None, reason="the build installs etcd with apt-get when it is missing")
def test_a_half_built_cache_is_not_marked_complete(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    d = cache / KEY
    (d / "bin").mkdir(parents=True)
    (d / "keycloak" / "bin").mkdir(parents=True)
    # what an interrupted copy leaves: the first bytes of an ELF executable, mode +x
    for name in ("kube-apiserver", "kube-controller-manager", "pomerium"):
        (d / "bin" / name).write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 1000)
        (d / "bin" / name).chmod(0o755)
    (d / "keycloak" / "bin" / "kc.sh").write_text("#!/bin/sh\n")
    (d / "keycloak" / "bin" / "kc.sh").chmod(0o755)
    # a fixed build would rebuild: make that fail fast instead of downloading for 10 minutes
    shims = tmp_path / "shims"
    shims.mkdir()
    for tool in ("go", "mvn"):
        (shims / tool).write_text("#!/bin/sh\necho offline >&2\nexit 1\n")
        (shims / tool).chmod(0o755)
    env = {**os.environ, "ZTAUDIT_REALSTACK_CACHE": str(cache), "PATH": f"{shims}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([str(ROOT / "scripts" / "realstack-build")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and not (d / ".complete").exists(), (
        f"a cache of truncated binaries was marked complete (exit {p.returncode}): {p.stderr.strip()[-300:]}")

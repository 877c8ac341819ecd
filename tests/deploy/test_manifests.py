"""The deployment artefacts in ``deploy/`` against the code they run (docs/deploy.md).

Every Kubernetes manifest is parsed and every pod checked for the security properties the brief
and docs/deploy.md §4 promise; every ``ztaudit`` command line (container args and systemd
``ExecStart=``) is parsed by the real click commands, and the scheduled ones are run against an
empty lake; the ConfigMap's ``ztaudit.toml`` is loaded by :func:`ztaudit.core.config.load_config`
with each container's environment; no RBAC object grants anything; the API server's audit policy
and webhook kubeconfig have the shape kube-apiserver reads; the systemd units pass
``systemd-analyze verify`` (when installed) and carry their hardening.

``test_applies_to_a_real_cluster`` (marked ``realstack``) applies the manifests to the real
kube-apiserver of ``scripts/realstack`` (the session's ``realstack`` fixture): a server-side dry run
(admission, Pod Security ``restricted``), then for real, then reads the objects back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from support.realstack import Stack

from ztaudit.cli.main import COMMANDS, cli, main
from ztaudit.core.config import load_config
from ztaudit.reports import REPORTS

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
APISERVER = K8S / "apiserver"
SYSTEMD = DEPLOY / "systemd"
CONTAINERFILE = DEPLOY / "Containerfile"

#: The uid/gid the image creates and every manifest and unit pins.
UID = 10001
#: Where the image installs ztaudit (its venv): probes may run its interpreter.
VENV = "/opt/ztaudit"

#: Peak RSS in MiB per component, as measured: memory limits must leave at least a quarter on top.
#: consume and detect from bench/ (docs/development.md "Benchmarks"); serve from three rounds of 4 concurrent
#: 15.5 MB EventLists, its worst case (docs/deploy.md §7).
BENCH_PEAK_MIB = {"consume": 720, "serve": 633, "detect": 2268}

#: RBAC the tool is allowed: none. ztaudit reads logs from Kafka and the webhook and writes files; it
#: calls no Kubernetes API (an RBAC snapshot is ingested from a file). Name -> exact rules if ever needed.
ALLOWED_RULES: dict[str, list[dict[str, Any]]] = {}

RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


# --------------------------------------------------------------------------- loading
def manifest_files() -> list[Path]:
    """What `kubectl apply -f deploy/kubernetes/` reads: the folder's .yaml/.yml/.json files."""
    return sorted(p for p in K8S.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def load_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                objs.append(doc)
    return objs


OBJECTS = load_objects()


def obj_id(o: dict[str, Any]) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for o in OBJECTS:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj_id(o), o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield obj_id(o), o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


PODS = dict(pod_specs())


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for oid, spec in PODS.items():
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{oid}:{c['name']}", c, spec


CONTAINERS = {cid: (c, spec) for cid, c, spec in containers()}


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["kind"] == kind]


def configmap_toml() -> str:
    (cm,) = [o for o in by_kind("ConfigMap") if o["metadata"]["name"] == "ztaudit-config"]
    text: str = cm["data"]["ztaudit.toml"]
    return text


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """Literal env values; a secretKeyRef value becomes a placeholder (the Secret is not in the repo)."""
    out = {}
    for e in c.get("env", []):
        out[e["name"]] = e["value"] if "value" in e else f"<{e['name']} from a Secret>"
    return out


def mounts(c: dict[str, Any], spec: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume)."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: (m, vols[m["name"]]) for m in c.get("volumeMounts", [])}


def mounted_file(c: dict[str, Any], spec: dict[str, Any], path: str) -> bool:
    """Whether ``path`` is a file the pod's volumes provide (a key of a Secret/ConfigMap volume)."""
    for mount_path, (m, vol) in mounts(c, spec).items():
        prefix = mount_path.rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
        src = vol.get("secret") or vol.get("configMap")
        if src is None:
            return False
        if "items" in src:
            return rel in {i["path"] for i in src["items"]}
        return True
    return False


def writable_dir(c: dict[str, Any], spec: dict[str, Any], path: str) -> bool:
    """Whether ``path`` lies on a writable PVC or emptyDir mount."""
    for mount_path, (m, vol) in mounts(c, spec).items():
        if (path == mount_path or path.startswith(mount_path.rstrip("/") + "/")) and not m.get("readOnly"):
            return "persistentVolumeClaim" in vol or "emptyDir" in vol
    return False


def quantity_mib(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "Ti": 1024.0 ** 2, "M": 1e6 / 2 ** 20, "G": 1e9 / 2 ** 20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(q))
    assert m, f"unparsed memory quantity {q!r}"
    return float(m.group(1)) * (units[m.group(2)] if m.group(2) else 1 / 2 ** 20)


def quantity_cpu(q: str) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def option_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------- systemd
def unit_files() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))


def unit_directives(path: Path) -> dict[str, list[str]]:
    """``Key`` -> every value (in order), continuation lines joined, comments dropped."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_args(path: Path) -> list[str]:
    """The ztaudit arguments of a unit's ExecStart= (after the binary)."""
    (line,) = unit_directives(path)["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == f"{VENV}/bin/ztaudit", f"{path.name}: ExecStart runs {argv[0]}, not the installed ztaudit"
    return argv[1:]


def unit_env(path: Path) -> dict[str, str]:
    env = {}
    for value in unit_directives(path).get("Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    return env


SERVICES = [p for p in unit_files() if p.suffix == ".service"]


# --------------------------------------------------------------------------- the CLI
def command_lines() -> list[tuple[str, list[str]]]:
    """Every ztaudit command line in the artefacts: (where, args after `ztaudit`)."""
    lines = [(cid, list(c["args"])) for cid, (c, _) in CONTAINERS.items()]
    lines += [(p.name, exec_args(p)) for p in SERVICES]
    return lines


COMMAND_LINES = command_lines()


def parse_cli(args: list[str]) -> tuple[str, click.Command, dict[str, Any]]:
    """Parse ``args`` with the real click command (options, arguments and choices; no callbacks,
    so paths that exist only in a pod are not looked up). Raises click's usage errors."""
    top = click.Context(cli, info_name="ztaudit")
    name, rest = args[0], list(args[1:])
    cmd = cli.get_command(top, name)
    assert cmd is not None, f"no command {name!r} in cli/main.py COMMANDS"
    ctx = click.Context(cmd, info_name=name, parent=top)
    while isinstance(cmd, click.Group):
        sub_name, rest = rest[0], rest[1:]
        sub = cmd.get_command(ctx, sub_name)
        assert sub is not None, f"no subcommand {name} {sub_name!r}"
        name, cmd, ctx = f"{name} {sub_name}", sub, click.Context(sub, info_name=sub_name, parent=ctx)
    opts, leftover, _ = cmd.make_parser(ctx).parse_args(rest)
    assert leftover == [], f"ztaudit {name}: unexpected arguments {leftover}"
    for param in cmd.params:
        if param.name in opts and isinstance(param.type, click.Choice):
            values = opts[param.name] if isinstance(opts[param.name], list) else [opts[param.name]]
            for v in values:
                param.type.convert(v, param, ctx)
    return name, cmd, opts


# =========================================================================== files and kinds
def test_every_manifest_file_is_a_kubernetes_object_and_listed_in_the_kustomization() -> None:
    assert OBJECTS, "no manifests found"
    for o in OBJECTS:
        assert o.get("apiVersion") and o.get("kind"), f"{o['__file__']}: not a Kubernetes object"
        assert o["kind"] != "Kustomization", f"{o['__file__']}: `kubectl apply -f` would try to apply it"
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "ztaudit", f"{obj_id(o)} is not in namespace ztaudit"
    kust = yaml.safe_load((K8S / "Kustomization").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    # applied in file order by `kubectl apply -f DIR`: the namespace must come first
    assert OBJECTS[0]["kind"] == "Namespace"


def test_the_deployment_has_every_component_the_brief_names() -> None:
    kinds = {obj_id(o) for o in OBJECTS}
    for want in ("Namespace/ztaudit", "ServiceAccount/ztaudit", "ConfigMap/ztaudit-config",
                 "PersistentVolumeClaim/ztaudit-lake", "Deployment/ztaudit-consume", "Deployment/ztaudit-serve",
                 "Service/ztaudit-serve", "CronJob/ztaudit-detect", "CronJob/ztaudit-report"):
        assert want in kinds
    commands = {c["args"][0] for c, _ in CONTAINERS.values()}
    assert commands == {"consume", "serve", "detect", "report"}
    (pvc,) = by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_builds_the_same_objects_as_the_folder() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(obj_id(o) for o in built) == sorted(obj_id(o) for o in OBJECTS)


# =========================================================================== security
@pytest.mark.parametrize("oid", sorted(PODS))
def test_pod_security(oid: str) -> None:
    spec = PODS[oid]
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("serviceAccountName") == "ztaudit"
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host)
    assert not any("hostPath" in v for v in spec.get("volumes", []))
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == UID and sc["runAsGroup"] == UID and sc["fsGroup"] == UID
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # every pod that mounts the ReadWriteOnce lake runs on the node holding it (docs/deploy.md §6)
    uses_lake = any(v.get("persistentVolumeClaim", {}).get("claimName") == "ztaudit-lake"
                    for v in spec.get("volumes", []))
    if uses_lake:
        (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "ztaudit"}


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_container_security(cid: str) -> None:
    c, spec = CONTAINERS[cid]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == UID and sc["runAsGroup"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the only writable places: /tmp (an emptyDir, also the working directory DuckDB spills into)
    # and the lake's volume
    assert c.get("workingDir") == "/tmp"
    m, vol = mounts(c, spec)["/tmp"]
    assert "emptyDir" in vol and vol["emptyDir"].get("sizeLimit")
    for path, (m, vol) in mounts(c, spec).items():
        if "secret" in vol or "configMap" in vol:
            assert m.get("readOnly") is True, f"{cid}: {path} must be mounted read-only"
    # no secret value in the manifests: anything named like a credential comes from a Secret
    for e in c.get("env", []):
        if re.search(r"PASSWORD|TOKEN|SECRET|KEY", e["name"]):
            assert "valueFrom" in e and "secretKeyRef" in e["valueFrom"], f"{cid}: {e['name']} is a literal"


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_resources_are_set_and_cover_the_benchmarked_peak(cid: str) -> None:
    c, _ = CONTAINERS[cid]
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    assert quantity_mib(req["memory"]) <= quantity_mib(lim["memory"])
    assert quantity_cpu(req["cpu"]) <= quantity_cpu(lim["cpu"])
    peak = BENCH_PEAK_MIB.get(c["args"][0])
    if peak is not None:
        assert quantity_mib(lim["memory"]) >= 1.25 * peak, f"{cid}: limit below the measured peak + 25%"


def test_detect_memory_limit_leaves_room_above_duckdbs_cap(tmp_path: Path) -> None:
    cfg = load_config(None, env={"ZTAUDIT_CONFIG": str(write_tmp_config(tmp_path))})
    duck_mib = quantity_mib(cfg.detect.memory_limit.replace("GB", "G").replace("MB", "M"))
    (c, _) = CONTAINERS["CronJob/ztaudit-detect:detect"]
    assert quantity_mib(c["resources"]["limits"]["memory"]) >= duck_mib + 512


def test_serviceaccount_mounts_no_token_and_nothing_is_granted() -> None:
    (sa,) = by_kind("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    for o in OBJECTS:
        if o["kind"] in ("Role", "ClusterRole"):
            name = o["metadata"]["name"]
            assert name in ALLOWED_RULES, f"{obj_id(o)} grants rights ztaudit does not need"
            assert o.get("rules", []) == ALLOWED_RULES[name], f"{obj_id(o)} grants more than listed"
            assert "aggregationRule" not in o
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert o["roleRef"]["name"] in ALLOWED_RULES, f"{obj_id(o)} binds a role not listed"
    assert not any(o["kind"] in RBAC_KINDS for o in OBJECTS) or ALLOWED_RULES


def test_only_serve_is_reachable_and_only_consume_connects_out() -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in by_kind("NetworkPolicy")}
    deny = policies["ztaudit-default-deny"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    ingress = [s for s in policies.values() if s.get("ingress")]
    egress = [s for s in policies.values() if s.get("egress")]
    assert [s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in ingress] == ["serve"]
    assert [p["port"] for s in ingress for r in s["ingress"] for p in r["ports"]] == [8443]
    assert [s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in egress] == ["consume"]


# =========================================================================== the image
def test_containerfile_uid_entrypoint_and_install() -> None:
    text = CONTAINERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+-", base.group(1)), "the Python base image is pinned to a release tag"
    assert f"--uid {UID}" in text and f"--gid {UID}" in text
    assert re.search(rf"^USER {UID}:{UID}$", text, re.M), "numeric USER, so runAsNonRoot can verify it"
    assert re.search(r'^ENTRYPOINT \["ztaudit"\]$', text, re.M)
    assert f"python -m venv {VENV}" in text and f"PATH={VENV}/bin:" in text
    assert "pip wheel --no-deps" in text and "-c constraints.txt" in text
    # every file the wheel is built from is copied (pyproject's package-dir), nothing else of ours
    pkg_dirs = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
    assert copied == pkg_dirs
    # the image has the Kafka backend the ConfigMap selects
    backend = tomllib.loads(configmap_toml())["kafka"].get("backend", "kafka-python")
    extras = re.search(r"^ARG EXTRAS=(.*)$", text, re.M)
    assert extras is not None
    if backend == "confluent":
        assert "confluent" in extras.group(1).split(",")


def test_the_entry_point_the_image_runs_exists() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["ztaudit"] == "ztaudit.cli.main:main"
    installed = Path(sys.executable).parent / "ztaudit"
    out = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ztaudit" in out.stdout


# =========================================================================== commands and flags
@pytest.mark.parametrize("where,args", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_every_command_and_flag_exists_in_the_cli(where: str, args: list[str]) -> None:
    assert args[0] in COMMANDS
    name, _, opts = parse_cli(args)
    if name == "report":
        assert opts["name"] in REPORTS


def test_a_wrong_flag_would_be_caught() -> None:
    with pytest.raises(click.NoSuchOption):
        parse_cli(["consume", "--lake", "/x", "--metrics-path", "/tmp/m.json"])
    with pytest.raises(click.BadParameter):
        parse_cli(["report", "findings", "--format", "pdf"])


@pytest.mark.parametrize("cid", ["CronJob/ztaudit-detect:detect", "CronJob/ztaudit-report:report"])
def test_the_scheduled_commands_run_against_an_empty_lake(cid: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The CronJobs' exact arguments, with the volume's mount point moved to a temporary folder."""
    c, spec = CONTAINERS[cid]
    (pvc_mount,) = [p for p, (_, v) in mounts(c, spec).items() if "persistentVolumeClaim" in v]
    args = [a.replace(pvc_mount, str(tmp_path)) for a in c["args"]]
    lake = Path(option_value(args, "--lake") or "")
    (lake / "_state").mkdir(parents=True)  # a lake consume or serve created, with nothing yet
    monkeypatch.setenv("ZTAUDIT_CONFIG", str(write_tmp_config(tmp_path)))
    monkeypatch.chdir(tmp_path)
    main(args)
    if (out := option_value(args, "--out")) is not None:
        assert Path(out).read_text().lstrip().lower().startswith("<!doctype html")
    else:
        assert (lake / "findings").is_dir()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_serve_runs_with_the_deployments_arguments_and_answers_its_probe(tmp_path: Path) -> None:
    """serve.yaml's exact arguments (mounts moved to a temporary folder, 0.0.0.0:8443 to a free
    loopback port): /healthz answers 200 without credentials, as the kubelet probes it; a post
    with the token and a client certificate, as the webhook kubeconfig sends them, lands in the
    lake; SIGTERM stops it with exit 0."""
    import ssl
    import urllib.request

    c, spec = CONTAINERS["Deployment/ztaudit-serve:serve"]
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out",
             str(d / "ca.crt"), "-subj", "/CN=test-ca", "-days", "1")
    for name, ext in (("tls", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"), "-out",
                 str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-out", str(d / f"{name}.crt"), "-days", "1", "-extfile", str(d / f"{name}.ext"))
    token = os.urandom(24).hex()
    files = {"tls.crt": d / "tls.crt", "tls.key": d / "tls.key", "client-ca.crt": d / "ca.crt"}
    (d / "token").write_text(token + "\n")
    files["token"] = d / "token"
    for f in files.values():
        f.chmod(0o600)
    remap = {}
    for mount_path, (_, vol) in mounts(c, spec).items():
        if "persistentVolumeClaim" in vol:
            remap[mount_path] = str(tmp_path / "vol")
        src = vol.get("secret")
        if src:
            for item in src["items"]:
                remap[f"{mount_path}/{item['path']}"] = str(files[item["key"]])
    args = []
    for a in c["args"]:
        for old, new in remap.items():
            a = a.replace(old, new) if a == old or a.startswith(old + "/") else a
        args.append("127.0.0.1:0" if a == "0.0.0.0:8443" else a)
    assert not any(a.startswith("/etc/") or a.startswith("/var/") for a in args), args
    (tmp_path / "ztaudit.toml").write_text(configmap_toml())
    env = {**os.environ, "ZTAUDIT_CONFIG": str(tmp_path / "ztaudit.toml")}
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ztaudit"), *args], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            if m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", log.read_text()):
                port = int(m.group(1))
            else:
                assert proc.poll() is None, f"serve exited before listening:\n{log.read_text()}"
                time.sleep(0.1)
        assert port, f"serve did not say where it listens:\n{log.read_text()}"
        probe = c["readinessProbe"]["httpGet"]
        kubelet = ssl.create_default_context(cafile=str(d / "ca.crt"))  # no client certificate
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{probe['path']}", context=kubelet, timeout=10) as r:
            assert r.status == 200
        apiserver = ssl.create_default_context(cafile=str(d / "ca.crt"))
        apiserver.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))
        event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "deploy-test-1",
                 "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces", "verb": "list",
                 "user": {"username": "alice@example.com", "groups": ["system:authenticated"]},
                 "sourceIPs": ["10.0.0.5"], "objectRef": {"resource": "namespaces", "apiVersion": "v1"},
                 "responseStatus": {"code": 200}, "requestReceivedTimestamp": "2026-03-02T09:00:00.000000Z",
                 "stageTimestamp": "2026-03-02T09:00:00.010000Z"}
        body = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [event]}).encode()
        req = urllib.request.Request(f"https://127.0.0.1:{port}/?timeout=30s", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, context=apiserver, timeout=30) as r:
            assert r.status == 200
        lake = Path(option_value(args, "--lake") or "")
        assert list((lake / "k8s_audit").rglob("webhook+*.parquet"))
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 0


# =========================================================================== config and files
def write_tmp_config(directory: Path) -> Path:
    path = directory / "ztaudit.toml"
    path.write_text(configmap_toml())
    return path


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_the_configmap_loads_with_each_containers_environment(cid: str, tmp_path: Path) -> None:
    c, spec = CONTAINERS[cid]
    env = container_env(c)
    cfg_path = env["ZTAUDIT_CONFIG"]
    assert mounted_file(c, spec, cfg_path), f"{cid}: $ZTAUDIT_CONFIG {cfg_path} is not mounted"
    (m, vol) = mounts(c, spec)[str(Path(cfg_path).parent)]
    assert vol["configMap"]["name"] == "ztaudit-config" and "subPath" not in m  # subPath never sees updates
    env["ZTAUDIT_CONFIG"] = str(write_tmp_config(tmp_path))
    cfg = load_config(None, env=env, warn=False)
    assert cfg.warnings == (), f"{cid}: unknown ZTAUDIT_* variables: {cfg.warnings}"
    assert cfg.source_path == env["ZTAUDIT_CONFIG"]
    if c["args"][0] == "consume":
        k = cfg.kafka
        assert k.topics, "consume needs kafka.topics"
        if k.security_protocol.startswith("SASL"):
            (var,) = [e for e in c["env"] if e["name"] == k.sasl_password_env]
            assert var["valueFrom"]["secretKeyRef"]["name"] == "ztaudit-kafka"
        if k.ssl_cafile:
            assert mounted_file(c, spec, k.ssl_cafile), f"{cid}: kafka.ssl_cafile {k.ssl_cafile} is not mounted"


@pytest.mark.parametrize("cid", sorted(CONTAINERS))
def test_paths_in_the_arguments_are_mounted(cid: str) -> None:
    c, spec = CONTAINERS[cid]
    args = c["args"]
    lake = option_value(args, "--lake")
    assert lake and writable_dir(c, spec, lake), f"{cid}: --lake {lake} is not on a writable volume"
    for flag in ("--out", "--metrics-file"):
        if (v := option_value(args, flag)) is not None:
            assert writable_dir(c, spec, str(Path(v).parent)), f"{cid}: {flag} {v} is not writable"
    for flag in ("--tls-cert", "--tls-key", "--client-ca", "--token-file"):
        if (v := option_value(args, flag)) is not None:
            assert mounted_file(c, spec, v), f"{cid}: {flag} {v} is not a mounted Secret key"
    port = option_value(args, "--listen")
    if port is not None:
        ports = {p["containerPort"] for p in c["ports"]}
        assert int(port.rsplit(":", 1)[1]) in ports


def test_the_webhook_service_routes_to_serve() -> None:
    (svc,) = by_kind("Service")
    (dep,) = [o for o in by_kind("Deployment") if o["metadata"]["name"] == "ztaudit-serve"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (port,) = svc["spec"]["ports"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in c["ports"]}
    # the probes use the same named port, and /healthz over HTTPS without a client certificate only
    # works when --token-file makes the certificate optional
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["httpGet"] == {"scheme": "HTTPS", "path": "/healthz", "port": port["targetPort"]}
    assert option_value(c["args"], "--token-file")


# =========================================================================== the consume probe
def test_the_consume_liveness_probe_judges_the_metrics_file(tmp_path: Path) -> None:
    c, _ = CONTAINERS["Deployment/ztaudit-consume:consume"]
    probe = c["livenessProbe"]["exec"]["command"]
    assert probe[0] == f"{VENV}/bin/python"  # the image's interpreter, not a shell
    metrics, max_age = probe[3], float(probe[4])
    assert metrics == option_value(c["args"], "--metrics-file")
    progress = float(option_value(c["args"], "--progress-seconds") or 10)
    assert max_age >= 10 * progress, "a slow write round must not look like a stuck loop"

    def run(path: Path) -> int:
        return subprocess.run([sys.executable, *probe[1:3], str(path), probe[4]], timeout=30).returncode

    f = tmp_path / "metrics.json"
    assert run(f) == 0  # no file yet: still reaching the broker, which is retried
    f.write_text("{}")
    assert run(f) == 0
    old = time.time() - max_age - 5
    os.utime(f, (old, old))
    assert run(f) == 1


# =========================================================================== API server files
def test_audit_policy_is_the_real_stack_policy() -> None:
    policy = yaml.safe_load((APISERVER / "audit-policy.yaml").read_text())
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    assert policy["omitStages"] == ["RequestReceived"]
    rules = policy["rules"]

    def level_for(group: str, resource: str) -> str:
        for r in rules:
            res = r.get("resources")
            if r.get("nonResourceURLs"):
                continue
            if res is None or any(g.get("group") == group and ("resources" not in g or resource in g["resources"])
                                  for g in res):
                return str(r["level"])
        raise AssertionError("no catch-all rule")

    assert rules[0] == {"level": "None", "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version"]}
    # credentials: never their bodies
    assert level_for("", "secrets") == "Metadata"
    assert level_for("", "serviceaccounts/token") == "Metadata"
    assert level_for("authentication.k8s.io", "tokenreviews") == "Metadata"
    for res in ("pods", "namespaces", "serviceaccounts"):
        assert level_for("", res) == "RequestResponse"
    assert level_for("rbac.authorization.k8s.io", "clusterrolebindings") == "RequestResponse"
    assert level_for("apps", "deployments") == "Metadata"
    assert rules[-1] == {"level": "Metadata"}


def test_webhook_kubeconfig_points_at_serve_with_both_credentials() -> None:
    kc = yaml.safe_load((APISERVER / "audit-webhook.kubeconfig").read_text())
    assert kc["kind"] == "Config"
    (cluster,) = kc["clusters"]
    (user,) = kc["users"]
    (svc,) = by_kind("Service")
    server = cluster["cluster"]["server"]
    assert server == f"https://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}/"
    assert cluster["cluster"]["certificate-authority"].startswith("/")
    u = user["user"]
    assert {"client-certificate", "client-key", "tokenFile"} <= set(u)
    assert "token" not in u, "the token stays in a root-only file on the control plane, not in this file"
    assert kc["current-context"] == kc["contexts"][0]["name"]


# =========================================================================== systemd
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
             "PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes"}


@pytest.mark.parametrize("unit", SERVICES, ids=[p.name for p in SERVICES])
def test_systemd_units_are_hardened(unit: Path, tmp_path: Path) -> None:
    d = unit_directives(unit)
    assert d.get("User") == ["ztaudit"] or d.get("DynamicUser") == ["yes"]
    for key, value in HARDENING.items():
        assert d.get(key) == [value], f"{unit.name}: {key}={value}"
    assert d.get("RestrictAddressFamilies"), f"{unit.name}: RestrictAddressFamilies"
    assert d.get("MemoryMax"), f"{unit.name}: MemoryMax"
    lake = option_value(exec_args(unit), "--lake")
    assert lake and any(lake.startswith(p.rstrip("/") + "/") for p in d["ReadWritePaths"])
    # the same config file as every other unit, and only known ZTAUDIT_* variables
    env = unit_env(unit)
    cfg = load_config(None, env={**env, "ZTAUDIT_CONFIG": str(write_tmp_config(tmp_path))}, warn=False)
    assert cfg.warnings == ()
    assert env["ZTAUDIT_CONFIG"] == "/etc/ztaudit/ztaudit.toml"
    # secrets are credentials (LoadCredential=), never in Environment=
    assert not any(re.search(r"PASSWORD$|TOKEN$|SECRET$", k) for k in env)
    if "%d/" in " ".join(exec_args(unit)) or any("%d/" in v for v in env.values()):
        assert d.get("LoadCredential")


def test_sysusers_uid_matches_the_image() -> None:
    text = (SYSTEMD / "ztaudit.sysusers.conf").read_text()
    assert re.search(rf"^u ztaudit {UID}:{UID} ", text, re.M)


def test_the_timer_starts_detect() -> None:
    d = unit_directives(SYSTEMD / "ztaudit-detect.timer")
    assert d["Unit"] == ["ztaudit-detect.service"] and d["OnCalendar"]
    assert d["Persistent"][0] in ("yes", "true", "on", "1")
    assert exec_args(SYSTEMD / "ztaudit-detect.service")[0] == "detect"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks every directive and that ExecStart's binary is executable: the
    units are copied with the installed path replaced by this environment's ztaudit."""
    ztaudit = Path(sys.executable).parent / "ztaudit"
    names = []
    for unit in unit_files():
        (tmp_path / unit.name).write_text(unit.read_text().replace(f"{VENV}/bin/ztaudit", str(ztaudit)))
        names.append(str(tmp_path / unit.name))
    out = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# =========================================================================== a real cluster
def _kubectl(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed")
    out = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                         timeout=120)
    if check and out.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _no_warnings(out: subprocess.CompletedProcess[str]) -> None:
    assert "would violate PodSecurity" not in out.stderr, out.stderr
    assert "Warning:" not in out.stderr, out.stderr


@pytest.mark.realstack
def test_applies_to_a_real_cluster(realstack: Stack) -> None:
    """Server-side dry run (schema, admission, Pod Security ``restricted``), then a real apply, then
    every object read back, on the real kube-apiserver (+ kube-controller-manager) of
    ``scripts/realstack`` (tests/support/realstack.py); the objects (and the namespace) are deleted
    at the end."""
    kubeconfig = realstack.info["admin_kubeconfig"]
    # a namespace left terminating by an earlier run must be gone before it can be created again
    deadline = time.monotonic() + 120
    while True:
        ns = _kubectl(kubeconfig, "get", "namespace", "ztaudit", "-o", "json", "--ignore-not-found")
        if not ns.stdout.strip() or "deletionTimestamp" not in json.loads(ns.stdout)["metadata"]:
            break
        if time.monotonic() > deadline:
            pytest.fail("namespace ztaudit is still terminating after 120 s (is kube-controller-manager running?)")
        time.sleep(2)
    # namespaced objects can only be dry-run in a namespace that exists
    _no_warnings(_kubectl(kubeconfig, "apply", "--dry-run=server", "-f", str(K8S / "00-namespace.yaml")))
    _no_warnings(_kubectl(kubeconfig, "apply", "-f", str(K8S / "00-namespace.yaml")))
    try:
        dry = _kubectl(kubeconfig, "apply", "--dry-run=server", "-f", f"{K8S}/")
        _no_warnings(dry)
        assert dry.stdout.count("(server dry run)") == len(OBJECTS)
        _no_warnings(_kubectl(kubeconfig, "apply", "--dry-run=server", "-k", f"{K8S}/"))
        _no_warnings(_kubectl(kubeconfig, "apply", "-f", f"{K8S}/"))
        got = json.loads(_kubectl(kubeconfig, "get", "-f", f"{K8S}/", "-o", "json").stdout)
        items = got["items"] if got.get("kind") == "List" else [got]
        assert sorted(obj_id(o) for o in items) == sorted(obj_id(o) for o in OBJECTS)
        stored = {obj_id(o): o for o in items}
        consume = stored["Deployment/ztaudit-consume"]["spec"]["template"]["spec"]
        assert consume["automountServiceAccountToken"] is False
        assert consume["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        ns_labels = stored["Namespace/ztaudit"]["metadata"]["labels"]
        assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert not _kubectl(kubeconfig, "-n", "ztaudit", "get", "roles,rolebindings", "-o", "name").stdout.strip()
    finally:
        _kubectl(kubeconfig, "delete", "-f", f"{K8S}/", "--ignore-not-found", "--wait=false", check=False)

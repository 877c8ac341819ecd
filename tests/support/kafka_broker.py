"""pytest plugin: the real Kafka broker for ``@pytest.mark.kafka`` tests, and test-event helpers.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Where the broker comes from:

* ``ZTAUDIT_TEST_KAFKA_BOOTSTRAP`` set (``make test`` / ``scripts/with-kafka``): use that broker;
  ``ZTAUDIT_TEST_KAFKA_DIR`` lets :meth:`KafkaBroker.stop`/:meth:`KafkaBroker.start` restart it
  (same log dir, same ports) for the broker-outage test.
* not set and ``CI=true``: fail loudly (CI must run the suite through ``make test``).
* not set locally: start one with ``scripts/kafka-broker start`` for the session and stop it at the
  end, so ``pytest tests/integration/test_consume_x.py`` works by hand.

Helpers: :func:`audit_event` (a realistic ``audit.k8s.io/v1`` Event, ~1.4 KB), :func:`create_topic`,
:func:`produce`, :func:`read_lake` (DuckDB over the lake), :func:`wait_until` (a condition checked
until a deadline: tests wait for what they need, never for a fixed time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BROKER_SCRIPT = ROOT / "scripts" / "kafka-broker"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VENV_BIN = Path(sys.executable).parent
ZTAUDIT = str(VENV_BIN / "ztaudit")


@dataclass
class KafkaBroker:
    """The session's broker: addresses, the seeded SCRAM user, and stop/start for outage tests."""

    bootstrap: str
    sasl_bootstrap: str
    scram_user: str
    scram_password: str
    dir: Path | None

    def _script(self, *args: str) -> None:
        if self.dir is None:
            pytest.skip("this broker was not started by scripts/kafka-broker (no ZTAUDIT_TEST_KAFKA_DIR)")
        subprocess.run([sys.executable, str(BROKER_SCRIPT), *args, "--dir", str(self.dir)], check=True)

    def stop(self) -> None:
        """Stop the broker (controlled shutdown); same log dir and ports are kept."""
        self._script("stop")

    def start(self) -> None:
        """Start it again on the same ports and log dir; returns once it answers metadata."""
        self._script("start")


def _from_env() -> KafkaBroker | None:
    boot = os.environ.get("ZTAUDIT_TEST_KAFKA_BOOTSTRAP")
    if not boot:
        return None
    d = os.environ.get("ZTAUDIT_TEST_KAFKA_DIR")
    return KafkaBroker(
        bootstrap=boot,
        sasl_bootstrap=os.environ.get("ZTAUDIT_TEST_KAFKA_SASL_BOOTSTRAP", ""),
        scram_user=os.environ.get("ZTAUDIT_TEST_KAFKA_SCRAM_USER", ""),
        scram_password=os.environ.get("ZTAUDIT_TEST_KAFKA_SCRAM_PASSWORD", ""),
        dir=Path(d) if d else None,
    )


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The real broker (see the module docstring for where it comes from)."""
    broker = _from_env()
    if broker is not None:
        yield broker
        return
    if IN_CI:
        pytest.fail("CI=true but ZTAUDIT_TEST_KAFKA_BOOTSTRAP is not set: run the suite with `make test` "
                    "(scripts/with-kafka starts the broker); Kafka tests must not be skipped in CI")
    d = Path(tempfile.mkdtemp(prefix="ztaudit-kafka-pytest-"))
    proc = subprocess.run([sys.executable, str(BROKER_SCRIPT), "start", "--dir", str(d)])
    if proc.returncode != 0:
        pytest.fail(f"could not start a local Kafka broker with {BROKER_SCRIPT}; see {d / 'broker.log'}")
    broker = KafkaBroker(
        bootstrap=(d / "bootstrap").read_text().strip(),
        sasl_bootstrap=(d / "sasl_bootstrap").read_text().strip(),
        scram_user=(d / "scram_user").read_text().strip(),
        scram_password=(d / "scram_password").read_text().strip(),
        dir=d,
    )
    try:
        yield broker
    finally:
        subprocess.run([sys.executable, str(BROKER_SCRIPT), "stop", "--dir", str(d)])
        shutil.rmtree(d, ignore_errors=True)


#: ``ztaudit consume --backend`` values; tests taking the :func:`backend` fixture run once per backend.
BACKENDS = ("kafka-python", "confluent")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The consumer backend under test (``--backend``); confluent is skipped locally without the
    optional ``confluent-kafka`` package, and fails in CI (the dev extra installs it)."""
    name: str = request.param
    if name == "confluent":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            if IN_CI:
                pytest.fail("CI must install confluent-kafka (it is in the dev extra)")
            pytest.skip("confluent-kafka is not installed (pip install -e '.[confluent]')")
    return name


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A fresh topic name for this test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


def create_topic(broker: KafkaBroker, name: str, partitions: int = 4) -> None:
    """Create ``name`` and wait until every partition has a leader."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        wait_until(lambda: len(c.partitions_for_topic(name) or ()) == partitions, timeout=30,
                   what=f"topic {name} has {partitions} partitions")
    finally:
        c.close()


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str | Callable[[], str],
               every: float = 0.1) -> None:
    """Check ``condition()`` every ``every`` seconds until it holds; fail the test when ``timeout``
    seconds passed first (``what`` says what was awaited, or is called for a message: a log tail)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what if isinstance(what, str) else what()}")
        time.sleep(every)


def topic_size(broker: KafkaBroker, topic: str) -> int:
    """Records in ``topic`` so far: the sum of its partitions' end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        parts = c.partitions_for_topic(topic) or set()
        return sum(c.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        c.close()


def producer(broker: KafkaBroker, **kw: Any) -> Any:
    from kafka import KafkaProducer

    kw.setdefault("linger_ms", 20)
    kw.setdefault("batch_size", 256 * 1024)
    kw.setdefault("acks", "all")
    return KafkaProducer(bootstrap_servers=broker.bootstrap, **kw)


def produce(broker: KafkaBroker, topic: str, values: Iterable[bytes], *, partition: int | None = None,
            **kw: Any) -> int:
    """Produce ``values`` (round-robin over partitions unless ``partition``); flush; return count."""
    p = producer(broker, **kw)
    n = 0
    try:
        parts = sorted(p.partitions_for(topic))
        for i, v in enumerate(values):
            p.send(topic, value=v, partition=partition if partition is not None else parts[i % len(parts)])
            n += 1
        p.flush(timeout=120)
    finally:
        p.close()
    return n


# --- a small realistic audit-event factory -------------------------------------------------

_USERS = [
    ("system:serviceaccount:pomerium:pomerium-authorize", ["system:serviceaccounts", "system:authenticated"]),
    ("system:serviceaccount:kube-system:replicaset-controller", ["system:serviceaccounts", "system:authenticated"]),
    ("system:node:ip-10-0-3-17.ec2.internal", ["system:nodes", "system:authenticated"]),
    ("alice@example.com", ["oidc:platform", "system:authenticated"]),
]
_RES = [("pods", "", "v1"), ("deployments", "apps", "v1"), ("secrets", "", "v1"), ("configmaps", "", "v1"),
        ("roles", "rbac.authorization.k8s.io", "v1")]
_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
BASE_TIME = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)


def audit_event(i: int, *, run: str = "r", base: datetime = BASE_TIME, spread_s: float = 3600.0,
                total: int = 1) -> dict[str, Any]:
    """Event number ``i``: unique auditID ``<run>-<i>``; times spread over ``spread_s`` seconds."""
    user, groups = _USERS[i % len(_USERS)]
    res, group, ver = _RES[i % len(_RES)]
    verb = _VERBS[i % len(_VERBS)]
    ns = f"team-{i % 13}"
    name = f"{res[:-1]}-{i % 997}"
    t = base + timedelta(seconds=spread_s * (i / max(total, 1)), microseconds=(i * 7919) % 1_000_000)
    ts = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"{run}-{i:08d}-{uuid.UUID(int=i * 2654435761 % (1 << 128)).hex[:12]}",
        "stage": "ResponseComplete",
        "requestURI": f"/api{'s/' + group if group else ''}/{ver}/namespaces/{ns}/{res}/{name}",
        "verb": verb,
        "user": {"username": user, "uid": f"{i % 50:04d}-uid", "groups": groups,
                 "extra": {"authentication.kubernetes.io/credential-id": [f"JTI=jti-{i % 211:05d}"]}},
        "sourceIPs": [f"10.0.{i % 7}.{i % 250 + 1}"],
        "userAgent": "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
        "objectRef": {"resource": res, "namespace": ns, "name": name, "apiGroup": group, "apiVersion": ver},
        "responseStatus": {"metadata": {}, "code": 200 if i % 11 else 403},
        "requestReceivedTimestamp": ts,
        "stageTimestamp": ts,
        "annotations": {"authorization.k8s.io/decision": "allow" if i % 11 else "forbid",
                        "authorization.k8s.io/reason": f"RBAC: allowed by RoleBinding \"edit-{ns}\" of ClusterRole "
                        f"\"edit\" to Group \"oidc:platform\"",
                        "pod-security.kubernetes.io/enforce-policy": "restricted:latest"},
    }
    if user.startswith("system:serviceaccount:pomerium"):
        ev["impersonatedUser"] = {"username": "bob@example.com", "groups": ["oidc:platform"]}
    # pad to a realistic ~1.4 KB with the fields a real RequestResponse-less event carries
    ev["annotations"]["ztaudit.test/pad"] = "x" * max(0, 1400 - len(json.dumps(ev)) - 30)
    return ev


def audit_events(n: int, *, start: int = 0, run: str = "r", **kw: Any) -> list[bytes]:
    """``n`` events as compact JSON bytes (one per Kafka message)."""
    return [json.dumps(audit_event(i, run=run, total=n + start, **kw), separators=(",", ":")).encode()
            for i in range(start, start + n)]


def read_lake(lake: Path, table: str = "k8s_audit", columns: str = "*") -> Any:
    """All rows of ``table`` as a DuckDB relation result (list of tuples) plus column names."""
    import duckdb

    glob = str(lake / table / "dt=*" / "*.parquet")
    con = duckdb.connect()
    try:
        cur = con.execute(f"SELECT {columns} FROM read_parquet('{glob}', union_by_name=true)")
        names = [d[0] for d in cur.description]
        return names, cur.fetchall()
    finally:
        con.close()


def audit_id_counts(lake: Path) -> dict[str, int]:
    """audit_id -> number of rows in the lake (1 everywhere means exactly once)."""
    import duckdb

    from ztaudit.core import warehouse
    from ztaudit.core.duckdb_fs import attach
    from ztaudit.core.iceberg import is_iceberg
    from ztaudit.core.iceberg_snapshot import snapshot_files

    glob = str(lake / "k8s_audit" / "dt=*" / "*.parquet")
    # An Iceberg lake's rows are its snapshot's files (what every reader reads), not the folder.
    source: str | list[str] = snapshot_files(lake, "k8s_audit") if is_iceberg(lake) else glob
    wh = warehouse.of_lake(lake) if is_iceberg(lake) else None
    if not source or (wh is None and not list(lake.glob("k8s_audit/dt=*/*.parquet"))):
        return {}
    con = duckdb.connect()
    if wh is not None:  # the files are s3:// objects: read through pyarrow's S3 client, as the views do
        attach(con, wh.filesystem)
    try:
        rows = con.execute("SELECT audit_id, count(*) FROM read_parquet(?) GROUP BY 1", [source]).fetchall()
    finally:
        con.close()
    return {str(a): int(c) for a, c in rows}


def data_files(lake: Path, table: str) -> set[str]:
    """The data files of ``table`` where the lake keeps them, whether listed in a snapshot or not: the
    resolved paths under ``LAKE/<table>/dt=*``, or the ``s3://`` URIs of the objects under the S3
    warehouse's ``<table>/`` (listed; hidden names included, so a test sees a temporary one)."""
    from pyarrow import fs

    from ztaudit.core import warehouse

    wh = warehouse.of_lake(lake)
    if wh is None:
        return {str(p.resolve()) for p in lake.glob(f"{table}/dt=*/*.parquet")}
    infos = wh.filesystem.get_file_info(fs.FileSelector(f"{wh.root}/{table}", recursive=True, allow_not_found=True))
    return {f"s3://{i.path}" for i in infos if i.type == fs.FileType.File}


def ztaudit_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ZTAUDIT_KAFKA_PASSWORD", None)
    env.update(extra)
    return env


# --- running the consumer as a real process ------------------------------------------------

def consume_args(broker: KafkaBroker, topic: str, lake: Path, group: str, *extra: str,
                 until_idle: float | None = 3.0, backend: str | None = None) -> list[str]:
    """``ztaudit consume`` command line for ``topic`` into ``lake`` as ``group`` (``--backend`` if given)."""
    args = [ZTAUDIT, "consume", "--bootstrap-servers", broker.bootstrap, "--topic", topic, "--lake", str(lake),
            "--group", group, "--progress-seconds", "2"]
    if backend is not None:
        args += ["--backend", backend]
    if until_idle is not None:
        args += ["--until-idle", str(until_idle)]
    return args + list(extra)


def run_consume(broker: KafkaBroker, topic: str, lake: Path, group: str, *extra: str, until_idle: float = 3.0,
                timeout: float = 300, env: dict[str, str] | None = None,
                backend: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ztaudit consume --until-idle`` to completion; returns the finished process (text output)."""
    return subprocess.run(consume_args(broker, topic, lake, group, *extra, until_idle=until_idle, backend=backend),
                          capture_output=True, text=True, timeout=timeout, env=env or ztaudit_env())


def start_consume(broker: KafkaBroker, topic: str, lake: Path, group: str, *extra: str, log: Path,
                  until_idle: float | None = None, env: dict[str, str] | None = None,
                  backend: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``ztaudit consume`` in the background, stderr+stdout appended to ``log``."""
    with open(log, "ab") as fh:  # the child writes through its own copy of the descriptor
        return subprocess.Popen(consume_args(broker, topic, lake, group, *extra, until_idle=until_idle,
                                             backend=backend),
                                stdout=fh, stderr=subprocess.STDOUT, env=env or ztaudit_env())


def kcat_produce(broker: KafkaBroker, topic: str, values: list[bytes], workdir: Path,
                 keyed: bool = True) -> subprocess.Popen[bytes]:
    """Produce newline-free ``values`` with ``kcat -P -l`` (librdkafka), keyed by index so the
    default partitioner spreads them over all partitions. Returns the running kcat process; its
    stderr goes to ``workdir/kcat-*.err`` (:func:`kcat_errors`)."""
    path = workdir / f"kcat-{uuid.uuid4().hex[:6]}.ndjson"
    with open(path, "wb") as fh:
        for i, v in enumerate(values):
            assert b"\n" not in v
            fh.write((f"k{i}\t".encode() + v if keyed else v) + b"\n")
    args = ["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-l", "-X", "acks=all"]
    if keyed:
        args += ["-K", "\t"]
    with open(path.with_suffix(".err"), "ab") as err:  # (kcat writes through its own descriptor)
        return subprocess.Popen([*args, str(path)], stdout=subprocess.DEVNULL, stderr=err)


def kcat_errors(workdir: Path) -> str:
    """What the :func:`kcat_produce` processes of ``workdir`` wrote to stderr."""
    return "".join(p.read_text(errors="replace") for p in sorted(workdir.glob("kcat-*.err")))

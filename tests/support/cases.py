"""Detector cases: the one case-file format, its loader, and the checks the case tests share.

A case is ``tests/cases/<family>/<detector>/<pos|neg>_<name>.jsonl``: a positive case must yield
exactly the findings it lists, a negative case none. JSON Lines; lines starting with ``//`` are
comments. The first line is the header::

    {"description": "what the case shows",                      (optional)
     "expect": {"detector": "impersonation.unobserved",
                "findings": [{"actor": "carol@example.com", "severity": "medium"}],
                "status": [{"subject": "bob@example.com", "status": "enforced"}]},  (revocation only)
     "config": {"impersonation": {"break_glass": ["breakglass-admin"]}},            (optional)
     "start": "2026-03-02T00:00:00+00:00",                     (optional: day 0 of relative times)
     "window": {"since_day": 15, "until_day": 20}}             (optional: the detect window)

Every other line is one event: a row of a lake table, ``{"table": "proxy_decision", ...columns}``
(``table`` defaults to ``k8s_audit``), written through ``LakeSink`` so the lake is exactly what
ingest would leave (``conform`` fills the other columns with nulls), minus the parsing, which the
ingest tests cover. Times are RFC 3339 strings.

* An event without its table's time column (:data:`~ztaudit.core.schema.PARTITION_TIME`) is placed
  relative to ``start``: ``days`` (day offsets, or ``{"from": a, "to": b}``; default [0]), ``hours``
  (hours of the day; default [10]), ``minute``, ``second``; ``repeat`` copies it one second apart and
  ``namespaces`` once per namespace.
* k8s_audit: ``stage`` defaults to ResponseComplete, ``stage_at`` to the request time, ``audit_id`` to
  a fresh id and ``actor`` to the impersonated user, else ``user_name``. An event that names ``actor``
  and no ``user_name`` is a *workload request* (:func:`row`): the identity columns come from the actor
  (``system:serviceaccount:NS:NAME``, ``system:node:NAME``, an email is a human) and the request
  columns the event leaves out from :data:`WORKLOAD`.
* Every event's ``origin`` defaults to ``file:<case file>:<n>``, n counting the header as 1 and
  skipping comment lines.

Expected findings (:func:`check_findings`): ``actor`` (required), and any of ``severity``, ``cluster``,
``credential_id``, ``evidence`` (references the finding must include), ``evidence_count``, ``context``
(a subset, compared as strings), ``features`` (named in the finding's context features) and ``text``
(part of the summary).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from ztaudit.core.config import Config, load_config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import PARTITION_TIME, TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.detectors import registry
from ztaudit.detectors.base import DetectContext, Finding

CASES: Final = Path(__file__).resolve().parent.parent / "cases"
DEFAULT_START: Final = datetime(2026, 3, 2, tzinfo=UTC)

#: Request columns of a workload request the event does not give (see the module docstring).
WORKLOAD: Final[dict[str, Any]] = {
    "cluster": "c1", "stage": "ResponseComplete", "level": "Metadata", "verb": "get", "resource": "pods",
    "namespace": "default", "api_group": "", "response_code": 200, "decision": "allow",
    "source_ip": "10.0.0.5", "user_agent": "client/1.0", "credential_kind": "none",
}

#: Keys of an event that place it in time or copy it; they are not columns.
_PLACEMENT: Final = ("days", "hours", "minute", "second", "repeat", "namespaces")

_audit_ids = itertools.count()


# --- rows ------------------------------------------------------------------------------------

def identity(actor: str) -> dict[str, Any]:
    """Identity columns of a workload request made by the effective identity ``actor``."""
    out: dict[str, Any] = {"actor": actor, "user_name": actor}
    if actor.startswith("system:serviceaccount:"):
        _, _, ns, name = actor.split(":", 3)
        out.update(actor_kind="service_account", sa_namespace=ns, sa_name=name,
                   user_groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"])
    elif actor.startswith("system:node:"):
        out.update(actor_kind="node", node_name=actor.split(":", 2)[2],
                   user_groups=["system:nodes", "system:authenticated"])
    elif "@" in actor:
        out.update(actor_kind="human", user_groups=["system:authenticated"])
    else:
        out.update(actor_kind="system", user_groups=["system:authenticated"])
    return out


def row(ts: datetime, actor: str, verb: str = "get", resource: str | None = "pods",
        namespace: str | None = "default", **columns: Any) -> dict[str, Any]:
    """One k8s_audit row of a workload request by ``actor`` at ``ts`` (:data:`WORKLOAD` defaults).

    ``credential_kind`` follows the credential id's prefix (JTI=, X509..., SECRET=) unless given; a
    legacy secret token is marked ``is_legacy_token``; ``source_ips`` is ``[source_ip]`` unless given.
    """
    r: dict[str, Any] = {**WORKLOAD, "audit_id": f"a-{next(_audit_ids)}", "request_received_at": ts, "stage_at": ts,
                         "verb": verb, "resource": resource, "namespace": namespace, **identity(actor)}
    r.update(columns)
    if r.get("credential_id") and r["credential_kind"] == "none":
        cid = str(r["credential_id"])
        r["credential_kind"] = ("jti" if cid.startswith("JTI=") else "x509" if cid.startswith("X509")
                                else "legacy_secret" if cid.startswith("SECRET=") else "none")
    if r["credential_kind"] == "legacy_secret":
        r.setdefault("is_legacy_token", True)
    if r.get("source_ips") is None:
        r["source_ips"] = [r["source_ip"]]
    return r


def expand(spec: dict[str, Any], start: datetime) -> list[dict[str, Any]]:
    """The workload rows of one event ``spec`` placed relative to ``start`` (see the module docstring)."""
    return [row(ts, **event) for ts, event in _placed(spec, start)]


def _placed(spec: dict[str, Any], start: datetime) -> list[tuple[datetime, dict[str, Any]]]:
    """(time, event without placement keys) for every copy of a relatively placed event."""
    event = {k: v for k, v in spec.items() if k not in _PLACEMENT}
    days = spec.get("days", [0])
    if isinstance(days, dict):
        days = list(range(days["from"], days["to"]))
    out = []
    for d in days:
        for h in spec.get("hours", [10]):
            t0 = start + timedelta(days=d, hours=h, minutes=int(spec.get("minute", 0)),
                                   seconds=int(spec.get("second", 0)))
            for ns in spec["namespaces"] if "namespaces" in spec else [None]:
                copy = event if ns is None else {**event, "namespace": ns}
                out += [(t0 + timedelta(seconds=i), copy) for i in range(int(spec.get("repeat", 1)))]
    return out


def write_rows(rows: list[dict[str, Any]], lake: Path, key: str = "case", table: str = "k8s_audit") -> None:
    """Write ``rows`` of ``table`` into ``lake`` (columns they lack are null)."""
    names = {k for r in rows for k in r}
    schema = pa.schema([f for f in TABLES[table] if f.name in names])
    LakeSink(lake).write(table, pa.Table.from_pylist(rows, schema=schema), key)


# --- case files ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A parsed case file: its header and its events as (n, event), n counting the header as 1 and
    skipping comments (an event's default ``origin`` is ``file:<case file>:<n>``)."""

    path: Path
    header: dict[str, Any]
    events: tuple[tuple[int, dict[str, Any]], ...]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def detector(self) -> str:
        return str(self.header["expect"]["detector"])

    @property
    def findings(self) -> list[dict[str, Any]]:
        """The expected findings."""
        return list(self.header["expect"]["findings"])

    @property
    def status(self) -> list[dict[str, Any]]:
        """The expected ``revocation_status`` rows (revocation cases)."""
        return list(self.header["expect"].get("status", []))

    @property
    def start(self) -> datetime:
        text = self.header.get("start")
        return _time(text) if text else DEFAULT_START

    @property
    def config(self) -> Config:
        """The default configuration with the header's ``config`` overrides."""
        overrides = self.header.get("config")
        return load_config(os.devnull, env={}, overrides=overrides) if overrides else Config()

    @property
    def since(self) -> datetime | None:
        window = self.header.get("window")
        return self.start + timedelta(days=window["since_day"]) if window else None

    @property
    def until(self) -> datetime | None:
        window = self.header.get("window")
        return self.start + timedelta(days=window["until_day"]) if window else None

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The rows of every table the case writes (see the module docstring)."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line, spec in self.events:
            table = spec.get("table", "k8s_audit")
            event = {k: v for k, v in spec.items() if k != "table"}
            event.setdefault("origin", f"file:{self.path.name}:{line}")
            tcol = PARTITION_TIME[table]
            if tcol in event:
                unexpected = [k for k in _PLACEMENT if k in event]
                assert not unexpected, f"{self.path.name}:{line}: {unexpected} need a relative time (no {tcol})"
                placed = [(_time(event.pop(tcol)), event)]
            else:
                placed = _placed(event, self.start)
            for ts, ev in placed:
                out[table].append(_audit_row(ts, ev) if table == "k8s_audit" else {tcol: ts, **_typed(table, ev)})
        return dict(out)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _typed(table: str, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with its RFC 3339 strings in time columns parsed."""
    schema = TABLES[table]
    return {k: _time(v) if isinstance(v, str) and pa.types.is_timestamp(schema.field(k).type) else v
            for k, v in event.items()}


def _audit_row(ts: datetime, event: dict[str, Any]) -> dict[str, Any]:
    """A k8s_audit row: a workload request, or the row as logged with the stage defaults."""
    if "actor" in event and "user_name" not in event:
        return row(ts, **_typed("k8s_audit", event))
    r = {"audit_id": f"a-{next(_audit_ids)}", "stage": "ResponseComplete", "request_received_at": ts,
         "stage_at": ts, **_typed("k8s_audit", event)}
    r.setdefault("actor", r.get("impersonated_user") or r.get("user_name"))
    return r


def case_files(family: str) -> list[Path]:
    """The case files of ``family`` (``impersonation``, ``revocation``, ``reach``, ``credentials``), sorted."""
    return sorted((CASES / family).glob("*/*.jsonl"))


def load_case(path: Path) -> Case:
    """Parse the case file at ``path`` (raises on malformed JSON or a missing header)."""
    lines = [text for text in path.read_text().splitlines() if text.strip() and not text.lstrip().startswith("//")]
    header: dict[str, Any] = json.loads(lines[0])
    assert "expect" in header, f"{path}: the first line must be the header with 'expect'"
    return Case(path, header, tuple((n, json.loads(text)) for n, text in enumerate(lines[1:], start=2)))


def write_case(case: Case, lake: Path) -> None:
    """Write the case's rows into ``lake`` (one file per table and day, keyed by the case name)."""
    for table, rows in case.rows().items():
        write_rows(rows, lake, f"case-{case.name}", table)


# --- running and checking --------------------------------------------------------------------

def detect(lake: Path, detector: str, config: Config, since: datetime | None = None,
           until: datetime | None = None) -> list[Finding]:
    """Run one registered detector over ``lake`` on a fresh ``open_lake`` connection."""
    con = open_lake(lake, must_exist=False)
    try:
        return registry.get(detector).run(DetectContext(con=con, config=config, since=since, until=until,
                                                        lake=str(lake)))
    finally:
        con.close()


def run_case(case: Case, lake: Path) -> list[Finding]:
    """Write ``case`` into ``lake`` and run its detector over its window."""
    write_case(case, lake)
    return detect(lake, case.detector, case.config, case.since, case.until)


def _meets(f: Finding, exp: dict[str, Any]) -> bool:
    if f.actor != exp["actor"]:
        return False
    if "severity" in exp and str(f.severity) != exp["severity"]:
        return False
    if "cluster" in exp and f.cluster != exp["cluster"]:
        return False
    if "credential_id" in exp and f.credential_id != exp["credential_id"]:
        return False
    if "evidence" in exp and not set(exp["evidence"]) <= set(f.evidence):
        return False
    if "evidence_count" in exp and len(f.evidence) != exp["evidence_count"]:
        return False
    if any(str(f.context.get(k)) != str(v) for k, v in exp.get("context", {}).items()):
        return False
    named = [x["feature"] for x in f.context.get("features", [])]
    if any(feat not in named for feat in exp.get("features", [])):
        return False
    return "text" not in exp or exp["text"] in f.summary


def check_findings(findings: list[Finding], expected: list[dict[str, Any]]) -> None:
    """``findings`` are exactly ``expected``: as many, each expectation met by its own finding; every
    finding has a summary, ``first_seen <= last_seen`` and its own ``finding_id``."""
    got = [(f.actor, str(f.severity), f.cluster, f.credential_id, len(f.evidence), f.summary[:100])
           for f in findings]
    assert len(findings) == len(expected), f"expected {expected}, got {got}"
    free = list(findings)
    for exp in expected:
        match = next((f for f in free if _meets(f, exp)), None)
        assert match is not None, f"no finding meets {exp}; got {got}"
        free.remove(match)
    for f in findings:
        assert f.summary and f.first_seen is not None and f.last_seen is not None, f
        assert f.first_seen <= f.last_seen, f
    assert len({f.finding_id for f in findings}) == len(findings), "finding ids must be unique"

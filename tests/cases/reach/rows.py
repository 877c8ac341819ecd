"""Row builders for the reach/credential case files (k8s_audit rows written through LakeSink).

A case file (JSON) lists *event specs*; each spec is a partial k8s_audit row plus optional
``repeat`` (copies), ``days`` (list of day offsets from the case's ``start``), ``hours`` (hour of
day), ``namespaces`` (one copy per namespace) and ``minute``/``second`` offsets. Identity columns
are derived from ``actor`` (system:serviceaccount:NS:NAME, system:node:NAME, emails = humans).
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from ztaudit.core.schema import K8S_AUDIT
from ztaudit.core.sink import LakeSink

_counter = itertools.count()


def identity(actor: str) -> dict[str, Any]:
    """Identity columns for an effective actor name."""
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
        namespace: str | None = "default", **kw: Any) -> dict[str, Any]:
    """One ResponseComplete k8s_audit row."""
    r: dict[str, Any] = {
        "audit_id": f"a-{next(_counter)}", "cluster": "c1", "stage": "ResponseComplete", "level": "Metadata",
        "request_received_at": ts, "stage_at": ts, "verb": verb, "resource": resource,
        "namespace": namespace, "api_group": "", "response_code": 200, "decision": "allow",
        "source_ip": "10.0.0.5", "user_agent": "client/1.0", "credential_kind": "none",
        **identity(actor),
    }
    r.update(kw)
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
    """All rows of one event spec (see module docstring)."""
    spec = dict(spec)
    days = spec.pop("days", [0])
    hours = spec.pop("hours", [10])
    repeat = int(spec.pop("repeat", 1))
    namespaces = spec.pop("namespaces", None)
    minute = int(spec.pop("minute", 0))
    second = int(spec.pop("second", 0))
    if isinstance(days, dict):
        days = list(range(days["from"], days["to"]))
    out = []
    for d in days:
        for h in hours:
            ts0 = start + timedelta(days=d, hours=h, minutes=minute, seconds=second)
            for ns in (namespaces if namespaces is not None else [spec.get("namespace", "default")]):
                for i in range(repeat):
                    s = dict(spec)
                    s["namespace"] = ns
                    out.append(row(ts0 + timedelta(seconds=i), **s))
    return out


def case_window(case: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The detect window of a case: ``window.since_day``/``until_day`` offsets, else everything."""
    start = datetime.fromisoformat(case.get("start", "2026-03-02T00:00:00+00:00")).astimezone(UTC)
    w = case.get("window")
    if not w:
        return None, None
    return start + timedelta(days=w["since_day"]), start + timedelta(days=w["until_day"])


def case_config(case: dict[str, Any]) -> Any:
    """Default config with the case's ``config`` overrides ({section: {key: value}})."""
    from ztaudit.core.config import load_config

    return load_config(None, env={}, overrides=case.get("config"))


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    case["name"] = path.stem
    return case


def write_case(case: dict[str, Any], lake: Path) -> list[dict[str, Any]]:
    """Write a case's events to ``lake``; returns the rows."""
    start = datetime.fromisoformat(case.get("start", "2026-03-02T00:00:00+00:00")).astimezone(UTC)
    rows = [r for spec in case["events"] for r in expand(spec, start)]
    write_rows(rows, lake)
    return rows


def write_rows(rows: list[dict[str, Any]], lake: Path, key: str = "case") -> None:
    LakeSink(lake).write("k8s_audit", pa.Table.from_pylist(rows, schema=K8S_AUDIT), key)

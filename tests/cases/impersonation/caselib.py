"""Load a detector case file (JSON lines) into a fresh lake and run detectors on it.

A case file is ``tests/cases/<family>/<detector>/<pos|neg>_<name>.jsonl``. The first line is the
expectation::

    {"expect": {"detector": "impersonation.unobserved", "findings": [{"actor": "carol@example.com"}]},
     "config": {"impersonation": {"break_glass": ["breakglass-admin"]}}}

Every other line is one normalized row: ``{"table": "k8s_audit", "audit_id": ..., ...}`` with times
in RFC 3339. Rows are written through ``LakeSink`` (``conform`` fills the other columns with
nulls), i.e. the lake exactly as ingest would leave it, minus the parsing, which the ingest tests
cover. ``findings: []`` means the detector must stay silent.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from ztaudit.core.config import Config, load_config
from ztaudit.core.schema import TABLES
from ztaudit.core.sink import LakeSink

HERE = Path(__file__).resolve().parent.parent  # tests/cases


def case_files(family: str) -> list[Path]:
    return sorted((HERE / family).glob("*/*.jsonl"))


def _value(table: str, key: str, value: Any) -> Any:
    t = TABLES[table].field(key).type
    if pa.types.is_timestamp(t) and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def load_case(path: Path, lake: Path) -> tuple[dict[str, Any], Config]:
    """Write the case's rows into ``lake``; return (expectation, config)."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip() and not x.startswith("//")]
    head, rows = lines[0], lines[1:]
    by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, row in enumerate(rows):
        table = row.pop("table")
        row.setdefault("origin", f"file:{path.name}:{i + 2}")
        if table == "k8s_audit":
            row.setdefault("stage", "ResponseComplete")
            row.setdefault("stage_at", row.get("request_received_at"))
            row.setdefault("actor", row.get("impersonated_user") or row.get("user_name"))
        by_table[table].append({k: _value(table, k, v) for k, v in row.items()})
    sink = LakeSink(lake)
    for table, trows in by_table.items():
        # from_pylist infers columns from the first row only: give it every column any row has
        keys = {k for r in trows for k in r}
        schema = pa.schema([f for f in TABLES[table] if f.name in keys])
        sink.write(table, pa.Table.from_pylist(trows, schema=schema), f"case-{path.stem}")
    overrides = head.get("config") or {}
    cfg = load_config(os.devnull, env={}, overrides=overrides) if overrides else Config()
    return head["expect"], cfg

"""Property tests: process() never raises, and every record ends as conforming rows or a named reject.

Each property runs through both paths of ``process()``: the columnar fast path that production
batches take (threshold 0: every batch that can take it does) and the per-record path (threshold
above any batch size), so one rule holds for both.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztaudit.core.quarantine import Reason
from ztaudit.core.schema import TABLES
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch

CTX = NormalizeContext(cluster="prop", ingested_at=datetime(2026, 1, 1, tzinfo=UTC))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                            max_size=5), max_leaves=20)

BASE: dict[str, Any] = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "p-1",
    "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/a/pods?token=x", "verb": "list",
    "user": {"username": "system:serviceaccount:a:b", "uid": "u", "groups": ["g"],
             "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]}},
    "impersonatedUser": {"username": "bob", "groups": ["dev"]},
    "sourceIPs": ["10.0.0.1", "10.0.0.2"], "userAgent": "ua",
    "objectRef": {"resource": "pods", "namespace": "a", "apiVersion": "v1"},
    "responseStatus": {"code": 200}, "requestReceivedTimestamp": "2026-01-01T00:00:00.000001Z",
    "stageTimestamp": "2026-01-01T00:00:00.000002Z",
    "annotations": {"authorization.k8s.io/decision": "allow"},
}
PATHS = [("kind",), ("auditID",), ("user",), ("user", "username"), ("user", "extra"), ("user", "groups"),
         ("impersonatedUser",), ("sourceIPs",), ("objectRef",), ("objectRef", "resource"), ("responseStatus", "code"),
         ("requestReceivedTimestamp",), ("stageTimestamp",), ("annotations",), ("verb",), ("level",)]


def _set(ev: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    cur: Any = ev
    for k in path[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[path[-1]] = value


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    ev = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from(PATHS))
        if draw(st.booleans()):
            _set(ev, path, draw(json_values))
        else:
            parent: Any = ev
            for k in path[:-1]:
                parent = parent.get(k, {}) if isinstance(parent, dict) else {}
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
    wrap = draw(st.sampled_from(["raw", "list", "eventlist", "aks", "eks", "eks_sub", "gke"]))
    value: Any = ev
    if wrap == "list":
        value = [ev, draw(json_values)]
    elif wrap == "eventlist":
        value = {"kind": "EventList", "items": [ev, draw(json_values)]}
    elif wrap == "aks":
        value = {"category": "kube-audit", "properties": {"log": json.dumps(ev) if draw(st.booleans()) else ev},
                 "resourceId": draw(st.text(max_size=40))}
    elif wrap == "eks":
        value = {"message": json.dumps(ev)}
    elif wrap == "eks_sub":
        value = {"logGroup": draw(st.text(max_size=30)), "logEvents": [{"message": json.dumps(ev)},
                                                                        {"message": draw(json_values)}]}
    elif wrap == "gke":
        value = {"insertId": draw(json_values), "protoPayload": {"serviceName": "k8s.io",
                                                                 "methodName": draw(json_values),
                                                                 "resourceName": draw(json_values),
                                                                 "status": draw(json_values),
                                                                 "authenticationInfo": draw(json_values)},
                 "resource": draw(json_values), "labels": draw(json_values), "timestamp": draw(json_values)}
    raw = json.dumps(value).encode()
    cut = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if cut == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw


#: fast-path thresholds: 0 = the columnar fast path whenever possible; 10**9 = the per-record path only.
PATHS_OF_PROCESS = pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])


def _check(records: list[bytes], fast_min: int, max_record_bytes: int = 1 << 20) -> None:
    res = process(RawBatch(records, LineOrigins("prop")), CTX, max_record_bytes=max_record_bytes,
                  fast_path_min_records=fast_min)
    # The conservation law (issue 11 item 11): every entry is written, quarantined or ignored.
    assert res.records == len(records)
    assert res.balanced(), (res.records, res.expanded, res.written, res.quarantined, dict(res.ignored))
    covered: set[str] = set()
    for kind, table in res.tables.items():
        assert table.schema == TABLES[kind], kind
        covered |= set(table.column("origin").to_pylist())
        if kind == "k8s_audit":
            assert all(table.column("audit_id").to_pylist())
            assert table.column("request_received_at").null_count + table.column("stage_at").null_count < \
                2 * table.num_rows or table.num_rows == 0
    for r in res.rejected:
        assert isinstance(r.reason, Reason) and r.origin.startswith("file:prop:")
        covered.add(r.origin)
    for i, raw in enumerate(records):
        origin = f"file:prop:{i + 1}"
        if origin in covered:
            continue
        # Only a record with nothing in it, or a valid foreign record, produces neither rows nor
        # a reject: it is counted ignored (the balance above holds it to that).
        assert res.ignored, raw


@PATHS_OF_PROCESS
@SETTINGS
@given(st.lists(json_values, min_size=1, max_size=5))
def test_arbitrary_json_values(fast_min: int, values: list[Any]) -> None:
    _check([json.dumps(v).encode() for v in values], fast_min)


@PATHS_OF_PROCESS
@SETTINGS
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_arbitrary_bytes(fast_min: int, records: list[bytes]) -> None:
    _check(records, fast_min, max_record_bytes=150)


@PATHS_OF_PROCESS
@SETTINGS
@given(st.lists(mutated_events(), min_size=1, max_size=6))
def test_mutated_real_events(fast_min: int, records: list[bytes]) -> None:
    _check(records, fast_min)


@PATHS_OF_PROCESS
@SETTINGS
@given(st.lists(mutated_events(), min_size=1, max_size=3), st.lists(json_values, max_size=3))
def test_mixed_batches_keep_good_rows(fast_min: int, records: list[bytes], noise: list[Any]) -> None:
    good = orjson.dumps(BASE)
    batch = [good, *records, *[json.dumps(v).encode() for v in noise], good]
    res = process(RawBatch(batch, LineOrigins("prop")), CTX, fast_path_min_records=fast_min)
    origins = set(res.tables["k8s_audit"].column("origin").to_pylist())
    assert {"file:prop:1", f"file:prop:{len(batch)}"} <= origins

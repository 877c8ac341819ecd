"""Issue 11 item 11: the conservation law, ``records + expanded = written + quarantined + ignored``.

Property tests feed random mixes of valid, invalid and ignored records (plain and in envelopes)
through both paths of ``process()``; an ingest run over generated files must print the same law
per input and in total; the consumer's metrics carry it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztaudit.pipeline.consume.progress import Metrics
from ztaudit.pipeline.consume.writer import Written
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch

CTX = NormalizeContext(cluster="c", ingested_at=datetime(2026, 1, 2, tzinfo=UTC))


def event(i: int, **kw: Any) -> dict[str, Any]:
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"a-{i}",
            "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list",
            "user": {"username": "alice"}, "responseStatus": {"code": 200},
            "requestReceivedTimestamp": "2026-01-01T10:00:00Z", "stageTimestamp": "2026-01-01T10:00:00Z", **kw}


# (kind of outcome, how many entries it writes, bytes)
VALID = [
    ("written", 1, json.dumps(event(1)).encode()),
    ("written", 1, json.dumps({"service": "authorize", "message": "authorize check", "allow": True,
                               "time": "2026-01-01T10:00:00Z", "path": "/x"}).encode()),
    ("written", 1, b'10.0.0.1:5 - rid - bob [2026/01/01 10:00:00] h GET up "/p" HTTP/1.1 "ua" 200 1 0.1'),
    ("written", 2, json.dumps({"kind": "EventList", "items": [event(2), event(3)]}).encode()),
    ("written", 1, json.dumps({"kind": "revocation", "revoked_at": "2026-01-01T00:00:00Z", "subject": "x"}).encode()),
]
INVALID = [
    b"{not json", b'{"kind":"Event","auditID":', b"\xff\xfe", json.dumps(event(4, user="alice")).encode(),
    json.dumps(event(5, stageTimestamp="0000-01-01T00:00:00Z")).encode(), b'{"hello": "world"}',
    json.dumps({"kind": "revocation", "revoked_at": "2026-01-01T00:00:00Z"}).encode(),
]
IGNORED = [
    json.dumps({"event": "session.start", "code": "T2000I", "time": "2026-01-01T00:00:00Z", "uid": "u"}).encode(),
    json.dumps({"logName": "projects/p/logs/x", "textPayload": "hello", "insertId": "1"}).encode(),
    b"2026-01-01 10:00:00,123 INFO  [org.keycloak.services] (main) started",
    b"[]",
]

records_st = st.lists(
    st.one_of(st.sampled_from(VALID).map(lambda v: v[2]), st.sampled_from(INVALID), st.sampled_from(IGNORED),
              st.binary(max_size=40)),
    min_size=1, max_size=25)


def _accounted(records: list[bytes], fast_min: int) -> tuple[int, int, int, int, int, int]:
    res = process(RawBatch(records, LineOrigins("p")), CTX, fast_path_min_records=fast_min)
    assert res.records == len(records)
    assert res.balanced(), (res.records, res.expanded, res.written, res.quarantined, res.ignored)
    # every event table holds one row per written entry
    assert res.rows == res.written
    return res.records, res.expanded, res.written, res.quarantined, res.ignored_total, res.rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_st)
def test_conservation_holds_on_both_paths_and_they_agree(records: list[bytes]) -> None:
    fast = _accounted(records, 0)
    per_record = _accounted(records, 10**9)
    assert fast == per_record


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(VALID + [("q", 0, b) for b in INVALID] + [("i", 0, b) for b in IGNORED]),
                min_size=1, max_size=15))
def test_known_mix_lands_where_expected(mix: list[tuple[str, int, bytes]]) -> None:
    records = [m[2] for m in mix]
    for fast_min in (0, 10**9):
        res = process(RawBatch(records, LineOrigins("p")), CTX, fast_path_min_records=fast_min)
        assert res.written == sum(m[1] for m in mix if m[0] == "written")
        assert res.quarantined == sum(1 for m in mix if m[0] == "q")
        assert res.ignored_total == sum(1 for m in mix if m[0] == "i")
        assert res.balanced()


def test_ingest_summary_accounts_per_input_and_total(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"\n".join([VALID[0][2], b"", INVALID[0], IGNORED[0], VALID[3][2], b"   "]) + b"\n")
    b = tmp_path / "b.log"
    b.write_bytes(b"\n".join([VALID[2][2], IGNORED[2], b"garbage line"]) + b"\n")
    stats = ingest_paths([a, b], tmp_path / "lake", cluster="c")
    assert stats.records == 7  # blank and whitespace-only lines are not records
    assert stats.total.balanced() and all(t.balanced() for t in stats.per_input.values())
    ta, tb = stats.per_input[str(a)], stats.per_input[str(b)]
    assert (ta.records, ta.expanded, ta.written, ta.quarantined, ta.ignored) == (4, 1, 3, 1, 1)
    assert (tb.records, tb.expanded, tb.written, tb.quarantined, tb.ignored) == (3, 0, 1, 1, 1)
    assert dict(stats.ignored) == {"proxy_decision/unused_event_type": 1, "idp_event/not_an_event": 1}
    summary = stats.summary()
    assert "accounted: 7 records (+1 in envelopes) = 4 written + 2 quarantined + 2 ignored" in summary
    assert f"{a}: 4 records (+1 in envelopes) = 3 written + 1 quarantined + 1 ignored" in summary
    assert "UNBALANCED" not in summary


def test_consumer_metrics_carry_the_law() -> None:
    m = Metrics()
    m.add(Written([], None, rows=3, quarantined=1, compacted_rows_skipped=0, records=4, expanded=1, written=3,
                  ignored={"k8s_audit/not_kubernetes": 1}))
    m.add(Written([], None, rows=0, quarantined=0, compacted_rows_skipped=0, records=2, expanded=0, written=0,
                  ignored={"k8s_audit/not_kubernetes": 2}))
    d = m.as_dict()
    assert (d["records"], d["expanded"], d["written"], d["quarantined"], d["ignored_total"]) == (6, 1, 3, 1, 3)
    assert d["ignored"] == {"k8s_audit/not_kubernetes": 3} and d["balanced"] is True
    m.add(Written([], None, rows=0, quarantined=0, compacted_rows_skipped=0, records=1))
    assert m.balanced is False


@pytest.mark.parametrize("fast_min", [0, 10**9])
def test_chunk_writer_reports_the_terms(fast_min: int) -> None:
    res = process(RawBatch([VALID[3][2], IGNORED[3], INVALID[0]], LineOrigins("p")), CTX,
                  fast_path_min_records=fast_min)
    assert (res.records, res.expanded, res.written, res.quarantined, res.ignored_total) == (3, 1, 2, 1, 1)


@pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])
def test_a_one_line_array_with_a_broken_element_keeps_its_good_elements(fast_min: int) -> None:
    """``[E1, <broken>, E2]`` on one line was one quarantined record (E1 and E2 lost) while the same
    array pretty-printed gave two rows: one rule for both layouts, and the law holds."""
    good = [json.dumps(event(i)) for i in (1, 2)]
    line = f"[{good[0]}, {{\"kind\":\"Event\", x}}, {good[1]}]".encode()
    tail = f"[{good[0]}] garbage {{".encode()  # a good element, then bytes that are no element
    res = process(RawBatch([line, tail], LineOrigins("x")), CTX, fast_path_min_records=fast_min)
    assert res.tables["k8s_audit"].num_rows == 3
    assert sorted(str(r.reason) for r in res.rejected) == ["invalid_json"] * 3
    assert all(r.origin in ("file:x:1", "file:x:2") for r in res.rejected)
    assert res.records == 2 and res.balanced()

"""Issue 11, items 12, 14, 15, 16: the redaction policy (docs/redaction.md), applied by one
central step, in linear time.

Each test names the item it proves; inputs are generated here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.core.schema import TABLES
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch
from ztaudit.pipeline.redact import (
    COLUMN_POLICY,
    MASK,
    Rule,
    mask_text,
    mask_texts,
    redact_rejects,
    redact_table,
    scrub_raw,
)

S = "S3CR3T-VALUE"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYXJrIn0.c2lnbmF0dXJl"
CTX = NormalizeContext(cluster="c1", ingested_at=datetime(2026, 1, 1, tzinfo=UTC))


# --- item 15: the text rules ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    f"/x?%74oken={S}&a=1",                        # percent-encoded parameter name
    f"/x?bearer={S}",
    f"/api/v1/namespaces/n/pods/p/exec?command=mysql&command=-p{S}&container=c",
    f"/api/v1/namespaces/n/pods/p/exec?command=-p{S}",
    f"kubectl/v1.31 (linux) token={S}",            # a user agent
    f"my-client/1.0 {JWT}",
    f"Authorization: Bearer {S}",
    f"authorization: Basic {S}",
    f"cookie: a=1; _pomerium={S}",
    f"oauth2: cannot fetch token: refresh_token={S} is invalid",
    f"refresh_token: {S}",
    f'{{"client_secret":"{S}"}}',
    f"/cb?redirect=https%3A%2F%2Fh%2Fcb%3Fcode%3D{S}",
    f"postgres://u:{S}@db:5432/x",
    f"/x?X-Amz-Signature={S}&X-Goog-Credential={S}&apiKey={S}&sessionToken={S}&pwd={S}",
    # found by the hostile review of the first version
    f"/x?a[token]={S}&auth[token]={S}",             # bracketed parameter names
    f"/oauth2/start?rd=%2Fx%253Ftoken%253D{S}",    # a query encoded twice inside a redirect
    f"client Authorization:{S}",                   # header forms without a blank
    f"Cookie:_pomerium={S}",
])
def test_text_rules_mask_every_listed_form(text: str) -> None:
    """Item 15: percent-encoded names, ``bearer=``, exec arguments, tokens and JWTs in user agents,
    headers and error texts are masked; the old name-only rule left each of these."""
    out = mask_text(text)
    assert out is not None and S not in out and JWT not in out and MASK in out


@pytest.mark.parametrize("text", [
    "/api/v1/namespaces/kube-system/pods?watch=true&resourceVersion=123&timeoutSeconds=300",
    "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=500",
    "system:serviceaccount:auth:token-cleaner",
    'RBAC: allowed by ClusterRoleBinding "system:auth-delegator" of ClusterRole "system:auth-delegator"',
    "kubectl/v1.31.2 (darwin/arm64) kubernetes/5864a46",
])
def test_text_rules_keep_ordinary_values(text: str) -> None:
    assert mask_text(text) == text


@given(prefix=st.text(max_size=30), name=st.sampled_from(["token", "access_token", "%74oken", "bearer",
                                                           "client_secret", "X-Api-Key", "command"]),
       secret=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789_-.", min_size=4, max_size=40),
       sep=st.sampled_from(["?", "&", ";", " ", "\n"]), suffix=st.text(max_size=30))
@settings(max_examples=150, deadline=None)
def test_property_a_credential_parameter_never_survives(prefix: str, name: str, secret: str, sep: str,
                                                        suffix: str) -> None:
    """Item 15: whatever surrounds ``NAME=secret``, the secret is gone; masking is idempotent."""
    text = f"{prefix}{sep}{name}={secret}&{suffix}"
    out = mask_text(text)
    assert out is not None
    assert f"{name}={secret}" not in out
    assert mask_text(out) == out


@given(st.lists(st.one_of(st.none(), st.text(max_size=20),
                          st.sampled_from(["token=", "x?token=1", "eyJ", "eyJabcdefghijk", "Bearer ",
                                           "code", "=", "%3D", "command=ls", "a:b"])), max_size=12))
@settings(max_examples=150, deadline=None)
def test_property_column_path_equals_value_path(values: list[str | None]) -> None:
    """The central step's column path (whole-buffer prefilter, then matching rows) gives exactly
    what the single-value path gives: the prefilter never skips a value that needs masking, even
    when values meet across their boundaries in the buffer."""
    table = pa.table({"user_agent": pa.array(values, pa.string())})
    got = redact_table("proxy_decision", table).column("user_agent").to_pylist()
    assert got == [mask_text(v) for v in values]


# --- item 14: webhook patch annotations ----------------------------------------------------------

def _event(i: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request", "auditID": f"a-{i}",
        "stage": "ResponseComplete", "verb": "create", "user": {"username": "alice@example.com"},
        "requestURI": "/api/v1/namespaces/prod/secrets", "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "secrets", "namespace": "prod", "name": "db", "apiVersion": "v1"},
        "responseStatus": {"code": 201}, "userAgent": "kubectl/v1.31",
        "requestReceivedTimestamp": "2026-01-01T10:00:00.000001Z", "stageTimestamp": "2026-01-01T10:00:00.000002Z",
    }
    ev.update(over)
    return ev


@pytest.mark.parametrize("n_events", [1, 100])  # per-record path and columnar fast path
def test_webhook_patch_annotation_loses_its_values(n_events: int) -> None:
    """Item 14: a mutating webhook's patch annotation keeps who changed what where, not the values."""
    patch = {"configuration": "inject.example.com", "webhook": "secret-mutator.example.com", "patchType": "JSONPatch",
             "patch": [{"op": "add", "path": "/data/db-pass", "value": S},
                       {"op": "replace", "path": "/stringData/x", "value": {"nested": S}}]}
    ann = {"patch.webhook.admission.k8s.io/round_0_index_0": orjson.dumps(patch).decode(),
           "mutation.webhook.admission.k8s.io/round_0_index_0": '{"configuration":"inject.example.com",'
                                                               '"webhook":"secret-mutator.example.com","mutated":true}',
           "authorization.k8s.io/decision": "allow"}
    lines = [orjson.dumps(_event(i, annotations=ann)) for i in range(n_events)]
    res = process(RawBatch(lines, LineOrigins("f")), CTX)
    rows = res.tables["k8s_audit"].to_pylist()
    assert len(rows) == n_events and not res.rejected
    got = dict(rows[0]["annotations"])
    assert S not in repr(got)
    kept = orjson.loads(got["patch.webhook.admission.k8s.io/round_0_index_0"])
    assert kept == {"configuration": "inject.example.com", "webhook": "secret-mutator.example.com",
                    "patchType": "JSONPatch", "patch": [{"op": "add", "path": "/data/db-pass"},
                                                        {"op": "replace", "path": "/stringData/x"}]}
    mutation = "mutation.webhook.admission.k8s.io/round_0_index_0"
    assert got[mutation] == ann[mutation]
    assert got["authorization.k8s.io/decision"] == "allow"


@pytest.mark.parametrize("n_events", [1, 100])
def test_user_agents_and_uris_are_masked_in_the_tables(n_events: int) -> None:
    """Item 15: tokens and JWTs in user agents and exec URIs never reach ``k8s_audit`` (either
    path), nor ``proxy_decision`` (so neither the derived ``credentials.user_agents``)."""
    evs = [_event(i, userAgent=f"curl/8 token={S} {JWT}",
                  requestURI=f"/api/v1/namespaces/p/pods/x/exec?command=sh&command=-p{S}&%74oken={S}")
           for i in range(n_events)]
    pom = {"level": "info", "service": "authorize", "message": "authorize check", "time": "2026-01-01T10:00:00Z",
           "allow": True, "path": "/api/v1/pods", "query": f"a=b&bearer={S}", "user-agent": f"x {JWT}",
           "headers": {"authorization": f"Bearer {S}"}}
    res = process(RawBatch([orjson.dumps(e) for e in evs] + [orjson.dumps(pom)], LineOrigins("f")), CTX)
    assert not res.rejected, res.rejected
    assert S not in repr(res.tables["k8s_audit"].to_pylist()) and JWT not in repr(res.tables["k8s_audit"].to_pylist())
    assert S not in repr(res.tables["proxy_decision"].to_pylist())
    assert JWT not in repr(res.tables["proxy_decision"].to_pylist())


# --- item 12: quarantine ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    orjson.dumps(_event(1, requestURI=f"/x?access_token={S}&token={S}&client_secret={S}",
                        requestReceivedTimestamp="bad")),
    orjson.dumps({"service": "authorize", "message": "authorize check", "allow": True,
                  "headers": {"authorization": f"Bearer {S}", "x-other": f"Basic {S}", "cookie": f"_pomerium={S}"}}),
    orjson.dumps({"eventType": "user.session.start", "debugData": {"client_secret": S, "refresh_token": S}}),
    orjson.dumps({"operationType": "CREATE", "representation": orjson.dumps(
        {"username": "u", "credentials": [{"type": "password", "value": S}]}).decode()}),
    orjson.dumps({"error": f"invalid_grant: refresh_token={S} expired"}),
])
def test_quarantine_scrub_removes_every_listed_secret(raw: bytes) -> None:
    """Item 12: these survived the old scrub (key list + JWT only) in ``quarantine.raw``."""
    for parse in (True, False):  # parsed, and as bytes that do not parse (the cut-and-mask path)
        assert S.encode() not in scrub_raw(raw, parse=parse), parse
        assert S.encode() not in scrub_raw(raw[:-1], parse=parse)  # truncated: never parses


def test_quarantine_scrub_keeps_empty_values_under_credential_names() -> None:
    """An empty ``session_id`` in a revocation row stays empty: ``***`` would claim a session id
    was there. A non-empty one is still masked."""
    raw = orjson.dumps({"subject": "peggy", "session_id": "", "access_token": None, "sig": False, "api_key": S})
    out = orjson.loads(scrub_raw(raw))
    assert out == {"subject": "peggy", "session_id": "", "access_token": None, "sig": False, "api_key": MASK}


@pytest.mark.parametrize(("raw", "kept", "gone"), [
    # a line of a pretty-printed Secret inside a JSON-lines file: a key, no object around it
    (b'    "db-pass": "c2VjcmV0LXZhbHVl",', [b'"db-pass"'], [b"c2VjcmV0LXZhbHVl"]),
    # a bare array element of a broken document
    (b'      "c2VjcmV0LXZhbHVl"', [], [b"c2VjcmV0LXZhbHVl"]),
    # a truncated audit line: what it was stays readable, the cut-off value does not
    (b'{"kind":"Event","verb":"get","requestURI":"/api/v1/pods","x":{"note":"c2VjcmV0LXZhbHVl","y":"c2Vj',
     [b'"kind":"Event"', b'"verb":"get"', b'"requestURI":"/api/v1/pods"', b'"note"'],
     [b"c2VjcmV0LXZhbHVl", b'"c2Vj']),
    # escaped quotes do not end a string early
    (b'"k": "a\\"c2VjcmV0LXZhbHVl\\" b"', [b'"k"'], [b"c2VjcmV0LXZhbHVl"]),
])
def test_quarantine_bytes_that_do_not_parse_keep_keys_not_values(raw: bytes, kept: list[bytes],
                                                                 gone: list[bytes]) -> None:
    """Item 13, at the depth of the mechanism: bytes that do not parse carry no reliable key for a
    value, so every string that is not a key (or the value of a word that says what the record
    was) is masked, wherever the bytes came from (a broken document's lines, a truncated line)."""
    out = scrub_raw(raw)
    for k in kept:
        assert k in out, out
    for g in gone:
        assert g not in out, out


def test_masking_loose_strings_is_linear_time() -> None:
    """Many escaped quotes and no closing quote, or many tiny strings: each byte is looked at a
    bounded number of times (a backtracking string regex is quadratic on the first input)."""
    from ztaudit.pipeline.redact import mask_loose_strings

    def cost(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            mask_loose_strings(b'"' + b'\\"' * n)
            mask_loose_strings(b'"a":"b",' * (n // 4))
            best = min(best, time.perf_counter() - t0)
        return best

    small, big = cost(1 << 13), cost(1 << 17)  # 16x the input
    assert big < 64 * max(small, 1e-4), (small, big)


def test_a_batch_of_rejects_is_scrubbed_in_a_few_re2_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow compiles the RE2 pattern on every call (~0.3 ms): scrubbing reject by reject made a
    flood of quarantined records that merely contain a trigger word (``system:authenticated``
    holds ``auth``) 20x slower than valid ones. A batch's raws, details and origins take a
    bounded number of calls, however many rejects, parsed or not, nested JSON included."""
    import ztaudit.pipeline.redact as redact

    calls = []
    real = redact.mask_texts

    def counting(values: pa.Array) -> pa.Array:
        calls.append(len(values))
        return real(values)

    monkeypatch.setattr(redact, "mask_texts", counting)
    rejects = []
    for i in range(300):
        ev = _event(i, requestReceivedTimestamp="soon")
        ev["user"]["groups"] = ["system:authenticated"]
        ev["annotations"] = {"note": orjson.dumps({"auth": f"x?token={S}"}).decode()}
        rejects.append(Rejected(f"file:x:{i}", Reason.BAD_TIMESTAMP, "bad time", orjson.dumps(ev), None))
        rejects.append(Rejected(f"file:y:{i}", Reason.INVALID_JSON, "cut", b'{"auth": "x?token=' + S.encode(), None))
    out = redact_rejects(rejects)
    assert len(calls) <= 3, calls
    assert all(S.encode() not in r.raw for r in out)
    assert b"system:authenticated" in out[0].raw  # masked only where a rule matches


def test_quarantine_detail_is_masked_centrally() -> None:
    r = Rejected("file:x:1", Reason.BAD_TIMESTAMP, f"unparseable time: token={S}", b"{}", None, 2)
    out = redact_rejects([r])
    assert S not in out[0].detail and out[0].raw == b"{}"


# --- item 15: one policy for every column -------------------------------------------------------

def _texty(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_map(t))


def test_every_text_column_of_every_table_has_a_rule() -> None:
    missing = [(table, f.name) for table, schema in TABLES.items() for f in schema
               if _texty(f.type) and f.name not in COLUMN_POLICY.get(table, {})]
    assert missing == []
    stale = [(t, c) for t, cols in COLUMN_POLICY.items() for c in cols if c not in TABLES[t].names]
    assert stale == []
    # The columns the issue lists are masked as text.
    for table, col in [("k8s_audit", "request_uri"), ("k8s_audit", "user_agent"), ("proxy_decision", "query"),
                       ("proxy_decision", "user_agent"), ("proxy_decision", "path"), ("quarantine", "detail")]:
        assert COLUMN_POLICY[table][col] is Rule.TEXT


# --- item 16: linear time ------------------------------------------------------------------------

def _hostile(n: int) -> str:
    return "a=b&" + "token" * (n // 5)


def test_masking_is_linear_time() -> None:
    """Item 16: ``"a=b&" + "token" * N`` took 22 s for five 60 KB lines with the backtracking
    pattern (quadratic); here a 1 MiB value must cost about 16x a 64 KiB one, not 256x."""
    def cost(n: int) -> float:
        values = pa.array([_hostile(n)], pa.large_string())
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            mask_texts(values)
            scrub_raw(orjson.dumps({"query": _hostile(n)}))
            best = min(best, time.perf_counter() - t0)
        return best

    small, big = cost(64 * 1024), cost(1024 * 1024)
    assert big < 2.0
    assert big / max(small, 1e-4) < 64, (small, big)  # linear: ~16; quadratic: ~256

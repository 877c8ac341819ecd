"""Corpus conformance for proxy decisions and IdP events.

Every data file under ``corpus/proxy`` (except ``kubernetes-audit/``, which the Kubernetes corpus
test covers) and ``corpus/idp`` goes through :func:`ztaudit.pipeline.process.process` with the
source *not* named, exactly as ``ztaudit ingest`` would detect it. Each record must end where
:data:`EXPECTED` says: as a row of a named table, or in quarantine with a named reason. Every
quarantine entry carries its justification. A corpus file that is not listed fails the test, so
a new sample forces a decision.

Test-harness wrappers are unwrapped here, in the test, never in the product: a SEKOIA test case
``{"input": {"message": "<record>"}, ...}`` is replaced by its ``input.message``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch

CTX = NormalizeContext(cluster="corpus", ingested_at=datetime(2026, 11, 27, tzinfo=UTC))

# file (relative to corpus/) -> expected outcome per record, as a Counter of "table" or "quarantine:<reason>".
EXPECTED: dict[str, tuple[dict[str, int], str]] = {
    "idp/entra-id/update-ststokenvalidfrom.sekoia-test.json": ({"idp_event": 1}, "Entra diagnostic shape"),
    "idp/google-workspace/delete-user.sekoia-test.json": ({"idp_event": 1}, "Admin SDK activity"),
    "idp/google-workspace/suspend-user.sekoia-test.json": ({"idp_event": 1}, "Admin SDK activity"),
    "idp/keycloak/logout.sekoia-test.json": ({"idp_event": 1}, "Keycloak 26 ECS JSON, quoted values"),
    "idp/keycloak/events-legacy-jboss-format.elastic-test.log": (
        {"quarantine:bad_timestamp": 2},
        "the Elastic test lines start with a time of day only (21:01:45,403), no date: an event that cannot be "
        "placed on a day cannot be ordered against requests. A deployment's log format carries the date."),
    "idp/okta/user-account-lock.sekoia-test.json": ({"idp_event": 1}, "System Log object"),
    "idp/okta/user-session-end-start.elastic-test.jsonl": ({"idp_event": 2}, "System Log objects"),
    "proxy/cloudflare-access/access-request.sekoia-test.json": (
        {"quarantine:unknown_shape": 1},
        "Cloudflare Access access_requests is a login decision per application session, not a per-request "
        "decision (docs/proxy-and-idp.md §2.4); it is not one of the proxy_decision formats in docs/design.md."),
    "proxy/oauth2-proxy/request-log.unit-test.log": (
        {"quarantine:bad_timestamp": 3},
        "the unit test writes the placeholder [TIMELESS] where the timestamp goes; the line shape is "
        "recognised (so it is not unknown_shape) but there is no time."),
    "proxy/pomerium/access-log-fields.unit-test.jsonl": (
        {"quarantine:unknown_shape": 14},
        "one object per single field ({\"authority\":\"AUTHORITY\"}): unit-test expectations, not log lines "
        "(no service/message keys)."),
    "proxy/pomerium/authorize-check.unit-test.jsonl": (
        {"quarantine:missing_field": 1},
        "a complete authorize line but without 'time' (the unit-test logger has no timestamp): a decision "
        "that cannot be placed in time cannot be correlated."),
    "proxy/pomerium/authorize-fields.unit-test.jsonl": (
        {"quarantine:unknown_shape": 27},
        "one object per single field: unit-test expectations, not log lines."),
    "proxy/pomerium/docs-examples.jsonl": ({"proxy_decision": 9}, "6 authorize + 3 access examples with time"),
    "proxy/pomerium/kubernetes-upstream-headers.unit-test.json": (
        {"quarantine:unknown_shape": 1},
        "a test fixture rebuilt as one JSON document (route, session, expected headers): not a log record."),
    "proxy/teleport/kube-request.docs-example.json": ({"proxy_decision": 1}, "kube.request"),
    "proxy/teleport/lock-created.panther-test.json": ({"idp_event": 1}, "Teleport lock.created"),
}


def _unwrap_harness(value: Any) -> Any:
    """SEKOIA test cases keep the record as a string in ``input.message``."""
    inp = value.get("input") if isinstance(value, dict) else None
    if isinstance(inp, dict) and isinstance(inp.get("message"), str):
        return inp["message"]
    return None


def read_records(path: Path) -> list[bytes]:
    """Records of one corpus file: JSON lines, else one JSON document, else text lines."""
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        values = [json.loads(ln) for ln in lines]
    except ValueError:
        try:
            values = [json.loads(text)]
            lines = [text]
        except ValueError:
            return [ln.encode() for ln in lines]
    out = []
    for line, value in zip(lines, values, strict=True):
        inner = _unwrap_harness(value)
        out.append(inner.encode() if inner is not None else line.encode())
    return out


def data_files(corpus: Path) -> list[str]:
    files = []
    for top in ("proxy", "idp"):
        for f in sorted((corpus / top).rglob("*")):
            rel = f.relative_to(corpus).as_posix()
            if f.is_file() and f.suffix != ".md" and not rel.startswith("proxy/kubernetes-audit/"):
                files.append(rel)
    return files


def outcomes(corpus: Path, rel: str) -> tuple[Counter[str], dict[str, Any]]:
    records = read_records(corpus / rel)
    result = process(RawBatch(records, LineOrigins(rel)), CTX)
    got: Counter[str] = Counter()
    for name, table in result.tables.items():
        got[name] += table.num_rows
    got.update(f"quarantine:{r.reason}" for r in result.rejected)
    return got, {name: table.to_pylist() for name, table in result.tables.items()}


def test_every_corpus_file_is_listed(corpus: Path) -> None:
    assert sorted(data_files(corpus)) == sorted(EXPECTED)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_corpus_file_outcome(corpus: Path, rel: str) -> None:
    if not (corpus / rel).is_file():
        pytest.fail(f"{rel} is listed but missing from the corpus")
    expected, why = EXPECTED[rel]
    got, _ = outcomes(corpus, rel)
    assert dict(got) == expected, why


# --- field-level checks on the real samples ---------------------------------------------------


def test_pomerium_docs_examples_fields(corpus: Path) -> None:
    _, tables = outcomes(corpus, "proxy/pomerium/docs-examples.jsonl")
    rows = tables["proxy_decision"]
    first = rows[0]
    assert first["decided_at"] == datetime(2023, 8, 7, 13, 48, 3, tzinfo=UTC)  # 09:48:03-04:00
    assert first["email"] == "example@pomerium.com" and first["user_id"] == "google-oauth2|XXXXXXXXXXXXXXXXXXXXX"
    assert first["request_id"] == first["check_request_id"] == "f55d5fd5-2d6c-42d1-a7f6-007ad7ec3a85"
    assert first["is_allowed"] is True and first["allow_reasons"] == ["domain-ok"]
    assert [r["record_type"] for r in rows] == ["authorize"] * 6 + ["access"] * 3
    # the headers example carries the Envoy request id only as a header
    assert rows[2]["check_request_id"] == "d6c95dd6-9f3c-4653-94d1-62ea54b11328"
    access = rows[6]
    assert access["request_id"] == access["check_request_id"] == "6f3ad640-cb15-48b4-b79f-9adb94dd654c"
    assert access["response_code"] == 200 and access["is_allowed"] is True and access["host"] == "verify.pomerium.com"
    # no cookie or id token reaches a column
    assert "_pomerium=" not in repr(rows) and "eyJhbGci" not in repr(rows)


def test_teleport_and_idp_fields(corpus: Path) -> None:
    _, t = outcomes(corpus, "proxy/teleport/kube-request.docs-example.json")
    row = t["proxy_decision"][0]
    assert (row["cluster"], row["user_id"], row["method"], row["client_ip"]) == ("gke_teleport-a", "alex", "GET", "::1")
    _, t = outcomes(corpus, "idp/entra-id/update-ststokenvalidfrom.sekoia-test.json")
    row = t["idp_event"][0]
    assert (row["idp"], row["revocation_scope"], row["subject_login"]) == ("entra", "token", "user1")
    _, t = outcomes(corpus, "idp/google-workspace/suspend-user.sekoia-test.json")
    row = t["idp_event"][0]
    assert (row["subject_login"], row["actor"], row["revocation_scope"]) == (
        "jdoe@example.net", "john.doe@example.net", "identity")
    _, t = outcomes(corpus, "idp/keycloak/logout.sekoia-test.json")
    row = t["idp_event"][0]
    assert (row["event_type"], row["subject_id"], row["revocation_scope"]) == ("LOGOUT", "user-67890", "session")
    _, t = outcomes(corpus, "idp/okta/user-session-end-start.elastic-test.jsonl")
    end, start = t["idp_event"]
    assert (end["event_type"], end["is_revocation"], end["session_id"]) == (
        "user.session.end", False, "102nZHzd6OHSfGG51vsoc22gw")
    assert start["event_type"] == "user.session.start" and start["subject_id"] == "00u1abvz4pYqdM8ms4x6"
    _, t = outcomes(corpus, "proxy/teleport/lock-created.panther-test.json")
    row = t["idp_event"][0]
    assert (row["subject_login"], row["revocation_scope"]) == ("user-to-disable", "identity")


def test_proxy_audit_samples_are_not_claimed_by_proxy_or_idp(corpus: Path) -> None:
    """The two impersonating-proxy audit events are Kubernetes records, never proxy/IdP rows."""
    files = sorted((corpus / "proxy" / "kubernetes-audit").glob("*.json"))
    assert len(files) >= 2, "the corpus's impersonating-proxy audit samples are missing"  # not vacuous
    for f in files:
        records = read_records(f)
        result = process(RawBatch(records, LineOrigins(f.name)), CTX)
        assert set(result.tables) == {"k8s_audit"}, (f.name, result.rejected)


def test_harness_wrapper_is_unwrapped_in_the_test(tmp_path: Path) -> None:
    inner = json.dumps({"kind": "admin#reports#activity", "id": {"time": "2026-11-22T18:02:13.517Z",
                                                                   "applicationName": "admin"},
                        "events": [{"name": "SUSPEND_USER", "parameters": []}]})
    f = tmp_path / "case.json"
    f.write_text(json.dumps({"input": {"message": inner}, "expected": {"message": inner}}, indent=2))
    assert read_records(f) == [inner.encode()]


def test_k8s_corpus_is_never_claimed_by_proxy_or_idp(corpus: Path) -> None:
    """Precision: no Kubernetes audit record in the corpus (any envelope, SIEM copy or garbage)
    is recognised by the proxy_decision or idp_event normalizer, whatever the detection order."""
    from ztaudit.pipeline.normalize.idp_event import IdpEventNormalizer
    from ztaudit.pipeline.normalize.proxy_decision import ProxyDecisionNormalizer
    from ztaudit.pipeline.sources.files import read_chunks
    from ztaudit.pipeline.sources.inputs import InputFile

    normalizers = [ProxyDecisionNormalizer(), IdpEventNormalizer()]
    seen = 0
    for f in sorted((corpus / "k8s-audit").rglob("*")):
        if not f.is_file() or f.suffix == ".md":
            continue
        for chunk in read_chunks(InputFile(f, f.name), 64 * 1024 * 1024, 1024 * 1024):
            for raw in chunk.records:
                seen += 1
                try:
                    value: Any = json.loads(raw)
                except ValueError:
                    text = raw.decode("utf-8", "replace")
                    assert all(n.parse_text(text) is None for n in normalizers), (f.name, text[:80])
                    continue
                for v in value if isinstance(value, list) else [value]:
                    assert all(n.unwrap(v) is None for n in normalizers), (f.name, str(v)[:120])
    assert seen > 0

"""k8s_audit ``proxy_session_id``: tier B correlation from ``user.extra[correlation.session_extra_key]``.

When the API server authenticates the proxy-issued OIDC token itself (AuthenticationConfiguration
``claimMappings.extra`` mapping the token's session claim to an extra key), the audit event's
``user.extra`` carries the proxy session id as a one-element list (``map[string][]string``,
docs/kubernetes-audit.md §2). The key is configuration, so it must reach DuckDB safely quoted or
bound, never as SQL text.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ztaudit.core.config import Config, CorrelationSettings
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import K8S_AUDIT
from ztaudit.pipeline.consume.loop import context_from_config
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.k8s_audit_sql import EVENT_STRUCT, event_struct, mapping_sql
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import LineOrigins, RawBatch

KEY = "pomerium.io/session-id"
CTX = NormalizeContext(cluster="lab", ingested_at=datetime(2026, 3, 3, tzinfo=UTC))
BOTH = pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])


def oidc_event(extra: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """A request authenticated by the API server's JWT authenticator from a proxy-issued token."""
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "5b1f7c3e-9a2d-4e68-b0c4-d6e8f0a2b4c6", "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/pods?limit=500", "verb": "list",
        "user": {"username": "alice@example.com", "groups": ["k8s-admins", "system:authenticated"],
                 "extra": {"authentication.kubernetes.io/credential-id": ["JTI=0d2f4b6a-8c1e-4a35-97b9-d1f3a5c7e9b1"],
                           KEY: ["b5d7f9a1-3c5e-4a70-8b2d-4f6a8c0e2a41"], **(extra or {})}},
        "sourceIPs": ["192.0.2.2", "127.0.0.1"], "userAgent": "kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0",
        "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-03-02T14:06:58.201337Z", "stageTimestamp": "2026-03-02T14:06:58.204911Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed"},
    }
    ev.update(over)
    return ev


def mapped(events: list[dict[str, Any]], key: str, fast_min: int) -> list[str | None]:
    # 70 rows so the fast path really runs (it needs a batch, FAST_PATH_MIN_RECORDS)
    raw = [orjson.dumps(e) for e in events] * 35
    res = process(RawBatch(raw, LineOrigins("audit.log")), replace(CTX, session_extra_key=key),
                  fast_path_min_records=fast_min)
    assert res.rejected == []
    table = res.tables["k8s_audit"]
    assert table.schema == K8S_AUDIT
    return table.column("proxy_session_id").to_pylist()[: len(events)]


def test_column_is_declared_before_the_origin_columns() -> None:
    assert K8S_AUDIT.names[-3:] == ["proxy_session_id", "origin", "ingested_at"]


@BOTH
def test_off_by_default(fast_min: int) -> None:
    assert mapped([oidc_event()], "", fast_min) == [None]


@BOTH
def test_first_value_of_the_configured_key(fast_min: int) -> None:
    events = [oidc_event(), oidc_event(extra={KEY: ["first", "second"]}), oidc_event(extra={KEY: []}),
              oidc_event(extra={KEY: [""]}), oidc_event(extra={KEY: None})]
    missing = oidc_event()
    del missing["user"]["extra"][KEY]
    no_extra = oidc_event()
    del no_extra["user"]["extra"]
    assert mapped([*events, missing, no_extra], KEY, fast_min) == [
        "b5d7f9a1-3c5e-4a70-8b2d-4f6a8c0e2a41", "first", None, None, None, None, None]


@BOTH
def test_other_rows_are_unchanged_by_the_key(fast_min: int) -> None:
    raw = [orjson.dumps(oidc_event())] * 70
    off = process(RawBatch(raw, LineOrigins("a")), CTX, fast_path_min_records=fast_min).tables["k8s_audit"]
    on = process(RawBatch(raw, LineOrigins("a")), replace(CTX, session_extra_key=KEY),
                 fast_path_min_records=fast_min).tables["k8s_audit"]
    assert on.drop_columns(["proxy_session_id", "ingested_at"]).equals(
        off.drop_columns(["proxy_session_id", "ingested_at"]))
    assert on.column("credential_id").to_pylist()[0] == "JTI=0d2f4b6a-8c1e-4a35-97b9-d1f3a5c7e9b1"


@BOTH
def test_never_from_impersonated_user_extra(fast_min: int) -> None:
    # Impersonate-Extra-* headers are chosen by the caller (docs/kubernetes-audit.md §3).
    ev = oidc_event(impersonatedUser={"username": "bob@example.com", "extra": {KEY: ["forged"]}})
    del ev["user"]["extra"][KEY]
    assert mapped([ev], KEY, fast_min) == [None]


@BOTH
@pytest.mark.parametrize("key", [
    "x'); DROP TABLE __ztaudit_src; --",
    'we"ird\\key',
    "example.org/sid}]\"'",
    "unicodé.example/sid",
])
def test_hostile_keys_are_quoted_not_spliced(fast_min: int, key: str) -> None:
    assert mapped([oidc_event(extra={key: ["s-1"]})], key, fast_min) == ["s-1"]
    # the SQL text holds the key only inside the quoted from_json spec
    sql = mapping_sql("t", system_patterns=(), session_extra_key=key)
    assert key not in sql.replace(event_struct(key).replace("'", "''"), "")


def test_a_key_the_struct_already_reads_is_not_added_twice() -> None:
    assert event_struct("") == EVENT_STRUCT
    assert event_struct("authentication.kubernetes.io/pod-name") == EVENT_STRUCT
    assert event_struct("Authentication.Kubernetes.io/Pod-Name") == EVENT_STRUCT  # DuckDB: keys unique by case
    ev = oidc_event(extra={"authentication.kubernetes.io/pod-name": ["web-0"]})
    assert mapped([ev], "authentication.kubernetes.io/pod-name", 0) == ["web-0"]


def test_ingest_and_consume_pass_the_setting(tmp_path: Path) -> None:
    cfg = Config(correlation=CorrelationSettings(session_extra_key=KEY))
    assert context_from_config(cfg, "lab").session_extra_key == KEY
    assert context_from_config(Config(), "lab").session_extra_key == ""
    logs = tmp_path / "audit.log"
    logs.write_bytes(orjson.dumps(oidc_event()) + b"\n")
    for name, config in (("on", cfg), ("off", Config())):
        lake = tmp_path / name
        ingest_paths([logs], lake, cluster="lab", config=config)
        con = open_lake(lake)
        try:
            got = con.execute("SELECT proxy_session_id FROM k8s_audit").fetchall()
        finally:
            con.close()
        assert got == [("b5d7f9a1-3c5e-4a70-8b2d-4f6a8c0e2a41" if name == "on" else None,)]

"""Triage semantics without a lake (core/triage.py): globs in linear time, what an end date means,
explicit decisions over rules, and config rules checked when the config is loaded."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ztaudit.core.config import load_config
from ztaudit.core.errors import ConfigError
from ztaudit.core.triage import Decision, Glob, parse_rules, status_of

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
F = {"finding_id": "f1", "detector": "credential.stale", "actor": "system:serviceaccount:ci:deployer",
     "namespace": "ci", "last_seen": T0}


@pytest.mark.parametrize(("pattern", "text", "ok"), [
    ("system:serviceaccount:ci:*", "system:serviceaccount:ci:deployer", True),
    ("system:serviceaccount:ci:*", "system:serviceaccount:cix:deployer", False),
    ("*@example.com", "bob@example.com", True), ("*@example.com", "bob@example.com.evil", False),
    ("b?b", "bob", True), ("b?b", "bb", False), ("a*b*c", "abc", True), ("a*b*c", "acb", False),
    ("*", "", True), ("credential.*", "credential", False), ("x", "x", True), ("ab*ba", "aba", False),
])
def test_glob(pattern: str, text: str, ok: bool) -> None:
    assert Glob(pattern).match(text) is ok


def test_glob_is_linear_on_hostile_actor_names() -> None:
    text = "a" * 200_000  # a backtracking matcher takes minutes on this
    t = time.perf_counter()
    assert not Glob("*a*a*a*a*a*a*b").match(text)
    assert not Glob("*a?a?a?a*b").match(text)
    assert time.perf_counter() - t < 2.0


def _rules(**rule: object) -> list:  # type: ignore[type-arg]
    return parse_rules([{"detector": "credential.*", "reason": "CI rotation", **rule}])


def test_rule_covers_until_its_expiry_and_a_recurrence_after_it_comes_back() -> None:
    rules = _rules(actor="system:serviceaccount:ci:*", expires="2026-11-21T00:00Z")
    assert status_of(F, None, rules).status == "suppressed"
    assert status_of({**F, "last_seen": T0 + timedelta(days=2)}, None, rules).status == "open"
    assert status_of({**F, "actor": "alice@example.com"}, None, rules).status == "open"
    assert status_of(F, None, _rules(namespace="prod*")).status == "open"


def test_explicit_decisions() -> None:
    sup = Decision("f1", "suppress", "drill", T0 + timedelta(hours=1), "pat", T0)
    assert status_of(F, sup, []).status == "suppressed"
    assert status_of({**F, "last_seen": T0 + timedelta(hours=2)}, sup, []).status == "open"  # recurred
    snooze = Decision("f1", "ack", "on it", T0 + timedelta(days=1), "pat", T0)
    assert status_of(F, snooze, [], now=T0).status == "acked"
    assert status_of(F, snooze, [], now=T0 + timedelta(days=2)).status == "open"  # the snooze ended
    # expire ends the explicit decision; a rule still applies
    expired = Decision("f1", "expire", "over", None, "pat", T0)
    assert status_of(F, expired, []).status == "open"
    assert status_of(F, expired, _rules(actor="*")).by == "config triage.suppress[0]"
    # an ack in force wins over a rule
    assert status_of(F, Decision("f1", "ack", "mine", None, "pat", T0), _rules(actor="*")).status == "acked"


@pytest.mark.parametrize(("toml", "key"), [
    ('detector = "x"\nactor = "*"\n', "triage.suppress[0].reason"),
    ('detector = "x"\nreason = "r"\n', "triage.suppress[0]"),
    ('detector = "x"\nactor = "*"\nreason = "r"\nexpires = "30d"\n', "triage.suppress[0].expires"),
    ('detector = "x"\nactr = "*"\nreason = "r"\n', "triage.suppress[0].actr"),
])
def test_bad_rules_are_config_errors(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "ztaudit.toml"
    path.write_text("[[triage.suppress]]\n" + toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key

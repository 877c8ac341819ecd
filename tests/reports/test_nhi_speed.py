"""report nhi's speed-ups change no result: the one-pass copy of ``k8s_requests``, the single pass for
used and kept uses, the indexed replay, the baseline's uses reused for the period and the YAML made
only for the rows shown give the same JSON as the straightforward way (every query on
``k8s_requests``, two passes, every rule tried for every use, every suggestion rendered)."""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ztaudit.core.config import Config, load_config
from ztaudit.core.lake import open_lake
from ztaudit.detectors.rbac import Rule, RuleIndex, Use, covers
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.reports import rightsize, run_report
from ztaudit.reports.base import ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import render_json

nhi_module = importlib.import_module("ztaudit.reports.nhi")  # the package's ``nhi`` is the function


class _EveryRule(RuleIndex):
    """The replay before the index: every rule tried for every use."""

    def __init__(self, rules: Any) -> None:
        super().__init__(rules)
        self.rules = list(rules)

    def allows(self, use: Use) -> bool:
        return any(covers(r, use) for r in self.rules)


def _straightforward(monkeypatch: pytest.MonkeyPatch) -> None:
    """report nhi as it was: k8s_requests whole (every column, every request), two passes, no index."""
    monkeypatch.setattr(nhi_module, "REQUESTS_SQL",
                        f"CREATE OR REPLACE TEMP TABLE {nhi_module.REQUESTS_TABLE} AS SELECT * FROM k8s_requests "
                        "WHERE $lo IS NOT NULL AND $hi IS NOT NULL")
    monkeypatch.setattr(rightsize, "RuleIndex", _EveryRule)
    monkeypatch.setattr(nhi_module, "uses_and_kept", lambda con, base, exclude, src: (
        rightsize.used_by_identity(con, base, None, "k8s_requests"),
        rightsize.used_by_identity(con, base, exclude, "k8s_requests") if exclude else
        rightsize.used_by_identity(con, base, None, "k8s_requests")))
    monkeypatch.setattr(nhi_module, "_same_requests", lambda ctx, src, base: base == ctx.filters.window)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A generated week (a few thousand events, two clusters, RBAC snapshots), detected."""
    from ztaudit.cli.main import cli

    root = tmp_path_factory.mktemp("nhi-speed")
    out, lake = root / "gen", root / "lake"
    res = CliRunner().invoke(cli, ["generate", "--out", str(out), "--days", "7", "--events", "6000",
                                   "--clusters", "prod,staging", "--seed", "11", "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(out / ".ztaudit" / "ztaudit.toml", env={})
    stats = ingest_paths([out], lake, config=cfg)
    assert stats.rows.get("rbac_snapshot", 0) > 0 and stats.rows.get("k8s_audit", 0) > 3000
    assert not run_detectors(lake, cfg).errors
    return lake, cfg


def _json(lake: Path, cfg: Config, limit: int, filters: Filters) -> Any:
    con = open_lake(lake)
    try:
        result = run_report("nhi", ReportContext(con=con, config=cfg, filters=filters, limit=limit))
        return json.loads(render_json(result, "all"))  # every section, the verdict and the notes
    finally:
        con.close()


def _cases(lake: Path) -> Iterator[tuple[int, Filters]]:
    con = open_lake(lake)
    try:
        last = con.execute("SELECT max(request_received_at) FROM k8s_audit").fetchall()[0][0]
    finally:
        con.close()
    for limit in (3, 100_000):
        yield limit, Filters()
        yield limit, Filters(since=last - timedelta(days=2))


def test_same_json_as_the_straightforward_way(generated: tuple[Path, Config],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lake, cfg = generated
    fast = [_json(lake, cfg, limit, f) for limit, f in _cases(lake)]
    text = json.dumps(fast[2])  # all rows, suggestions included
    assert "system:serviceaccount:" in text and "ztaudit-rightsized-" in text
    with monkeypatch.context() as m:
        _straightforward(m)
        slow = [_json(lake, cfg, limit, f) for limit, f in _cases(lake)]
    for a, b in zip(fast, slow, strict=True):
        assert a == b


def test_a_lake_older_than_the_baseline_still_gets_its_period_uses(generated: tuple[Path, Config],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With 30-day baseline shorter than the lake, the period's ``used`` column must be the period's."""
    lake, cfg = generated
    monkeypatch.setattr(rightsize, "BASELINE", timedelta(days=2))
    fast = _json(lake, cfg, 100_000, Filters())
    _straightforward(monkeypatch)
    assert fast == _json(lake, cfg, 100_000, Filters())


def test_rule_index_allows_exactly_what_covers_allows() -> None:
    values = {"verb": ("get", "*", "impersonate"), "group": ("", "apps", "*"),
              "resource": ("pods", "pods/log", "*", "*/log", "pods/*", "users"), "ns": (None, "a", "b"),
              "names": ((), ("x",)), "urls": ((), ("/api", "/api/*", "*"))}
    rules = [Rule((v,), (g,), (res,) if not u else (), n if not u else (), u, None if u else ns)
             for v, g, res, ns, n, u in itertools.product(*values.values())]
    uses = [Use(v, g, res, sub, ns, name, path, 1)
            for v, g, (res, sub), ns, name, path in itertools.product(
                ("get", "list", "impersonate"), ("", "apps", "*"),
                (("pods", None), ("pods", "log"), ("pods", ""), ("*", None), ("users", None), (None, None)),
                (None, "a"), (None, "x"), ("/api", "/api/v1", "/apis"))]
    for i in range(0, len(rules), 7):  # rule sets of several sizes and mixes
        chosen = rules[i: i + 1 + i % 23]
        index = RuleIndex(chosen)
        for u in uses:
            assert index.allows(u) == any(covers(r, u) for r in chosen), (u, chosen)

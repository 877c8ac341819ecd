"""The analyst notebooks run top to bottom on a freshly built demo lake, and are stored without outputs.

Running is not enough: each executed notebook's outputs (the tables pandas renders, printed counts,
charts) are compared with queries of the same lake, so a cell that silently shows nothing, or the
wrong rows, fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import nbformat
import pytest
from nbclient import NotebookClient
from support.lakes import build_sample_lake

from ztaudit.core.columns import describe
from ztaudit.core.config import Config
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import K8S_AUDIT, TABLES
from ztaudit.core.views import VIEWS
from ztaudit.detectors.revocation_status import revocation_status
from ztaudit.reports.base import arrow_rows
from ztaudit.reports.revocation import latency_groups, latency_summary, verdict

ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Prepended to each notebook when the test runs it (never stored): pandas shows whole tables, so
#: the outputs can be compared with the lake row for row.
SHOW_ALL = ('import pandas as pd\nfor _o in ("display.max_rows", "display.max_columns", "display.max_colwidth"):\n'
            "    pd.set_option(_o, None)")


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sample_lake(tmp_path_factory.mktemp("nb") / "demo-lake", ROOT / "sample_logs")


def test_the_three_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"explore_lake.ipynb", "investigate_identity.ipynb",
                                           "audit_revocations.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name
    lake_cells = [c for c in nb.cells if c.cell_type == "code" and "LAKE =" in c.source]
    assert len(lake_cells) == 1 and 'os.environ.get("ZTAUDIT_LAKE"' in lake_cells[0].source
    opens = [c for c in nb.cells if c.cell_type == "code" and "open_lake(LAKE)" in c.source]
    assert len(opens) == 1 and "from ztaudit.core.lake import open_lake" in opens[0].source


# --- reading an executed notebook -----------------------------------------------------------------------

class _Tables(HTMLParser):
    """The ``<table>``s of pandas' HTML output as lists of rows (header cell -> cell text)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[list[dict[str, str]]] = []
        self._head: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
            self._head = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("th", "td") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._in_head:
                self._head = self._row
            else:
                self.tables[-1].append(dict(zip(self._head, self._row, strict=True)))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _null(v: str) -> str | None:
    return None if v in ("None", "NaN", "<NA>", "NaT") else v


class Executed:
    """An executed notebook: each code cell found by a piece of its source."""

    def __init__(self, nb: Any) -> None:
        self.nb = nb

    def _outputs(self, needle: str) -> list[Any]:
        cells = [c for c in self.nb.cells if c.cell_type == "code" and needle in c.source]
        assert len(cells) == 1, f"{len(cells)} code cells contain {needle!r}"
        return list(cells[0].outputs)

    def tables(self, needle: str) -> list[list[dict[str, str]]]:
        """Every table the cell displayed, in order (empty list: the cell showed no table)."""
        return [t for o in self._outputs(needle) for t in _Tables(o.get("data", {}).get("text/html", "")).tables]

    def table(self, needle: str) -> list[dict[str, str]]:
        """The one table the cell displayed."""
        tables = self.tables(needle)
        assert len(tables) == 1, f"cell {needle!r} displayed {len(tables)} tables"
        return tables[0]

    def text(self, needle: str) -> str:
        """What the cell printed plus the plain-text form of its results."""
        return "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                       for o in self._outputs(needle))

    def images(self, needle: str) -> int:
        """How many charts (PNG images) the cell drew."""
        return sum("image/png" in o.get("data", {}) for o in self._outputs(needle))


def _execute(path: Path, lake: Path, monkeypatch: pytest.MonkeyPatch) -> Executed:
    monkeypatch.setenv("ZTAUDIT_LAKE", str(lake))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: charts become PNG outputs
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SHOW_ALL))
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return Executed(nb)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return con.execute(sql, params or []).fetchall()


# --- what each notebook must show -------------------------------------------------------------------------

def check_explore_lake(nb: Executed, con: duckdb.DuckDBPyConnection) -> None:
    views = {r["name"] for r in nb.table("duckdb_views()")}
    assert views == {r[0] for r in _rows(con, "SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert set(TABLES) | {v.name for v in VIEWS.values()} <= views
    assert [r["column"] for r in nb.table("describe(K8S_AUDIT)")] == [c for c, _, _ in describe(K8S_AUDIT)][:40]

    shown = {(r["source"], _null(r["cluster"]), int(r["rows"])) for r in nb.table("AS source, cluster, count(*)")}
    expected = {("k8s_audit", c, n) for c, n in _rows(con, "SELECT cluster, count(*) FROM k8s_audit GROUP BY 1")}
    expected |= {("proxy_decision", c, n)
                 for c, n in _rows(con, "SELECT cluster, count(*) FROM proxy_decision GROUP BY 1")}
    expected |= {("idp_event", None, n) for (n,) in _rows(con, "SELECT count(*) FROM idp_event")}
    assert shown == expected and all(n > 0 for _, _, n in shown)
    assert nb.images("per_day = q(") == 1 and "the lake is empty" not in nb.text("per_day = q(")

    counts = dict(_rows(con, "SELECT actor, count(*) FROM k8s_requests GROUP BY actor"))
    top = nb.table("top = q(")
    assert [int(r["requests"]) for r in top] == sorted(counts.values(), reverse=True)[:15]
    assert all(counts[r["actor"]] == int(r["requests"]) for r in top)
    assert nb.images("if len(top):") == 1

    verbs = {(r["verb"], int(r["requests"])) for r in nb.table("SELECT verb, count(*) AS requests")}
    assert verbs == set(_rows(con, "SELECT verb, count(*) FROM k8s_requests GROUP BY verb"))
    found = {(r["detector"], r["severity"], int(r["findings"])) for r in nb.table("FROM findings GROUP BY ALL")}
    assert found == set(_rows(con, "SELECT detector, severity, count(*) FROM findings GROUP BY ALL")) and found
    quarantined = {(r["source_guess"], r["reason"], int(r["records"])) for r in nb.table("FROM quarantine")}
    assert quarantined == set(_rows(con, "SELECT source_guess, reason, count(*) FROM quarantine GROUP BY ALL"))
    assert quarantined


def check_investigate_identity(nb: Executed, con: duckdb.DuckDBPyConnection) -> None:
    m = re.search(r"^investigating (.+)$", nb.text("ACTOR = os.environ"), re.M)
    assert m, nb.text("ACTOR = os.environ")
    actor = m.group(1)
    (worst,) = _rows(con, """SELECT actor FROM findings WHERE actor IS NOT NULL GROUP BY actor
        ORDER BY max(CASE severity WHEN 'critical' THEN 5 WHEN 'high' THEN 4 WHEN 'medium' THEN 3
                     WHEN 'low' THEN 2 ELSE 1 END) DESC, count(*) DESC, actor LIMIT 1""")
    assert actor == worst[0]

    found = {(r["severity"], r["detector"]) for r in nb.table("FROM findings_for(?)")}
    assert found == set(_rows(con, "SELECT severity, detector FROM findings_for(?)", [actor])) and found
    (n,) = _rows(con, "SELECT count(*) FROM requests_by(?)", [actor])[0]
    assert f"{n} requests" in nb.text("reqs = q(") and n > 0
    assert len(nb.table("reqs = q(")) == min(20, n)
    assert nb.images("if len(reqs):") == 1

    reach = {(_null(r["cluster"]), _null(r["namespace"]), _null(r["resource"]), int(r["requests"]))
             for r in nb.table("reach = q(")}
    assert reach == set(_rows(con, "SELECT cluster, namespace, resource, count(*) FROM requests_by(?) GROUP BY ALL",
                              [actor]))
    assert nb.images("if len(reach):") == 1
    (decisions,) = _rows(con, "SELECT count(*) FROM decisions_for(?)", [actor])[0]
    assert len(nb.table("FROM decisions_for(?)")) == min(20, decisions)
    (idp,) = _rows(con, "SELECT count(*) FROM idp_events_for(?)", [actor])[0]
    assert len(nb.table("FROM idp_events_for(?)")) == idp
    creds = {r["credential_id"] for r in nb.table("WHERE credential_id IS NOT NULL")}
    assert creds == {r[0] for r in _rows(con, "SELECT DISTINCT credential_id FROM requests_by(?) "
                                              "WHERE credential_id IS NOT NULL", [actor])}
    report = nb.text('run_report("identity"')
    assert f"Identity: {actor}" in report
    assert re.search(rf"^requests\s+{n}$", report, re.M), report  # the overview counts the same requests


def check_audit_revocations(nb: Executed, con: duckdb.DuckDBPyConnection) -> None:
    cfg = Config()
    rows = arrow_rows(revocation_status(con, cfg))
    assert rows, "the sample logs hold revocations"
    first = nb.text("revocation_rows(")
    assert f"{len(rows)} revocations; grace period {cfg.revocation.grace_seconds} s" in first
    # the notebook leads with the report's own verdict lines: the two never disagree
    for line in verdict(rows, cfg.revocation.objective_seconds):
        assert line in first, line
    head = nb.table("revocation_rows(")
    assert [r["identity"] for r in head] == [r["identity"] for r in rows][:20]
    assert [r["status"] for r in head] == [r["status"] for r in rows][:20]
    assert [r["reason"] for r in head] == [r["reason"] for r in rows][:20]

    series = dict(line.split() for line in nb.text("pd.Series(latency_summary").splitlines() if line.strip())
    for key, value in latency_summary(rows).items():
        if key == "group":
            continue
        assert (_null(series[key]) is None) if value is None else float(series[key]) == pytest.approx(value), key
    assert nb.images("value_counts()") == 1
    assert [r["group"] for r in nb.table("value_counts()")] == [g["group"] for g in latency_groups(rows)]
    measured = any(r["status"] == "enforced" and (r["notice_latency_seconds"] is not None
                                                  or r["denial_latency_seconds"] is not None) for r in rows)
    assert measured, "the sample logs hold an enforced revocation with a measured latency"
    assert nb.images('enforced = rev[rev["status"]') == 1
    assert "no enforced revocation" not in nb.text('enforced = rev[rev["status"]')

    bad = [r for r in rows if r["status"] == "not_enforced"]
    assert bad, "the sample logs hold an unenforced revocation"
    assert [r["subject"] for r in nb.table('bad = rev[rev["status"]')] == [r["subject"] for r in bad]
    loop = nb.text("for _, r in bad.iterrows():")
    tables = nb.tables("for _, r in bad.iterrows():")
    assert len(tables) == 2 * len(bad)
    for i, r in enumerate(bad):
        assert f"== {r['identity']} revoked at" in loop and r["reason"] in loop
        (after,) = _rows(con, "SELECT count(*) FROM requests_by(?) WHERE request_received_at > ?",
                         [r["identity"], r["revoked_at"]])[0]
        (decisions,) = _rows(con, "SELECT count(*) FROM decisions_for(?) WHERE decided_at > ?",
                           [r["identity"], r["revoked_at"]])[0]
        assert (len(tables[2 * i]), len(tables[2 * i + 1])) == (min(10, after), min(10, decisions))
        assert after + decisions > 0  # not enforced: the identity was still active
    waiting = [r for r in rows if r["status"] in ("quiet", "pending")]
    assert [r["reason"] for r in nb.table('isin(["quiet", "pending"])')] == [r["reason"] for r in waiting]
    found = {(r["severity"], r["actor"]) for r in nb.table("WHERE detector LIKE 'revocation.%'")}
    assert found == set(_rows(con, "SELECT severity, actor FROM findings WHERE detector LIKE 'revocation.%'"))
    assert found


CHECKS: dict[str, Callable[[Executed, duckdb.DuckDBPyConnection], None]] = {
    "explore_lake": check_explore_lake,
    "investigate_identity": check_investigate_identity,
    "audit_revocations": check_audit_revocations,
}


def test_every_notebook_has_content_checks() -> None:
    assert set(CHECKS) == {p.stem for p in NOTEBOOKS}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_demo_lake(path: Path, demo_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executed = _execute(path, demo_lake, monkeypatch)
    con = open_lake(demo_lake)
    try:
        CHECKS[path.stem](executed, con)
    finally:
        con.close()

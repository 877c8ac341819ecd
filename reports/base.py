"""What a report is: named sections of rows plus optional charts, independent of output format.

A report function takes a :class:`ReportContext` (a connection from
:func:`ztaudit.core.lake.open_lake`, config, filters, progress) and returns a :class:`ReportResult`.
Reports reach the lake only through that connection's views. The renderers in
:mod:`ztaudit.reports.formats` (:data:`~ztaudit.reports.formats.FORMATS`) turn one result into a
terminal table, JSON, CSV, Markdown or a self-contained HTML page, so every report gets every
format and the formats cannot drift apart.

Stable machine output: the *first* section is the report's primary section. ``--format json``
prints its rows as a JSON list of objects and ``--format csv`` prints them as CSV, whatever the
report; ``--section NAME`` selects another section and ``--section all`` (JSON only) prints an
object keyed by section name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import duckdb
import pyarrow as pa

from ztaudit.core.config import Config
from ztaudit.core.names import did_you_mean
from ztaudit.reports.filters import Filters

Row = dict[str, Any]


@dataclass
class Section:
    """One table of a report.

    ``columns`` is the full, documented column list (JSON/CSV emit exactly these keys, in order);
    ``display`` is the subset a terminal or HTML table shows (``None`` = all).
    """

    name: str
    title: str
    columns: list[str]
    rows: list[Row]
    description: str = ""
    display: list[str] | None = None
    vertical: bool = False
    #: a long text column the terminal table prints on its own line under each row
    detail: str | None = None

    def shown_columns(self) -> list[str]:
        """Columns to show in human-readable formats."""
        return list(self.display) if self.display else list(self.columns)

    def for_display(self) -> Section:
        """The section as human formats show it: a one-row ``vertical`` section becomes field/value rows."""
        if not self.vertical or len(self.rows) != 1:
            return self
        row = self.rows[0]
        return Section(self.name, self.title, ["field", "value"],
                       [{"field": c, "value": row.get(c)} for c in self.shown_columns()], self.description)


@dataclass
class Series:
    """One line or bar series: ``points`` are (x label, y value) pairs in x order."""

    label: str
    points: list[tuple[str, float]]


@dataclass
class Chart:
    """A chart the HTML renderer draws as inline SVG. ``kind`` is ``bar`` (stacked) or ``line``."""

    name: str
    title: str
    kind: str
    series: list[Series]
    x_label: str = ""
    y_label: str = ""
    note: str = ""


@dataclass
class ReportResult:
    """A finished report: sections (the first is primary), charts and notes for the reader."""

    name: str
    title: str
    sections: list[Section]
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    generated_at: datetime | None = None
    #: the answer first: one line per question the report answers, shown above everything else
    verdict: list[str] = field(default_factory=list)
    #: JSON rows carry ``schema_version`` (reports: their columns are ztaudit's contract); false for
    #: ``ztaudit sql``, whose columns are the user's own query
    versioned: bool = True

    @property
    def primary(self) -> Section:
        """The section JSON and CSV print by default."""
        return self.sections[0]

    def section(self, name: str) -> Section:
        """The section called ``name``; KeyError names the nearest and the valid ones."""
        for s in self.sections:
            if s.name == name:
                return s
        near = did_you_mean(name, [s.name for s in self.sections])
        raise KeyError(f"report {self.name} has no section {name!r}{near}; sections: "
                       f"{', '.join(s.name for s in self.sections)}")


class Progress:
    """Step messages on stderr while a report runs, only when stderr is a terminal.

    Machine-readable runs (stderr not a TTY, or ``--quiet``) print nothing, so stdout/stderr stay
    clean for scripts.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = False) -> None:
        self.stream = stream
        self.enabled = enabled and stream is not None
        self._n = 0

    @classmethod
    def auto(cls, stream: TextIO, *, quiet: bool) -> Progress:
        """Enabled when ``stream`` is a TTY and not ``quiet``."""
        isatty = getattr(stream, "isatty", None)
        return cls(stream, enabled=not quiet and bool(isatty and isatty()))

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Show ``label`` while the block runs, then clear the line."""
        self._n += 1
        if self.enabled and self.stream is not None:
            self.stream.write(f"\r\x1b[2K[{self._n}] {label} …")
            self.stream.flush()
        try:
            yield
        finally:
            if self.enabled and self.stream is not None:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()


@dataclass
class ReportContext:
    """Everything a report function needs, built by the caller (``ztaudit report``, ``demo``, notebooks).

    ``con`` comes from :func:`ztaudit.core.lake.open_lake` (UTC session, views, macros): the only way
    reports read the lake. ``options`` holds report-specific flags (``subject``, ``detector``,
    ``severity``, ``granted``).
    """

    con: duckdb.DuckDBPyConnection
    config: Config
    filters: Filters
    progress: Progress = field(default_factory=Progress)
    want_charts: bool = False
    limit: int = 50
    options: Mapping[str, Any] = field(default_factory=dict)
    #: the lake directory ``con`` was opened on, for the caller's bookkeeping (benchmarks); reports
    #: never read files themselves, only ``con``'s views
    lake: str | None = None


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
    """Run ``sql`` with bound ``params`` and return rows as dicts (column name -> value).

    Called by every report for its queries; ``duckdb.Error`` propagates (a broken lake or a bug in
    the report's SQL fails the report, it is never turned into empty rows).
    """
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def arrow_rows(table: pa.Table) -> list[Row]:
    """Rows of a detector's Arrow table as dicts, tz-aware timestamps as UTC datetimes.

    Called by the reports that show a detector function's result (revocation, impersonation,
    reach ``--granted``). Same values as ``table.to_pylist()``, but without pyarrow's tz
    conversion, which imports pandas (~0.3 s of every report run) just to build a ``tzinfo``.
    Arrow stores tz-aware timestamps as UTC instants, so the naive cast is the UTC wall time and
    gets ``UTC`` attached back.
    """
    columns: list[list[Any]] = []
    for fld, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(fld.type) and fld.type.tz is not None:
            naive = col.cast(pa.timestamp(fld.type.unit)).to_pylist()
            columns.append([None if v is None else v.replace(tzinfo=UTC) for v in naive])
        else:
            columns.append(col.to_pylist())
    names = list(table.schema.names)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]



def empty_table_note(con: duckdb.DuckDBPyConnection, table: str, what: str) -> str:
    """The note for a report over a derived table (``reach``, ``credentials``) that found no rows:
    run ``detect`` when the table is empty, else the filters matched nothing. ``table`` is a name
    from the report code, never from input."""
    row = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    if not row or not row[0]:
        return (f"no {what}; run `ztaudit detect` after ingesting if you have not (it builds the {table} "
                f"table)")
    return f"no {what} in range (the {table} table has {row[0]} rows; check --since/--until/--cluster/--actor)"

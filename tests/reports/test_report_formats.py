"""Renderers: JSON/CSV stability, terminal width and truncation, Markdown and HTML escaping, SVG, the
format registry and the one HTML escaper."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ztaudit.core.errors import ConfigError
from ztaudit.core.timeutil import parse_time
from ztaudit.reports import html as html_mod
from ztaudit.reports import svg as svg_mod
from ztaudit.reports.base import Chart, ReportResult, Section, Series, arrow_rows
from ztaudit.reports.cells import clean_text, esc
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import (
    FORMATS,
    fit_widths,
    render,
    render_csv,
    render_json,
    render_markdown,
    render_table,
    truncate,
)
from ztaudit.reports.html import CSP, render_html
from ztaudit.reports.svg import render_svg

XSS = ['<script>document.title="PWNED"</script>', "<img src=x onerror=\"document.title='PWNED'\">",
       "\"><svg onload=alert(1)>", "javascript:alert(1)"]
T = datetime(2026, 11, 20, 9, 30, 15, 250000, tzinfo=UTC)


def result(rows: list[dict[str, object]] | None = None, **kw: object) -> ReportResult:
    rows = rows if rows is not None else [
        {"actor": "alice@example.com", "at": T, "n": 3, "tags": ["a", "b"], "context": '{"k": 1}', "score": 0.5},
        {"actor": XSS[0], "at": T.astimezone(timezone(timedelta(hours=2))), "n": None, "tags": [],
         "context": "not json", "score": math.nan},
    ]
    cols = ["actor", "at", "n", "tags", "context", "score"]
    return ReportResult("t", "Test <report>", [Section("main", "Main", cols, rows),
                                                  Section("other", "Other", ["x"], [{"x": 1}])], **kw)  # type: ignore[arg-type]


def test_json_is_the_primary_section_with_iso_utc_times() -> None:
    rows = json.loads(render_json(result()))
    assert [list(r) for r in rows] == [["schema_version", "actor", "at", "n", "tags", "context", "score"]] * 2
    assert rows[0]["at"] == "2026-11-20T09:30:15.250000Z"
    assert rows[1]["at"] == "2026-11-20T09:30:15.250000Z"  # converted to UTC
    assert rows[0]["context"] == {"k": 1} and rows[1]["context"] == "not json"
    assert rows[1]["score"] is None and rows[1]["n"] is None and rows[0]["tags"] == ["a", "b"]


def test_json_named_and_all_sections() -> None:
    assert json.loads(render_json(result(), "other")) == [{"schema_version": 1, "x": 1}]
    allsec = json.loads(render_json(result(), "all"))
    assert set(allsec["sections"]) == {"main", "other"} and allsec["report"] == "t"
    with pytest.raises(KeyError):
        render_json(result(), "missing")


def test_csv_header_lists_and_nulls() -> None:
    rows = list(csv.reader(io.StringIO(render_csv(result()))))
    assert rows[0] == ["actor", "at", "n", "tags", "context", "score"]
    assert rows[1][3] == '["a","b"]' and rows[1][1] == "2026-11-20T09:30:15.250000Z"
    assert rows[2][2] == "" and rows[2][0] == XSS[0]  # CSV keeps data exact for scripts
    with pytest.raises(ValueError):
        render_csv(result(), "all")


def test_table_fits_width_and_truncates_with_ellipsis() -> None:
    long = [{"actor": "x" * 300, "at": T, "n": 12345, "tags": ["t"] * 40, "context": "c" * 200, "score": 1.0}]
    text = render_table(result(long))
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "…" in text and "2026-11-20 09:30:15" in text  # times are kept whole
    assert all(len(line) <= 60 for line in render_table(result(long), width=60).splitlines())


def test_table_and_markdown_neutralise_terminal_escapes() -> None:
    evil = [{"actor": "bob\x1b[2J\x1b]0;owned\x07\u202eevil", "at": T, "n": 1, "tags": [], "context": "", "score": 1}]
    for text in (render_table(result(evil)), render_markdown(result(evil))):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert clean_text("a\x1bb") == "a\\x1bb"


def test_markdown_escapes_markup_and_pipes() -> None:
    md = render_markdown(result())
    assert "<script>" not in md and "&lt;script&gt;" in md
    row = next(line for line in md.splitlines() if "PWNED" in line)
    assert row.count(" | ") == 5  # no cell broke out of its column
    pipe = render_markdown(result([{"actor": "a|b", "at": None, "n": 1, "tags": [], "context": "", "score": 1}]))
    assert "a\\|b" in pipe


def test_html_escapes_every_value_and_is_self_contained() -> None:
    rows = [{"actor": p, "at": T, "n": 1, "tags": [p], "context": p, "score": 1} for p in XSS]
    chart = Chart("c", "Chart " + XSS[0], "line", [Series(XSS[1], [("2026-11-20", 1.0), ("2026-11-21", 2.0)])])
    page = render_html(result(rows, charts=[chart], notes=[XSS[2]], params={"actor": XSS[1]}))
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP.replace(chr(39), "&#x27;")}">' in page
    assert "default-src &#x27;none&#x27;" in page
    tags, attrs = parse(page)
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS  # no script, img, iframe, link, object ...
    assert not {a for a in attrs if a.startswith("on") or a in ("src", "href", "action", "formaction",
                                                               "srcset", "xlink:href")}
    assert "&lt;script&gt;document.title=&quot;PWNED&quot;&lt;/script&gt;" in page
    assert "https://" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "div", "p", "section", "table",
                "thead", "tbody", "tr", "th", "td", "figure", "figcaption", "svg", "text", "line", "rect",
                "polyline", "circle"}


def parse(page: str) -> tuple[set[str], set[str]]:
    """Every element name and attribute name the browser's parser would create."""
    from html.parser import HTMLParser

    tags: set[str] = set()
    attrs: set[str] = set()

    class P(HTMLParser):
        def handle_starttag(self, tag: str, a: list[tuple[str, str | None]]) -> None:
            tags.add(tag)
            attrs.update(k for k, _ in a)

    P().feed(page)
    return tags, attrs


def test_render_dispatch_and_unknown_format() -> None:
    assert list(FORMATS) == ["table", "json", "csv", "markdown", "html"]
    assert render(result(), "html").startswith("<!DOCTYPE html>")
    assert render(result(), "json") == render_json(result())
    assert render(result(), "json", section="other") == render_json(result(), "other")
    assert render(result(), "csv") == render_csv(result())
    assert render(result(), "markdown") == render_markdown(result())
    assert render(result(), "table", width=60) == render_table(result(), 60)
    with pytest.raises(ValueError, match="unknown format"):
        render(result(), "xml")


def test_one_html_escaper_for_page_and_charts() -> None:
    assert html_mod.esc is esc and svg_mod.esc is esc
    assert esc("<a href='x'>&\"") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"


def test_svg_bars_and_lines() -> None:
    bar = render_svg(Chart("b", "Bars", "bar", [Series("high", [("d1", 2), ("d2", 0)]), Series("low", [("d1", 1)])]))
    assert bar.count("<rect") >= 2 + 2  # 2 data bars + 2 legend swatches
    line = render_svg(Chart("l", "Lines", "line", [Series("a&b", [("2026-11-21", 1), ("2026-11-20", 3)])]))
    assert "<polyline" in line and "a&amp;b" in line
    empty = render_svg(Chart("e", "Empty", "bar", []))
    assert "no data" in empty


def test_fit_widths_and_truncate() -> None:
    assert fit_widths([10, 10], 30) == [10, 10]
    w = fit_widths([80, 10, 19], 60, [4, 4, 19])
    assert sum(w) + 4 <= 60 and w[2] == 19
    assert truncate("abcdef", 4) == "abc…" and truncate("abc", 4) == "abc"


def test_parse_time_absolute_relative_and_errors() -> None:
    now = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    assert parse_time("24h", now=now) == datetime(2026, 11, 26, tzinfo=UTC)
    assert parse_time("7d", now=now) == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_time("90m", now=now) == now - timedelta(minutes=90)
    assert parse_time("2026-11-20") == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_time("2026-11-20T10:00:00+02:00") == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert parse_time("2026-11-20T10:00:00Z").tzinfo is not None
    with pytest.raises(ConfigError, match="--until"):
        parse_time("soon", option="--until")


def test_filters_bind_every_value() -> None:
    f = Filters(since=T, until=T + timedelta(days=1), cluster="c'1", actor="o'brien\"; DROP TABLE x; --")
    sql, params = f.where(time_col="request_received_at", actor_cols=("actor", "email"))
    assert "o'brien" not in sql and "c'1" not in sql and sql.count("?") == len(params)
    assert params == [T, "2026-11-20", T + timedelta(days=1), "2026-11-21", "c'1", f.actor, f.actor]
    assert Filters().where(time_col="t") == ("TRUE", [])


def test_filters_prune_utc_days_and_give_the_detectors_window() -> None:
    """The ``dt`` partitions are UTC days: a bound in another zone is pruned by its UTC day."""
    east = timezone(timedelta(hours=5))
    since = datetime(2026, 11, 21, 2, 0, tzinfo=east)  # 2026-11-20 21:00 UTC
    f = Filters(since=since, until=since + timedelta(hours=1))
    _, params = f.where(time_col="t")
    assert params == [since, "2026-11-20", since + timedelta(hours=1), "2026-11-20"]
    assert f.window.since == since and f.window.until == since + timedelta(hours=1)
    assert Filters().window.since is None
    assert f.from_day_start().since == datetime(2026, 11, 20, tzinfo=UTC)
    assert Filters().from_day_start() == Filters()


def test_arrow_rows_match_to_pylist_with_utc_timestamps() -> None:
    import pyarrow as pa

    table = pa.table({
        "at": pa.array([T, None, T + timedelta(days=400)], pa.timestamp("us", tz="UTC")),
        "naive": pa.array([T.replace(tzinfo=None), None, None], pa.timestamp("us")),
        "actor": ["a", None, XSS[0]], "n": [1, None, 3], "tags": [["x"], [], None],
    })
    rows = arrow_rows(table)
    assert rows == table.to_pylist()
    assert rows[0]["at"] == T and rows[0]["at"].utcoffset() == timedelta(0)
    assert rows[1]["at"] is None and rows[0]["naive"].tzinfo is None
    assert arrow_rows(table.slice(0, 0)) == []

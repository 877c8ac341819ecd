"""Render a :class:`ReportResult` as a terminal table, JSON, CSV, Markdown or HTML: :data:`FORMATS`.

Machine formats (stable for scripts):

* JSON: the primary section's rows as a list of objects, keys = the section's documented
  columns in order. Timestamps are ISO-8601 UTC strings with microseconds and a ``Z``
  (``2026-11-26T10:00:00.000000Z``); lists are arrays; ``context`` JSON strings are parsed into
  objects; missing values are ``null``.
* CSV: the same rows with a header line; lists and objects are JSON-encoded in their cell;
  null is the empty string.

Human formats: log values are attacker-controlled, so terminal and Markdown output replace
control characters (ANSI escape sequences could rewrite the terminal) and Markdown escapes
``| < > &`` so a renderer shows, never interprets, them. Terminal tables fit 100 columns by
shrinking the widest columns and truncating cells with ``…``. HTML is :mod:`.html`.

How one value reads is :mod:`.cells` (shared with the HTML page), so imports run one way:
formats -> html -> svg -> cells.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.cells import display, jsonable
from ztaudit.reports.html import render_html


def json_rows(section: Section) -> list[dict[str, Any]]:
    """The section's rows as JSON-ready dicts with exactly the documented columns."""
    return [{c: jsonable(r.get(c), c) for c in section.columns} for r in section.rows]


def render_json(result: ReportResult, section: str | None = None) -> str:
    """JSON text: the primary (or named) section as a list, or ``all`` sections as an object."""
    if section == "all":
        payload: Any = {
            "report": result.name,
            "params": jsonable(result.params),
            "verdict": result.verdict,
            "notes": result.notes,
            "sections": {s.name: json_rows(s) for s in result.sections},
        }
    else:
        payload = json_rows(result.section(section) if section else result.primary)
    return json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def csv_cell(value: Any, column: str = "") -> str:
    """One CSV cell: JSON for lists/objects, ISO for times, empty for null."""
    v = jsonable(value)
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render_csv(result: ReportResult, section: str | None = None) -> str:
    """CSV text of the primary (or named) section, with a header row."""
    if section == "all":
        raise ValueError("--section all is only available with --format json")
    sec = result.section(section) if section else result.primary
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(sec.columns)
    for r in sec.rows:
        w.writerow([csv_cell(r.get(c), c) for c in sec.columns])
    return buf.getvalue()


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    return text[: width - 1] + "…"


def fit_widths(natural: Sequence[int], total: int, minimum: int | Sequence[int] = 4) -> list[int]:
    """Column widths summing (with 2-space gutters) to at most ``total``: shrink the widest first.

    ``minimum`` is one floor for all columns or one per column (times keep their 19 characters
    while there is free text to cut); when every column is at its floor, floors drop to 4.
    """
    widths = list(natural)
    floors = [minimum] * len(widths) if isinstance(minimum, int) else list(minimum)
    floors = [min(f, w) for f, w in zip(floors, widths, strict=True)]
    budget = total - 2 * (len(widths) - 1)
    for pass_floors in (floors, [min(4, w) for w in widths]):
        while sum(widths) > budget:
            cands = [k for k in range(len(widths)) if widths[k] > pass_floors[k]]
            if not cands:
                break
            i = max(cands, key=lambda k: widths[k] - pass_floors[k])
            widths[i] -= 1
    return widths


def table_text(section: Section, width: int = 100) -> str:
    """A plain-text table of ``section`` no wider than ``width`` columns."""
    section = section.for_display()
    cols = [c for c in section.shown_columns() if c != section.detail]
    cells = [[display(r.get(c)) for c in cols] for r in section.rows]
    natural = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    floors = []
    for i, c in enumerate(cols):
        sample = next((r.get(c) for r in section.rows if r.get(c) is not None), None)
        if isinstance(sample, datetime):
            floors.append(19)
        elif isinstance(sample, (int, float)) and not isinstance(sample, bool):
            floors.append(max([4, *(len(row[i]) for row in cells)]))
        elif i == 0:
            floors.append(24)  # the key column (actor, table, credential) stays readable
        else:
            floors.append(min(12, len(c)))
    widths = fit_widths(natural, width, floors)
    lines = ["  ".join(truncate(c, w).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip(),
             "  ".join("─" * w for w in widths)]
    for r, row in zip(section.rows, cells, strict=True):
        lines.append("  ".join(truncate(v, w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if section.detail and r.get(section.detail) is not None:
            lines.append(truncate("    " + display(r.get(section.detail)), width))
    return "\n".join(lines)


def _header(result: ReportResult) -> list[str]:
    out = []
    active = {k: v for k, v in result.params.items() if v not in (None, "", [], False)}
    if active:
        out.append(", ".join(f"{k}={display(v)}" for k, v in active.items()))
    return out


def _wrap(text: str, width: int) -> list[str]:
    """``text`` folded at spaces to ``width`` columns, continuation lines indented by two."""
    return textwrap.wrap(text, width=max(20, width), subsequent_indent="  ", break_long_words=True) or [""]


def render_table(result: ReportResult, width: int = 100) -> str:
    """Every section as a titled plain-text table, notes at the end."""
    out = [truncate(display(result.title), width)]
    out += [truncate(h, width) for h in _header(result)]
    if result.verdict:
        out.append("")
        out += [wrapped for line in result.verdict for wrapped in _wrap(f"* {display(line)}", width)]
    for sec in result.sections:
        out.append("")
        out.append(f"== {display(sec.title)} ({len(sec.rows)} row{'s' if len(sec.rows) != 1 else ''})")
        if sec.rows:
            out.append(table_text(sec, width))
        else:
            out.append("(none)")
    for note in result.notes:
        out.append("")
        out.append(f"note: {display(note)}")
    return "\n".join(out) + "\n"


def md_cell(value: Any) -> str:
    """A Markdown table cell: pipes, angle brackets and ampersands escaped, one line."""
    text = display(value)
    return (text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
            .replace("[", "\\[").replace("]", "\\]"))


def render_markdown(result: ReportResult) -> str:
    """Every section as a GitHub-flavoured Markdown table."""
    out = [f"# {md_cell(result.title)}", ""]
    header = _header(result)
    if header:
        out += [md_cell(h) for h in header] + [""]
    if result.verdict:
        out += [f"- **{md_cell(line)}**" for line in result.verdict] + [""]
    for sec in result.sections:
        out.append(f"## {md_cell(sec.title)}")
        out.append("")
        if sec.description:
            out += [md_cell(sec.description), ""]
        if not sec.rows:
            out += ["_(none)_", ""]
            continue
        sec = sec.for_display()
        cols = sec.shown_columns()
        out.append("| " + " | ".join(md_cell(c) for c in cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for r in sec.rows:
            out.append("| " + " | ".join(md_cell(r.get(c)) for c in cols) + " |")
        out.append("")
    for note in result.notes:
        out.append(f"> {md_cell(note)}")
    return "\n".join(out).rstrip() + "\n"




class Renderer(Protocol):
    """One output format: turns a finished report into the text ``ztaudit report`` prints or writes.

    ``section`` is the JSON/CSV section choice (``None`` = primary, ``"all"`` = every section in
    JSON); ``width`` is the terminal table width. Formats that have no use for one ignore it.
    """

    def __call__(self, result: ReportResult, *, section: str | None, width: int) -> str: ...


def _table(result: ReportResult, *, section: str | None, width: int) -> str:
    return render_table(result, width)


def _json(result: ReportResult, *, section: str | None, width: int) -> str:
    return render_json(result, section)


def _csv(result: ReportResult, *, section: str | None, width: int) -> str:
    return render_csv(result, section)


def _markdown(result: ReportResult, *, section: str | None, width: int) -> str:
    return render_markdown(result)


def _html(result: ReportResult, *, section: str | None, width: int) -> str:
    return render_html(result)


#: Every output format by the name ``--format`` takes, in the order ``--help`` lists them.
FORMATS: dict[str, Renderer] = {"table": _table, "json": _json, "csv": _csv, "markdown": _markdown, "html": _html}


def render(result: ReportResult, fmt: str, *, section: str | None = None, width: int = 100) -> str:
    """``result`` in format ``fmt`` (a key of :data:`FORMATS`).

    Called by ``ztaudit report``, ``sql``, ``catalog`` and ``demo`` after the report ran. Raises
    ``ValueError`` for an unknown format or ``--section all`` with CSV, and ``KeyError`` naming the
    valid sections for an unknown section (the CLI turns both into usage errors, exit 2).
    """
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}") from None
    return renderer(result, section=section, width=width)

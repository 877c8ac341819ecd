"""Render a :class:`ReportResult` as a terminal table, JSON, CSV, Markdown or HTML: :data:`FORMATS`.

Machine formats (stable for scripts):

* JSON: the primary section's rows as a list of objects, keys = ``schema_version``
  (:data:`~ztaudit.core.schema.SCHEMA_VERSION`) then the section's documented columns in order
  (``--section all``: one ``schema_version`` at the top of the object). Timestamps are ISO-8601
  UTC strings with microseconds and a ``Z`` (``2026-11-26T10:00:00.000000Z``); lists are
  arrays; ``context`` JSON strings are parsed into objects; missing values are ``null``.
* CSV: the same rows with a header line; lists and objects are JSON-encoded in their cell;
  null is the empty string.

Human formats: log values are attacker-controlled, so terminal and Markdown output replace
control characters (ANSI escape sequences could rewrite the terminal) and Markdown escapes
``| < > &`` so a renderer shows, never interprets, them. Terminal tables fit 100 columns by
shrinking the columns furthest above their floor and truncating cells with ``…`` (identities in
the middle, :func:`cut_middle`); ``ztaudit report`` passes the terminal's width and, on a terminal
without ``NO_COLOR``, ``color=True`` (:data:`ANSI_COLORS`, the HTML charts' palette). HTML is
:mod:`.html`.

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

from ztaudit.core.schema import SCHEMA_VERSION
from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.cells import display, jsonable
from ztaudit.reports.html import render_html
from ztaudit.reports.svg import SEVERITY_COLORS, STATUS_COLORS


def json_rows(section: Section, versioned: bool = True) -> list[dict[str, Any]]:
    """The section's rows as JSON-ready dicts: ``schema_version`` (unless not ``versioned``), then
    exactly the documented columns."""
    head = {"schema_version": SCHEMA_VERSION} if versioned else {}
    return [{**head, **{c: jsonable(r.get(c), c) for c in section.columns}} for r in section.rows]


def render_json(result: ReportResult, section: str | None = None) -> str:
    """JSON text: the primary (or named) section as a list, or ``all`` sections as an object."""
    if section == "all":
        payload: Any = {
            "schema_version": SCHEMA_VERSION,
            "report": result.name,
            "params": jsonable(result.params),
            "verdict": result.verdict,
            "notes": result.notes,
            "sections": {s.name: json_rows(s, result.versioned) for s in result.sections},
        }
    else:
        payload = json_rows(result.section(section) if section else result.primary, result.versioned)
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


def cut_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, for identities: their two ends name them.

    A Kubernetes service account is ``system:serviceaccount:NAMESPACE:NAME`` (kubernetes.io,
    "Service account tokens"): the kind of identity is at the start and the name at the end, so
    ``system:serviceaccount:ci-tools:ci-deployer`` cut to 36 reads
    ``system:serviceaccount:…:ci-deployer``. Colon-separated names keep whole leading and trailing
    segments when they fit; an email keeps its domain; anything else keeps its head and a slightly
    longer tail (a node's number).
    """
    if len(text) <= width:
        return text
    if width <= 4:
        return truncate(text, width)
    parts = text.split(":")
    best = ""
    for i in range(1, len(parts)):  # whole segments: head = parts[:i], tail = parts[j:], j > i
        head = ":".join(parts[:i])
        for j in range(len(parts) - 1, i, -1):
            cand = f"{head}:…:{':'.join(parts[j:])}"
            if len(cand) > width:
                break
            if len(cand) > len(best):
                best = cand
    if best and len(best) >= width - 8:  # whole segments, unless they would waste the column
        return best
    keep = width - 1
    at = text.rfind("@")
    if at > 0 and len(text) - at <= keep - 3:  # an email keeps its whole domain
        return text[: keep - (len(text) - at)] + "…" + text[at:]
    head_n = keep // 2
    return text[:head_n] + "…" + text[len(text) - (keep - head_n):]


#: Columns that name an identity (cut in the middle, and kept readable when the table is narrow).
IDENTITY_COLUMNS = frozenset({"actor", "identity", "subject", "subject_login", "subject_id", "email", "user_id",
                              "user_name", "impersonator", "impersonators", "impersonated_user", "revoked_by",
                              "credential_id", "service_account"})
#: Columns of short names a reader scans by (detector ids): kept whole while free text can give way.
KEY_COLUMNS = frozenset({"detector", "cluster", "group", "table"})
#: Columns whose values are coloured on a terminal, one colour per value, from the HTML/SVG palette.
COLOR_COLUMNS = frozenset({"severity", "status"})


def _xterm256(hex_color: str) -> int:
    """The xterm 256-colour index nearest to ``#rrggbb`` (6x6x6 cube or grey ramp).

    256 colours rather than 24-bit: every terminal in use shows them (macOS Terminal before 26
    shows no 24-bit colour), and the nearest cube colour keeps the palette's hue."""
    rgb = [int(hex_color[k:k + 2], 16) for k in (1, 3, 5)]
    levels = (0, 95, 135, 175, 215, 255)
    idx = [min(range(6), key=lambda n: abs(levels[n] - c)) for c in rgb]
    cube = [levels[n] for n in idx]
    grey_n = min(23, max(0, round((sum(rgb) / 3 - 8) / 10)))
    grey = 8 + 10 * grey_n

    def dist(c: Sequence[int]) -> int:
        return sum((a - b) ** 2 for a, b in zip(c, rgb, strict=True))

    if dist([grey] * 3) < dist(cube):
        return 232 + grey_n
    return 16 + 36 * idx[0] + 6 * idx[1] + idx[2]


#: value -> SGR sequence, for :data:`COLOR_COLUMNS` on a terminal (the palette of the HTML charts).
ANSI_COLORS: dict[str, str] = {k: f"\x1b[38;5;{_xterm256(v)}m" for k, v in {**STATUS_COLORS, **SEVERITY_COLORS}.items()}
ANSI_RESET = "\x1b[0m"


def fit_widths(natural: Sequence[int], total: int, minimum: int | Sequence[int] = 4,
               *more: Sequence[int]) -> list[int]:
    """Column widths summing (with 2-space gutters) to at most ``total``: shrink the widest first.

    ``minimum`` is one floor for all columns or one per column (times keep their 19 characters
    while there is free text to cut); ``more`` are lower floors tried, in order, when every column
    is at the previous ones; last, floors drop to 4. Each pass takes one character at a time from
    the column furthest above its floor, so the width goes to the columns that need it.
    """
    widths = list(natural)
    floors = [minimum] * len(widths) if isinstance(minimum, int) else list(minimum)
    budget = total - 2 * (len(widths) - 1)
    for fl in (floors, *more, [4] * len(widths)):
        pass_floors = [min(f, w) for f, w in zip(fl, widths, strict=True)]
        while sum(widths) > budget:
            cands = [k for k in range(len(widths)) if widths[k] > pass_floors[k]]
            if not cands:
                break
            i = max(cands, key=lambda k: widths[k] - pass_floors[k])
            widths[i] -= 1
    return widths


def _floors(section: Section, cols: Sequence[str], cells: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """Two floors per column for :func:`fit_widths`: the comfortable one, then the tight one.

    Times keep 19 characters and numbers their widest value (a cut number is a wrong number);
    short values (statuses, severities, kinds) and :data:`KEY_COLUMNS` keep their widest value
    (up to 40), then 8 or 16; identities keep 24, then 16; free text goes first, down to 12, then 8.
    Headers longer than their values are cut (to 10) before any value is.
    """
    comfort, tight = [], []
    for i, c in enumerate(cols):
        values = max([0, *(len(row[i]) for row in cells)])
        sample = next((r.get(c) for r in section.rows if r.get(c) is not None), None)
        if isinstance(sample, datetime):
            comfort.append(19)
            tight.append(19)
        elif isinstance(sample, (int, float)) and not isinstance(sample, bool):
            comfort.append(max(4, values))
            tight.append(max(4, values))
        elif c in IDENTITY_COLUMNS or i == 0:  # the key column (actor, table, credential) stays readable
            comfort.append(24)
            tight.append(16)
        elif c in KEY_COLUMNS:
            comfort.append(min(40, max(values, min(len(c), 10))))
            tight.append(16)
        elif values <= 16:
            comfort.append(max(values, min(len(c), 10)))
            tight.append(min(8, max(4, values)))
        else:
            comfort.append(12)
            tight.append(8)
    return comfort, tight


def _cell(text: str, width: int, column: str, raw: Any, color: bool) -> str:
    """One cell cut to ``width`` and padded to it; coloured after padding is measured."""
    cut = cut_middle(text, width) if column in IDENTITY_COLUMNS else truncate(text, width)
    pad = " " * (width - len(cut))
    code = ANSI_COLORS.get(str(raw).lower()) if color and column in COLOR_COLUMNS and raw is not None else None
    return f"{code}{cut}{ANSI_RESET}{pad}" if code else cut + pad


def table_text(section: Section, width: int = 100, *, color: bool = False) -> str:
    """A plain-text table of ``section`` no wider than ``width`` columns.

    ``color`` (a terminal, no ``NO_COLOR``; decided by the CLI) colours :data:`COLOR_COLUMNS` with
    :data:`ANSI_COLORS`; the escape codes take no columns, so widths are the same either way.
    """
    section = section.for_display()
    cols = [c for c in section.shown_columns() if c != section.detail]
    cells = [[display(r.get(c)) for c in cols] for r in section.rows]
    natural = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    comfort, tight = _floors(section, cols, cells)
    widths = fit_widths(natural, width, comfort, tight)
    lines = ["  ".join(truncate(c, w).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip(),
             "  ".join("─" * w for w in widths)]
    for r, row in zip(section.rows, cells, strict=True):
        lines.append("  ".join(_cell(v, w, c, r.get(c), color)
                               for v, w, c in zip(row, widths, cols, strict=True)).rstrip())
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


def render_table(result: ReportResult, width: int = 100, *, color: bool = False) -> str:
    """Every section as a titled plain-text table, notes at the end (``color``: :func:`table_text`)."""
    out = [truncate(display(result.title), width)]
    out += [truncate(h, width) for h in _header(result)]
    if result.verdict:
        out.append("")
        out += [wrapped for line in result.verdict for wrapped in _wrap(f"* {display(line)}", width)]
    for sec in result.sections:
        out.append("")
        out.append(f"== {display(sec.title)} ({len(sec.rows)} row{'s' if len(sec.rows) != 1 else ''})")
        if sec.rows:
            out.append(table_text(sec, width, color=color))
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
    JSON); ``width`` is the terminal table width and ``color`` whether the table may colour
    severities and statuses. Formats that have no use for one ignore it (only the table colours).
    """

    def __call__(self, result: ReportResult, *, section: str | None, width: int, color: bool) -> str: ...


def _table(result: ReportResult, *, section: str | None, width: int, color: bool) -> str:
    return render_table(result, width, color=color)


def _json(result: ReportResult, *, section: str | None, width: int, color: bool) -> str:
    return render_json(result, section)


def _csv(result: ReportResult, *, section: str | None, width: int, color: bool) -> str:
    return render_csv(result, section)


def _markdown(result: ReportResult, *, section: str | None, width: int, color: bool) -> str:
    return render_markdown(result)


def _html(result: ReportResult, *, section: str | None, width: int, color: bool) -> str:
    return render_html(result)


#: Every output format by the name ``--format`` takes, in the order ``--help`` lists them.
FORMATS: dict[str, Renderer] = {"table": _table, "json": _json, "csv": _csv, "markdown": _markdown, "html": _html}


def render(result: ReportResult, fmt: str, *, section: str | None = None, width: int = 100,
           color: bool = False) -> str:
    """``result`` in format ``fmt`` (a key of :data:`FORMATS`).

    Called by ``ztaudit report``, ``sql``, ``catalog`` and ``demo`` after the report ran. Raises
    ``ValueError`` for an unknown format or ``--section all`` with CSV, and ``KeyError`` naming the
    valid sections for an unknown section (the CLI turns both into usage errors, exit 2).
    """
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}") from None
    return renderer(result, section=section, width=width, color=color)

"""One self-contained HTML page per report: inline CSS, inline SVG charts, no script, no fetch.

Safety design (log values — user agents, usernames, paths — are attacker-controlled):

1. Every value and label is rendered through :func:`ztaudit.reports.cells.esc` (``html.escape``
   with ``quote=True``, the one escaper of the page and its charts) where text enters markup
   (:func:`cell`, headings, notes); no value is ever placed in a URL, style, or event-handler
   attribute.
2. A strict Content-Security-Policy meta tag (``default-src 'none'; style-src 'unsafe-inline';
   img-src data:``) means that even a missed escape could not run script, load a remote
   resource, submit a form or frame anything: the page has no script of its own to allow.
3. Charts are SVG markup generated here from numbers (:mod:`.svg`), so no image decoder or
   external file is involved.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ztaudit.reports.base import ReportResult, Section
from ztaudit.reports.cells import display, esc
from ztaudit.reports.svg import render_svg

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d232a;
background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #d8dee4;
padding-bottom:4px}
.meta{color:#57606a;font-size:12px;margin-bottom:12px}.desc{color:#57606a;margin:2px 0 8px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;background:#fff;font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top;max-width:420px;
overflow-wrap:break-word}
th{background:#f0f3f6;position:sticky;top:0;white-space:nowrap}td.ts{white-space:nowrap}
tr:nth-child(even) td{background:#f8fafc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev-critical,.sev-high{color:#b3261e;font-weight:600}.sev-medium{color:#b35c00}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{background:#fff;border:1px solid #d0d7de}
.chart .ct{font-size:14px;font-weight:600;fill:#1d232a}.chart .cl{font-size:11px;fill:#57606a}
.chart .grid{stroke:#eaeef2}.chart .axis{stroke:#8c959f}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:8px 0}
.empty{color:#57606a;font-style:italic}
.verdict{background:#fff;border:1px solid #d0d7de;border-left:4px solid #1d232a;padding:8px 10px 8px 28px;
margin:10px 0 14px;font-size:15px}.verdict li{margin:2px 0}
.st-not_enforced{color:#d7301f;font-weight:600}.st-enforced{color:#1a7f37}.st-pending{color:#b35c00}
"""


def cell(column: str, value: object) -> str:
    """One ``<td>``: escaped display text; numbers right-aligned; severity coloured by class."""
    text = esc(display(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{text}</td>'
    if isinstance(value, datetime):
        return f'<td class="ts">{text}</td>'
    if column == "severity" and isinstance(value, str) and value in ("critical", "high", "medium"):
        return f'<td class="sev-{value}">{text}</td>'
    if column == "status" and value in ("not_enforced", "enforced", "pending"):
        return f'<td class="st-{value}">{text}</td>'
    return f"<td>{text}</td>"


def section_html(sec: Section, max_rows: int = 2000) -> str:
    """A section as a heading, description and table (rows capped at ``max_rows``)."""
    sec = sec.for_display()
    out = [f'<section id="{esc("s-" + sec.name)}"><h2>{esc(sec.title)}</h2>']
    if sec.description:
        out.append(f'<p class="desc">{esc(sec.description)}</p>')
    if not sec.rows:
        out.append('<p class="empty">(none)</p></section>')
        return "".join(out)
    cols = sec.shown_columns()
    out.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for r in sec.rows[:max_rows]:
        out.append("<tr>" + "".join(cell(c, r.get(c)) for c in cols) + "</tr>")
    out.append("</tbody></table>")
    if len(sec.rows) > max_rows:
        out.append(f'<p class="note">{len(sec.rows) - max_rows} more rows not shown; use --format csv.</p>')
    out.append("</section>")
    return "".join(out)


def render_html(result: ReportResult) -> str:
    """The whole report as one HTML document string (``--format html``; never raises for row values)."""
    generated = result.generated_at or datetime.now(UTC)
    params = ", ".join(f"{k}={display(v)}" for k, v in result.params.items() if v not in (None, "", [], False))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc('ztaudit: ' + result.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{esc(result.title)}</h1>",
        f'<div class="meta">report {esc(result.name)} · generated {esc(display(generated))} UTC'
        + (f" · {esc(params)}" if params else "") + "</div>",
    ]
    if result.verdict:
        parts.append('<ul class="verdict">' + "".join(f"<li>{esc(line)}</li>" for line in result.verdict) + "</ul>")
    for note in result.notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    if result.charts:
        parts.append('<h2>Charts</h2><div class="charts">')
        for ch in result.charts:
            parts.append(f'<figure id="{esc("c-" + ch.name)}" style="margin:0">{render_svg(ch)}')
            if ch.note:
                parts.append(f'<figcaption class="desc">{esc(ch.note)}</figcaption>')
            parts.append("</figure>")
        parts.append("</div>")
    for sec in result.sections:
        parts.append(section_html(sec))
    parts.append("</body></html>\n")
    return "\n".join(parts)

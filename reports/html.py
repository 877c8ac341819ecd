"""One self-contained HTML page per report: inline CSS, inline SVG charts, no script, no fetch.

Called by :func:`ztaudit.reports.formats.render` for ``--format html``; never raises for row values.

Safety design (log values — user agents, usernames, paths — are attacker-controlled):

1. Every value and label is rendered through :func:`ztaudit.reports.cells.esc` (``html.escape``
   with ``quote=True``, the one escaper of the page and its charts) where text enters markup
   (:func:`cell`, headings, notes). The only URLs on the page are links from a finding to its
   identity's page and to the finding's own row: relative file names and ``#`` fragments built by
   :func:`identity_page` and :func:`finding_anchor` from ``[A-Za-z0-9._@-]`` and a hash, so no log
   value can make a scheme (``javascript:``), a host or a path outside the report's folder.
2. A strict Content-Security-Policy meta tag (``default-src 'none'; style-src 'unsafe-inline';
   img-src data:``) means that even a missed escape could not run script, load a remote
   resource, submit a form or frame anything: the page has no script of its own to allow.
3. Charts are SVG markup generated here from numbers (:mod:`.svg`), so no image decoder or
   external file is involved.

Reading aids: severities and statuses are coloured badges with the charts' colours
(:data:`~ztaudit.reports.svg.SEVERITY_COLORS`, :data:`~ztaudit.reports.svg.STATUS_COLORS`); a
findings table (a section with ``finding_id``, ``detector``, ``actor``, ``first_seen`` and
``last_seen``) links each actor to its identity page and is preceded by the incidents in it
(:func:`incidents`: one actor, several detectors, overlapping times).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ztaudit.reports.base import ReportResult, Row, Section
from ztaudit.reports.cells import display, esc
from ztaudit.reports.svg import SEVERITY_COLORS, STATUS_COLORS, render_svg

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

#: Columns a section needs for its rows to be findings the page can link and group.
FINDING_KEYS = ("finding_id", "detector", "actor", "first_seen", "last_seen")
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")
#: How far apart two findings' times may be and still overlap: proxy decisions carry whole seconds
#: and the proxy's and API server's clocks skew (``correlation.match_window_seconds``, 3 s by
#: default), so one request seen by the proxy-side and the audit-side detectors can miss by a second.
OVERLAP_SLACK = timedelta(seconds=60)
_SLUG = re.compile(r"[^A-Za-z0-9._@-]+")
_ANCHOR = re.compile(r"[^A-Za-z0-9_-]+")
#: A question line of a verdict: "Question? STATUS: the rest".
_QUESTION = re.compile(r"^(?P<q>[^?]{1,80}\?) (?P<status>[A-Z][A-Z ]{0,20}): (?P<rest>.*)$", re.S)


def _badge_css() -> str:
    """``.sev-*`` and ``.st-*`` classes from the charts' colour maps: a badge (``span``; light fills
    get dark text) and a table cell marked by a stripe of the colour (readable for pale ones too)."""
    out = []
    for prefix, colors in (("sev", SEVERITY_COLORS), ("st", STATUS_COLORS)):
        for name, fill in colors.items():
            r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
            text = "#1d232a" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"
            out.append(f"span.{prefix}-{name}{{background:{fill};color:{text}}}"
                       f"tr td.{prefix}-{name}{{box-shadow:inset 6px 0 0 {fill};padding-left:13px;font-weight:600}}")
    return "\n".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d232a;
background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #d8dee4;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 4px}
.meta{color:#57606a;font-size:12px;margin-bottom:12px}.desc{color:#57606a;margin:2px 0 8px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;background:#fff;font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top;max-width:420px;
overflow-wrap:break-word}
th{background:#f0f3f6;position:sticky;top:0}td.ts{white-space:nowrap}td.txt{min-width:280px}
tr:nth-child(even) td{background:#f8fafc}td:target,td:target~td{background:#fff8c5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:0 6px;border-radius:3px;font-weight:600;font-size:12px;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{background:#fff;border:1px solid #d0d7de}
.chart .ct{font-size:14px;font-weight:600;fill:#1d232a}.chart .cl{font-size:11px;fill:#57606a}
.chart .grid{stroke:#eaeef2}.chart .axis{stroke:#8c959f}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:8px 0}
.empty{color:#57606a;font-style:italic}section{overflow-x:auto}
.verdict{background:#fff;border:1px solid #d0d7de;border-left:4px solid #1d232a;padding:8px 10px 8px 28px;
margin:10px 0 14px;font-size:15px}.verdict li{margin:3px 0}
a{color:#0969da}
""" + _badge_css()


def identity_page(actor: str) -> str:
    """The file name of ``actor``'s identity page, which findings link to (relative, same folder).

    ``ztaudit report identity ACTOR --format html --out`` this name writes it. Only
    ``[A-Za-z0-9._@-]`` of the identity is kept (at most 60 characters); the hash keeps two
    identities that differ in other characters apart.
    """
    digest = hashlib.sha256(actor.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"ztaudit-identity-{_SLUG.sub('_', actor)[:60].strip('_')}-{digest}.html"


def finding_anchor(finding_id: object) -> str:
    """The fragment id of a finding's row (``f-`` and the id's letters, digits, ``-`` and ``_``)."""
    return "f-" + _ANCHOR.sub("", str(finding_id))[:64]


def _badge(kind: str, value: str, label: str | None = None) -> str:
    """A coloured badge: ``value`` (a key of the colour maps) names the class, ``label`` is shown."""
    return f'<span class="b {kind}-{esc(value)}">{esc(value if label is None else label)}</span>'


def cell(column: str, value: object) -> str:
    """One ``<td>``: escaped display text; numbers right-aligned; severity and status cells filled
    with their colour."""
    text = esc(display(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{text}</td>'
    if isinstance(value, datetime):
        return f'<td class="ts">{text}</td>'
    if column == "severity" and isinstance(value, str) and value in SEVERITY_COLORS:
        return f'<td class="sev-{value}">{text}</td>'
    if column == "status" and isinstance(value, str) and value in STATUS_COLORS:
        return f'<td class="st-{value}">{text}</td>'
    if len(text) > 80:  # prose (a summary, a reason): wide enough to read, not a ribbon
        return f'<td class="txt">{text}</td>'
    return f"<td>{text}</td>"


def header(column: str) -> str:
    """A ``<th>``: the column name, breakable after each ``_`` (a zero-width space) so a long name
    like ``denial_latency_seconds`` does not push the table past the page."""
    return f"<th>{esc(column).replace('_', '_' + chr(0x200B))}</th>"


def actor_link(actor: object) -> str:
    """A ``<td>`` with ``actor`` linked to its identity page; the title says how to write that page."""
    if not isinstance(actor, str) or not actor:
        return cell("actor", actor)
    page = identity_page(actor)
    how = f"ztaudit report identity '{actor}' --format html --out {page}"
    return f'<td><a href="{esc(page)}" title="{esc(display(how))}">{esc(display(actor))}</a></td>'


def is_findings(sec: Section) -> bool:
    """Whether ``sec``'s rows are findings (it has every :data:`FINDING_KEYS` column)."""
    return all(k in sec.columns for k in FINDING_KEYS)


def incidents(rows: Sequence[Row]) -> list[list[Row]]:
    """Findings that are one incident seen by several detectors: the same actor, times that overlap.

    Per actor, findings sorted by ``first_seen`` are chained while the next starts before (or when)
    the chain's latest ``last_seen`` ends, give or take :data:`OVERLAP_SLACK`; a chain is an
    incident when at least two detectors are in it. Incidents come most severe first, then
    earliest. O(n log n) in the rows.
    """
    by_actor: dict[str, list[Row]] = {}
    for r in rows:
        if isinstance(r.get("actor"), str) and isinstance(r.get("first_seen"), datetime) \
                and isinstance(r.get("last_seen"), datetime):
            by_actor.setdefault(str(r["actor"]), []).append(r)
    out: list[list[Row]] = []
    for found in by_actor.values():
        found.sort(key=lambda r: (r["first_seen"], str(r.get("finding_id"))))
        chain: list[Row] = []
        end: datetime | None = None
        for r in found:
            if chain and end is not None and r["first_seen"] <= end + OVERLAP_SLACK:
                chain.append(r)
                end = max(end, r["last_seen"])
                continue
            if len({c.get("detector") for c in chain}) > 1:
                out.append(chain)
            chain, end = [r], r["last_seen"]
        if len({c.get("detector") for c in chain}) > 1:
            out.append(chain)

    def rank(chain: list[Row]) -> tuple[int, datetime]:
        sev = min((SEVERITY_ORDER.index(str(r.get("severity"))) for r in chain
                   if r.get("severity") in SEVERITY_ORDER), default=len(SEVERITY_ORDER))
        return sev, min(r["first_seen"] for r in chain)

    return sorted(out, key=rank)


def incidents_html(groups: list[list[Row]]) -> str:
    """The incidents of a findings section as a table: actor, span, worst severity, detectors, links."""
    out = [f'<h2>Related findings: {len(groups)} incident{"s" if len(groups) != 1 else ""} seen by several '
           "detectors</h2>",
           '<p class="desc">one actor, several detectors, overlapping first/last seen: probably one event; '
           "the findings link to their rows below</p>",
           "<table><thead><tr><th>incident</th><th>actor</th><th>from</th><th>to</th><th>severity</th>"
           "<th>detectors</th><th>findings</th></tr></thead><tbody>"]
    for n, chain in enumerate(groups, 1):
        sev = next((s for s in SEVERITY_ORDER if any(r.get("severity") == s for r in chain)), None)
        dets = sorted({str(r.get("detector")) for r in chain})
        links = " ".join(f'<a href="#{finding_anchor(r.get("finding_id"))}">{esc(str(r.get("detector")))}</a>'
                         for r in chain)
        out.append(f"<tr><td>#{n}</td>{actor_link(chain[0]['actor'])}"
                   f"{cell('first_seen', min(r['first_seen'] for r in chain))}"
                   f"{cell('last_seen', max(r['last_seen'] for r in chain))}{cell('severity', sev)}"
                   f"<td>{esc(', '.join(dets))}</td><td>{links}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def section_html(sec: Section, max_rows: int = 2000) -> str:
    """A section as a heading, description and table (rows capped at ``max_rows``); a findings
    section also gets its incidents, links to identity pages and an anchor per row."""
    sec = sec.for_display()
    out = []
    findings = is_findings(sec)
    rows = sec.rows[:max_rows]
    groups = incidents(rows) if findings else []
    if groups:
        out.append(f'<section id="{esc("s-" + sec.name + "-incidents")}">{incidents_html(groups)}</section>')
    out.append(f'<section id="{esc("s-" + sec.name)}"><h2>{esc(sec.title)}</h2>')
    if sec.description:
        out.append(f'<p class="desc">{esc(sec.description)}</p>')
    if not sec.rows:
        out.append('<p class="empty">(none)</p></section>')
        return "".join(out)
    cols = sec.shown_columns()
    member = {id(r): n for n, chain in enumerate(groups, 1) for r in chain}
    if groups:
        cols = [*cols, "incident"]
    out.append("<table><thead><tr>" + "".join(header(c) for c in cols) + "</tr></thead><tbody>")
    for r in rows:
        tds = []
        for i, c in enumerate(cols):
            if findings and c == "actor":
                tds.append(actor_link(r.get(c)))
            elif c == "incident" and findings:
                tds.append(f'<td>{"#" + str(member[id(r)]) if id(r) in member else ""}</td>')
            else:
                tds.append(cell(c, r.get(c)))
            if findings and i == 0:  # the row's anchor, on its first cell (rows stay plain <tr>)
                tds[0] = tds[0].replace("<td", f'<td id="{finding_anchor(r.get("finding_id"))}"', 1)
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    if len(sec.rows) > max_rows:
        out.append(f'<p class="note">{len(sec.rows) - max_rows} more rows not shown; use --format csv.</p>')
    out.append("</section>")
    return "".join(out)


def verdict_item(line: str) -> str:
    """One verdict ``<li>``; a question line ("Question? STATUS: ...") gets its status as a badge."""
    m = _QUESTION.match(line)
    status = m["status"].strip().lower().replace(" ", "_") if m else ""
    if m is None or status not in STATUS_COLORS:
        return f"<li>{esc(display(line))}</li>"
    return (f"<li><b>{esc(display(m['q']))}</b> {_badge('st', status, m['status'].strip())} "
            f"{esc(display(m['rest']))}</li>")


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
        parts.append('<ul class="verdict">' + "".join(verdict_item(line) for line in result.verdict) + "</ul>")
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

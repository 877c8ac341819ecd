"""Inline SVG charts drawn by hand: stacked bars and lines, nothing fetched, nothing scripted.

Called by :mod:`.html` for every chart of an HTML report; never raises for chart data. Every label
(series names are often identities from logs) goes through :func:`ztaudit.reports.cells.esc`; every
coordinate is a number this module formats itself. The SVG carries no script, no event handler
attribute, no external reference, so it is safe inline under a ``default-src 'none'``
Content-Security-Policy.

Reading aids: a severity, a revocation status and a question status have one colour in every chart
and table (:data:`SEVERITY_COLORS`, :data:`STATUS_COLORS`; the HTML page's CSS is made from the same
maps); a count axis has whole-number ticks only; the legend sits under the plot and grows with the
number of series, so no label is cut to fit a fixed box (a label over :data:`LEGEND_CHARS` characters is
cut in the middle, and the full text is the swatch's tooltip).
"""

from __future__ import annotations

import math
import re

from ztaudit.reports.base import Chart
from ztaudit.reports.cells import esc

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")

#: Severities, most severe first: dark red to pale blue.
SEVERITY_COLORS = {"critical": "#7f0000", "high": "#d7301f", "medium": "#f46d43", "low": "#fdae61",
                   "info": "#9ecae1"}
#: Revocation statuses (report revocation) and the summary's question statuses: red = the model was
#: broken, orange = look at it, grey = no proof either way or nothing to judge, green = proven.
STATUS_COLORS = {"not_enforced": "#d7301f", "violation": "#d7301f", "review": "#f46d43", "pending": "#e6a700",
                 "quiet": "#8c8c8c", "unproven": "#8c8c8c", "not_run": "#b0b0b0", "no_data": "#c8c8c8",
                 "not_applicable": "#c8c8c8", "none": "#c8c8c8", "enforced": "#1a9850", "ok": "#1a9850",
                 # report impersonation's path statuses: a bypass is a violation
                 "proxy_bypass": "#d7301f", "unapproved_impersonator": "#d7301f"}
#: Lake tables (events per day) keep their colour too.
SOURCE_COLORS = {"k8s_audit": "#3366cc", "proxy_decision": "#7b3294", "idp_event": "#0099c6"}
#: Everything else (identities): colours that are none of the above, so an identity never looks
#: like a severity or a status.
PALETTE = ("#3366cc", "#7b3294", "#0099c6", "#316395", "#22aa99", "#994499", "#6633cc", "#8c6d31", "#5574a6",
           "#3b3eac")

W = 760
PLOT_H = 200
LEFT, RIGHT, TOP = 60, 24, 34
TICK_SPACE = 62  # under the plot: the x labels, rotated
LEGEND_ROW, LEGEND_CHARS, LEGEND_MAX = 18, 64, 40
CHAR_PX = 6.4  # width of one character of the 11 px legend font, generous


def color(label: str, i: int = 0) -> str:
    """The fill of series ``label`` (``i`` = its position, for labels with no fixed colour)."""
    return (SEVERITY_COLORS.get(label) or STATUS_COLORS.get(label) or SOURCE_COLORS.get(label)
            or PALETTE[i % len(PALETTE)])


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= v:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def ticks(vmax: float, *, whole: bool) -> list[float]:
    """Y-axis tick values from 0 to at least ``vmax``, at most 6 of them.

    ``whole`` (every value is a count): the step is a whole 1, 2 or 5 x 10^k, so no tick reads
    0.25 of a finding; otherwise four equal steps up to a round maximum.
    """
    if not whole:
        top = _nice_max(vmax)
        return [top * i / 4 for i in range(5)]
    top = max(1, math.ceil(vmax))
    step = 1
    while math.ceil(top / step) > 5:
        step = _next_step(step)
    n = math.ceil(top / step)
    return [float(step * i) for i in range(n + 1)]


def _next_step(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ...: the next whole step."""
    exp = int(10 ** (len(str(step)) - 1))
    lead = step // exp
    return 2 * exp if lead == 1 else 5 * exp if lead == 2 else 10 * exp


def _num(v: float) -> str:
    return f"{v:.1f}"


def _fmt_tick(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _middle(text: str, n: int) -> str:
    """``text`` cut in the middle to ``n`` characters, so both ends of an identity stay readable."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head):]


def legend_rows(labels: list[str], width: float) -> list[list[tuple[int, str]]]:
    """Legend entries (index, shown text) laid out in rows that fit ``width`` pixels."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0.0
    for i, label in enumerate(labels):
        shown = _middle(label, LEGEND_CHARS)
        need = 18 + len(shown) * CHAR_PX + 14
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0.0
        rows[-1].append((i, shown))
        used += need
    return rows if rows[0] else []


def render_svg(chart: Chart) -> str:
    """The chart as an ``<svg>`` element string (stacked bars for ``bar``, polylines for ``line``)."""
    xs: list[str] = []
    seen: set[str] = set()
    for s in chart.series:
        for x, _ in s.points:
            if x not in seen:
                seen.add(x)
                xs.append(x)
    if chart.kind == "line" or all(_DAY.match(x) for x in xs):
        xs.sort()  # time axes in time order; categorical bars keep the order given
    pw, ph = W - LEFT - RIGHT, PLOT_H
    labels = [s.label for s in chart.series[:LEGEND_MAX]]
    if len(chart.series) > LEGEND_MAX:
        labels.append(f"+{len(chart.series) - LEGEND_MAX} more")
    legend = legend_rows(labels, pw)
    x_label_y = TOP + ph + TICK_SPACE + 6
    legend_y = x_label_y + (10 if chart.x_label else -8)
    height = legend_y + LEGEND_ROW * len(legend) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{height}" '
             f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(chart.title)}">',
             f'<text x="{LEFT}" y="20" class="ct">{esc(_short(chart.title, 100))}</text>']
    if not xs:
        parts.append(f'<text x="{LEFT}" y="{TOP + ph // 2}" class="cl">no data</text></svg>')
        return "".join(parts)
    values = [float(y) for s in chart.series for _, y in s.points]
    if chart.kind == "bar":
        totals = {x: 0.0 for x in xs}
        for s in chart.series:
            for x, y in s.points:
                totals[x] += max(float(y), 0.0)
        vmax = max(totals.values())
    else:
        vmax = max(values, default=0.0)
    tick_values = ticks(vmax, whole=all(v == int(v) for v in values))
    ymax = tick_values[-1] or 1.0
    # axes and grid
    for v in tick_values:
        y = TOP + ph - ph * v / ymax
        parts.append(f'<line x1="{LEFT}" y1="{_num(y)}" x2="{LEFT + pw}" y2="{_num(y)}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{_num(y + 4)}" class="cl" text-anchor="end">'
                     f"{esc(_fmt_tick(v))}</text>")
    parts.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" class="axis"/>')
    n = len(xs)
    step = pw / n
    every = max(1, math.ceil(n / 14))
    for i, x in enumerate(xs):
        if i % every == 0:
            cx = LEFT + step * (i + 0.5)
            parts.append(f'<text x="{_num(cx)}" y="{TOP + ph + 14}" class="cl" text-anchor="end" '
                         f'transform="rotate(-35 {_num(cx)} {TOP + ph + 14})">{esc(_short(x, 16))}</text>')
    if chart.kind == "bar":
        base = {x: 0.0 for x in xs}
        bw = min(max(step * 0.75, 1.0), 48.0)
        for si, s in enumerate(chart.series):
            fill = color(s.label, si)
            for x, y in s.points:
                yv = max(float(y), 0.0)
                if yv == 0:
                    continue
                i = xs.index(x)
                h = ph * yv / ymax
                y0 = TOP + ph - ph * base[x] / ymax - h
                base[x] += yv
                parts.append(f'<rect x="{_num(LEFT + step * i + (step - bw) / 2)}" y="{_num(y0)}" '
                             f'width="{_num(bw)}" height="{_num(h)}" fill="{fill}">'
                             f"<title>{esc(s.label)} {esc(x)}: {esc(_fmt_tick(yv))}</title></rect>")
    else:
        for si, s in enumerate(chart.series):
            stroke = color(s.label, si)
            pts = []
            for x, y in s.points:
                i = xs.index(x)
                pts.append(f"{_num(LEFT + step * (i + 0.5))},{_num(TOP + ph - ph * float(y) / ymax)}")
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{stroke}" stroke-width="2"/>')
            for pt in pts:
                px_, py_ = pt.split(",")
                parts.append(f'<circle cx="{px_}" cy="{py_}" r="2.5" fill="{stroke}"/>')
    if chart.y_label:
        parts.append(f'<text x="14" y="{TOP + ph // 2}" class="cl" text-anchor="middle" '
                     f'transform="rotate(-90 14 {TOP + ph // 2})">{esc(chart.y_label)}</text>')
    if chart.x_label:
        parts.append(f'<text x="{LEFT + pw // 2}" y="{x_label_y}" class="cl" text-anchor="middle">'
                     f"{esc(chart.x_label)}</text>")
    # legend: under the plot, every series, rows as wide as the plot
    for ri, row in enumerate(legend):
        ly = legend_y + ri * LEGEND_ROW
        lx = float(LEFT)
        for i, shown in row:
            full = labels[i]
            if i < len(chart.series):
                parts.append(f'<rect x="{_num(lx)}" y="{ly}" width="12" height="12" '
                             f'fill="{color(full, i)}"><title>{esc(full)}</title></rect>')
            parts.append(f'<text x="{_num(lx + 18)}" y="{ly + 10}" class="cl">{esc(shown)}</text>')
            lx += 18 + len(shown) * CHAR_PX + 14
    parts.append("</svg>")
    return "".join(parts)

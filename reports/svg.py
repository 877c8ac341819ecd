"""Inline SVG charts drawn by hand: stacked bars and lines, nothing fetched, nothing scripted.

Every label (series names are often identities from logs) goes through
:func:`ztaudit.reports.cells.esc`; every coordinate is a number this module formats itself. The
SVG carries no script, no event handler attribute, no external reference, so it is safe inline
under a ``default-src 'none'`` Content-Security-Policy.
"""

from __future__ import annotations

import math
import re

from ztaudit.reports.base import Chart
from ztaudit.reports.cells import esc

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")
PALETTE = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00",
           "#b82e2e", "#316395")
SEVERITY_COLORS = {"critical": "#7f0000", "high": "#d7301f", "medium": "#fc8d59", "low": "#fdcc8a",
                   "info": "#9ecae1"}

W, H = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 190, 34, 64


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= v:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def _num(v: float) -> str:
    return f"{v:.1f}"


def _fmt_tick(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


#: Revocation statuses keep one colour in every chart: ``not_enforced`` is always red.
STATUS_COLORS = {"not_enforced": "#d7301f", "enforced": "#1a9850", "quiet": "#969696", "pending": "#fdae61",
                 "not_applicable": "#d9d9d9"}


def _color(label: str, i: int) -> str:
    return SEVERITY_COLORS.get(label) or STATUS_COLORS.get(label) or PALETTE[i % len(PALETTE)]


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="{esc(chart.title)}">',
             f'<text x="{LEFT}" y="20" class="ct">{esc(_short(chart.title, 90))}</text>']
    if not xs:
        parts.append(f'<text x="{LEFT}" y="{TOP + ph // 2}" class="cl">no data</text></svg>')
        return "".join(parts)
    if chart.kind == "bar":
        totals = {x: 0.0 for x in xs}
        for s in chart.series:
            for x, y in s.points:
                totals[x] += max(float(y), 0.0)
        ymax = _nice_max(max(totals.values()))
    else:
        ymax = _nice_max(max((float(y) for s in chart.series for _, y in s.points), default=0.0))
    # axes and grid
    for i in range(5):
        v = ymax * i / 4
        y = TOP + ph - ph * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{_num(y)}" x2="{LEFT + pw}" y2="{_num(y)}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{_num(y + 4)}" class="cl" text-anchor="end">'
                     f"{esc(_fmt_tick(v))}</text>")
    parts.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" class="axis"/>')
    n = len(xs)
    step = pw / n
    every = max(1, math.ceil(n / 10))
    for i, x in enumerate(xs):
        if i % every == 0:
            cx = LEFT + step * (i + 0.5)
            parts.append(f'<text x="{_num(cx)}" y="{TOP + ph + 14}" class="cl" text-anchor="end" '
                         f'transform="rotate(-35 {_num(cx)} {TOP + ph + 14})">{esc(_short(x, 16))}</text>')
    if chart.kind == "bar":
        base = {x: 0.0 for x in xs}
        bw = min(max(step * 0.75, 1.0), 48.0)
        for si, s in enumerate(chart.series):
            color = _color(s.label, si)
            for x, y in s.points:
                yv = max(float(y), 0.0)
                if yv == 0:
                    continue
                i = xs.index(x)
                h = ph * yv / ymax
                y0 = TOP + ph - ph * base[x] / ymax - h
                base[x] += yv
                parts.append(f'<rect x="{_num(LEFT + step * i + (step - bw) / 2)}" y="{_num(y0)}" '
                             f'width="{_num(bw)}" height="{_num(h)}" fill="{color}">'
                             f"<title>{esc(s.label)} {esc(x)}: {esc(_fmt_tick(yv))}</title></rect>")
    else:
        for si, s in enumerate(chart.series):
            color = _color(s.label, si)
            pts = []
            for x, y in s.points:
                i = xs.index(x)
                pts.append(f"{_num(LEFT + step * (i + 0.5))},{_num(TOP + ph - ph * float(y) / ymax)}")
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="2"/>')
            for pt in pts:
                px_, py_ = pt.split(",")
                parts.append(f'<circle cx="{px_}" cy="{py_}" r="2.5" fill="{color}"/>')
    # legend
    for si, s in enumerate(chart.series[:12]):
        ly = TOP + 4 + si * 18
        parts.append(f'<rect x="{LEFT + pw + 14}" y="{ly}" width="12" height="12" fill="{_color(s.label, si)}"/>')
        parts.append(f'<text x="{LEFT + pw + 32}" y="{ly + 10}" class="cl">{esc(_short(s.label, 22))}</text>')
    if chart.y_label:
        parts.append(f'<text x="14" y="{TOP + ph // 2}" class="cl" text-anchor="middle" '
                     f'transform="rotate(-90 14 {TOP + ph // 2})">{esc(chart.y_label)}</text>')
    if chart.x_label:
        parts.append(f'<text x="{LEFT + pw // 2}" y="{H - 4}" class="cl" text-anchor="middle">'
                     f"{esc(chart.x_label)}</text>")
    parts.append("</svg>")
    return "".join(parts)

"""Screenshots of the summary, findings and revocation HTML reports of the demo lake, for a human.

``ztaudit demo`` builds its lake from ``sample_logs/``; each report is written with ``--format html``
and photographed by headless Debian chromium (driven as in ``test_html_browser.py``) into
``test-artifacts/screenshots/report-NAME.png`` (gitignored). The test checks each picture: the size
asked for, not blank (enough distinct colours and enough ink on the page), and the status and
severity colours of the charts and badges really drawn (decoded with the stdlib: zlib and the PNG
row filters). Chromium missing: skipped on a workstation, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_html_browser import chromium

from ztaudit.cli.main import cli
from ztaudit.reports.svg import SEVERITY_COLORS, STATUS_COLORS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
WIDTH, HEIGHT = 1280, 2000

#: report -> colours that must be drawn somewhere on its first screen (charts, badges)
EXPECTED = {
    "summary": [STATUS_COLORS["violation"], STATUS_COLORS["enforced"], SEVERITY_COLORS["medium"]],
    "findings": [SEVERITY_COLORS["high"], SEVERITY_COLORS["medium"]],
    "revocation": [STATUS_COLORS["enforced"], STATUS_COLORS["not_enforced"], STATUS_COLORS["not_applicable"]],
}


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG, without Pillow."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    if bpp == 4:  # drop alpha: rows of RGB triples
        rows = [b"".join(r[i:i + 3] for i in range(0, stride, 4)) for r in rows]
    return width, height, rows


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("screens") / "demo-lake"
    res = CliRunner().invoke(cli, ["demo", "--lake", str(lake), "-q"])
    assert res.exit_code == 0, res.output
    return lake


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_screenshot_of_each_report(name: str, demo_lake: Path, tmp_path: Path) -> None:
    page = tmp_path / f"{name}.html"
    res = CliRunner().invoke(cli, ["report", name, "--lake", str(demo_lake), "--format", "html", "--out", str(page),
                                   "-q"])
    assert res.exit_code == 0, res.output
    shot = SHOTS / f"report-{name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
                    f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    pixels = [row[i:i + 3] for row in rows[::4] for i in range(0, len(row), 12)]  # one pixel in 4x4
    background = max(set(pixels), key=pixels.count)
    ink = sum(1 for p in pixels if p != background) / len(pixels)
    assert len(set(pixels)) > 50 and ink > 0.05, (len(set(pixels)), ink)  # not blank, not one flat colour
    drawn = set(pixels) | {row[i:i + 3] for row in rows[::2] for i in range(0, len(row), 3)}
    for colour in EXPECTED[name]:
        assert bytes.fromhex(colour[1:]) in drawn, f"{colour} not drawn in {shot}"

"""How one value of a report row is shown: its JSON form, its short human text, its escaped HTML text.

Shared by every renderer (:mod:`.formats` for table, JSON, CSV and Markdown; :mod:`.html` and
:mod:`.svg` for the HTML page), so a timestamp, a list or a float reads the same in every format.
This module imports nothing of the report package, so the renderers import it, never each other.

Log values are attacker-controlled: :func:`display` replaces control and bidi-override characters
(ANSI escape sequences could rewrite a terminal), and :func:`esc` is the one HTML escaper (quotes
included) for every value and label that enters HTML or SVG markup.
"""

from __future__ import annotations

import html
import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

#: Columns parsed from a JSON string into an object in JSON output.
JSON_TEXT_COLUMNS = frozenset({"context"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def iso(ts: datetime) -> str:
    """ISO-8601 UTC with microseconds and ``Z`` (naive datetimes are taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jsonable(value: Any, column: str = "") -> Any:
    """A JSON-serialisable form of a DuckDB/Python value, for JSON and CSV output.

    Times become :func:`iso` strings, durations seconds, NaN and infinities ``None``, bytes UTF-8
    text (invalid bytes replaced), containers are converted element by element, and a string in a
    :data:`JSON_TEXT_COLUMNS` column is parsed into its object (kept as text when it is not JSON).
    Never raises for the values DuckDB and Arrow return.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, str) and column in JSON_TEXT_COLUMNS:
        try:
            return json.loads(value)
        except ValueError:
            return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return jsonable(value.item(), column)
    return value


def clean_text(value: str) -> str:
    """``value`` with control and bidi-override characters replaced by visible ``\\xNN`` escapes or ``�``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else "\ufffd", value)


def display(value: Any) -> str:
    """Short one-line human text of a value for tables (times to the second, floats to 3 significant).

    Called for every cell of the table, Markdown and HTML formats; the text is cleaned of control
    characters (:func:`clean_text`) but not escaped for any markup.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        v = value if value.tzinfo else value.replace(tzinfo=UTC)
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(display(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    return clean_text(str(value)).replace("\n", " ").replace("\r", " ").replace("\t", " ")


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML/SVG text and attribute values (``& < > " '``).

    The one escaper of the HTML page and its SVG charts: every value and label passes through it
    where it enters markup.
    """
    return html.escape(str(value), quote=True)

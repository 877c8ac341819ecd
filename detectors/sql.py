"""Running the detectors' named SQL statements.

Detectors keep each statement as a module constant whose values are bound parameters (``$name``);
a run binds one dict of everything the statements of a plan may need. DuckDB rejects a named
parameter the statement does not use, so :func:`execute` passes each statement only the ones it names.
"""

from __future__ import annotations

import re
from typing import Any, Final

import duckdb

_PARAM: Final = re.compile(r"\$([A-Za-z_]\w*)")


def execute(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """Run ``sql`` on ``con`` with the entries of ``params`` it names (``$name``); returns ``con``.

    Called by the correlation and revocation plans for every statement. Raises ``KeyError`` when
    the statement names a parameter ``params`` lacks (a bug), ``duckdb.Error`` on SQL errors.
    """
    names = set(_PARAM.findall(sql))
    return con.execute(sql, {n: params[n] for n in names} if names else None)

"""Derived lake tables that detectors build before they run (``reach``, ``credentials``).

``ztaudit detect`` calls :func:`build_all` first: each builder reads the lake through the catalog
views, returns an Arrow table of its registered schema, and detect writes it to
``LAKE/<name>/dt=.../`` (replacing the files of the days it rebuilt). Reports, notebooks and the
detectors then read these tables like any other. One explicit registry, keyed by table name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pyarrow as pa

from .base import DetectContext

#: table name -> "module:function"; the function takes a DetectContext and returns a pa.Table.
DERIVED_TABLES: dict[str, str] = {
    "credentials": "ztaudit.detectors.credentials:build_credentials_table",
    "reach": "ztaudit.detectors.reach:build_reach_table",
}

Builder = Callable[[DetectContext], pa.Table]


def builders() -> dict[str, Builder]:
    """The builders whose module exists in this checkout, in registry order."""
    out: dict[str, Builder] = {}
    for name, target in DERIVED_TABLES.items():
        module_name, fn = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        out[name] = getattr(module, fn)
    return out

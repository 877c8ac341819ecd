"""Derived lake tables that detectors build before they run (``reach``, ``credentials``).

``ztaudit detect`` calls each builder first (:func:`ztaudit.detectors.run.build_derived`): a builder
reads the lake through the views, returns an Arrow table of its schema in
:data:`ztaudit.core.schema.TABLES`, and detect writes it to ``LAKE/<name>/dt=.../`` (replacing the
files of the days it rebuilt). Reports, notebooks and the detectors then read these tables like any
other. One explicit registry, keyed by table name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import pyarrow as pa

from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.credentials import build_credentials_table
from ztaudit.detectors.reach import build_reach_table

Builder = Callable[[DetectContext], pa.Table]

#: table name -> builder, in build order.
DERIVED_TABLES: Final[dict[str, Builder]] = {
    "credentials": build_credentials_table,
    "reach": build_reach_table,
}

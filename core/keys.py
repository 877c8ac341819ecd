"""Lake keys: how files are named from their origin, and the compaction manifest that remembers them.

File names are deterministic from the data's origin (docs/design.md, "Lake layout"), so replaying the
same input rewrites the same files and never duplicates rows:

* Kafka chunks: ``<topic>+<partition>+<first offset:020d>`` (:func:`file_key`); the rows' ``origin``
  column (``kafka:<topic>/<partition>/<offset>``) gives back each row's offset
  (:func:`origin_offsets`).
* line files: the hash of the content up to the chunk's end and its byte range (made by the file
  reader, ``ztaudit.pipeline.sources.files``).

``ztaudit compact`` merges a day's files into new ones and writes ``dt=D/_compacted.json``
(:class:`Manifest`): which files it merged and which Kafka offset ranges they held, so a consumer
that replays those offsets knows the rows are already in the compacted files.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

#: The compaction manifest's file name inside a ``dt=`` directory.
MANIFEST: Final = "_compacted.json"
#: A Kafka chunk's file name: ``<topic>+<partition>+<first offset:020d>.parquet``.
KAFKA_FILE_NAME: Final = re.compile(r"^(?P<tp>.+\+\d+)\+(?P<first>\d{20})\.parquet$")


def file_key(topic: str, partition: int, first_offset: int) -> str:
    """The deterministic file key of a Kafka chunk: ``<topic>+<partition>+<first offset:020d>``."""
    return f"{topic}+{partition}+{first_offset:020d}"


def origin_offsets(origins: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Offsets parsed from ``kafka:<topic>/<partition>/<offset>`` origins (null for other origins)."""
    arr = origins.combine_chunks() if isinstance(origins, pa.ChunkedArray) else origins
    is_kafka = pc.fill_null(pc.match_substring_regex(arr, r"^kafka:.*/\d+$"), False)
    arr = pc.if_else(is_kafka, arr, pa.scalar("kafka:x/0/0", pa.string()))
    last = pc.list_element(pc.split_pattern(arr, "/", max_splits=1, reverse=True), 1)
    return pc.if_else(is_kafka, pc.cast(last, pa.int64()), pa.scalar(None, pa.int64()))


@dataclass
class Manifest:
    """``dt=D/_compacted.json``: what compaction merged into this day."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    kafka_ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    rows: int = 0
    created_at: str = ""

    def to_json(self) -> str:
        return json.dumps({"version": 1, "inputs": self.inputs, "outputs": self.outputs,
                           "kafka_ranges": {k: [list(r) for r in v] for k, v in sorted(self.kafka_ranges.items())},
                           "rows": self.rows, "created_at": self.created_at}, indent=1)


_manifest_cache: dict[Path, tuple[float, Manifest | None]] = {}


def read_manifest(day_dir: Path) -> Manifest | None:
    """The day's compaction manifest, or None (cached by mtime: the consumer asks per flush)."""
    path = day_dir / MANIFEST
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    cached = _manifest_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        raw = json.loads(path.read_text())
        m: Manifest | None = Manifest(
            inputs=list(raw.get("inputs", [])), outputs=list(raw.get("outputs", [])),
            kafka_ranges={k: [(int(a), int(b)) for a, b in v] for k, v in raw.get("kafka_ranges", {}).items()},
            rows=int(raw.get("rows", 0)), created_at=str(raw.get("created_at", "")))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("compact: unreadable manifest %s (%s); ignoring it", path, exc)
        m = None
    _manifest_cache[path] = (mtime, m)
    return m


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, coalesced (overlapping or adjacent) inclusive ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def forget_manifest(day_dir: Path) -> None:
    """Drop the cached manifest of ``day_dir`` (called after compaction replaced it)."""
    _manifest_cache.pop(day_dir / MANIFEST, None)

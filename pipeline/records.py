"""Values that flow through the pipeline: raw batches in, rejected records out.

A :class:`RawBatch` is a run of raw records from one place, in order, with enough to name each
record's coordinates (file and line, or Kafka topic, partition and offset) without building an
object per record on the hot path. A :class:`Rejected` is a bad record travelling as a value to
quarantine (docs/design.md: "A bad record is a value, not an exception").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ztaudit.core.quarantine import Rejected


@dataclass(frozen=True, slots=True)
class LineOrigins:
    """Records read from a file (or stdin): record *i* is at line ``first_line + i``.

    ``lines`` overrides that when records do not map to consecutive lines (a pretty-printed
    document spanning lines, a CSV file); then record *i* starts at ``lines[i]``.
    """

    path: str
    first_line: int = 1
    lines: Sequence[int] | None = None

    def at(self, i: int) -> str:
        """Origin string of record ``i``: ``file:<path>:<line>``."""
        line = self.lines[i] if self.lines is not None else self.first_line + i
        return f"file:{self.path}:{line}"

    def prefix(self) -> str:
        """What every origin of this batch starts with (the columnar path appends the number)."""
        return f"file:{self.path}:"

    def line_numbers(self, n: int) -> Sequence[int]:
        """The line number of each of the ``n`` records."""
        return self.lines if self.lines is not None else range(self.first_line, self.first_line + n)


@dataclass(frozen=True, slots=True)
class KafkaOrigins:
    """Records polled from one Kafka partition: record *i* has offset ``offsets[i]``."""

    topic: str
    partition: int
    offsets: Sequence[int]

    def at(self, i: int) -> str:
        """Origin string of record ``i``: ``kafka:<topic>/<partition>/<offset>``."""
        return f"kafka:{self.topic}/{self.partition}/{self.offsets[i]}"

    def prefix(self) -> str:
        """What every origin of this batch starts with (the columnar path appends the offset)."""
        return f"kafka:{self.topic}/{self.partition}/"

    def line_numbers(self, n: int) -> Sequence[int]:
        """The Kafka offset of each record."""
        return self.offsets


Origins = LineOrigins | KafkaOrigins


@dataclass(frozen=True, slots=True)
class PackedRecords:
    """A batch's records as one Arrow ``large_binary`` array, and each record's length.

    ``lengths[i]`` is authoritative: value *i* of ``array`` is record *i*, possibly followed by
    the one line-terminating ``\n`` byte (the file reader builds the array straight over the
    bytes it read, newlines included, instead of copying every line out). A JSON parser ignores
    that trailing whitespace; code that needs the record's exact bytes uses :meth:`record`.
    """

    array: pa.Array
    lengths: np.ndarray

    def record(self, i: int) -> bytes:
        """Record ``i``'s own bytes (without the line terminator)."""
        value = self.array[i].as_py()
        if not isinstance(value, bytes):
            return b""
        n = int(self.lengths[i])
        return value if len(value) == n else value[:n]


def pack_records(records: list[bytes]) -> PackedRecords:
    """All records as one Arrow array built from a single join (``pa.array`` on a list of bytes
    is ~100x slower).

    The file reader calls this in its own thread, so the copy overlaps the previous chunk's
    normalization instead of holding the main thread (measured: ~2 s of 11 s for 1M events).
    """
    n = len(records)
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(records)
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return PackedRecords(arr, lengths)


@dataclass(slots=True)
class RawBatch:
    """Raw records from one place, in order.

    ``source`` is the source kind the user named (``--source``, ``--topic NAME=KIND``) or None to
    detect it per record. ``cluster`` is the default cluster name (``--cluster``); an envelope that
    names its cluster (GKE, AKS, EKS) wins over it.
    """

    records: list[bytes]
    origins: Origins
    source: str | None = None
    cluster: str | None = None
    #: ``records`` already packed by the producer (optional; must hold the same bytes).
    packed: PackedRecords | None = None


@dataclass(slots=True)
class BatchResult:
    """What one batch became: a conformed Arrow table per source kind, and the rejects."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows written across all source kinds (rejects not counted)."""
        return sum(t.num_rows for t in self.tables.values())


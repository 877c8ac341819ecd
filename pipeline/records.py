"""Values that flow through the pipeline: raw batches in, rejected records out.

A :class:`RawBatch` is a run of raw records from one place, in order, with enough to name each
record's coordinates (file and line, or Kafka topic, partition and offset) without building an
object per record on the hot path. A :class:`Rejected` is a bad record travelling as a value to
quarantine (docs/design.md: "A bad record is a value, not an exception").
"""

from __future__ import annotations

from collections import Counter
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
    """What one batch became: a conformed Arrow table per source kind, the rejects, and the
    accounting that proves nothing was lost (the **conservation law**, docs/pipeline-notes.md §6).

    **Record** and **entry**. A *record* is what a source delivers: one non-blank line of a line
    file (blank and whitespace-only lines are not records: ``Chunk.count`` skips them), one
    document of a whole-document file, one CSV row, one Kafka message. A record that is an
    envelope holds several *entries*: each element of a JSON array, each ``items[]`` Event of an
    EventList, each entry of a GKE/Cloud Logging export array, each ``records[]`` item of an Event
    Hub batch, each ``logEvents[]`` message of a CloudWatch subscription, each Okta hook event,
    Graph ``value[]`` item and Google ``events[]`` entry. Any other record is one entry, and so is
    an envelope with nothing in it (``[]``, an EventList without items), which is counted ignored
    ``empty_envelope``. ``expanded`` is how many more entries than records the batch had.

    Every entry ends as exactly one of: **written** (mapped to rows: one row, except an RBAC
    snapshot List, one entry that yields one ``rbac_grant`` row per subject × rule × binding),
    **quarantined** (one :class:`Rejected`), or **ignored** (valid, not for ztaudit: counted per
    ``(source, reason)``, never stored). So, for every batch::

        records + expanded == written + quarantined + ignored

    :meth:`balanced` checks it; ingest and consume add these counters up per input and in total.
    """

    tables: dict[str, pa.Table] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    #: input records of the batch (``len(batch.records)``)
    records: int = 0
    #: entries beyond one per record, from envelopes (see the class docstring)
    expanded: int = 0
    #: entries that became rows
    written: int = 0
    #: ignored entries per (source kind or ``unknown``, reason)
    ignored: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        """Rows written across all source kinds (rejects not counted)."""
        return sum(t.num_rows for t in self.tables.values())

    @property
    def quarantined(self) -> int:
        """Entries quarantined (one :class:`Rejected` each)."""
        return len(self.rejected)

    @property
    def ignored_total(self) -> int:
        return sum(self.ignored.values())

    @property
    def audit_rows_without_cluster(self) -> int:
        """``k8s_audit`` rows written with no cluster (no ``--cluster``, no path match, no envelope's
        own): detectors and reports cannot tell such clusters apart, so ingest and consume warn."""
        return audit_rows_without_cluster(self.tables)

    def balanced(self) -> bool:
        """The conservation law: ``records + expanded == written + quarantined + ignored``."""
        return self.records + self.expanded == self.written + self.quarantined + self.ignored_total


def audit_rows_without_cluster(tables: dict[str, pa.Table]) -> int:
    """How many ``k8s_audit`` rows in ``tables`` have a null or empty ``cluster``."""
    table = tables.get("k8s_audit")
    if table is None or table.num_rows == 0 or "cluster" not in table.column_names:
        return 0
    import pyarrow.compute as pc

    col = table.column("cluster")
    missing = pc.or_kleene(pc.is_null(col), pc.equal(col, ""))
    return int(pc.sum(pc.fill_null(missing, True).cast(pa.int64())).as_py() or 0)

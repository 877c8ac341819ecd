"""Column declarations and the rules every lake table obeys (types, conform, describe).

A table is declared as a list of :class:`Column` (name, Arrow type, one-line description stored in
the field metadata as ``description``), see :mod:`ztaudit.core.schema`. Writers call :func:`conform`
before a table reaches Parquet, so a column that a source does not carry is simply null, never
missing, and a column of the wrong type fails loudly here rather than in a reader months later.

Timestamps are ``timestamp[us, tz=UTC]`` everywhere: Kubernetes audit events carry microseconds
(``MicroTime``), proxies and IdPs carry less, and one unit makes joins exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

TS: Final = pa.timestamp("us", tz="UTC")
STR_LIST: Final = pa.list_(pa.string())
STR_MAP: Final = pa.map_(pa.string(), pa.string())


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, and the sentence an analyst reads in ``ztaudit catalog``."""

    name: str
    type: pa.DataType
    description: str

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=True, metadata={"description": self.description})


def table_schema(name: str, description: str, columns: Iterable[Column]) -> pa.Schema:
    cols = list(columns)
    names = [c.name for c in cols]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate column in table {name}")
    return pa.schema([c.field() for c in cols], metadata={"table": name, "description": description})


def describe(schema: pa.Schema) -> list[tuple[str, str, str]]:
    """(name, type, description) per column, for docs and ``ztaudit catalog``."""
    out = []
    for f in schema:
        meta = f.metadata or {}
        out.append((f.name, str(f.type), meta.get(b"description", b"").decode()))
    return out


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast to its types.

    Missing columns become nulls. Extra columns are an error: they mean a normalizer and the
    schema disagree, which a test should catch, not a reader. Casting failures raise
    ``pyarrow.ArrowInvalid`` naming the column.
    """
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"columns not in schema {schema.metadata.get(b'table', b'?').decode()}: {sorted(extra)}")
    arrays = []
    n = table.num_rows
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise pa.ArrowInvalid(f"column {f.name}: cannot cast {col.type} to {f.type}: {exc}") from exc
            arrays.append(col)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table of ``schema``."""
    return schema.empty_table()

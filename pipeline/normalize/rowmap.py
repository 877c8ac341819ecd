"""The per-record mapping loop shared by the per-record normalizers (proxy decisions, IdP events).

Those sources are low-volume (a decision or an IdP event per request or login, not per API call),
so each record is mapped in Python by a *builder* chosen by the record's format. This module owns
what is the same for all of them: choosing the builder, turning a builder's refusal or a field of
an unexpected type into a :class:`~ztaudit.core.quarantine.Rejected` value with scrubbed raw
bytes, stamping ``origin`` and ``ingested_at``, and conforming the table to its schema.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from ztaudit.core.columns import conform
from ztaudit.core.quarantine import Reason, Rejected
from ztaudit.pipeline.normalize.base import NormalizeContext, Unwrapped, event_time_problem

Row = dict[str, Any]
Builder = Callable[[Mapping[str, Any], NormalizeContext], Row]


class RecordRejected(Exception):
    """Raised by a builder: this record cannot be mapped; it becomes a quarantined value."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def in_event_range(when: datetime, ctx: NormalizeContext, what: str) -> datetime:
    """``when`` if it is a plausible event time (:func:`~.base.event_time_problem`: the one range
    of every source kind and both paths), else :class:`RecordRejected` ``bad_timestamp``."""
    problem = event_time_problem(when, ctx.ingested_at)
    if problem is not None:
        raise RecordRejected(Reason.BAD_TIMESTAMP, f"{what}: {problem}")
    return when


def record_raw(rec: Mapping[str, Any], text_forms: Collection[str] = ()) -> bytes:
    """The record's bytes for quarantine, not yet scrubbed: ``process()`` scrubs every reject of
    its batch in one step (``pipeline.redact.redact_rejects``).

    Records parsed from a text line (``form`` in ``text_forms``) keep that line; JSON records are
    re-serialised.
    """
    if rec.get("form") in text_forms and isinstance(rec.get("line"), str):
        return str(rec["line"]).encode()
    try:
        return orjson.dumps(rec)
    except TypeError:
        return repr(rec).encode()


@dataclass(frozen=True)
class RecordMapper:
    """Maps recognised records of one source kind with a builder per format."""

    source: str
    schema: pa.Schema
    builders: Mapping[str, Builder]
    kind_of: Callable[[Any], str | None]
    not_this_kind: str
    text_forms: Collection[str] = ()
    #: Take the cluster an envelope named when the builder did not set one.
    envelope_cluster: bool = False

    def _reject(self, rejected: list[Rejected], origin: str, rec: Mapping[str, Any], reason: Reason,
                detail: str) -> None:
        raw = record_raw(rec, self.text_forms)
        rejected.append(Rejected(origin, reason, detail, raw, self.source, len(raw)))

    def to_table(self, records: Sequence[Unwrapped], origins: Sequence[str],
                 ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
        """One conformed table of the mapped records and the rejects; never raises for bad input."""
        rows: list[Row] = []
        rejected: list[Rejected] = []
        for item, origin in zip(records, origins, strict=True):
            rec = item.record
            kind = item.form if item.form in self.builders else self.kind_of(rec)
            if kind is None:
                self._reject(rejected, origin, rec, Reason.UNKNOWN_SHAPE, self.not_this_kind)
                continue
            try:
                row = self.builders[kind](rec, ctx)
            except RecordRejected as exc:
                self._reject(rejected, origin, rec, exc.reason, exc.detail)
                continue
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
                # A field of a type no producer writes: this record only goes to quarantine.
                self._reject(rejected, origin, rec, Reason.WRONG_TYPE, f"{kind}: {type(exc).__name__}: {exc}"[:300])
                continue
            if self.envelope_cluster and item.cluster and not row.get("cluster"):
                row["cluster"] = item.cluster
            row["origin"] = origin
            row["ingested_at"] = ctx.ingested_at
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=self.schema) if rows else self.schema.empty_table()
        return conform(table, self.schema), rejected

"""``process()``: one batch of raw records in, conformed tables and rejects out.

This is THE shared entry point: ``ztaudit ingest`` (``pipeline/ingest.py``) calls it once per
input chunk and ``ztaudit consume`` once per Kafka flush. It never raises for bad input -- every
record becomes either rows or a :class:`~ztaudit.core.quarantine.Rejected` value (docs/design.md: "A
bad record is a value, not an exception"); property tests in ``tests/pipeline/test_properties.py`` hold it
to that.

The batch reads as a sentence -- bound, fast path, slow path, assemble:

1. **bound**: records over ``max_record_bytes`` are quarantined ``oversized`` without being
   decoded; the rest are decoded as UTF-8 in one vectorised Arrow cast (per record only if that
   fails, to find the bad ones: ``not_utf8``).
2. **fast path** (source ``k8s_audit`` or undetected): all candidate records go to DuckDB as one
   Arrow string column; plain Kubernetes Event lines are mapped there, columnar, by the one
   mapping in :mod:`ztaudit.pipeline.normalize.k8s_audit`.
3. **slow path**: whatever the fast path did not take (invalid JSON, envelopes, arrays, other
   source kinds, text lines) is decoded in Python (orjson), classified (``empty``,
   ``invalid_json``, ``truncated``), split (a JSON array yields one record per element, all with
   the array's origin), and offered to each registered normalizer's ``unwrap``/``parse_text`` --
   ``k8s_audit`` first -- when the batch's source is not named. Kubernetes Events found here are
   serialised back to canonical Event JSON and run through the *same* SQL mapping.
4. **assemble**: one conformed table per source kind, plus the rejects with scrubbed raw bytes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ztaudit.core.columns import conform
from ztaudit.core.quarantine import QUARANTINE_RAW_CAP, IgnoreReason, Reason, Rejected
from ztaudit.core.schema import TABLES
from ztaudit.pipeline.decode.shipper_envelopes import DEFAULT_CLUSTER_FIELDS, open_batch
from ztaudit.pipeline.decode.values import decode_record, dumps
from ztaudit.pipeline.normalize.base import NormalizeContext, Normalizer, Unwrapped
from ztaudit.pipeline.normalize.k8s_audit import SOURCE as K8S
from ztaudit.pipeline.normalize.k8s_audit import map_events
from ztaudit.pipeline.normalize.rbac_snapshot import SOURCE as RBAC
from ztaudit.pipeline.normalize.registry import NORMALIZERS, get
from ztaudit.pipeline.records import BatchResult, Origins, RawBatch, pack_records
from ztaudit.pipeline.redact import redact_rejects, redact_tables
from ztaudit.pipeline.sources.documents import split_document

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: Below this many records the columnar fast path is skipped (see process(), step 2).
FAST_PATH_MIN_RECORDS = 64


def normalizers_for(source: str | None) -> list[tuple[str, Normalizer]]:
    """(kind, normalizer) to offer records to: the named one (KeyError if unknown), or every
    registered one in detection order (:data:`~ztaudit.pipeline.normalize.registry.NORMALIZERS`)."""
    if source is not None:
        return [(source, get(source))]
    return list(NORMALIZERS.items())


def _int_array(values: np.ndarray[Any, np.dtype[Any]]) -> pa.Array:
    """An int64 Arrow array over a numpy array's buffer (no per-element conversion)."""
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def _origin_numbers(origins: Origins, idx: np.ndarray[Any, np.dtype[np.int64]], n: int) -> pa.Array:
    """Line numbers / offsets of records ``idx``; the SQL prefixes them (``origins.prefix()``)."""
    numbers = origins.line_numbers(n)
    if isinstance(numbers, range):
        return _int_array(idx * numbers.step + numbers.start)
    return _int_array(np.asarray(numbers, dtype=np.int64)[idx])


def _utf8_candidates(arr: pa.Array, idx: np.ndarray[Any, np.dtype[np.int64]], everything: bool
                     ) -> tuple[pa.Array, np.ndarray[Any, np.dtype[np.int64]]]:
    """Decode the records ``idx`` as UTF-8 in one cast; if any is invalid, find them one by one
    and leave them out (the slow path quarantines them as ``not_utf8``)."""
    sub = arr if everything else arr.take(_int_array(idx))
    try:
        return sub.cast(pa.large_string()), idx
    except pa.ArrowInvalid:
        ok = []
        for j, v in enumerate(sub.to_pylist()):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                continue
            ok.append(j)
        okarr = np.asarray(ok, dtype=np.int64)
        return sub.take(_int_array(okarr)).cast(pa.large_string()), idx[okarr]


class _Collector:
    """Unwrapped records per source kind, with where each came from, for the slow path."""

    def __init__(self) -> None:
        self.records: dict[str, list[Unwrapped]] = defaultdict(list)
        self.origins: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, items: Sequence[Unwrapped], origin: str) -> None:
        for u in items:
            self.records[kind].append(u)
            self.origins[kind].append(origin)


_ERROR: Final[tuple[str, list[Unwrapped]]] = ("", [])  # _offer: a normalizer raised; the record is already quarantined


def _offer(normalizers: list[tuple[str, Normalizer]], value: Any, text: str | None,
           origin: str, rejected: list[Rejected]) -> tuple[str, list[Unwrapped]] | None:
    """First normalizer that recognises ``value`` (JSON) or ``text`` (a non-JSON line); None if
    none does; :data:`_ERROR` if one raised (then a ``wrong_type`` reject was appended)."""
    for kind, norm in normalizers:
        try:
            got = norm.unwrap(value) if text is None else norm.parse_text(text)
        except Exception as exc:  # a normalizer bug must not stop the run; the record is kept
            log.warning("%s: normalizer %s failed on a record: %s", origin, kind, exc)
            raw = dumps(value) if text is None else text.encode()
            rejected.append(Rejected(origin, Reason.WRONG_TYPE, f"{kind} normalizer error: {exc}"[:300],
                                     raw, kind, len(raw)))
            return _ERROR
        if got is not None:
            return kind, got
    return None


def _take(found: _Collector, ignored: Counter[tuple[str, str]], hit: tuple[str, list[Unwrapped]],
          origin: str) -> int:
    """Collect a claimed record's entries for mapping, count its ignored ones; return how many
    entries it held (an envelope with none is one entry, ignored ``empty_envelope``)."""
    kind, items = hit
    if not items:
        ignored[kind, IgnoreReason.EMPTY_ENVELOPE] += 1
        return 1
    keep = [u for u in items if u.ignored is None]
    for u in items:
        if u.ignored is not None:
            ignored[kind, u.ignored] += 1
    found.add(kind, keep, origin)
    return len(items)


def _ignore(normalizers: list[tuple[str, Normalizer]], value: Any, text: str | None
            ) -> tuple[str, str] | None:
    """(kind, reason) of the first normalizer that knows ``value``/``text`` as a valid record that
    ztaudit does not read; None if none does (it is then quarantined ``unknown_shape``). Asked
    only after no normalizer claimed it, so an ignore rule never hides another kind's records."""
    for kind, norm in normalizers:
        try:
            why = norm.ignore(value, text)
        except Exception as exc:  # a normalizer bug: the record is then quarantined, not lost
            log.warning("normalizer %s failed deciding whether to ignore a record: %s", kind, exc)
            continue
        if why is not None:
            return kind, str(why)
    return None


def _entries_written(kind: str, entries: int, rejected: Sequence[Rejected]) -> tuple[int, int]:
    """(entries written, extra entries) of one kind's ``to_table`` over ``entries`` entries.

    Every normalizer returns one reject per entry it could not map and one row per other entry,
    except the RBAC snapshot: one List entry yields many grant rows, and each binding it cannot
    read is quarantined on its own (``missing_field``) while the List's other grants are kept;
    such a binding is counted as an extra entry of the List (``rbac_snapshot.to_table``).
    """
    if kind != RBAC:
        return entries - len(rejected), 0
    whole = sum(1 for r in rejected if r.reason is not Reason.MISSING_FIELD)
    return entries - whole, len(rejected) - whole


def process(batch: RawBatch, ctx: NormalizeContext, *, max_record_bytes: int = MiB,
            fast_path_min_records: int = FAST_PATH_MIN_RECORDS,
            cluster_fields: Sequence[str] = DEFAULT_CLUSTER_FIELDS,
            record_clusters: Sequence[str | None] | None = None) -> BatchResult:
    """Decode, unwrap, detect and normalize one batch (see the module docstring).

    ``batch.source`` names the source kind or is None to detect it per record; ``batch.cluster``
    (``--cluster``, or the topic's ``kafka.topic_clusters`` entry) is the default cluster; a shipper
    field (``cluster_fields``), then ``record_clusters[i]`` (record *i*'s Kafka header) override it
    per record, and an envelope's own cluster (GKE, AKS, EKS) overrides them all. Raises only
    for programming errors (a ``batch.source`` that is not a registered kind: KeyError); bad
    records never raise.
    """
    result = BatchResult()
    records = batch.records
    packed_in = batch.packed if batch.packed is not None and not records else None
    n = len(packed_in.lengths) if packed_in is not None else len(records)
    result.records = n
    if n == 0:
        return result
    if batch.cluster is not None:
        ctx = dataclasses.replace(ctx, cluster=batch.cluster)
    if ctx.ingested_at is None:
        ctx = dataclasses.replace(ctx, ingested_at=datetime.now(UTC))
    normalizers = normalizers_for(batch.source)
    origins = batch.origins
    tables: dict[str, list[pa.Table]] = defaultdict(list)
    rejected: list[Rejected] = []

    # 1. bound: size cap first (never decode an oversized record), then vectorised UTF-8.
    # The file reader hands over its records already packed (``records`` then empty); a record
    # is taken out of the Arrow array only when the slow path or quarantine needs its bytes.
    if packed_in is not None:
        arr, lengths = packed_in.array, packed_in.lengths
        raw_at = packed_in.record  # ``arr`` is released after the fast path; ``packed_in`` is not
    else:
        if set(map(type, records)) == {bytes}:
            clean = records
        else:  # a None (Kafka tombstone value) or bytearray/memoryview: normalise to bytes
            clean = [r if isinstance(r, bytes) else b"" if r is None else bytes(r) for r in records]
        packed = pack_records(clean)
        arr, lengths = packed.array, packed.lengths

        def raw_at(i: int) -> bytes:
            return clean[i]
    # 1b. shipper envelopes (Fluent Bit, Vector; decode/shipper_envelopes.py): each becomes its
    #     inner record, read on as if from a file; each record keeps the cluster a shipper field or
    #     its Kafka header names. An envelope without a usable inner value is quarantined here.
    shipped = open_batch(arr, lengths, raw_at, max_record_bytes=max_record_bytes, fields=cluster_fields,
                         header_clusters=record_clusters)
    for i, (reason, detail) in shipped.rejected.items():
        raw = raw_at(i)
        rejected.append(Rejected(origins.at(i), reason, detail, raw[:QUARANTINE_RAW_CAP], batch.source, len(raw)))
    if shipped.records is not None:
        inner = shipped.records
        packed = pack_records(inner)
        arr, lengths = packed.array, packed.lengths

        def inner_at(i: int) -> bytes:
            return inner[i]
        raw_at = inner_at
    clusters = shipped.clusters
    fast_ok = (lengths > 0) & (lengths <= max_record_bytes)
    done = np.fromiter(shipped.rejected, dtype=np.int64, count=len(shipped.rejected))
    fast_ok[done] = False
    slow_mask = ~fast_ok
    extra_slow: list[int] = []

    # 2. fast path: plain Kubernetes Event lines, columnar. (A tiny batch skips it: one SQL run
    #    over the slow path's output costs less than two.)
    if batch.source in (None, K8S) and n >= fast_path_min_records and fast_ok.any():
        idx = np.flatnonzero(fast_ok).astype(np.int64)
        lines, kept = _utf8_candidates(arr, idx, everything=len(idx) == n)
        if len(kept) != len(idx):
            slow_mask[np.setdiff1d(idx, kept)] = True
        src = pa.table({
            "idx": _int_array(kept),
            "sub": _int_array(np.zeros(len(kept), dtype=np.int64)),
            "origin": pa.nulls(len(kept), pa.string()),
            "origin_no": _origin_numbers(origins, kept, n),
            "line": lines,
            "env_cluster": pa.nulls(len(kept), pa.string()) if clusters is None else pa.array(
                [clusters[j] for j in kept.tolist()], pa.string()),
        })
        del lines, arr
        mapped = map_events(src, ctx, origin_prefix=origins.prefix())
        del src
        if mapped.table.num_rows:
            tables[K8S].append(mapped.table)
        result.written += mapped.table.num_rows  # one row per Event line
        for i, _sub, reason, detail in mapped.rejected:
            raw = raw_at(i)
            rejected.append(Rejected(origins.at(i), reason, detail, raw, K8S, len(raw)))
        extra_slow = mapped.not_taken
    else:
        slow_mask |= fast_ok
    slow = sorted((set(np.flatnonzero(slow_mask).tolist()) | set(extra_slow)) - set(shipped.rejected))

    # 3. slow path: decode, classify, split arrays, detect the source kind per record. Every
    #    entry is accounted for once (BatchResult's conservation law): found (mapped below),
    #    rejected, or ignored.
    found = _Collector()
    ignored = result.ignored
    unknown = batch.source or "unknown"
    def place(value: Any, origin: str, whole: bytes | None) -> None:
        """Offer one decoded JSON value to the normalizers: rows, ignored, or ``unknown_shape``.
        ``whole`` is the record's bytes when the value is the whole record (None for an element
        of an array)."""
        hit = _offer(normalizers, value, None, origin, rejected)
        if hit is _ERROR:
            return
        if hit is not None and hit[0] == K8S and record_cluster is not None:
            hit = (K8S, [dataclasses.replace(u, cluster=record_cluster) if u.cluster is None else u for u in hit[1]])
        if hit is not None:
            if whole is not None and hit[0] == K8S:
                # The whole record is the Event: the SQL mapping reads its original text, as
                # the fast path would, so both paths read duplicate keys and number forms
                # the same way (one parser, DuckDB's; issue 11 item 9).
                hit = (hit[0], [dataclasses.replace(u, text=whole.decode("utf-8"))
                                if u.record is value and u.ignored is None else u for u in hit[1]])
            result.expanded += _take(found, ignored, hit, origin) - 1
        elif (why := _ignore(normalizers, value, None)) is not None:
            ignored[why] += 1
        else:
            what = "JSON" if whole is not None else "a JSON array element"
            el = whole if whole is not None else dumps(value)
            rejected.append(Rejected(origin, Reason.UNKNOWN_SHAPE,
                                     f"{what} of type {type(value).__name__} that no normalizer recognises",
                                     el, batch.source, len(el)))

    def salvage(raw: bytes, origin: str, reason: Reason, detail: str) -> bool:
        """A record that failed to parse and is a JSON array with a broken element (``[E1, <broken>,
        E2]`` on one line): its good elements are records, as they are when the same array is
        pretty-printed (the document reader splits it); each broken one is quarantined. False
        when it is not such an array."""
        parts = _array_elements(raw)
        if parts is None:
            return False
        result.expanded += len(parts) - 1
        for value, bad in parts:
            if bad is not None:
                el = bad.encode("utf-8", "surrogatepass")
                rejected.append(Rejected(origin, reason, f"a broken element of a JSON array ({detail})", el,
                                         batch.source, len(el)))
                continue
            place(value, origin, None)
        return True

    record_cluster: str | None = None  # the cluster a shipper field or Kafka header gives record i
    for i in slow:
        raw = raw_at(i)
        origin = origins.at(i)
        record_cluster = clusters[i] if clusters is not None else None
        d = decode_record(raw, max_record_bytes)
        if d.reason is Reason.TRUNCATED and salvage(raw, origin, d.reason, d.detail):
            continue
        if d.reason is not None:
            # Oversized records are never parsed, and only the part quarantine keeps is scrubbed.
            safe = raw[:QUARANTINE_RAW_CAP]  # scrubbed with the batch's rejects (redact_rejects)
            rejected.append(Rejected(origin, d.reason, d.detail, safe, batch.source, len(raw)))
            continue
        if not d.is_json:
            hit = _offer(normalizers, None, d.text, origin, rejected)
            if hit is _ERROR:
                continue
            if hit is not None:
                result.expanded += _take(found, ignored, hit, origin) - 1
            elif (why := _ignore(normalizers, None, d.text)) is not None:
                ignored[why] += 1
            elif d.json_error is not None and salvage(raw, origin, d.json_error, d.detail or "invalid JSON"):
                continue
            else:
                rejected.append(Rejected(origin, d.json_error or Reason.INVALID_JSON,
                                         d.detail or "not JSON and not a known text format",
                                         raw, batch.source, len(raw)))
            continue
        is_array = isinstance(d.value, list)
        values = d.value if is_array else [d.value]
        if not values:  # "[]": a record with nothing in it
            ignored[unknown, IgnoreReason.EMPTY_ENVELOPE] += 1
            continue
        result.expanded += len(values) - 1
        for value in values:
            place(value, origin, None if is_array else raw)

    for kind, recs in found.records.items():
        origins_k = found.origins[kind]
        # Kubernetes Events found here run through the same SQL mapping as the fast path.
        table, rej = _guarded_to_table(kind, recs, origins_k, ctx)
        if table.num_rows:
            tables[kind].append(table)
        written, extra = _entries_written(kind, len(recs), rej)
        result.written += written
        result.expanded += extra
        rejected.extend(rej)

    # 4. assemble, then redact: the one place the column policy is applied to every table and
    #    the quarantine's text (docs/redaction.md §3), so nothing unmasked reaches a sink.
    for kind, parts in tables.items():
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        result.tables[kind] = table
    result.tables = redact_tables(result.tables)
    result.rejected = redact_rejects(rejected)
    return result


def _array_elements(raw: bytes) -> list[tuple[Any, str | None]] | None:
    """The elements of a record that is a JSON array with a broken element (``(value, None)`` or
    ``(None, text)`` each), or None when it is not one (not an array, not UTF-8, or no object
    among its good elements). Called for records that failed to parse, so the cost is paid only by bad input; the
    split is the document reader's (:func:`~ztaudit.pipeline.sources.documents.split_document`),
    linear in the record."""
    if raw.lstrip()[:1] != b"[":
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = [(value, bad) for _start, value, bad in split_document(text)]
    if len(parts) < 2 or not any(isinstance(value, dict) for value, _bad in parts):
        return None  # no element that could be a record: the line stays one quarantined record
    return parts


def _guarded_to_table(kind: str, recs: list[Unwrapped], origins: list[str],
                    ctx: NormalizeContext) -> tuple[pa.Table, list[Rejected]]:
    """A normalizer's ``to_table``, guarded: if it raises (a bug, not bad input), its records are
    quarantined ``wrong_type`` with the error, and the run goes on."""
    try:
        table, rej = get(kind).to_table(recs, origins, ctx)
        schema = TABLES.get(kind)
        return (conform(table, schema) if schema is not None else table), list(rej)
    except Exception as exc:
        log.warning("normalizer %s failed on a batch of %d records: %s", kind, len(recs), exc)
        out = []
        for u, o in zip(recs, origins, strict=True):
            raw = dumps(dict(u.record))
            out.append(Rejected(o, Reason.WRONG_TYPE, f"{kind} normalizer error: {exc}"[:300], raw,
                                kind, len(raw)))
        return pa.table({}), out

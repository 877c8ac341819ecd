"""Log shippers' envelopes (Fluent Bit, Vector) and the cluster name a shipper adds.

Called by :func:`ztaudit.pipeline.process.process` once per batch, after the size cap and before
the columnar fast path (:func:`open_batch`): each record that is a shipper's envelope is replaced
by its inner record, which then goes through source detection exactly as if it had been read from
a file; each record keeps the cluster name a shipper field (or its Kafka header) gives it. Nothing
here raises for bad input: an envelope without a usable inner value becomes a ``(reason, detail)``
that ``process()`` quarantines with the envelope's bytes, so the conservation law still holds
(read = rows + quarantined + ignored; an envelope is one record).

Shapes (docs/shippers.md has the shipper configs that produce them):

* **Fluent Bit**, kafka output (``Format json``, the default): the record as a JSON object plus
  ``Timestamp_Key`` (default ``@timestamp``, a double). The tail input puts the line under
  ``log`` (its ``Key`` default; the ``docker`` parser too, with ``stream`` and ``time``); the
  ``cri`` parser under ``message`` with ``stream``, ``logtag`` and ``time``; the ``kubernetes``
  filter adds ``kubernetes: {pod_name, namespace_name, host, ...}`` (no cluster name). With a
  ``json`` parser (or ``Merge_Log``) the event's own keys are merged into the record: that is not
  an envelope, only its cluster field is read.
* **Vector**, kafka sink with ``encoding.codec = "json"``: the log event as JSON; the ``file`` and
  ``kubernetes_logs`` sources put the line under ``message`` and add ``timestamp``, ``host``,
  ``source_type`` (``file`` / ``kubernetes_logs``), ``file`` and ``kubernetes: {pod_name,
  pod_namespace, ...}`` (no cluster name either).

So an envelope is: an object with a string ``source_type`` and a ``message`` (Vector), with a
``log`` that is not an object (Fluent Bit; an object ``log`` is ECS's ``log.logger``, as Keycloak
logs it), or with ``logtag`` and ``message`` (Fluent Bit's cri parser). The inner value may be an
object, a string holding JSON, or a plain text line (Pomerium's or Keycloak's console format);
a string that is another shipper's envelope is opened too, up to :data:`MAX_DEPTH` envelopes
(Fluent Bit inside Vector). The inner record is bounded by the same size cap as the record
(``process()`` checks it again), and every decode here is linear in the record.

Cluster name (for ``k8s_audit`` rows; audit Events carry none): the first of the configured dotted
paths (``ingest.cluster_fields``; the defaults, :data:`~ztaudit.core.config.DEFAULT_CLUSTER_FIELDS`, are where
Fluent Bit's and Vector's users put it) that holds a usable name, looked
up as a flat key first (``"k8s.cluster.name"``, as OpenTelemetry-style shippers write it) and then
as nested objects, in every envelope and in the inner record; the innermost one that names a
cluster wins (the shipper closest to the cluster). Then the record's Kafka header; the topic map
and ``--cluster`` are the batch's default (``RawBatch.cluster``), and an envelope that names its
own cluster (GKE, AKS, EKS) wins over all of them.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ztaudit.core.config import DEFAULT_CLUSTER_FIELDS
from ztaudit.core.quarantine import Reason
from ztaudit.pipeline.decode.values import dumps, loads

__all__ = ["DEFAULT_CLUSTER_FIELDS", "MAX_DEPTH", "Opened", "Shipped", "cluster_of", "open_batch", "open_record",
           "usable_cluster"]

#: Envelopes opened inside each other at most (Fluent Bit inside Vector inside one more); a record
#: nested deeper is quarantined ``unknown_shape``.
MAX_DEPTH: Final = 3
#: A cluster name longer than this (a DNS name's limit) or with control characters is not used.
MAX_CLUSTER_CHARS: Final = 253
#: Keys that mark a Fluent Bit record (the kafka output's timestamp, the tail parsers' fields, the
#: kubernetes filter's metadata).
_FLUENT_BIT_KEYS: Final = ("@timestamp", "date", "time", "stream", "logtag", "kubernetes")


@dataclass(frozen=True, slots=True)
class Opened:
    """What one record is after its envelopes were opened.

    ``raw``: the inner record's bytes (None: the record is not an envelope and stays as it is).
    ``cluster``: the name a shipper field gives it. ``reason`` set: the envelope has no usable
    inner value; quarantine the record with ``reason`` and ``detail``. ``form``: the envelopes
    opened, outermost first (``vector>fluent-bit``), for counting.
    """

    raw: bytes | None = None
    cluster: str | None = None
    reason: Reason | None = None
    detail: str = ""
    form: str = ""


@dataclass(slots=True)
class Shipped:
    """A batch after :func:`open_batch`.

    ``records``: every record's bytes, inner records in place of their envelopes (None when no
    record was an envelope: the batch's own records stand). ``clusters``: each record's cluster
    from a shipper field, else its Kafka header (None when no record has one). ``rejected``:
    record index -> (reason, detail) for envelopes without a usable inner value. ``forms``: how
    many records each envelope form unwrapped.
    """

    records: list[bytes] | None = None
    clusters: list[str | None] | None = None
    rejected: dict[int, tuple[Reason, str]] = field(default_factory=dict)
    forms: Counter[str] = field(default_factory=Counter)


def usable_cluster(value: Any) -> str | None:
    """``value`` as a cluster name: a non-empty string of at most :data:`MAX_CLUSTER_CHARS`
    printable characters after stripping, else None (a shipper field or header with anything else
    names no cluster; the next way is tried)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    name = value.strip()
    if not name or len(name) > MAX_CLUSTER_CHARS or not name.isprintable():
        return None
    return name


def cluster_of(record: dict[str, Any], fields: Sequence[str]) -> str | None:
    """The first usable cluster name among ``fields`` (dotted paths: a flat key of that name
    first, then nested objects) in ``record``, or None."""
    for path in fields:
        value = record.get(path)
        if value is None and "." in path:
            value = record
            for part in path.split("."):
                if not isinstance(value, dict):
                    value = None
                    break
                value = value.get(part)
        name = usable_cluster(value)
        if name is not None:
            return name
    return None


_NOT_AN_ENVELOPE: Final = ("", "")


def _inner(record: dict[str, Any]) -> tuple[str, str]:
    """(form, key of the inner value) of a shipper envelope, or :data:`_NOT_AN_ENVELOPE` (see the
    module docstring for what counts as one)."""
    if isinstance(record.get("source_type"), str) and "message" in record:
        return "vector", "message"
    if "log" in record and not isinstance(record["log"], dict):
        return "fluent-bit", "log"
    if "logtag" in record and "message" in record:
        return "fluent-bit", "message"
    return _NOT_AN_ENVELOPE


def open_record(record: dict[str, Any], fields: Sequence[str]) -> Opened | None:
    """Open the envelopes around one decoded record (at most :data:`MAX_DEPTH`); None when it is
    not an envelope and no field names its cluster."""
    cluster = cluster_of(record, fields)
    forms: list[str] = []
    current: dict[str, Any] | None = record
    text: str | None = None  # the inner record's own text, when it came as a string
    while current is not None:
        form, key = _inner(current)
        if not form:
            break
        inner = current[key]
        where = f"{form} envelope"
        if len(forms) == MAX_DEPTH:
            return Opened(cluster=cluster, reason=Reason.UNKNOWN_SHAPE, form=">".join(forms),
                          detail=f"shipper envelopes nested deeper than {MAX_DEPTH} ({'>'.join(forms)}>{form})")
        forms.append(form)
        if isinstance(inner, dict):
            current, text = inner, None
        elif isinstance(inner, str):
            line = inner.strip()
            if not line:
                return Opened(cluster=cluster, reason=Reason.EMPTY, form=">".join(forms),
                              detail=f"{where} with an empty '{key}'")
            current, text = None, line
            if line[0] == "{":
                try:
                    value = loads(line)
                except ValueError:
                    value = None  # not JSON after all: passed on as a line (quarantined there if no one reads it)
                if isinstance(value, dict):
                    current = value
        else:
            kind = "null" if inner is None else type(inner).__name__
            return Opened(cluster=cluster, reason=Reason.WRONG_TYPE, form=">".join(forms),
                          detail=f"{where} whose '{key}' is {kind}, not a record (a string or an object)")
        if current is not None:
            cluster = cluster_of(current, fields) or cluster
    if not forms:
        return Opened(cluster=cluster) if cluster is not None else None
    raw = text.encode("utf-8", "surrogatepass") if text is not None else dumps(current)
    return Opened(raw=raw, cluster=cluster, form=">".join(forms))


@functools.lru_cache(maxsize=16)
def candidate_pattern(fields: tuple[str, ...]) -> str:
    """RE2 pattern that every record :func:`open_record` could change matches: a JSON key that
    marks an envelope (``log``, ``message`` comes only with ``source_type`` or ``logtag``) or
    starts a cluster field. Records that do not match skip the per-record parse."""
    keys = {"log", "source_type", "logtag"}
    for path in fields:
        keys.add(path)
        keys.add(path.split(".", 1)[0])
    return '"(?:' + "|".join(sorted(re.escape(k) for k in keys)) + r')"\s*:'


def open_batch(arr: pa.Array, lengths: np.ndarray[Any, np.dtype[Any]], raw_at: Callable[[int], bytes], *,
               max_record_bytes: int, fields: Sequence[str] = DEFAULT_CLUSTER_FIELDS,
               header_clusters: Sequence[str | None] | None = None) -> Shipped:
    """Open the shipper envelopes of a batch (see the module docstring).

    ``arr`` holds the batch's records (Arrow binary; a value may end with its line's newline),
    ``lengths`` their lengths, ``raw_at(i)`` record *i*'s bytes. Only records within the size cap
    whose bytes contain a candidate key (one vectorised RE2 search over the batch) are parsed;
    the rest stay as they are. ``header_clusters[i]`` is record *i*'s Kafka header cluster (used
    when no shipper field names one). Never raises for bad input.
    """
    n = len(lengths)
    out = Shipped()
    clusters: list[str | None] | None = None
    if header_clusters is not None and any(c is not None for c in header_clusters):
        clusters = [usable_cluster(c) for c in header_clusters]
    within = (lengths > 0) & (lengths <= max_record_bytes)
    if n == 0 or not within.any():
        out.clusters = clusters
        return out
    hits = pc.match_substring_regex(arr, candidate_pattern(tuple(fields)))
    mask = np.asarray(hits.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool) & within
    replaced: dict[int, bytes] = {}
    for i in np.flatnonzero(mask).tolist():
        raw = raw_at(i)
        text = raw.lstrip()
        if text[:1] != b"{":
            continue
        try:
            value = loads(text)
        except (ValueError, UnicodeDecodeError):
            continue  # not JSON: the normal path classifies it
        if not isinstance(value, dict):
            continue
        opened = open_record(value, fields)
        if opened is None:
            continue
        if opened.cluster is not None:
            if clusters is None:
                clusters = [None] * n
            clusters[i] = opened.cluster
        if opened.reason is not None:
            out.rejected[i] = (opened.reason, opened.detail)
        elif opened.raw is not None:
            replaced[i] = opened.raw
        if opened.form:
            out.forms[opened.form] += 1
    if replaced:
        out.records = [replaced[i] if i in replaced else raw_at(i) for i in range(n)]
    out.clusters = clusters
    return out

"""Write findings into ``LAKE/findings/dt=D/findings.parquet``: merge by ``finding_id``, atomically.

Called by ``ztaudit detect`` (batch) and by the streaming hook after each consumer flush; both may
run at once, so every merge holds an exclusive ``flock`` on ``LAKE/findings/.lock`` (waiting up to
``detect.lock_timeout_seconds``). Within the lock, for every day partition touched, the existing
file is read, rows are merged by ``finding_id`` (the new row wins), and the file is rewritten with
``write_parquet_atomic`` (tmp file, fsync, rename), so a reader sees the old or the new file.

Idempotence: ``finding_id`` is a stable hash of the detector and the finding's key, so re-running
``detect`` over the same data replaces findings instead of duplicating them. A re-run also
*retracts*: findings of the detectors that ran whose ``first_seen`` lies in the judged window and
which the run no longer produced are removed (late data can turn an unmatched decision into a
matched one). An unchanged finding keeps its original ``detected_at``.

Which run created a finding: each call is one run, ``detect:<start>`` (``ztaudit detect``) or
``consume:<start>`` (the streaming hook), where start is the ``detected_at`` of the rows it wrote.
A finding keeps the ``first_detected_at`` and ``first_run`` of the run that first produced its id,
and every ``detect`` run appends one row to the ``detect_runs`` table, so ``report findings --new``
(first produced since the last detect run began) is right even when that run found nothing new.

Failure: :class:`LockTimeout` (a :class:`SinkError`, exit 4) if the lock is not obtained in time;
``SinkError`` when the disk refuses. Nothing is half-written in either case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Final

import pyarrow as pa

from ztaudit.core.columns import conform
from ztaudit.core.errors import SinkError
from ztaudit.core.files import UNDATED, file_lock
from ztaudit.core.schema import DETECT_RUNS, FINDINGS
from ztaudit.core.sink import LakeSink
from ztaudit.core.window import Window, utc_day

FILE_NAME = "findings.parquet"


class LockTimeout(SinkError):
    """Another detect or the consumer held the findings lock for longer than the timeout."""


def findings_lock(lake: Path, timeout: float) -> AbstractContextManager[None]:
    """Hold the exclusive findings lock of ``lake`` (blocks up to ``timeout`` seconds, then LockTimeout)."""
    path = Path(lake) / "findings" / ".lock"
    return file_lock(path, timeout=timeout, busy=lambda: LockTimeout(
        f"{path} is held by another detect or consumer",
        fix="wait for it to finish, or raise detect.lock_timeout_seconds"))


def _partition_day(first_seen: datetime | None) -> str:
    """The ``dt=`` partition of a finding: the UTC day of ``first_seen``; ``unknown`` without one."""
    return utc_day(first_seen) if first_seen is not None else UNDATED


def _partition(sink: LakeSink, day: str) -> PurePath:
    return sink.table_dir("findings") / f"dt={day}" / FILE_NAME


def _read(sink: LakeSink, path: PurePath) -> list[dict[str, Any]]:
    if not sink.exists(path):
        return []
    table = sink.read_table(path)
    if "dt" in table.column_names:
        table = table.drop(["dt"])
    return list(conform(table, FINDINGS).to_pylist())


#: Columns that say when and by which run a finding was produced, not what it is.
RUN_COLUMNS: Final = frozenset({"detected_at", "first_detected_at", "first_run"})


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in FINDINGS.names if k not in RUN_COLUMNS)


def run_id(kind: str, started_at: datetime) -> str:
    """``kind:<started_at as ISO-8601 UTC, microseconds, Z>`` (kind ``detect`` or ``consume``)."""
    return f"{kind}:{started_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def _in_scope(row: dict[str, Any], detectors: set[str], since: datetime | None, until: datetime | None) -> bool:
    if row["detector"] not in detectors:
        return False
    t = row["first_seen"]
    if t is None:
        return since is None and until is None
    return (since is None or t >= since) and (until is None or t < until)


def _existing_days(sink: LakeSink) -> list[str]:
    return sorted(sink.listing("findings"))


def _combine(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` widened by ``old``: a run over a partial window only speaks for its part of the span."""
    evidence = list(dict.fromkeys([*(old.get("evidence") or []), *(new.get("evidence") or [])]))[:50]
    firsts = [t for t in (old["first_seen"], new["first_seen"]) if t is not None]
    lasts = [t for t in (old["last_seen"], new["last_seen"]) if t is not None]
    scores = [x for x in (old.get("score"), new.get("score")) if x is not None]
    return {**new, "first_seen": min(firsts) if firsts else None, "last_seen": max(lasts) if lasts else None,
            "evidence": evidence, "score": max(scores) if scores else None}


def write_findings(lake: str | Path, rows: Iterable[dict[str, Any]], *, detectors: Sequence[str],
                   since: datetime | None = None, until: datetime | None = None,
                   lock_timeout: float = 120.0, run: str = "detect") -> list[dict[str, Any]]:
    """Merge ``rows`` (findings-table dicts) into the lake; return the rows that are new or changed.

    ``detectors`` and [``since``, ``until``) name what this run judged: existing findings of those
    detectors with ``first_seen`` in that window that are not in ``rows`` are retracted. When an
    existing finding with the same id started before ``since`` (the run saw only part of it, e.g. the
    streaming hook's last hour of a per-day finding), the two are combined (earliest first_seen,
    latest last_seen, union of evidence) instead of the partial one replacing the whole.

    ``run`` names the kind of run (``detect`` or ``consume``): a finding id no earlier run produced
    gets this run's ``first_detected_at`` and ``first_run``; a ``detect`` run also appends its row
    to ``detect_runs``.
    """
    lake = Path(lake)
    new: dict[str, dict[str, Any]] = {}
    for r in rows:
        new[r["finding_id"]] = r
    started = next((r["detected_at"] for r in new.values() if r.get("detected_at") is not None), None) \
        or datetime.now(UTC)
    this_run = run_id(run, started)
    created = 0
    scope = set(detectors)
    changed: list[dict[str, Any]] = []
    written: list[PurePath] = []
    gone: list[PurePath] = []
    sink = LakeSink(lake)  # its files go where the lake keeps them (the folder, or an S3 warehouse)
    with findings_lock(lake, lock_timeout):
        days = {_partition_day(r["first_seen"]) for r in new.values()}
        window = Window(since, until)
        for d in _existing_days(sink):
            if since is None and until is None:
                days.add(d)
            elif d != UNDATED and utc_day(window.lo) <= d <= utc_day(window.hi):
                days.add(d)
        old_by_day = {d: _read(sink, _partition(sink, d)) for d in sorted(days)}
        previous = {r["finding_id"]: r for rows_ in old_by_day.values() for r in rows_}
        final: dict[str, dict[str, dict[str, Any]]] = {d: {} for d in old_by_day}
        for d, old_rows in old_by_day.items():
            for r in old_rows:
                if r["finding_id"] in new or _in_scope(r, scope, since, until):
                    continue  # replaced below, or retracted
                final[d][r["finding_id"]] = r
        for fid, r in new.items():
            prev = previous.get(fid)
            if prev is not None and since is not None and prev["first_seen"] is not None \
                    and prev["first_seen"] < since:
                r = _combine(prev, r)
            if prev is None:
                created += 1
                r = {**r, "first_detected_at": r.get("detected_at") or started, "first_run": this_run}
            else:  # an older lake's row has no first_*: its detected_at is the best known
                r = {**r, "first_detected_at": prev.get("first_detected_at") or prev.get("detected_at"),
                     "first_run": prev.get("first_run")}
            if prev is not None and _same(prev, r):
                r = {**r, "detected_at": prev["detected_at"]}
            else:
                changed.append(r)
            final.setdefault(_partition_day(r["first_seen"]), {})[fid] = r
        for day, merged in sorted(final.items()):
            path = _partition(sink, day)
            if not merged:
                if sink.exists(path):
                    gone.append(path)  # deleted below: after an Iceberg lake's snapshot stopped listing it
                continue
            if day in old_by_day and {r["finding_id"]: r for r in old_by_day[day]} == merged:
                continue  # nothing changed in this partition: leave the file alone
            ordered = sorted(merged.values(), key=lambda r: (r["detector"], r["first_seen"] is None,
                                                              r["first_seen"] or 0, r["finding_id"]))
            table = conform(pa.Table.from_pylist(ordered, schema=FINDINGS), FINDINGS)
            written.append(sink.write_file(table, path, None))
        # An Iceberg lake: the findings table's snapshot changes here, under the lock (one commit);
        # the files it no longer lists are deleted after it (a plain lake: at once).
        sink.added.update(written)
        for path in gone:
            sink.remove(path)
        sink.publish()
        if run == "detect":
            _record_run(lake, this_run, started, sorted(scope), len(new), created)
    return changed


def _record_run(lake: Path, rid: str, started: datetime, detectors: list[str], found: int, created: int) -> None:
    """Append this detect run's row to ``detect_runs`` (under the findings lock, after its findings)."""
    row = {"run_id": rid, "started_at": started, "finished_at": datetime.now(UTC), "detectors": detectors,
           "findings": found, "new_findings": created}
    sink = LakeSink(lake)
    sink.write("detect_runs", pa.Table.from_pylist([row], schema=DETECT_RUNS), rid)
    sink.publish()

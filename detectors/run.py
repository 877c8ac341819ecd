"""Run detectors over the lake and store their findings: the engine behind ``ztaudit detect``.

Called by ``detect`` (batch) and by :mod:`ztaudit.detectors.streaming` (after each consumer flush).
Order, as a sentence: open the engine over the lake (:mod:`ztaudit.detectors.engine`), build the
derived tables (``detectors/tables.py``) and write them, run each detector, merge the findings into
the lake.

Failure: a builder or detector that raises is reported in :attr:`RunResult.errors` and the others
still run; findings of the detectors that succeeded are written, and only those detectors' old
findings in the window can be retracted (a failing detector never erases its previous findings).
An unknown detector id raises :class:`DetectError` (exit 2) before anything runs. Lake write
errors raise ``SinkError`` (exit 4).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ztaudit.core.columns import conform
from ztaudit.core.config import Config
from ztaudit.core.errors import SinkError, ZtauditError
from ztaudit.core.files import UNDATED, day_dirs, sweep_temp_files
from ztaudit.core.lake import spill_directory
from ztaudit.core.progress import ProgressCallback
from ztaudit.core.schema import FINDINGS, PARTITION_TIME, TABLES
from ztaudit.core.sink import LakeSink
from ztaudit.core.window import Window, utc_day
from ztaudit.detectors import registry, tables
from ztaudit.detectors.base import DetectContext
from ztaudit.detectors.engine import DuckDBEngine, Session
from ztaudit.detectors.findings_store import write_findings

log = logging.getLogger(__name__)
#: The name of every derived table's files (one per day): each run's build replaces them.
DERIVED_KEY = "derived"


class DetectError(ZtauditError):
    """A usage error of detect (unknown detector id)."""

    exit_code = 2


@dataclass
class RunResult:
    """What one run did: findings per detector, errors, and the new/changed finding rows."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    tables_built: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)


def select_detectors(ids: Sequence[str] | None) -> list[str]:
    """The detector ids to run: every registered one, or ``ids`` after checking each is registered."""
    if not ids:
        return list(registry.DETECTORS)
    unknown = [d for d in ids if d not in registry.DETECTORS]
    if unknown:
        raise DetectError(f"unknown detector {unknown[0]!r}",
                          fix=f"use one of: {', '.join(sorted(registry.DETECTORS))}")
    return list(ids)


def write_derived(sink: LakeSink, name: str, table: pa.Table, cover: tables.Cover) -> None:
    """Make ``table`` the rows of derived table ``name`` whose partition time is in ``cover``
    (``[lo, hi)``; None: the whole table), keeping every other row. Called by :func:`build_derived`.

    One file per day (``derived.parquet``): a day of the cover the build has no rows for loses its
    file, a day outside it is not touched, and the day on each edge of a cover that cuts through a
    day is rewritten with its old rows outside the cover (an hourly ``reach`` run from 14:00 keeps
    the morning's windows). Raises :class:`SinkError` when a file cannot be read or written.
    """
    if cover is None:
        sink.write_chunk({name: table}, [], DERIVED_KEY, scope=(name,))
        return
    lo, hi = cover
    column, schema = PARTITION_TIME[name], TABLES[name]
    first, last = utc_day(lo), utc_day(hi - timedelta(microseconds=1))
    index = sink.day_index(name)
    days = {d for d in index if d != UNDATED and first <= d <= last}

    def inside(t: pa.Table) -> pa.Array:
        at = t.column(column)
        return pc.and_kleene(pc.greater_equal(at, pa.scalar(lo, at.type)), pc.less(at, pa.scalar(hi, at.type)))

    table = conform(table, schema)
    kept = [table.filter(pc.fill_null(inside(table), False))]  # a build never reaches outside its cover
    for day in sorted(days & {first, last}):
        path = sink.path_for(name, day, DERIVED_KEY)
        if path.name not in index[day]:
            continue
        try:
            old = sink.read_table(path)
            # the file's own columns: a hive reader adds the folder's dt, which is no column of the schema
            old = conform(old.drop_columns([c for c in old.column_names if c not in schema.names]), schema)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise SinkError(f"cannot read {sink.display(path)} to keep its rows outside this run's window: {exc}",
                            fix="check that it is readable, or run detect without --since/--until to rebuild "
                                "the whole table") from exc
        kept.append(old.filter(pc.invert(pc.fill_null(inside(old), False))))
    sink.write_chunk({name: pa.concat_tables(kept)}, [], DERIVED_KEY, scope=(name,), days=days)


def build_derived(ctx: DetectContext, lake: Path, result: RunResult,
                  progress: ProgressCallback | None = None, steps: int = 0) -> None:
    """Build and write every table of :data:`tables.DERIVED_TABLES`; errors go to ``result.errors``.

    ``progress`` is told ``(tables done, steps, "table:NAME")`` before each table is built."""
    sink = LakeSink(lake)
    # Temporary files a killed detect left (the sink sweeps the derived tables' own days).
    for d in (lake / "_state", *day_dirs(lake / "findings")):
        sweep_temp_files(d)
    for i, (name, derived) in enumerate(tables.DERIVED_TABLES.items()):
        if progress is not None:
            progress(i, steps or len(tables.DERIVED_TABLES), f"table:{name}")
        t0 = time.perf_counter()
        try:
            table = derived.build(ctx)
            write_derived(sink, name, table, derived.cover(ctx))
            result.tables_built[name] = table.num_rows
        except ZtauditError:
            raise
        except Exception as exc:  # a broken builder must not stop the other detectors
            log.error("building derived table %s failed: %s", name, exc)
            result.errors[f"table:{name}"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        result.seconds[f"table:{name}"] = time.perf_counter() - t0
    sink.publish()  # an Iceberg lake: the new versions become the tables' snapshot
    ctx.engine.read_lake(lake, Window(ctx.since, ctx.until))  # the new tables, readable


def run_detectors(lake: str | Path, config: Config, *, since: datetime | None = None,
                  until: datetime | None = None, detector_ids: Sequence[str] | None = None,
                  build_tables: bool = True, write: bool = True,
                  con: Session | None = None,
                  memory_limit: str | None = None, progress: ProgressCallback | None = None,
                  engine: str | None = None) -> RunResult:
    """Run the selected (default: all) detectors over [since, until) and store their findings.

    ``con``: an open engine, or lake connection, to reuse (the caller keeps owning it); else a DuckDB
    engine is opened here (``engine``, default ``config.detect.engine``: ``duckdb`` with a private spill
    directory, or ``spark``, a :class:`~ztaudit.detectors.spark_engine.SparkEngine` over the lake's
    Iceberg catalog, whose errors for a plain lake or missing jars are raised before anything runs)
    and closed at the end. ``progress``
    (``ztaudit detect``'s line on a terminal) is told ``(steps done, steps, step)`` before each derived
    table and each detector.
    """
    lake = Path(lake)
    ids = select_detectors(detector_ids)
    if con is not None:
        return _run(con, lake, config, ids, since=since, until=until, build_tables=build_tables, write=write,
                    progress=progress)
    if (engine or config.detect.engine) == "spark":
        from ztaudit.detectors.spark_engine import SparkEngine  # PySpark is an optional extra

        spark = SparkEngine.open(lake, master=config.detect.spark_master, jars=config.detect.spark_jars)
        try:
            return _run(spark, lake, config, ids, since=since, until=until, build_tables=build_tables, write=write,
                        progress=progress)
        finally:
            spark.close()
    with spill_directory() as spill:
        own = DuckDBEngine.open(lake, must_exist=False, memory_limit=memory_limit, spill_dir=spill)
        try:
            return _run(own, lake, config, ids, since=since, until=until, build_tables=build_tables, write=write,
                        progress=progress)
        finally:
            own.close()


def _run(con: Session, lake: Path, config: Config, ids: list[str], *, since: datetime | None,
         until: datetime | None, build_tables: bool, write: bool,
         progress: ProgressCallback | None = None) -> RunResult:
    """:func:`run_detectors` on an open engine (or lake connection)."""
    result = RunResult()
    ctx = DetectContext(con=con, config=config, since=since, until=until, lake=str(lake))
    n_tables = len(tables.DERIVED_TABLES) if build_tables else 0
    steps = n_tables + len(ids) + (1 if write else 0)
    if build_tables:
        build_derived(ctx, lake, result, progress, steps)
    now = datetime.now(UTC)
    ok: list[str] = []
    for i, did in enumerate(ids):
        if progress is not None:
            progress(n_tables + i, steps, did)
        t0 = time.perf_counter()
        try:
            findings = registry.get(did).run(ctx)
        except ZtauditError:
            raise
        except Exception as exc:  # one broken detector must not hide the others' findings
            log.error("detector %s failed: %s", did, exc)
            result.errors[did] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            result.seconds[did] = time.perf_counter() - t0
            continue
        rows = [f.row(now) for f in findings]
        try:  # a detector's malformed row (e.g. NaN in a text column) fails that detector only
            pa.Table.from_pylist(rows, schema=FINDINGS)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            log.error("detector %s returned a finding the findings table cannot hold: %s", did, exc)
            result.errors[did] = f"invalid finding row: {type(exc).__name__}: {exc}"
            result.seconds[did] = time.perf_counter() - t0
            continue
        ok.append(did)
        result.seconds[did] = time.perf_counter() - t0
        result.counts[did] = len(findings)
        result.rows.extend(rows)
    if write:
        if progress is not None:
            progress(steps - 1, steps, "writing findings")
        try:
            result.changed = write_findings(lake, result.rows, detectors=ok, since=since, until=until,
                                            lock_timeout=config.detect.lock_timeout_seconds)
        except OSError as exc:  # the store turns most of these into SinkError; none may become a traceback
            raise SinkError(f"cannot write findings to {lake / 'findings'}: {exc.strerror or exc}",
                            fix="pass a --lake directory you can write (check its permissions and free space)") \
                from exc
    return result

"""Reading the lake's Iceberg tables: the data files of the current snapshot, and the Kafka offsets
the snapshots record.

:func:`snapshot_files` lists the data files of the current snapshot, optionally only those of a ``dt``
range (Iceberg prunes manifests by partition summaries); DuckDB reads exactly that list
(``read_parquet([...])``, :mod:`ztaudit.core.catalog`), never a glob. A whole snapshot planned once is
remembered (:mod:`ztaudit.core.plan_cache`), so a later process opens the lake without pyiceberg.
Manifests hold absolute paths (the Iceberg spec has no relative ones): a lake copied or moved
elsewhere is refused with the fix (``ztaudit migrate`` registers its files again at the new place).

The consumer's rounds: :func:`~ztaudit.core.iceberg_publish.publish` puts a round's offsets on the
round's last commit (:func:`offsets_summary`); :func:`last_rounds` reads them back after a crash.
Errors surface as :class:`~ztaudit.core.errors.LakeError` naming the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from ztaudit.core import plan_cache
from ztaudit.core.iceberg import (
    CATALOG_NAME,
    ICEBERG_DIR,
    NAMESPACE,
    catalog_file,
    check_location,
    data_root,
    identifier,
    is_iceberg,
    is_shared,
    lake_error,
    lake_location,
    local_path,
    open_catalog,
)
from ztaudit.core.schema import TABLES

#: Snapshot summary keys of the Kafka offsets a publish made durable: ``<prefix><topic>.<partition>``.
OFFSETS_PREFIX: Final = "ztaudit.offsets."
#: ... and the offset the round started at: ``<prefix><topic>.<partition>`` (not a prefix of the above).
STARTS_PREFIX: Final = "ztaudit.offsets_from."


def snapshot_files(lake: Path, table: str, days: tuple[str, str] | None = None) -> list[str]:
    """Local paths of ``table``'s data files in the current snapshot, sorted; only those whose ``dt``
    lies in ``days`` (inclusive ``YYYY-MM-DD`` bounds) when given. Called by the DuckDB views; raises
    :class:`LakeError` for a lake copied or moved since its files were registered, and for a table
    whose metadata file, manifest list or manifests cannot be read."""
    # a whole snapshot planned before in any process: no pyiceberg import (core/plan_cache.py); only
    # for a SQLite catalog and metadata on disk (on S3 the checks of the metadata would be requests)
    location = lake_location(lake)
    cacheable = days is None and not is_shared(lake) and not location.startswith("s3://")
    folder = Path(lake) / ICEBERG_DIR
    if cacheable:
        known = plan_cache.recall(folder, catalog_file(lake), CATALOG_NAME, NAMESPACE, table, location,
                                  str(data_root(lake)))
        if known is not None:
            return known
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(lake)
    try:
        tbl = catalog.load_table(identifier(table))
    except NoSuchTableError:
        return []
    except Exception as exc:
        raise lake_error(lake, f"loading {table}", exc) from exc
    check_location(lake, tbl)
    snap = tbl.current_snapshot()
    if days is not None:
        lo, hi = (date.fromisoformat(d).isoformat() for d in days)  # ValueError on anything but a date
    try:  # a manifest list or manifest lost or damaged: one line naming the table, as for the metadata
        if snap is None:
            files: list[str] = []
        elif days is None:
            files = sorted(local_path(task.file.file_path) for task in tbl.scan().plan_files())
        else:
            scan = tbl.scan(row_filter=f"dt >= '{lo}' AND dt <= '{hi}'")
            return sorted(local_path(task.file.file_path) for task in scan.plan_files())
        # what the remembered list is checked against (read only when it will be remembered)
        planned_from = [] if not cacheable else [tbl.metadata_location] if snap is None else [
            tbl.metadata_location, snap.manifest_list, *(m.manifest_path for m in snap.manifests(tbl.io))]
    except Exception as exc:
        raise lake_error(lake, f"planning {table}", exc) from exc
    if cacheable:
        plan_cache.remember(folder, catalog_file(lake), table, tbl.metadata_location, location,
                            [local_path(p) for p in planned_from], files)
    return files


def snapshot_entries(lake: Path, table: str, days: tuple[str, str] | None) -> dict[str, tuple[int, int]]:
    """Path or URI -> (bytes, rows) of ``table``'s data files in the current snapshot whose ``dt`` lies in
    ``days`` (None: ``dt`` NULL, the ``unknown`` day): what :func:`publish`'s ``expect`` compares. Raises
    :class:`LakeError` as :func:`snapshot_files` does."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        tbl = open_catalog(lake).load_table(identifier(table))
    except NoSuchTableError:
        return {}
    except Exception as exc:
        raise lake_error(lake, f"loading {table}", exc) from exc
    if tbl.current_snapshot() is None:
        return {}
    if days is None:
        expr = "dt IS NULL"
    else:
        lo, hi = (date.fromisoformat(d).isoformat() for d in days)  # ValueError on anything but a date
        expr = f"dt >= '{lo}' AND dt <= '{hi}'"
    return {local_path(t.file.file_path): (t.file.file_size_in_bytes, t.file.record_count)
            for t in tbl.scan(row_filter=expr).plan_files()}


def snapshot_offsets(lake: Path, table: str) -> dict[tuple[str, int], int]:
    """The Kafka offsets recorded in the summaries of ``table``'s snapshots, newest first per
    partition: ``{(topic, partition): next offset}``; empty on a plain lake or without any."""
    if not is_iceberg(lake):
        return {}
    from pyiceberg.exceptions import NoSuchTableError

    try:
        tbl = open_catalog(lake).load_table(identifier(table))
    except NoSuchTableError:
        return {}
    found: dict[tuple[str, int], int] = {}
    for snap in sorted(tbl.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True):
        props = snap.summary.additional_properties if snap.summary else {}
        for k, v in props.items():
            if k.startswith(OFFSETS_PREFIX):
                topic, _, part = k[len(OFFSETS_PREFIX):].rpartition(".")
                found.setdefault((topic, int(part)), int(v))
    return found


@dataclass(frozen=True)
class LastRound:
    """The newest consumer round a lake's snapshots record for one Kafka partition: it read offsets
    ``start`` (None when written by a version that did not record it) up to ``end`` (exclusive)."""

    start: int | None
    end: int


def last_rounds(lake: Path) -> dict[tuple[str, int], LastRound]:
    """Per Kafka (topic, partition), the newest round any table's snapshots record (by commit time).

    Every record of that round is registered in the lake (:func:`publish` puts a round's offsets on
    its last commit). Called by the consumer when a partition's first records arrive, to skip a round
    committed to Iceberg but not to Kafka (a crash between the two): only when reading begins inside
    that round, so a re-created topic, a group moved back or another Kafka cluster's offsets (which
    merely share the topic's name) are never taken for it. Empty on a plain lake. Expired snapshots
    take their rounds with them (then the replay, idempotent, happens). Raises :class:`LakeError` or
    the catalog driver's error when the catalog cannot be read."""
    found: dict[tuple[str, int], tuple[int, int, LastRound]] = {}
    if not is_iceberg(lake):
        return {}
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(lake)
    for table in TABLES:
        try:
            tbl = catalog.load_table(identifier(table))
        except NoSuchTableError:
            continue
        for snap in tbl.snapshots():
            props = snap.summary.additional_properties if snap.summary else {}
            when = (snap.timestamp_ms, snap.sequence_number or 0)
            for k, v in props.items():
                if not k.startswith(OFFSETS_PREFIX):
                    continue
                topic, _, part = k[len(OFFSETS_PREFIX):].rpartition(".")
                start = props.get(f"{STARTS_PREFIX}{topic}.{part}")
                tp = (topic, int(part))
                if tp not in found or found[tp][:2] < when:
                    found[tp] = (*when, LastRound(int(start) if start is not None else None, int(v)))
    return {tp: r for tp, (_, _, r) in found.items()}


def offsets_summary(offsets: Mapping[tuple[str, int], int],
                    starts: Mapping[tuple[str, int], int] | None = None) -> dict[str, str]:
    """Snapshot properties for a round: ``{(topic, partition): next offset}`` (:data:`OFFSETS_PREFIX`)
    and, when given, the offset it started at per partition (:data:`STARTS_PREFIX`)."""
    out = {f"{OFFSETS_PREFIX}{t}.{p}": str(o) for (t, p), o in sorted(offsets.items())}
    out.update({f"{STARTS_PREFIX}{t}.{p}": str(o) for (t, p), o in sorted((starts or {}).items())})
    return out

"""Golden files: every sample log, normalized, equals its reviewed output under tests/golden/.

Each file under ``sample_logs/<kind>/`` is read with the real file reader
(:func:`ztaudit.pipeline.sources.files.read_chunks`) and normalized by
:func:`ztaudit.pipeline.process.process` with the source kind *not* named (detection, as
``ztaudit ingest sample_logs`` does) and ``--cluster demo``. The output -- table rows and
quarantine records, ``ingested_at`` excluded -- is written as sorted JSON lines to
``tests/golden/<kind>/<file>.golden.jsonl``.

When normalization changes on purpose, regenerate with ``scripts/update-golden`` (which runs this
file with ``--update``) and review ``git diff tests/golden`` line by line before committing: the
goldens are the reviewed statement of what each sample means.
"""

from __future__ import annotations

import difflib
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.process import FAST_PATH_MIN_RECORDS, process
from ztaudit.pipeline.records import RawBatch
from ztaudit.pipeline.sources.files import read_chunks
from ztaudit.pipeline.sources.inputs import InputFile

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "sample_logs"
GOLDEN = ROOT / "tests" / "golden"
KINDS = ("k8s_audit", "proxy_decision", "idp_event", "rbac_snapshot")
CLUSTER = "demo"
EXCLUDED = ("ingested_at",)


def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix != ".md" and not p.name.startswith("."))


def golden_path(sample: Path) -> Path:
    rel = sample.relative_to(SAMPLES)
    return GOLDEN / rel.parent / f"{rel.name}.golden.jsonl"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):  # Arrow map -> dict
            return {str(k): _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def normalize_sample(sample: Path, fast_min: int = FAST_PATH_MIN_RECORDS) -> tuple[list[str], set[str]]:
    """Golden lines for one sample file, and the table names it produced (``fast_min``: the
    fast-path threshold of ``process()``; the goldens hold for both paths)."""
    rel = sample.relative_to(ROOT).as_posix()
    ctx = NormalizeContext(cluster=CLUSTER, ingested_at=datetime(2026, 11, 27, tzinfo=UTC))
    out: list[dict[str, Any]] = []
    tables: set[str] = set()
    for chunk in read_chunks(InputFile(sample, rel), 64 * 1024 * 1024, 1024 * 1024):
        result = process(RawBatch(chunk.records, chunk.origins, source=None, cluster=CLUSTER), ctx,
                         fast_path_min_records=fast_min)
        for name, table in result.tables.items():
            tables.add(name)
            for row in table.to_pylist():
                out.append({"_table": name, **{k: _plain(v) for k, v in row.items() if k not in EXCLUDED}})
        for r in result.rejected:
            tables.add("quarantine")
            out.append({"_table": "quarantine", "origin": r.origin, "reason": str(r.reason), "detail": r.detail,
                        "source_guess": r.source_guess, "raw_size": r.raw_size, "raw": _plain(r.raw)})
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in out]
    # deterministic: by table, then origin line number, then the whole row
    def key(line: str) -> tuple[str, int, str]:
        row = json.loads(line)
        origin = str(row.get("origin") or "")
        tail = origin.rsplit(":", 1)[-1]
        return row["_table"], int(tail) if tail.isdigit() else -1, line

    return sorted(lines, key=key), tables


SAMPLE_IDS = [p.relative_to(SAMPLES).as_posix() for p in sample_files()]


@pytest.mark.parametrize("fast_min", [0, 10**9], ids=["fast_path", "per_record"])
@pytest.mark.parametrize("rel", SAMPLE_IDS)
def test_sample_matches_golden(rel: str, fast_min: int) -> None:
    """Both paths of process() (columnar fast path, per-record path) give the reviewed output."""
    sample = SAMPLES / rel
    expected_file = golden_path(sample)
    assert expected_file.is_file(), f"no golden for {rel}: run scripts/update-golden and review the new file"
    got, _ = normalize_sample(sample, fast_min)
    expected = expected_file.read_text(encoding="utf-8").splitlines()
    if got != expected:
        diff = "\n".join(list(difflib.unified_diff(expected, got, "golden", "now", lineterm="", n=0))[:40])
        pytest.fail(f"{rel} no longer normalizes to its golden file; if intended, run scripts/update-golden "
                    f"and review the diff.\n{diff}")


@pytest.mark.parametrize("rel", SAMPLE_IDS)
def test_sample_lands_in_its_folder_kind(rel: str) -> None:
    """Detection is precise: sample_logs/<kind>/ yields only <kind> rows (and quarantine)."""
    kind = rel.split("/", 1)[0]
    assert kind in KINDS
    _, tables = normalize_sample(SAMPLES / rel)
    assert tables - {"quarantine"} <= {kind}, tables


def test_no_stale_goldens() -> None:
    expected = {golden_path(p) for p in sample_files()}
    present = set(GOLDEN.rglob("*.golden.jsonl"))
    assert present <= expected, f"goldens without a sample: {sorted(str(p) for p in present - expected)}"


def test_every_source_folder_has_samples() -> None:
    for kind in KINDS:
        assert any((SAMPLES / kind).iterdir()), kind


def update() -> int:
    """Rewrite every golden file (called by scripts/update-golden). Returns files changed."""
    changed = 0
    for stale in set(GOLDEN.rglob("*.golden.jsonl")) - {golden_path(p) for p in sample_files()}:
        stale.unlink()
        print(f"removed {stale.relative_to(ROOT)}")
        changed += 1
    for sample in sample_files():
        lines, _ = normalize_sample(sample)
        target = golden_path(sample)
        text = "".join(line + "\n" for line in lines)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target.relative_to(ROOT)} ({len(lines)} rows)")
            changed += 1
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/pipeline/test_golden.py --update   (or scripts/update-golden)")
    n = update()
    print(f"{n} golden file(s) changed; review `git diff tests/golden` before committing")

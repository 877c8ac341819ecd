"""``ztaudit generate``: realistic synthetic audit, proxy and IdP logs with labelled incidents.

The output directory is what ``ztaudit ingest DIR`` reads: the logs in ``k8s_audit/``,
``proxy_decision/`` and ``idp_event/``. The generator's metadata is in the hidden ``DIR/.ztaudit/``
(which ``ingest`` skips): ``labels.jsonl`` says which findings the detectors should (incident) and
should not (near_miss) produce, ``manifest.json`` and the data set's ``ztaudit.toml``. Same options,
same bytes.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import click

from ztaudit.core.errors import ZtauditError
from ztaudit.core.progress import ProgressLine
from ztaudit.synth.engine import GenerateOptions, metadata_dir
from ztaudit.synth.engine import generate as run_generate
from ztaudit.synth.incident_context import ALL_KINDS


class GenerateUsageError(ZtauditError):
    """Bad ``generate`` options (unknown incident kind, bad date)."""

    exit_code = 2


def _kinds(value: str) -> frozenset[str]:
    v = value.strip().lower()
    if v in ("all", ""):
        return ALL_KINDS
    if v == "none":
        return frozenset()
    kinds = frozenset(k.strip() for k in value.split(",") if k.strip())
    unknown = sorted(kinds - ALL_KINDS)
    if unknown:
        raise GenerateUsageError(f"unknown incident kind(s): {', '.join(unknown)}",
                                 fix=f"use all, none, or a comma list of: {', '.join(sorted(ALL_KINDS))}")
    return kinds


@click.command("generate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write: k8s_audit/, proxy_decision/, idp_event/, and .ztaudit/ (labels.jsonl, "
                   "manifest.json, ztaudit.toml).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 366), help="Days of traffic.")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.001, 1000),
              help="Traffic multiplier (1 = about 75k audit events per cluster-day).")
@click.option("--seed", default=1, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--clusters", default="prod,staging,dev", show_default=True, help="Comma-separated cluster names.")
@click.option("--start", default="2026-11-02", show_default=True, help="First day (UTC), YYYY-MM-DD.")
@click.option("--incidents", "incidents", default="all", show_default=True,
              help="all | none | comma list of detector ids (impersonation.proxy_bypass, ...).")
@click.option("--events", default=None, type=click.IntRange(1000, None),
              help="Approximate total audit events; overrides --scale.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")
def generate(out: Path, days: int, scale: float, seed: int, clusters: str, start: str, incidents: str,
             events: int | None, quiet: bool) -> None:
    """Generate realistic synthetic traffic with labelled incidents into OUT."""
    names = tuple(c.strip() for c in clusters.split(",") if c.strip())
    if not names or len(set(names)) != len(names):
        raise GenerateUsageError(f"--clusters {clusters!r}: give distinct names", fix="e.g. --clusters prod,staging")
    try:
        date.fromisoformat(start)
    except ValueError as exc:
        raise GenerateUsageError(f"--start {start!r} is not YYYY-MM-DD") from exc
    opts = GenerateOptions(out=out, days=days, scale=scale, seed=seed, clusters=names, start=start,
                           incidents=_kinds(incidents), events=events)
    t0 = time.perf_counter()
    with ProgressLine.auto("generate", quiet=quiet, unit="hours") as line:  # on a terminal only
        result = run_generate(opts, progress=line)
    took = time.perf_counter() - t0
    if quiet:
        return
    kinds = result.manifest["counts"]["by_kind"]
    n_inc = sum(1 for lab in result.labels if lab.kind == "incident")
    n_near = len(result.labels) - n_inc
    click.echo(f"wrote {out}: {kinds['k8s_audit']:,} audit events, {kinds['proxy_decision']:,} proxy lines, "
               f"{kinds['idp_event']:,} IdP events; {n_inc} incidents, {n_near} near-misses labelled "
               f"({took:.1f} s, {kinds['k8s_audit'] / max(took, 1e-9):,.0f} audit events/s)")
    meta = metadata_dir(out)
    click.echo(f"labels and manifest in {meta}; next: ztaudit ingest --config {(meta / 'ztaudit.toml').resolve()} "
               f"--lake LAKE {out.resolve()}")

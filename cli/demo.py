"""``ztaudit demo``: sample logs -> lake -> detect -> reports, on this machine, no Kafka.

Steps (each says what it did): find ``sample_logs/`` (``--samples``, ``$ZTAUDIT_SAMPLE_LOGS``, or
the checkout's ``sample_logs/`` next to the package: the demo runs from a source checkout /
editable install; a wheel does not carry the sample logs), rebuild the demo lake, ingest each
``sample_logs/<source kind>/`` folder with that source kind (``rbac_snapshot/`` included: the demo
cluster's RBAC snapshot), run every detector (which also builds the derived ``reach`` and
``credentials`` tables), then print ``report summary``, ``report findings``, ``report revocation``
and ``report nhi``.

The lake is rebuilt from scratch each run (so the demo is reproducible) unless ``--keep``; a
directory that is not empty and was not made by ``demo`` is never deleted (marker file
``.ztaudit-demo``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click

import ztaudit.pipeline as pipeline_pkg
from ztaudit.core.config import Config, load_config
from ztaudit.core.errors import LakeError, SourceError
from ztaudit.core.files import makedirs
from ztaudit.core.lake import open_lake
from ztaudit.core.schema import SOURCE_KINDS
from ztaudit.detectors.run import run_detectors
from ztaudit.pipeline.ingest import ingest_paths
from ztaudit.pipeline.normalize.rbac_snapshot import SOURCE as RBAC_SNAPSHOT
from ztaudit.reports import run_report
from ztaudit.reports.base import Progress, ReportContext
from ztaudit.reports.filters import Filters
from ztaudit.reports.formats import render

MARKER = ".ztaudit-demo"


def find_sample_logs(explicit: str | None = None) -> Path:
    """The sample logs directory: ``explicit``, ``$ZTAUDIT_SAMPLE_LOGS``, or the checkout's."""
    candidates = [explicit, os.environ.get("ZTAUDIT_SAMPLE_LOGS"),
                  str(Path(pipeline_pkg.__file__).resolve().parent.parent / "sample_logs")]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).rglob("*.*")):
            return Path(c)
    raise SourceError("sample logs not found",
                      fix="run the demo from a source checkout (it reads sample_logs/), or pass --samples DIR")


def prepare_lake(lake: Path, *, keep: bool) -> None:
    """Empty ``lake`` for a fresh demo (only if it is a demo lake) and mark it; ``keep`` leaves it."""
    if lake.exists() and not keep:
        if not (lake / MARKER).exists() and any(lake.iterdir()):
            raise LakeError(f"{lake} exists and was not created by `ztaudit demo`; refusing to delete it",
                            fix="pass another --lake, or --keep to add the sample logs to it")
        shutil.rmtree(lake)
    makedirs(lake)  # 0700 like every lake directory (sink.makedirs), whatever the umask
    (lake / MARKER).write_text("created by `ztaudit demo`; safe to delete\n")


def ingest_samples(samples: Path, lake: Path, cfg: Config, *, echo: bool, cluster: str | None = "demo") -> None:
    """Ingest each ``samples/<source kind>/`` folder (others with source detection).

    Plain audit lines do not name their cluster; the sample logs all come from cluster ``demo``
    (envelopes that name theirs, GKE/AKS/EKS, keep their own).
    """
    kinds = [k for k in (*SOURCE_KINDS, RBAC_SNAPSHOT) if (samples / k).is_dir()]
    batches: list[tuple[list[Path], str | None]] = [([samples / k], k) for k in kinds]
    if not kinds:
        batches = [([samples], None)]
    for paths, kind in batches:
        stats = ingest_paths(paths, lake, source=kind, cluster=cluster, config=cfg, progress=False)
        if echo:
            rows = ", ".join(f"{t}={n}" for t, n in sorted(stats.rows.items())) or "no rows"
            q = stats.quarantined_total
            click.echo(f"ingested {paths[0]} ({kind or 'auto-detected'}): {rows}"
                       + (f", {q} quarantined" if q else ""), err=True)


def run_detect(lake: Path, cfg: Config, *, echo: bool) -> bool:
    """Run every detector over the demo lake (called by :func:`demo` after ingest).

    Returns False after printing the error when detect raised or a detector failed, so the reports
    still run and the demo exits 1 at the end.
    """
    try:
        result = run_detectors(lake, cfg)
    except Exception as exc:  # a detector bug must not hide the lake's reports; reported, exit 1 at the end
        click.echo(f"ztaudit demo: detect failed: {type(exc).__name__}: {exc}", err=True)
        return False
    if result.errors:
        click.echo(f"ztaudit demo: detectors failed: {', '.join(result.errors)}", err=True)
    if echo:
        click.echo(f"detect: {sum(result.counts.values())} findings from {len(result.counts)} detectors", err=True)
    return not result.errors


def shell_path(path: Path) -> str:
    """``path`` made absolute and quoted for a shell, for hints a user copies from any directory."""
    return shlex.quote(str(path.resolve()))


def next_steps(lake: Path) -> str:
    """The "next:" hint printed after the demo's reports: commands that work from any directory."""
    at = shell_path(lake)
    notebooks = Path(pipeline_pkg.__file__).resolve().parent.parent / "notebooks"
    nb = shlex.quote(str(notebooks)) if notebooks.is_dir() else "notebooks/"
    return (f"next: ztaudit report identity ACTOR --lake {at}"
            f" | ztaudit report summary --lake {at} --format html"
            f" | ztaudit catalog --lake {at} --out demo.duckdb"
            f" | ZTAUDIT_LAKE={at} jupyter lab {nb}")


@click.command(context_settings={"max_content_width": 100})
@click.option("--lake", default="./demo-lake", show_default=True, type=click.Path(file_okay=False),
              help="Demo lake directory (rebuilt each run unless --keep; not read from ZTAUDIT_LAKE).")
@click.option("--keep", is_flag=True, help="Keep the lake's current contents (add to it instead of rebuilding).")
@click.option("--samples", type=click.Path(file_okay=False, exists=True),
              help="Sample logs directory (default: the checkout's sample_logs/).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="ztaudit.toml to use.")
@click.option("--cluster", default="demo", show_default=True,
              help="Cluster name for sample records whose envelope does not name one.")
@click.option("--width", type=click.IntRange(40), default=100, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Only the reports; no step messages.")
def demo(lake: str, keep: bool, samples: str | None, config_path: str | None, cluster: str, width: int,
         quiet: bool) -> None:
    """Ingest the sample logs, detect, and print the summary, findings, revocation and nhi reports."""
    cfg = load_config(config_path)
    src = find_sample_logs(samples)
    path = Path(lake)
    echo = not quiet
    prepare_lake(path, keep=keep)
    if echo:
        click.echo(f"demo lake: {path.resolve()} (from {src.resolve()})", err=True)
    ingest_samples(src, path, cfg, echo=echo, cluster=cluster)
    detected = run_detect(path, cfg, echo=echo)
    con = open_lake(path)
    try:
        for name in ("summary", "findings", "revocation", "nhi"):
            ctx = ReportContext(con=con, config=cfg, filters=Filters(),
                                progress=Progress.auto(sys.stderr, quiet=quiet), limit=50)
            click.echo(render(run_report(name, ctx), "table", width=width))
    finally:
        con.close()
    if echo:
        click.echo(next_steps(path), err=True)
    if not detected:
        raise DemoIncomplete("detect failed; the reports above show the lake without (all) findings\n"
                             f"  fix: see the error above; run `ztaudit -vv detect --lake {shell_path(path)}`")


class DemoIncomplete(click.ClickException):
    """The demo ran its reports but a step before them failed (exit code 1)."""

    exit_code = 1

"""A throwaway S3 warehouse for the benchmarks: S3Proxy (``scripts/s3proxy``, 127.0.0.1) and the
environment that makes a new Iceberg lake keep its files there (``lake.warehouse``).

Used by ``bench/ingest.py`` and ``bench/consume.py`` to measure the same run into a lake on S3 beside
the local one (issue 16: "on s3proxy, the figures alongside"). Needs ``scripts/s3proxy fetch`` once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "s3proxy"


@contextlib.contextmanager
def s3_warehouse(work: Path, name: str) -> Iterator[dict[str, str]]:
    """Start S3Proxy in ``work/s3proxy``, make a bucket, and yield the environment of a lake whose warehouse
    is ``s3://bench/<name>`` (also set in ``os.environ`` for the block, so subprocesses inherit it); the
    environment is restored and the store stopped by PID afterwards, whatever happens."""
    d = work / "s3proxy"
    script = [sys.executable, str(SCRIPT)]
    subprocess.run([*script, "start", "--dir", str(d)], check=True)
    saved = dict(os.environ)
    try:
        subprocess.run([*script, "mb", "--dir", str(d), "bench"], check=True)
        env = {
            "ZTAUDIT_LAKE_FORMAT": "iceberg",
            "ZTAUDIT_LAKE_WAREHOUSE": f"s3://bench/{name}",
            "ZTAUDIT_LAKE_S3_ENDPOINT": (d / "endpoint").read_text().strip(),
            "AWS_ACCESS_KEY_ID": (d / "access_key").read_text().strip(),
            "AWS_SECRET_ACCESS_KEY": (d / "secret_key").read_text().strip(),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        os.environ.update(env)
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)
        subprocess.run([*script, "stop", "--dir", str(d)], check=False)

"""Steps 3 and 4 of a webhook post (:mod:`ztaudit.pipeline.sources.webhook`): process the body and
write it to the lake under a key made from its bytes, so a re-sent batch rewrites the same files.

Called by the server's one worker thread (:class:`PostWriter`); bad bodies become quarantine, a
lake that refuses a write raises :class:`~ztaudit.core.errors.SinkError` (the server answers 503
and the API server re-sends).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Final

import pyarrow as pa

from ztaudit.core.sink import LakeSink
from ztaudit.pipeline.normalize.base import NormalizeContext
from ztaudit.pipeline.normalize.k8s_audit import SOURCE as K8S
from ztaudit.pipeline.process import process
from ztaudit.pipeline.records import BatchResult, LineOrigins, RawBatch

log = logging.getLogger("ztaudit.pipeline.sources.webhook")

#: Prefix of every file key serve writes (ingest keys are ``<16 hex>+<start>``, Kafka's
#: ``<topic>+<partition>+<offset>``: no overlap).
KEY_PREFIX: Final = "webhook+"
#: Fault injection for the crash tests: SIGKILL this process after N posts were written (renamed
#: into place) and before their answer -- the worst moment for exactly-once.
KILL_AFTER_POSTS_ENV: Final = "ZTAUDIT_TEST_SERVE_KILL_AFTER_POSTS"


def post_key(cluster: str | None, body: bytes) -> str:
    """The deterministic file key of a post: ``webhook+`` and 32 hex of sha256(cluster, body).

    The cluster is in it because it is a column of every row: the same bytes from two clusters
    are two sets of rows. A re-sent batch (the same bytes, the same cluster) gets the same key."""
    h = hashlib.sha256((cluster or "").encode("utf-8"))
    h.update(b"\x00")
    h.update(body)
    return KEY_PREFIX + h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PostOrigins(LineOrigins):
    """Origins of a post's records: ``webhook:<remote address>/<body sha256>`` (``path`` holds
    ``<remote address>/<body sha256>``). The body is one record; its entries share the origin."""

    def at(self, i: int) -> str:
        return f"webhook:{self.path}" if i == 0 else f"webhook:{self.path}#{i}"

    def prefix(self) -> str:
        return f"webhook:{self.path}#"

    def line_numbers(self, n: int) -> range:
        return range(n)


@dataclass(frozen=True)
class PostResult:
    """What one post became (for the answer and the per-post log line)."""

    key: str
    sha256: str
    result: BatchResult
    files: int


class PostWriter:
    """Steps 3 and 4 of a post (module docstring), on the one worker thread: ``process()`` the
    body, write its tables and quarantine under :func:`post_key`. Raises SinkError (the lake
    refused a write); bad bodies never raise."""

    def __init__(self, sink: LakeSink, ctx: NormalizeContext, max_body_bytes: int) -> None:
        self.sink = sink
        self.ctx = ctx
        self.max_body_bytes = max_body_bytes
        kill = os.environ.get(KILL_AFTER_POSTS_ENV)
        self._kill_after = int(kill) if kill else None
        self._written = 0

    def write(self, body: bytes, peer: str, cluster: str | None) -> PostResult:
        sha = hashlib.sha256(body).hexdigest()
        key = post_key(cluster, body)
        batch = RawBatch([body], PostOrigins(f"{peer}/{sha}"), source=K8S, cluster=cluster)
        # The cluster is the authenticated caller's, never a field of the body (cluster_fields=()):
        # a token for one cluster must not be able to write rows of another.
        result = process(batch, self.ctx, max_record_bytes=self.max_body_bytes, cluster_fields=())
        # ... nor of an envelope inside it: a GKE/AKS/EKS envelope names its own cluster, which
        # ingest honours; here every row is the caller's cluster.
        if cluster is not None:
            result.tables = {name: _with_cluster(t, cluster) for name, t in result.tables.items()}
        paths: list[PurePath] = []
        for name, table in sorted(result.tables.items()):
            paths += self.sink.write(name, table, key)
        now = datetime.now(UTC)
        paths += self.sink.write_quarantine(result.rejected, key, now)
        self._drop_other_days(key, now, paths)
        # An Iceberg lake: the post's rows are in the snapshot before the API server hears 200.
        self.sink.publish()
        self._written += 1
        if self._kill_after is not None and self._written >= self._kill_after:
            log.warning("serve: %s: SIGKILL after the rename of post %s, before its answer", KILL_AFTER_POSTS_ENV,
                        sha[:16])
            os.kill(os.getpid(), signal.SIGKILL)
        return PostResult(key, sha, result, len(paths))

    def _drop_other_days(self, key: str, now: datetime, written: list[PurePath]) -> None:
        """Delete a quarantine file of ``key`` that an earlier attempt of the same post wrote on the
        day before or after ``now`` (a re-send across midnight UTC; the API server gives up on a
        batch within minutes, so no other day can hold one). Rows of the tables are partitioned by
        event time, which is the same in every attempt."""
        keep = set(written)
        for delta in (-1, 1):
            day = (now + timedelta(days=delta)).strftime("%Y-%m-%d")
            stale = self.sink.path_for("quarantine", day, key)
            if stale in keep:
                continue
            if not self.sink.remove(stale):  # SinkError when it cannot be deleted
                continue
            log.info("serve: removed %s: post %s was written again on another day", stale, key)


def _with_cluster(table: pa.Table, cluster: str) -> pa.Table:
    """``table`` with its ``cluster`` column (if it has one) set to ``cluster`` on every row."""
    i = table.schema.get_field_index("cluster")
    if i < 0:
        return table
    return table.set_column(i, table.schema.field(i), pa.array([cluster] * table.num_rows, table.schema.field(i).type))

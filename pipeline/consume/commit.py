"""Steps 6-7 of a round, on the main thread: commit what the writer renamed, then run the hooks.

6. **commit**: ``commit({tp: last + 1})`` for the partitions flushed in the round and still owned
   (a partition revoked while its chunk was written is left out: its files are durable but
   uncommitted, and whoever owns it next rewrites them), synchronously, retried with backoff
   while the broker is away (:func:`~.writer.retry`). Never without explicit offsets.
7. **hooks**: ``on_flush(since, until, paths)`` with the event-time window just made durable and
   committed; a failing hook is logged and ingestion goes on.

The loop calls :meth:`Committer.commit_round` only after :meth:`~.writer.Writer.collect` returned
the round, i.e. after every rename of it, and cuts the next round only afterwards: so a commit
always follows its rename and commits stay in round order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import PurePath

from ztaudit.core.errors import KafkaTransientError, LakeError
from ztaudit.pipeline.consume.buffers import Chunk, Partitions
from ztaudit.pipeline.consume.progress import Metrics
from ztaudit.pipeline.consume.recovery import Window, widen
from ztaudit.pipeline.consume.writer import SINK_RETRIES, Round, Written, retry
from ztaudit.pipeline.sources.kafka.base import TP, CommitRejectedError, KafkaSource, redact, tp_name

log = logging.getLogger(__name__)

#: A hook called after each durable flush + commit with the event-time window just written.
FlushHook = Callable[[datetime, datetime, list[PurePath]], None]


class Committer:
    """Commits written rounds and runs the hooks; main thread only (it calls the Kafka client)."""

    def __init__(self, partitions: Partitions, metrics: Metrics, hooks: Sequence[FlushHook], *,
                 password: str | None = None,
                 publish: Callable[[Mapping[TP, tuple[int, int]]], None] | None = None) -> None:
        self.partitions = partitions
        #: registers the round's files in an Iceberg lake (offsets in the snapshot summary) before
        #: the Kafka commit; a failure raises, and nothing of the round is committed
        self.publish = publish
        self.metrics = metrics
        self.hooks = hooks
        self.password = password
        #: Fault injection for the crash tests: SIGKILL this process after N flush rounds were renamed
        #: into place but before their commit -- the worst moment for exactly-once.
        crash = os.environ.get("ZTAUDIT_CONSUME_KILL_AFTER_WRITES")
        self._kill_after_writes = int(crash) if crash else None
        self._rounds_written = 0
        #: ... or after N rounds were registered in an Iceberg lake but before their Kafka commit (the
        #: lake is then ahead of the group: the restart resumes from the lake's offsets).
        crash = os.environ.get("ZTAUDIT_CONSUME_KILL_AFTER_PUBLISH")
        self._kill_after_publish = int(crash) if crash else None
        self._rounds_published = 0

    def commit_round(self, source: KafkaSource, rnd: Round, results: list[Written], revoked: set[TP]) -> None:
        """Count what the writer made of ``rnd``, commit its partitions not in ``revoked`` (step 6)
        and, if that commit went through, run the hooks (step 7).

        A revoked partition's chunk is not committed; if the partition comes back here it is
        re-read from the chunk's first offset (:meth:`~.buffers.Partitions.drop_from`).
        """
        paths: list[PurePath] = []
        window: Window | None = None
        offsets: dict[TP, int] = {}
        committing: list[Chunk] = []
        for chunk, res in zip(rnd.chunks, results, strict=True):
            self.metrics.add(res)
            if chunk.tp in revoked:
                self.partitions.drop_from(chunk.tp, chunk.first)
                log.info("consume: %s: revoked while it was written; its files are durable but not committed "
                         "(whoever owns the partition next rewrites them)", chunk.where)
                continue
            paths.extend(res.paths)
            window = widen(window, res.window)
            offsets[chunk.tp] = chunk.last + 1
            committing.append(chunk)
        self._rounds_written += 1
        if self._kill_after_writes is not None and self._rounds_written >= self._kill_after_writes:
            log.warning("consume: ZTAUDIT_CONSUME_KILL_AFTER_WRITES: SIGKILL after the rename of %s, before "
                        "its commit", rnd.where)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.publish is not None:
            # Iceberg lake: the snapshot must hold the round's files before Kafka hears they are done
            # (publish also registers the files of revoked partitions' chunks: same names on replay).
            spans = {c.tp: (c.first, offsets[c.tp]) for c in committing}
            retry(lambda: self.publish(spans) if self.publish else None, retry_on=LakeError,
                  tries=SINK_RETRIES, on_retry=lambda exc, n, d: log.warning(
                      "consume: registering %s in the Iceberg tables failed (%s); retry %d in %.1f s",
                      rnd.where, exc, n, d))
            self._rounds_published += 1
            if self._kill_after_publish is not None and self._rounds_published >= self._kill_after_publish:
                log.warning("consume: ZTAUDIT_CONSUME_KILL_AFTER_PUBLISH: SIGKILL after registering %s, before "
                            "its Kafka commit", rnd.where)
                os.kill(os.getpid(), signal.SIGKILL)
        committed = self.commit(source, offsets, committing) if offsets else False
        self.metrics.flushes += 1
        if committed and window is not None:
            self.run_hooks(window, paths)

    def commit(self, source: KafkaSource, offsets: dict[TP, int], chunks: list[Chunk]) -> bool:
        """Commit exactly ``offsets``; retry while the broker is away; rewind if the group moved on.

        The caller passes only partitions this member still owns as far as it knows. If the
        coordinator rejects the commit anyway, the chunks' partitions are rewound to the chunks'
        first offsets (their buffers, polled meanwhile, are dropped), nothing is committed and
        False is returned. ``KafkaConnectError`` (refused) propagates.
        """
        where = ", ".join(f"{tp_name(tp.topic, tp.partition)}@{off}" for tp, off in sorted(offsets.items()))

        def attempt() -> bool:
            try:
                source.commit(offsets)
                return True
            except CommitRejectedError as exc:
                # The group rebalanced: these partitions may belong to someone else now. The files
                # are durable but uncommitted; whoever owns the partition next rewrites them.
                log.warning("consume: commit %s rejected by the group coordinator (%s); the next owner "
                            "replays from the last committed offsets", where, exc)
                return False

        def failed(exc: BaseException, _attempt: int, delay: float) -> None:
            self.metrics.commit_retries += 1
            self.metrics.broker_errors += 1
            log.warning("consume: commit %s failed (%s); files are durable, retrying in %.1f s", where,
                        redact(str(exc), self.password), delay)

        if not retry(attempt, retry_on=KafkaTransientError, on_retry=failed):
            for c in chunks:
                self.partitions.reset(c.tp)
                with contextlib.suppress(KafkaTransientError):
                    source.seek(c.tp, c.first)
            return False
        self.metrics.commits += 1
        for tp, off in offsets.items():
            self.metrics.committed[tp_name(tp.topic, tp.partition)] = off
        log.debug("consume: committed %s", where)
        return True

    def run_hooks(self, window: Window, paths: list[PurePath]) -> None:
        """Step 7: the ``on_flush`` hooks, after the commit. A failing hook is logged, never raised:
        the data is durable and committed, ingestion goes on."""
        since, until = window
        for hook in self.hooks:
            try:
                hook(since, until, paths)
            except Exception as exc:
                log.exception("consume: on_flush hook %s failed for window %s..%s: %s",
                              getattr(hook, "__name__", hook), since.isoformat(), until.isoformat(), exc)

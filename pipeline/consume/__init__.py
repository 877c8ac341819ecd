"""``ztaudit consume``: Kafka topics -> ``process()`` -> Parquet lake, offsets committed after each rename.

One module per step of the loop ``poll -> buffer -> cut -> write -> commit -> hooks``:

* :mod:`.loop` -- :func:`~.loop.consume` (the entry point), :class:`~.loop.ConsumeOptions`, and
  :class:`~.loop.StreamConsumer`, the main loop: poll, apply rebalances, buffer, hand rounds to the
  writer, commit them in order, run the hooks. Its docstring holds the commit ordering.
* :mod:`.buffers` -- per-partition buffers and the pure :class:`~.buffers.CutPolicy` (which
  partitions to cut, where, and when polling must wait for the writer).
* :mod:`.writer` -- the writer thread (normalize, write, clean), the fence that keeps a
  revocation from overtaking an in-flight write, and :func:`~.writer.retry`, the one backoff loop.
* :mod:`.commit` -- committing a written round's offsets (in order, after its renames) and the
  ``on_flush`` hooks.
* :mod:`.recovery` -- leftover files of a crashed or rebalanced-away run, where the replay cuts its
  first chunk, and rows already in a compacted day; why a replay never duplicates.
* :mod:`.progress` -- :class:`~.progress.Metrics`, the progress line, ``--metrics-file`` and the
  ``--until-idle`` exit.

Imports run one way: ``loop`` -> ``commit`` -> ``writer`` -> ``recovery``/``buffers``, and
``progress`` imports none of them.
Kafka is reached only through :mod:`ztaudit.pipeline.sources.kafka`.
"""

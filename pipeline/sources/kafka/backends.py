"""``--backend`` / ``kafka.backend``: the name of a Kafka client library -> its :class:`KafkaSource`.

The one place that knows both backends: :data:`BACKENDS` maps each name to an opener that imports
its module when it is called (so the optional ``confluent-kafka`` package is only needed when it is
chosen). The backends import :mod:`.base` only; nothing imports this module but the consume loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from ztaudit.core.config import KafkaSettings
from ztaudit.core.errors import ConfigError
from ztaudit.pipeline.sources.kafka.base import KafkaSource

#: An opener: (settings, group, start_from, password) -> a source not subscribed yet.
Opener = Callable[[KafkaSettings, str, str, "str | None"], KafkaSource]


def _kafka_python(settings: KafkaSettings, group: str, start_from: str, password: str | None) -> KafkaSource:
    from ztaudit.pipeline.sources.kafka.kafka_python import KafkaPythonSource, warn_if_slow_crc

    warn_if_slow_crc()
    return KafkaPythonSource(settings, group=group, start_from=start_from, password=password)


def _confluent(settings: KafkaSettings, group: str, start_from: str, password: str | None) -> KafkaSource:
    try:
        from ztaudit.pipeline.sources.kafka.confluent import ConfluentSource
    except ImportError as exc:
        raise ConfigError("kafka.backend", f"confluent needs the confluent-kafka package ({exc})",
                          fix="pip install 'ztaudit[confluent]' (or use --backend kafka-python)") from None
    return ConfluentSource(settings, group=group, start_from=start_from, password=password)


#: Backend name -> opener (the names ``kafka.backend`` accepts).
BACKENDS: Final[Mapping[str, Opener]] = {"kafka-python": _kafka_python, "confluent": _confluent}


def open_source(settings: KafkaSettings, *, group: str, start_from: str,
                password: str | None = None) -> KafkaSource:
    """The :class:`KafkaSource` of ``settings.backend``; called once per connection attempt of the loop.

    Raises :class:`ConfigError` (exit 2) for an unknown backend, or for ``confluent`` without the
    ``confluent-kafka`` package. Nothing talks to the broker yet (that is ``subscribe()``).
    """
    opener = BACKENDS.get(settings.backend)
    if opener is None:
        raise ConfigError("kafka.backend", f"{settings.backend!r} is not one of {', '.join(BACKENDS)}")
    return opener(settings, group, start_from, password)

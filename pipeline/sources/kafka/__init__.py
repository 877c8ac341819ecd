"""Kafka glue for ``ztaudit consume``: talking to Kafka, nothing about when data is written or committed.

* :mod:`.base` -- the :class:`~.base.KafkaSource` seam the consume loop uses, :class:`~.base.TP`,
  the error classes, topic specs, the SASL/TLS settings both backends share, small helpers.
* :mod:`.kafka_python` -- the default backend (kafka-python), its client settings (also the
  findings producer's) and the SASL/TLS preflight.
* :mod:`.confluent` -- the optional confluent-kafka (librdkafka) backend.
* :mod:`.backends` -- ``--backend`` name -> the source (imports a backend only when chosen).

Imports run one way: the backends import :mod:`.base`, :mod:`.base` imports no backend.
"""

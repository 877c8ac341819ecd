"""Findings and the detector contract.

A detector reads the lake through the context's engine session (:attr:`DetectContext.engine`,
:mod:`ztaudit.detectors.engine`: the catalog views of ``ztaudit.core.catalog`` and temp tables) and
returns :class:`Finding` values; it never writes the lake. ``detect``
(batch) and the consumer's post-flush hook (streaming) call :meth:`Detector.run` with a
:class:`DetectContext` naming the time window to judge and the configuration.

``finding_id`` is a stable hash of the detector id and the finding's *key* (what makes two
findings the same incident: for example actor and credential and day), so running ``detect``
twice over the same data replaces findings instead of duplicating them. Score direction: higher
is more anomalous or more certain (the opposite of scikit-learn's ``score_samples``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final, Protocol

from ztaudit.core.config import Config
from ztaudit.detectors.engine import Engine, Session, as_engine


class Severity(StrEnum):
    """How urgently a person should look: critical > high > medium > low > info."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


#: The cluster part of an evidence reference to a request of a lake without cluster names (plain audit
#: files ingested without ``--cluster``): the text Python gives ``None``, so references built in SQL
#: and in Python agree, and the audit id is never lost to a NULL.
NO_CLUSTER_REF: Final = "None"


def audit_ref(cluster: str | None, audit_id: str) -> str:
    """Evidence reference to one Kubernetes request: ``k8s_audit:<cluster>/<audit id>``."""
    return f"k8s_audit:{NO_CLUSTER_REF if cluster is None else cluster}/{audit_id}"


def audit_ref_sql(cluster: str, audit_id: str, prefix: bool = True) -> str:
    """SQL for :func:`audit_ref` over the columns ``cluster`` and ``audit_id`` (column names, never
    values); ``prefix=False`` leaves out ``k8s_audit:`` (``<cluster>/<audit id>``)."""
    body = f"coalesce({cluster}, '{NO_CLUSTER_REF}') || '/' || {audit_id}"
    return f"'k8s_audit:' || {body}" if prefix else body


def finding_id(detector: str, key: Sequence[Any]) -> str:
    """Stable id: sha256 of the detector id and the key parts (JSON), first 32 hex chars."""
    payload = json.dumps([detector, *[str(k) if k is not None else None for k in key]],
                         separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Finding:
    """One incident a person should look at. ``evidence`` are event references (table:key)."""

    detector: str
    key: tuple[Any, ...]
    severity: Severity
    actor: str | None
    summary: str
    first_seen: datetime | None
    last_seen: datetime | None
    evidence: tuple[str, ...] = ()
    credential_id: str | None = None
    cluster: str | None = None
    namespace: str | None = None
    score: float | None = None
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def finding_id(self) -> str:
        """Stable id from detector and key: the same incident found twice has the same id."""
        return finding_id(self.detector, self.key)

    def row(self, detected_at: datetime) -> dict[str, Any]:
        """The finding as a ``findings`` table row."""
        return {
            "finding_id": self.finding_id,
            "detector": self.detector,
            "severity": str(self.severity),
            "actor": self.actor,
            "credential_id": self.credential_id,
            "cluster": self.cluster,
            "namespace": self.namespace,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "summary": self.summary,
            "evidence": list(self.evidence)[:50],
            "score": self.score,
            "context": json.dumps(self.context, default=str, sort_keys=True),
            "detected_at": detected_at,
        }


@dataclass(frozen=True)
class DetectContext:
    """What a detector run judges: events in [since, until) plus whatever lookback it needs.

    ``con`` is what the context is made with: an :class:`~ztaudit.detectors.engine.Engine`, or a DuckDB
    connection from ``open_lake``, wrapped once in a ``DuckDBEngine`` (tests, ``bench/reach.py`` and
    ``bench/report.py`` still make contexts that way). Detectors and builders read :attr:`engine` only.
    """

    con: Session
    config: Config
    since: datetime | None = None
    until: datetime | None = None
    lake: str | None = None
    #: The one cache of a run: results shared between the detectors and table builders of one run (the
    #: reach features, computed once for the ``reach`` table builder and ``reach.anomalous``; which
    #: correlation tables ``correlate.ensure`` built on ``engine``). Lives as long as the context, so a new
    #: run (new data) starts empty; keys name the producer and every parameter the result depends on.
    cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)
    #: The engine session every detector and builder of the run reads the lake through.
    engine: Engine = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", as_engine(self.con))


class Detector(Protocol):
    """A detector: ``id`` is the public id (registry key), ``run`` returns findings."""

    id: ClassVar[str]
    description: ClassVar[str]

    def run(self, ctx: DetectContext) -> list[Finding]:
        """Judge the events of ``ctx``'s window (reading any lookback it needs) and return findings.

        Called by ``ztaudit detect`` and by the consumer's post-flush hook. Reads only; the
        caller writes the findings. An exception fails this detector alone: the run reports it and
        the other detectors' findings are still written.
        """
        ...

"""Reports: one explicit registry, keyed by the name users type (``ztaudit report NAME``).

Each entry names the function that builds the report (``module:function`` taking a
:class:`~ztaudit.reports.base.ReportContext` and returning a
:class:`~ztaudit.reports.base.ReportResult`), imported only when the report runs.
Formats live in :mod:`.formats` (table, json, csv, markdown) and :mod:`.html`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ztaudit.reports.base import ReportContext, ReportResult


@dataclass(frozen=True)
class ReportSpec:
    """A registered report: its name, one-line description and ``module:function`` target."""

    name: str
    description: str
    target: str
    needs_subject: bool = False

    def function(self) -> Callable[[ReportContext], ReportResult]:
        """Import and return the report function."""
        module_name, attr = self.target.split(":")
        fn = getattr(importlib.import_module(module_name), attr)
        assert callable(fn)
        return fn  # type: ignore[no-any-return]


_P = "ztaudit.reports"

REPORTS: dict[str, ReportSpec] = {s.name: s for s in (
    ReportSpec("summary", "What the lake holds per source and cluster, time span, quarantine, findings.",
               f"{_P}.summary:summary"),
    ReportSpec("findings", "Detector findings, most severe and most recent first (--detector, --severity).",
               f"{_P}.findings:findings"),
    ReportSpec("impersonation", "How people reach the API server: proxy, direct, unapproved impersonator.",
               f"{_P}.impersonation:impersonation"),
    ReportSpec("revocation", "Each revocation with enforcement status and latency; latency percentiles.",
               f"{_P}.revocation:revocation"),
    ReportSpec("reach", "Top identities by blast radius and its growth (--granted RBAC snapshot).",
               f"{_P}.reach:reach"),
    ReportSpec("credentials", "Credential inventory: stale, legacy secret-based and shared credentials.",
               f"{_P}.credentials:credentials"),
    ReportSpec("identity", "Everything about one identity (ACTOR): timeline, reach, credentials, findings.",
               f"{_P}.identity:identity", needs_subject=True),
    ReportSpec("quarantine", "What ingest rejected and why.", f"{_P}.quarantine:quarantine"),
)}


def run_report(name: str, ctx: ReportContext) -> ReportResult:
    """Run the report registered as ``name``; KeyError names the valid reports."""
    try:
        spec = REPORTS[name]
    except KeyError:
        raise KeyError(f"unknown report {name!r}; known: {', '.join(REPORTS)}") from None
    result = spec.function()(ctx)
    result.params = {**ctx.filters.describe(), **result.params}
    return result

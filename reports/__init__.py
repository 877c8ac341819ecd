"""Reports: one explicit registry, keyed by the name users type (``ztaudit report NAME``).

Each entry holds the function that builds the report (taking a
:class:`~ztaudit.reports.base.ReportContext`, returning a :class:`~ztaudit.reports.base.ReportResult`),
imported directly, and each report module imports the detector functions it shows directly, so a
renamed report or detector function fails at import, never at report time. Importing the registry
imports no pandas (the report modules and the detector functions they use need DuckDB and Arrow
only). Output formats are :data:`ztaudit.reports.formats.FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ztaudit.core.names import did_you_mean
from ztaudit.reports.base import ReportContext, ReportResult
from ztaudit.reports.credentials import credentials
from ztaudit.reports.findings import findings
from ztaudit.reports.identity import identity
from ztaudit.reports.impersonation import impersonation
from ztaudit.reports.lookup import window_note
from ztaudit.reports.nhi import nhi
from ztaudit.reports.quarantine import quarantine
from ztaudit.reports.reach import reach
from ztaudit.reports.revocation import revocation
from ztaudit.reports.summary import summary

ReportFunction = Callable[[ReportContext], ReportResult]


@dataclass(frozen=True)
class ReportSpec:
    """A registered report: its name, one-line description (``--list``) and function."""

    name: str
    description: str
    function: ReportFunction
    needs_subject: bool = False


REPORTS: dict[str, ReportSpec] = {s.name: s for s in (
    ReportSpec("summary", "What the lake holds per source and cluster, time span, quarantine, findings.", summary),
    ReportSpec("findings", "Detector findings, most severe and most recent first (--detector, --severity).",
               findings),
    ReportSpec("impersonation", "How people reach the API server: proxy, direct, unapproved impersonator.",
               impersonation),
    ReportSpec("revocation", "Each revocation with enforcement status and latency; latency percentiles.",
               revocation),
    ReportSpec("reach", "Top identities by blast radius and its growth (--granted RBAC snapshot).", reach),
    ReportSpec("credentials", "Credential inventory: stale, legacy secret-based and shared credentials.",
               credentials),
    ReportSpec("identity", "Everything about one identity (ACTOR): timeline, reach, credentials, findings.",
               identity, needs_subject=True),
    ReportSpec("nhi", "Non-human identities: inventory, visibility, unused grants, least-privilege roles.", nhi),
    ReportSpec("quarantine", "What ingest rejected and why.", quarantine),
)}


def run_report(name: str, ctx: ReportContext) -> ReportResult:
    """Run the report registered as ``name`` over ``ctx`` and add the filters to its parameters.

    Called by ``ztaudit report``, ``ztaudit demo`` and the notebooks. ``KeyError`` names the valid
    reports and the nearest; a report's own errors (SQL, a missing identity) propagate. When a
    ``--since/--until`` window left the report's first section empty, a note says what time span
    each table of the lake covers (:func:`~ztaudit.reports.lookup.window_note`).
    """
    try:
        spec = REPORTS[name]
    except KeyError:
        raise KeyError(f"unknown report {name!r}{did_you_mean(name, REPORTS)}; known: {', '.join(REPORTS)}") from None
    result = spec.function(ctx)
    result.params = {**ctx.filters.describe(), **result.params}
    if (ctx.filters.since is not None or ctx.filters.until is not None) and not result.primary.rows:
        result.notes.append(window_note(ctx.con, ctx.filters))
    return result

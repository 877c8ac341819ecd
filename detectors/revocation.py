"""The ``revocation.not_enforced`` detector: allowed activity for a revoked subject after the grace period.

Called through :mod:`ztaudit.detectors.registry` (``ztaudit detect``, the streaming hook). It judges
the revocations of its window, and of ``revocation.lookback_days`` before it, with
:func:`ztaudit.detectors.revocation_status.build` and reports each one whose status is
``not_enforced``: an allowed use later than ``revoked_at + revocation.grace_seconds``. What counts
as a revocation: :mod:`ztaudit.detectors.revocations_view`; how uses are found and judged (identity
bridge, timing rules): :mod:`ztaudit.detectors.revocation_status`.
"""

from __future__ import annotations

from datetime import UTC
from typing import ClassVar

from ztaudit.detectors.base import DetectContext, Finding, Severity
from ztaudit.detectors.revocation_status import build


class NotEnforced:
    """``revocation.not_enforced``: allowed activity for a revoked subject after the grace period."""

    id: ClassVar[str] = "revocation.not_enforced"
    description: ClassVar[str] = ("allowed activity (proxy or audit) for a revoked identity, session, token "
                                  "or binding after the grace period")

    def run(self, ctx: DetectContext) -> list[Finding]:
        """One finding per revocation still honoured after ``revocation.grace_seconds``.

        Called by detect and the streaming hook; raises on SQL errors.
        """
        table = build(ctx.engine, ctx.config, ctx.since, ctx.until, lookback=True)
        rows = ctx.engine.records(f"SELECT * FROM {table} WHERE status = 'not_enforced'")
        grace = ctx.config.revocation.grace_seconds
        out: list[Finding] = []
        for r in rows:
            where = []
            if r["allowed_after_grace_proxy"]:
                where.append(f"{r['allowed_after_grace_proxy']} allowed proxy decision(s)")
            if r["allowed_after_grace_api"]:
                where.append(f"{r['allowed_after_grace_api']} allowed API request(s)")
            revoked = r["revoked_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            who = r["subject"] if r["identity"] == r["subject"] else f"{r['subject']} ({r['identity']})"
            summary = (f"{r['kind']} {who} was revoked at {revoked} ({r['event_type']}, "
                       f"{r['system']}) but {' and '.join(where)} followed more than {grace}s later, the last "
                       f"{r['exposure_seconds']:.0f}s after the revocation. Cut the remaining access: end its "
                       "proxy sessions, delete the token or binding it still uses, and check the proxy's "
                       "IdP refresh interval.")
            out.append(Finding(
                detector=self.id,
                key=(r["kind"], r["subject"], r["cluster"], r["revoked_at"].astimezone(UTC).isoformat()),
                severity=Severity.HIGH,
                actor=r["identity"],
                summary=summary,
                first_seen=r["revoked_at"],
                last_seen=r["last_allowed_after_grace"],
                evidence=(r["evidence"], *list(r["violations"])[: ctx.config.detect.max_evidence - 1]),
                credential_id=r["subject"] if r["kind"] == "legacy_token" else None,
                cluster=r["cluster"],
                score=float(r["allowed_after_grace_proxy"] + r["allowed_after_grace_api"]),
                context={k: r[k] for k in ("kind", "subject_id", "session_id", "revoked_by", "event_type",
                                           "inferred_from", "bridge", "reason", "notice_at",
                                           "first_allowed_after_grace", "last_allowed_after_grace",
                                           "allowed_after_grace_proxy", "allowed_after_grace_api",
                                           "exposure_seconds", "restored_at")},
            ))
        return out

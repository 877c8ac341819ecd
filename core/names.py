"""Names users type (commands, reports, detector ids, identities, clusters) checked against what exists.

A typo must not quietly filter everything away: callers check a name against its registry (or the
values found in the lake) and raise :class:`UnknownName` (exit 2) with the nearest names
(:func:`did_you_mean`, ``difflib``) and a fix. Light on purpose (no DuckDB, no detectors), so
``cli/main.py`` can use it for command names without slowing ``ztaudit --help``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ztaudit.core.errors import ZtauditError


class UnknownName(ZtauditError):
    """A typed name that matches nothing it could name: a usage error (exit 2) with suggestions."""

    exit_code = 2


def nearest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices closest to ``name``: same spelling in another case first, then ``difflib``'s
    close matches (compared lower-cased, cutoff 0.6), at most ``n``, no duplicates."""
    pool = [c for c in dict.fromkeys(choices) if c]
    low = name.lower()
    out = [c for c in pool if c.lower() == low and c != name]
    by_lower: dict[str, list[str]] = {}
    for c in pool:
        by_lower.setdefault(c.lower(), []).append(c)
    for m in difflib.get_close_matches(low, list(by_lower), n=n, cutoff=0.6):
        out += [c for c in by_lower[m] if c not in out and c != name]
    return out[:n]


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) for the nearest choices, ``""`` if none is near."""
    near = nearest(name, choices, n)
    if not near:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in near) + "?"

"""Shell completion: report names, detector ids and families, and identities and clusters from the lake.

Click writes the shell's completion script (``_ZTAUDIT_COMPLETE=bash_source ztaudit``; also
``zsh_source`` and ``fish_source``; docs/cli.md) and, on every TAB, runs ``ztaudit`` again with
``_ZTAUDIT_COMPLETE=bash_complete`` and the words typed so far. The functions here are the
``shell_complete=`` callbacks of ``report NAME [ACTOR]``, ``--actor``, ``--cluster`` and
``--detector`` (``report`` and ``detect``); click completes ``--format`` and ``--severity`` choices
and ``--lake`` directories itself.

Called by click with the parameters parsed so far (``ctx.params``, resilient parsing, so ``--lake``
or ``$ZTAUDIT_LAKE`` is known when it was typed before the TAB). They run under a shell prompt, so
they are quiet and bounded: a missing or broken lake gives no candidates, never a traceback; lake
values are a prefix match with the typed text bound as a SQL parameter, at most :data:`LIMIT` of
them. Registries are imported inside the functions, so a command's start-up does not pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from ztaudit.cli.options import LAKE_ENVVAR

#: Most values one TAB offers from the lake (shells page long lists; more would only be noise).
LIMIT = 200


def _items(names: Mapping[str, str] | Sequence[str], incomplete: str) -> list[CompletionItem]:
    """The names starting with ``incomplete`` (case-insensitive), with their help text if any."""
    low = incomplete.lower()
    helps: Mapping[str, str] = names if isinstance(names, Mapping) else {}
    return [CompletionItem(n, help=helps.get(n) or None) for n in names if n.lower().startswith(low)]


def complete_report(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``report NAME``: the registered report names, with their one-line descriptions."""
    from ztaudit.reports import REPORTS

    return _items({n: s.description for n, s in REPORTS.items()}, incomplete)


def complete_detector(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--detector``: detector families (``credential``) then ids (``credential.stale``), as
    :func:`ztaudit.detectors.registry.resolve` accepts them in ``detect`` and ``report findings``."""
    from ztaudit.detectors import registry

    names = {f: f"every {f}.* detector" for f in registry.families()}
    names.update({d: cls.description for d, cls in registry.DETECTORS.items()})
    return _items(names, incomplete)


def lake_of(ctx: click.Context) -> Path:
    """The lake the command line names so far: ``--lake``, else ``$ZTAUDIT_LAKE``, else ``./lake``."""
    lake = ctx.params.get("lake") or os.environ.get(LAKE_ENVVAR) or "./lake"
    return Path(str(lake))


def lake_values(lake: Path, columns: Mapping[str, Sequence[str]], incomplete: str) -> list[str]:
    """Distinct values of ``columns`` (table -> columns) in ``lake`` that start with ``incomplete``
    (case-insensitive), sorted, at most :data:`LIMIT`. Nothing (not an error) when ``lake`` is not a lake."""
    import duckdb

    from ztaudit.core.errors import ZtauditError
    from ztaudit.core.lake import is_lake, open_lake

    if not is_lake(lake):
        return []
    try:
        con = open_lake(lake)
    except (ZtauditError, duckdb.Error, OSError):
        return []
    found: set[str] = set()
    try:
        for table, cols in columns.items():
            for col in cols:  # names come from our own registries, never from the command line
                try:
                    rows = con.execute(
                        f'SELECT DISTINCT "{col}" FROM "{table}" WHERE "{col}" IS NOT NULL AND '
                        f'starts_with(lower("{col}"), lower(?)) ORDER BY 1 LIMIT ?', [incomplete, LIMIT]).fetchall()
                except duckdb.Error:
                    continue  # a broken table: offer what the others hold
                found.update(str(r[0]) for r in rows)
    finally:
        con.close()
    return sorted(found)[:LIMIT]


def _typed_identity_columns() -> dict[str, list[str]]:
    """Where identities are spelled as people type them: each table's first identity column
    (:data:`ztaudit.reports.lookup.IDENTITY_COLUMNS`: ``actor``, ``email``, ``subject_login``),
    not the IdPs' opaque user ids."""
    from ztaudit.reports.lookup import IDENTITY_COLUMNS

    return {table: list(cols[:1]) for table, cols in IDENTITY_COLUMNS.items()}


def complete_identity(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--actor`` and ``report identity ACTOR``: identities the lake holds."""
    try:
        return [CompletionItem(v) for v in lake_values(lake_of(ctx), _typed_identity_columns(), incomplete)]
    except Exception:  # a TAB must never print a traceback into the user's prompt
        return []


def complete_subject(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``report NAME ACTOR``: identities, for the reports that take one (``identity``)."""
    from ztaudit.reports import REPORTS

    spec = REPORTS.get(str(ctx.params.get("name") or ""))
    return complete_identity(ctx, param, incomplete) if spec is not None and spec.needs_subject else []


def complete_cluster(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--cluster``: cluster names the lake holds."""
    from ztaudit.reports.lookup import CLUSTER_COLUMNS

    try:
        return [CompletionItem(v) for v in lake_values(lake_of(ctx), CLUSTER_COLUMNS, incomplete)]
    except Exception:  # see complete_identity
        return []

"""Options shared by several commands, defined once so their name, default and environment agree.

Used at import time by the command modules (``ztaudit.cli.<name>``); nothing here runs a command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable naming the lake, read by every ``--lake`` option and by the notebooks.
LAKE_ENVVAR = "ZTAUDIT_LAKE"


def lake_option(help: str = "Lake directory.", *, default: str = "./lake") -> Callable[[F], F]:
    """The ``--lake DIR`` option: ``--lake``, else ``$ZTAUDIT_LAKE``, else ``default``.

    A path that is not a lake is refused later, by :func:`ztaudit.core.lake.check_lake` (exit 2),
    in the commands that read one; a path that names a file is refused here by click (exit 2).
    """
    return click.option("--lake", envvar=LAKE_ENVVAR, show_envvar=True, default=default, show_default=True,
                        type=click.Path(file_okay=False), help=help)

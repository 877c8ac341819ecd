"""Options shared by several commands, defined once so their name, default and environment agree,
and the terminal facts output depends on (:func:`terminal_width`, :func:`use_color`).

Used at import time by the command modules (``ztaudit.cli.<name>``), and by ``report`` before it
renders; nothing here runs a command or fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

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


#: Table width when neither ``--width``, ``$COLUMNS`` nor a terminal says otherwise (a pipe, a file).
DEFAULT_WIDTH = 100


def terminal_width(width: int | None, *, to_file: bool = False) -> int:
    """The table width to render with: ``--width`` if given; for output to a file, :data:`DEFAULT_WIDTH`;
    else ``$COLUMNS``, else the terminal's width (stdout), else :data:`DEFAULT_WIDTH`; never below 40.

    Called by ``report`` before rendering. :func:`shutil.get_terminal_size` reads ``COLUMNS`` first,
    then asks the terminal on stdout, so a pipe gets the stable 100 columns scripts saw before.
    """
    if width is not None:
        return width
    if to_file:
        return DEFAULT_WIDTH
    return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def use_color(fmt: str, *, to_file: bool = False, stream: TextIO | None = None) -> bool:
    """Whether ``report`` colours severity and status: ``--format table`` to a terminal (stdout), and
    ``NO_COLOR`` unset or empty (https://no-color.org). Never for a file, a pipe or another format."""
    if fmt != "table" or to_file or os.environ.get("NO_COLOR"):
        return False
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False

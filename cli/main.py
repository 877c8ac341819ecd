"""The ``ztaudit`` command line: a thin click group, and the one place errors become exit codes.

Each command lives in its own module of this package (``ztaudit.cli.<name>``: flags -> one call into
``pipeline``, ``detectors``, ``reports`` or ``synth``) and is imported only when it runs, so
``ztaudit --help`` stays fast and a command's heavy dependencies (scikit-learn, kafka-python) load
only when needed.

Exit codes: 0 success; 1 unexpected error; 2 usage, config or input error; 3 ``--strict`` and
something was quarantined; 4 the lake could not be written; 5 Kafka refused (auth, TLS);
6 reserved (an unreachable broker is retried, never fatal).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ztaudit.core.errors import ZtauditError
from ztaudit.core.names import UnknownName, did_you_mean

#: command name -> "module:attribute" of the click command. One explicit registry.
COMMANDS: dict[str, str] = {
    "ingest": "ztaudit.cli.ingest:ingest",
    "consume": "ztaudit.cli.consume:consume",
    "serve": "ztaudit.cli.serve:serve",
    "compact": "ztaudit.cli.compact:compact",
    "migrate": "ztaudit.cli.migrate:migrate",
    "maintain": "ztaudit.cli.maintain:maintain",
    "generate": "ztaudit.cli.generate:generate",
    "detect": "ztaudit.cli.detect:detect",
    "report": "ztaudit.cli.report:report",
    "findings": "ztaudit.cli.findings:findings",
    "sql": "ztaudit.cli.sql:sql",
    "catalog": "ztaudit.cli.catalog:catalog",
    "config": "ztaudit.cli.config:config",
    "demo": "ztaudit.cli.demo:demo",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click docs, "Lazily loading")."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """Called by click with the arguments after the options; an unknown command name raises
        :class:`~ztaudit.core.names.UnknownName` (exit 2) naming the nearest commands."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS and not ctx.resilient_parsing:
            raise UnknownName(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}",
                              fix=f"use one of: {', '.join(sorted(COMMANDS))} (ztaudit -h)")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="ztaudit")
def cli(verbose: int) -> None:
    """Prove from logs that Kubernetes zero-trust access is enforced.

    Normalize Kubernetes audit, proxy decision and IdP logs into a Parquet lake, then check
    impersonation, revocation, identity reach and stale credentials.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the group, map :class:`ZtauditError` to its exit code."""
    try:
        return cli.main(args=argv, prog_name="ztaudit", standalone_mode=False)
    except ZtauditError as exc:
        click.echo(f"ztaudit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ztaudit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()

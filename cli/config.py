"""``ztaudit config check``: validate a config file and print every effective setting with its reason.

Exit codes: 0 valid; 2 invalid (the error names the key and the fix; raised as ``ConfigError``
and turned into the exit code by ``cli/main.py``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ztaudit.core.config import Config, effective_settings, load_config
from ztaudit.core.errors import ConfigError


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return json.dumps(value) if isinstance(value, str) else str(value)


def check_regexes(cfg: Config) -> None:
    """Patterns must also compile in DuckDB's RE2, where the detectors evaluate them.

    Raises :class:`ConfigError` naming the key and pattern (Python ``re`` accepts look-arounds and
    back-references that RE2 rejects).
    """
    import duckdb

    con = duckdb.connect()
    try:
        for key, patterns in (("identities.human_user_patterns", cfg.identities.human_user_patterns),
                              ("identities.human_group_patterns", cfg.identities.human_group_patterns),
                              ("identities.system_user_patterns", cfg.identities.system_user_patterns)):
            for p in patterns:
                try:
                    con.execute("SELECT regexp_matches('x', ?)", [p]).fetchall()
                except duckdb.Error as exc:
                    raise ConfigError(key, f"pattern {p!r} is not valid RE2 (used by detectors): {exc}",
                                      fix="avoid look-arounds and back-references") from exc
    finally:
        con.close()


@click.group("config")
def config() -> None:
    """Inspect and validate the configuration."""


@config.command("check")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="File to check (default: $ZTAUDIT_CONFIG, else ./ztaudit.toml, else defaults).")
@click.option("--defaults", is_flag=True, help="Ignore any file and environment; print the built-in defaults.")
def check(config_path: str | None, defaults: bool) -> None:
    """Validate the configuration and print each effective setting with its one-line reason."""
    cfg = Config() if defaults else load_config(config_path, warn=False)
    check_regexes(cfg)
    if defaults:
        source = "built-in defaults"
    else:
        env = sorted({o.split("$", 1)[1] for o in cfg.origins.values() if o.startswith("environment $")})
        parts = [cfg.source_path or "no config file: built-in defaults"]
        if env:
            parts.append("overridden by " + ", ".join(f"${e}" for e in env))
        source = "; ".join(parts)
    click.echo(f"# configuration OK ({source})")
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    for key, value, why in effective_settings(cfg):
        # secrets are never values here: the file names an environment variable or a file (config.py)
        origin = cfg.origins.get(key, "default")
        click.echo(f"{key} = {_show(value)}" + ("" if defaults else f"    # from {origin}"))
        if why:
            click.echo(f"    # {why}")

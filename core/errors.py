"""Exceptions that carry their data and say the fix.

One root, :class:`ZtauditError`; each subclass names what went wrong, with the coordinates
(file:line, topic/partition/offset, config key) and the fix. ``exit_code`` is read in one place,
the CLI (``cli/main.py``), which turns errors into exit codes. ``transient`` says whether a
retry can help (broker outage) or not (bad config).

Bad *records* are not exceptions: they travel as :class:`ztaudit.core.quarantine.Rejected`
values to quarantine, and the run goes on.
"""

from __future__ import annotations

from typing import ClassVar


class ZtauditError(Exception):
    """Root of every error ztaudit raises on purpose."""

    exit_code: ClassVar[int] = 1
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")


class ConfigError(ZtauditError):
    """Invalid configuration: names the key and the fix."""

    exit_code = 2

    def __init__(self, key: str, message: str, *, fix: str | None = None) -> None:
        self.key = key
        # a flag names itself (--expire-snapshots: ...); a setting says it is one (config lake.format: ...)
        super().__init__(f"{key}: {message}" if key.startswith("-") else f"config {key}: {message}", fix=fix)


class ConfigErrors(ConfigError):
    """Several configuration errors, reported at once (one line each, with its fix)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        self.key = errors[0].key
        self.message = f"{len(errors)} configuration errors:"
        self.fix = None
        lines = [self.message] + ["  " + str(e).replace("\n", "\n  ") for e in errors]
        Exception.__init__(self, "\n".join(lines))


class SourceError(ZtauditError):
    """An input cannot be read at all (missing file, unreadable stdin, unknown --source)."""

    exit_code = 2


class SinkError(ZtauditError):
    """The lake cannot be written (permissions, disk full). Nothing was committed."""

    exit_code = 4


class LakeError(ZtauditError):
    """The lake is missing or holds something unreadable."""

    exit_code = 2


class KafkaConnectError(ZtauditError):
    """Kafka refused us in a way a retry will not fix (authentication, authorization, TLS)."""

    exit_code = 5


class KafkaTransientError(ZtauditError):
    """Broker unreachable or leaderless; the consumer retries with backoff."""

    exit_code = 6
    transient = True


class QuarantinedRecords(ZtauditError):
    """``--strict``: something was quarantined. The data that was good is in the lake."""

    exit_code = 3

"""``lake.catalog_uri`` between the configuration and the Iceberg layer, and masking its password.

A leaf module (it imports nothing of ours): :func:`ztaudit.core.config.load_config` records the value
a command's config file gives (:func:`remember_file_setting`), and :mod:`ztaudit.core.iceberg` reads
the setting (:func:`configured`) only when it creates a lake's catalog or opens one on PostgreSQL.
The Iceberg layer cannot import the configuration itself: the configuration's validation imports the
triage rules, which import the sink, which imports the Iceberg layer (an import cycle).
"""

from __future__ import annotations

import os
import re
from typing import Final

#: The environment variable of ``lake.catalog_uri`` (wins over the file, as every ``ZTAUDIT_*`` does).
ENV: Final = "ZTAUDIT_LAKE_CATALOG_URI"
#: ``lake.catalog_uri`` as written in the config file the command of this process loaded ("" if none).
_from_file: list[str] = [""]


def remember_file_setting(value: str) -> None:
    """Record the ``lake.catalog_uri`` of the config file a command loaded (called by ``load_config``
    when it reads the process's own environment; "" when the file does not set it)."""
    _from_file[0] = value


def configured() -> str:
    """``lake.catalog_uri`` as the running command sees it: ``$ZTAUDIT_LAKE_CATALOG_URI``, else the
    value of the config file the command loaded, else "" (the lake's own SQLite catalog). Library code
    that creates lakes without loading a configuration sets the environment variable. Never raises."""
    return os.environ.get(ENV, "") or _from_file[0]


#: Query parameters of a PostgreSQL URI that SQLAlchemy hands to libpq as secrets
#: (``?password=...`` is a password as much as ``user:password@`` is).
QUERY_SECRETS: Final = ("password", "sslpassword")
_QUERY_SECRET: Final = re.compile(r"(?i)([?&](?:" + "|".join(QUERY_SECRETS) + r")=)[^&\s]*")


def query_secrets(uri: str) -> list[str]:
    """The values of ``uri``'s secret query parameters (:data:`QUERY_SECRETS`, any case). Never raises."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        pairs = parse_qsl(urlsplit(uri).query, keep_blank_values=True)
    except ValueError:
        return []
    return [v for k, v in pairs if k.lower() in QUERY_SECRETS]


def mask_uri(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it, and every ``password=`` or
    ``sslpassword=`` query value, replaced by ``***``. Called on every message, log line and setting
    that may hold a catalog URI."""
    return _QUERY_SECRET.sub(r"\1***", re.sub(r"(://[^:/@\s]*:)\S*@", r"\1***@", text))

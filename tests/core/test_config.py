"""``ztaudit config check``: effective settings with reasons; errors name the key and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ztaudit.cli.main import cli, main
from ztaudit.core.config import load_config


def test_defaults_listed_with_reasons() -> None:
    res = CliRunner().invoke(cli, ["config", "check", "--defaults"], catch_exceptions=False)
    assert res.exit_code == 0
    assert "# configuration OK (built-in defaults)" in res.output
    assert 'impersonation.approved_impersonators = {"*": ["system:serviceaccount:pomerium:pomerium-authorize"]}' \
        in res.output
    assert "correlation.match_window_seconds = 3.0" in res.output
    assert "revocation.grace_seconds = 900" in res.output
    assert "detect.streaming_lookback_seconds = 3600" in res.output
    # every setting is followed by its one-line reason
    lines = res.output.splitlines()[1:]
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith(" "):
            assert lines[i + 1].startswith("    # "), line


def test_file_values_shown(tmp_path: Path) -> None:
    f = tmp_path / "z.toml"
    f.write_text('[impersonation]\nbreak_glass = ["breakglass-admin"]\nproxy_hosts = { "k8s.example.com" = "prod" }\n'
                 "[revocation]\ngrace_seconds = 60\n")
    res = CliRunner().invoke(cli, ["config", "check", "--config", str(f)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"configuration OK ({f})" in res.output
    assert 'impersonation.break_glass = ["breakglass-admin"]' in res.output
    assert "revocation.grace_seconds = 60" in res.output


@pytest.mark.parametrize("body,key,fix", [
    ("[revocation]\ngrace_seconds = -1\n", "revocation.grace_seconds", "must be >= 0"),
    ("[impersonation]\napproved = []\n", "impersonation.approved", "valid keys in [impersonation]"),
    ("[correlation]\nmatch_window_seconds = 0\n", "correlation.match_window_seconds", "must be > 0"),
    ("[identities]\nhuman_user_patterns = ['(?<=x)y']\n", "identities.human_user_patterns", "RE2"),
    ("[detect]\nmax_evidence = 0\n", "detect.max_evidence", "must be >= 1"),
    ("[detect]\nmemory_limit = 'lots'\n", "detect.memory_limit", "is not a size"),
    ('[impersonation]\nproxy_hosts = { "K8S-X:443" = "a", "k8s-x" = "b" }\n', "impersonation.proxy_hosts",
     "are the same host (k8s-x) but name clusters 'a' and 'b'"),
    ('[impersonation]\nproxy_hosts = { ":6443" = "a" }\n', "impersonation.proxy_hosts", "is not a host name"),
    ('[impersonation]\nproxy_hosts = { "https://k8s.example.com" = "a" }\n', "impersonation.proxy_hosts",
     "is not a host name"),
    ('[impersonation]\nproxy_hosts = { "k8s.example.com" = "  " }\n', "impersonation.proxy_hosts",
     "each host must map to a cluster name"),
])
def test_errors_name_key_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str,
                                    fix: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(SystemExit) as exc:
        main(["config", "check", "--config", str(f)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert key in err and fix in err


def test_env_override(tmp_path: Path) -> None:
    cfg = load_config(os.devnull, env={"ZTAUDIT_REVOCATION_GRACE_SECONDS": "30"})
    assert cfg.revocation.grace_seconds == 30


@pytest.mark.parametrize(("section", "key", "bad", "good"), [
    ("kafka", "security_protocol", "TLS", "SASL_SSL"),
    ("kafka", "sasl_mechanism", "SCRAM-SHA-1", "SCRAM-SHA-512"),
    ("kafka", "backend", "librdkafka", "confluent"),
    ("kafka", "start_from", "beginning", "latest"),
    ("reach", "window", "week", "hour"),
])
def test_fixed_word_settings_accept_only_their_words(tmp_path: Path, section: str, key: str, bad: str,
                                                    good: str) -> None:
    """A setting that takes one of a fixed set of words refuses others, from the file and the environment."""
    from ztaudit.core.errors import ConfigError

    cfg_file = tmp_path / "ztaudit.toml"
    cfg_file.write_text(f'[{section}]\n{key} = "{bad}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, env={})
    assert f"{section}.{key}" in str(err.value) and good in str(err.value)
    with pytest.raises(ConfigError):
        load_config(None, env={f"ZTAUDIT_{section.upper()}_{key.upper()}": bad})
    assert getattr(getattr(load_config(None, env={f"ZTAUDIT_{section.upper()}_{key.upper()}": good}), section),
                   key) == good


def test_all_errors_reported_at_once_in_words(tmp_path: Path) -> None:
    from ztaudit.core.errors import ConfigErrors

    f = tmp_path / "z.toml"
    f.write_text('[ingest]\nchunk_bytes = "abc"\n[revocation]\ngrace_seconds = -1\n[detect]\nmax_evidnce = 3\n')
    with pytest.raises(ConfigErrors) as err:
        load_config(f, env={"ZTAUDIT_KAFKA_FLUSH_SECONDS": "soon"})
    text = str(err.value)
    assert "<class" not in text and "4 configuration errors" in text
    assert "ingest.chunk_bytes: must be a whole number, got 'abc'" in text
    assert "revocation.grace_seconds: must be >= 0" in text
    assert "detect.max_evidnce: unknown key; did you mean 'max_evidence'?" in text
    assert "kafka.flush_seconds: must be a number of seconds or a duration like 15m, 2h, 7d, got 'soon' " \
        "(from $ZTAUDIT_KAFKA_FLUSH_SECONDS)" in text


def test_unknown_ztaudit_variable_warned_with_did_you_mean() -> None:
    cfg = load_config(os.devnull, env={"ZTAUDIT_REVOCATION_GRACE_SECOND": "30", "ZTAUDIT_LAKE": "x",
                                       "ZTAUDIT_KAFKA_PASSWORD": "p"})
    assert cfg.revocation.grace_seconds == 900
    assert cfg.warnings == ("$ZTAUDIT_REVOCATION_GRACE_SECOND is not a ztaudit setting and is ignored; "
                            "did you mean 'ZTAUDIT_REVOCATION_GRACE_SECONDS'?",)
    res = CliRunner().invoke(cli, ["config", "check", "--config", os.devnull],
                             env={"ZTAUDIT_REVOCATION_GRACE_SECOND": "30"})
    assert res.exit_code == 0 and "did you mean 'ZTAUDIT_REVOCATION_GRACE_SECONDS'" in res.output


def test_config_check_says_where_each_setting_came_from(tmp_path: Path) -> None:
    f = tmp_path / "z.toml"
    f.write_text("[revocation]\nlookback_days = 10\n\n[kafka]\ngroup = \"g\"\n")
    res = CliRunner().invoke(cli, ["config", "check", "--config", str(f)],
                             env={"ZTAUDIT_REVOCATION_GRACE_SECONDS": "30"})
    assert res.exit_code == 0, res.output
    assert "built-in defaults" not in res.output
    assert f"# configuration OK ({f}; overridden by $ZTAUDIT_REVOCATION_GRACE_SECONDS)" in res.output
    assert "revocation.grace_seconds = 30    # from environment $ZTAUDIT_REVOCATION_GRACE_SECONDS" in res.output
    assert f"revocation.lookback_days = 10    # from file {f}:2" in res.output
    assert f'kafka.group = "g"    # from file {f}:5' in res.output
    assert "detect.max_evidence = 50    # from default" in res.output
    cfg = load_config(f, env={"ZTAUDIT_KAFKA_GROUP": "e"}, overrides={"kafka": {"group": "flag"}})
    assert cfg.kafka.group == "flag" and cfg.origins["kafka.group"] == "flag"


def test_time_spans_accept_durations(tmp_path: Path) -> None:
    f = tmp_path / "z.toml"
    f.write_text('[revocation]\ngrace_seconds = "15m"\nlookback_days = "2w"\n[credentials]\ndormancy_days = "36h"\n')
    cfg = load_config(f, env={"ZTAUDIT_KAFKA_SESSION_TIMEOUT_MS": "15s", "ZTAUDIT_DETECT_LOCK_TIMEOUT_SECONDS": "2m"})
    assert cfg.revocation.grace_seconds == 900 and cfg.revocation.lookback_days == 14
    assert cfg.credentials.dormancy_days == 1.5 and cfg.kafka.session_timeout_ms == 15_000
    assert cfg.detect.lock_timeout_seconds == 120.0
    from ztaudit.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reach\.baseline_days: must be a whole number of days or a duration"):
        load_config(None, env={"ZTAUDIT_REACH_BASELINE_DAYS": "36h"})


@pytest.mark.parametrize("query", ["password=S3cretQ", "sslmode=require&PassWord=S3cretQ",
                                   "sslpassword=S3cretQ"])
def test_a_catalog_password_in_the_uri_query_is_refused_and_never_printed(query: str) -> None:
    """SQLAlchemy hands ``?password=`` to libpq: it is a password like ``user:password@``, and would be
    recorded in catalog.json and printed by ``config check`` if accepted."""
    from ztaudit.core.catalog_uri import mask_uri
    from ztaudit.core.errors import ConfigError

    uri = f"postgresql+psycopg2://zt@127.0.0.1:5432/lake?{query}"
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"ZTAUDIT_LAKE_CATALOG_URI": uri})
    assert "password query parameter" in str(err.value) and "S3cretQ" not in str(err.value)
    assert "S3cretQ" not in mask_uri(f"could not connect to {uri}: refused")


@pytest.mark.parametrize("value", ["99999999d", "36700d", "5300w"])
def test_a_time_span_past_a_hundred_years_is_a_config_error_not_an_overflow(value: str) -> None:
    from ztaudit.core.config import ConfigError, parse_duration_seconds

    with pytest.raises(ConfigError, match="longer than 100 years"):
        parse_duration_seconds("--expire-snapshots", value)
    assert parse_duration_seconds("--expire-snapshots", "3650d") == 3650 * 86400

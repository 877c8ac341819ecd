"""SASL_PLAINTEXT with SCRAM-SHA-256: the right credentials work; a wrong password fails fast with a
clear error and exit code 5 (KafkaConnectError), and the secret is never printed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support.kafka_broker import ZTAUDIT, KafkaBroker, audit_events, audit_id_counts, create_topic, produce, ztaudit_env

pytestmark = pytest.mark.kafka


def _sasl_args(broker: KafkaBroker, topic: str, lake: Path, group: str, backend: str = "kafka-python") -> list[str]:
    return [ZTAUDIT, "consume", "--bootstrap-servers", broker.sasl_bootstrap, "--topic", f"{topic}=k8s_audit",
            "--lake", str(lake), "--group", group, "--until-idle", "2", "--security-protocol", "SASL_PLAINTEXT",
            "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", broker.scram_user, "--backend", backend]


def test_scram_right_password_consumes(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path,
                                       backend: str) -> None:
    create_topic(kafka_broker, topic_name, 2)
    produce(kafka_broker, topic_name, audit_events(1000, run="sasl"))
    lake = tmp_path / "lake"
    proc = subprocess.run(_sasl_args(kafka_broker, topic_name, lake, "g-sasl", backend), capture_output=True, text=True,
                          timeout=120, env=ztaudit_env(ZTAUDIT_KAFKA_PASSWORD=kafka_broker.scram_password))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = audit_id_counts(lake)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert kafka_broker.scram_password not in proc.stderr + proc.stdout


def test_scram_password_from_file_named_in_config(kafka_broker: KafkaBroker, topic_name: str,
                                                  tmp_path: Path) -> None:
    create_topic(kafka_broker, topic_name, 1)
    produce(kafka_broker, topic_name, audit_events(200, run="saslf"))
    secret = tmp_path / "kafka-password"
    secret.write_text(kafka_broker.scram_password + "\n")
    cfg = tmp_path / "ztaudit.toml"
    cfg.write_text(f'[kafka]\nsasl_password_file = "{secret}"\n')
    lake = tmp_path / "lake"
    proc = subprocess.run([*_sasl_args(kafka_broker, topic_name, lake, "g-saslf"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, env=ztaudit_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(audit_id_counts(lake)) == 200


def test_scram_wrong_password_fails_fast_exit_5_secret_not_printed(kafka_broker: KafkaBroker, topic_name: str,
                                                                   tmp_path: Path, backend: str) -> None:
    wrong = "Wr0ng-But-Secret-Passw0rd-9f3a"
    t0 = time.monotonic()
    proc = subprocess.run(_sasl_args(kafka_broker, topic_name, tmp_path / "lake", "g-sasl-bad", backend),
                          capture_output=True, text=True, timeout=120, env=ztaudit_env(ZTAUDIT_KAFKA_PASSWORD=wrong))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 5, (proc.returncode, proc.stderr[-3000:])
    assert elapsed < 30, elapsed
    out = proc.stderr + proc.stdout
    assert wrong not in out
    assert "refused" in out and kafka_broker.scram_user in out and "SCRAM-SHA-256" in out
    assert "fix:" in out


def test_sasl_without_password_is_a_config_error(kafka_broker: KafkaBroker, topic_name: str, tmp_path: Path) -> None:
    proc = subprocess.run(_sasl_args(kafka_broker, topic_name, tmp_path / "lake", "g-sasl-none"),
                          capture_output=True, text=True, timeout=60, env=ztaudit_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ZTAUDIT_KAFKA_PASSWORD" in proc.stderr

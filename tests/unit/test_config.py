"""Settings: environment variables, ranges, secrets that never show."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "REDIS_URL", "TOPIC_PREFIX", "PARTITIONS"):
        monkeypatch.delenv(f"UNLEARN_{name}", raising=False)
    default = Settings()
    assert default.kafka_bootstrap is None and default.topic_prefix == ""
    assert default.legal_deadline == timedelta(days=30) and default.key_namespace == "unlearn"
    monkeypatch.setenv("UNLEARN_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("UNLEARN_PARTITIONS", "12")
    monkeypatch.setenv("UNLEARN_TOPIC_PREFIX", "staging.")
    settings = Settings()
    assert (settings.kafka_bootstrap, settings.partitions) == ("k1:9092,k2:9092", 12)
    assert settings.topic_prefix == "staging."
    with pytest.raises(Exception, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PARTITIONS", "0"),
        ("LEGAL_DEADLINE_DAYS", "-1"),
        ("REDIS_URL", "http://x"),
        ("KAFKA_SASL_MECHANISM", "GSSAPI"),
    ],
)
def test_out_of_range_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(f"UNLEARN_{env}", value)
    with pytest.raises(ConfigError, match=f"UNLEARN_{env}"):
        load_settings()


def test_secrets_never_show(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        redis_password="hunter2-redis",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="hunter2-kafka",
        kafka_tls_ca_file="/etc/ca.pem",
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", settings, settings)
    shown = repr(settings) + str(settings) + caplog.text + settings.model_dump_json()
    assert "hunter2" not in shown
    config = settings.kafka_config()
    assert config["security_protocol"] == "SASL_SSL" and config["ssl_cafile"] == "/etc/ca.pem"
    assert config["sasl_plain_password"] == "hunter2-kafka"
    assert settings.redis_kwargs()["password"] == "hunter2-redis"


def test_sasl_needs_credentials() -> None:
    with pytest.raises(ConfigError, match="UNLEARN_KAFKA_SASL_USERNAME"):
        load_settings(kafka_sasl_mechanism="PLAIN")
    assert Settings().kafka_config() == {"security_protocol": "PLAINTEXT"}

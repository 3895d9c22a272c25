"""``KafkaSecurity``: the Kafka auth settings the manifests give the worker, as kafka-python arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from eventing.config import KafkaSecurity, WorkerConfig

PASSWORD = "pw-8c1e-do-not-print"
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "kzero-worker", "KAFKA_SASL_PASSWORD": PASSWORD}


@pytest.fixture
def cafile(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_no_variables_mean_plaintext() -> None:
    security = KafkaSecurity.from_env({"KAFKA_SASL_PASSWORD": "", "PATH": "/bin"})  # empty counts as unset
    assert security == KafkaSecurity()
    assert security.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert WorkerConfig(bootstrap_servers="b:9092", model="m", predictor_url="http://p").security == security


def test_sasl_over_tls_gives_every_kafka_python_argument(cafile: Path) -> None:
    security = KafkaSecurity.from_env({**SASL, "KAFKA_SSL_CAFILE": str(cafile)})
    assert security.client_kwargs() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "kzero-worker",
        "sasl_plain_password": PASSWORD, "ssl_cafile": str(cafile),
    }


@pytest.mark.parametrize(("env", "expected"), [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p"},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
      "sasl_plain_password": "p"}),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, {"security_protocol": "SSL"}),  # the system's CAs
])
def test_only_the_arguments_that_apply(env: dict[str, str], expected: dict[str, str]) -> None:
    assert KafkaSecurity.from_env(env).client_kwargs() == expected


def test_ssl_with_a_ca_file(cafile: Path) -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(cafile)})
    assert security.client_kwargs() == {"security_protocol": "SSL", "ssl_cafile": str(cafile)}


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS'"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.crt"}, "KAFKA_SSL_CAFILE='/no/such/ca.crt'"),
    ({**SASL, "KAFKA_SASL_MECHANISM": ""}, "KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({**SASL, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({**SASL, "KAFKA_SECURITY_PROTOCOL": ""},  # forgotten protocol: credentials must not be ignored silently
     "KAFKA_SASL_MECHANISM is set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL"),
])
def test_a_bad_or_incomplete_setting_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)) as caught:
        KafkaSecurity.from_env(env)
    assert PASSWORD not in str(caught.value) and PASSWORD not in str(caught.value.__cause__)


def test_a_ca_file_without_tls_is_an_error(cafile: Path) -> None:
    env = {**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CAFILE": str(cafile)}
    with pytest.raises(ValueError, match=r"^KAFKA_SSL_CAFILE is set, but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\b"):
        KafkaSecurity.from_env(env)


def test_the_password_never_shows() -> None:
    security = KafkaSecurity.from_env(SASL)
    config = WorkerConfig(bootstrap_servers="b:9092", model="m", predictor_url="http://p", security=security)
    for text in (repr(security), str(security), security.describe(), repr(config), str(config),
                 security.model_dump_json(), config.model_dump_json()):
        assert PASSWORD not in text, text
    assert security.describe() == ("KAFKA_SECURITY_PROTOCOL=SASL_SSL, KAFKA_SASL_MECHANISM=SCRAM-SHA-512, "
                                   "KAFKA_SASL_USERNAME=kzero-worker")


def test_the_model_is_frozen() -> None:
    with pytest.raises(ValidationError):
        KafkaSecurity().security_protocol = "SSL"  # type: ignore[misc]

"""Kafka SASL/TLS settings: validation at start and the options of each client library.

No broker here (tests/integration/test_kafka_security.py runs one with SASL).
"""

from __future__ import annotations

import ssl

import certifi
import faust
import pytest
from pydantic import SecretStr

from services.common.errors import ConfigError
from services.common.kafka_security import (
    aiokafka_options,
    faust_credentials,
    kafka_python_options,
    librdkafka_options,
)
from services.common.settings import CommonSettings, env_for, load_settings

SECRET = "s3cret-never-shown"


def sasl_ssl() -> CommonSettings:
    return CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="cw",
        kafka_sasl_password=SecretStr(SECRET),
        kafka_ssl_cafile=certifi.where(),
    )


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    s = CommonSettings()
    assert kafka_python_options(s) == {"security_protocol": "PLAINTEXT"}
    assert aiokafka_options(s) == {"security_protocol": "PLAINTEXT"}
    assert librdkafka_options(s) == {"security.protocol": "plaintext"}
    assert faust_credentials(s) is None


def test_sasl_ssl_options_for_every_library() -> None:
    s = sasl_ssl()

    kp = kafka_python_options(s)
    assert (kp["security_protocol"], kp["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (kp["sasl_plain_username"], kp["sasl_plain_password"]) == ("cw", SECRET)
    assert isinstance(kp["ssl_context"], ssl.SSLContext)
    assert kp["ssl_context"].verify_mode == ssl.CERT_REQUIRED and kp["ssl_context"].check_hostname

    assert aiokafka_options(s)["sasl_plain_password"] == SECRET

    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert creds.password == SECRET and SECRET not in repr(creds)

    rd = librdkafka_options(s)
    assert rd["security.protocol"] == "sasl_ssl" and rd["sasl.password"] == SECRET
    assert rd["ssl.ca.location"] == certifi.where()


def test_tls_only_gives_faust_ssl_credentials() -> None:
    s = CommonSettings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert "sasl_mechanism" not in kafka_python_options(s)
    assert kafka_python_options(s)["ssl_context"].check_hostname is False


def test_secrets_stay_out_of_repr_and_reach_child_processes() -> None:
    s = sasl_ssl()
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    env = env_for(s)
    assert env["CHURNWATCH_KAFKA_SASL_PASSWORD"] == SECRET
    assert (
        "CHURNWATCH_KAFKA_SSL_CERTFILE" not in env or env["CHURNWATCH_KAFKA_SSL_CERTFILE"] != "None"
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs CHURNWATCH_KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "cw"},
            "CHURNWATCH_KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such.pem"}, "no such file"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": certifi.where()},
            "needs CHURNWATCH_KAFKA_SSL_CERTFILE",
        ),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "CHURNWATCH_KAFKA_SASL_MECHANISM"),
    ],
)
def test_incomplete_security_settings_fail_at_start(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"CHURNWATCH_{name}", value)
    with pytest.raises(ConfigError, match=says) as caught:
        load_settings(CommonSettings)
    assert "Value error" not in str(caught.value)

"""Kafka SASL and TLS: the settings turned into each client library's options.

Three Kafka client libraries run in churnwatch and each spells security its own
way, so each gets one function here and every client is built through it:

- :func:`kafka_python_options` for kafka-python (the HTTP services and tools);
- :func:`aiokafka_options` for aiokafka (the dashboard's alert stream, benchmarks);
- :func:`faust_credentials` for Faust's ``broker_credentials`` (the workers).

The settings are checked once, when :class:`~services.common.settings.CommonSettings`
is built (SASL without a user name or password, a key without its certificate,
a file that does not exist), so a worker never starts with half a configuration.
Credentials the broker refuses are found by :func:`credentials_problem`, one
SASL/TLS handshake with the first bootstrap server: kafka-python and aiokafka
clients only retry a refused login until they time out with "unable to
bootstrap", which does not say why.

>>> from services.common.settings import CommonSettings
>>> kafka_python_options(CommonSettings())
{'security_protocol': 'PLAINTEXT'}
>>> opts = kafka_python_options(
...     CommonSettings(
...         kafka_security_protocol="SASL_PLAINTEXT",
...         kafka_sasl_username="cw",
...         kafka_sasl_password="s3cret",
...     )
... )
>>> opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]
('PLAIN', 'cw', 's3cret')
>>> faust_credentials(CommonSettings()) is None
True
"""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.common.settings import CommonSettings


def uses_sasl(settings: CommonSettings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def uses_tls(settings: CommonSettings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _password(settings: CommonSettings) -> str:
    secret = settings.kafka_sasl_password
    return secret.get_secret_value() if secret is not None else ""


def ssl_context(settings: CommonSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the CA file, or the
    system's trust store when none is set, and the client certificate for mutual TLS.
    """
    if not uses_tls(settings):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.kafka_ssl_certfile is not None:
        keyfile = str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
        context.load_cert_chain(str(settings.kafka_ssl_certfile), keyfile)
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_python_options(settings: CommonSettings) -> dict[str, Any]:
    """Options for ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": _password(settings),
        }
    if uses_tls(settings):
        options["ssl_context"] = ssl_context(settings)
    return options


def aiokafka_options(settings: CommonSettings) -> dict[str, Any]:
    """Options for ``AIOKafkaProducer`` and ``AIOKafkaConsumer`` (same names, one
    difference: aiokafka takes TLS only as an ``ssl_context``, which is what both get).
    """
    return kafka_python_options(settings)


def faust_credentials(settings: CommonSettings) -> Any:
    """``broker_credentials`` of a Faust app: SASL or TLS credentials, None for PLAINTEXT."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(settings)
    if uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_password(settings),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def credentials_problem(settings: CommonSettings, *, timeout_s: float = 10.0) -> str | None:
    """One line saying why Kafka refuses our SASL login or TLS handshake, or None.

    None too when the broker cannot be reached at all (that is not a credentials
    problem) and for PLAINTEXT, which has nothing to refuse.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    with ThreadPoolExecutor(1) as pool:  # asyncio.run needs a thread without a running loop
        return pool.submit(asyncio.run, _handshake(settings, timeout_s)).result()


async def _handshake(settings: CommonSettings, timeout_s: float) -> str | None:
    from aiokafka import errors
    from aiokafka.conn import create_conn

    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    where = f"Kafka at {host}:{port}"
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                request_timeout_ms=int(timeout_s * 1000),
                **aiokafka_options(settings),
            ),
            timeout_s,
        )
    except (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError) as exc:
        who = settings.kafka_sasl_username
        return (
            f"{where} refused the credentials of user {who!r} ({settings.kafka_sasl_mechanism}): "
            f"{exc}; check CHURNWATCH_KAFKA_SASL_USERNAME and CHURNWATCH_KAFKA_SASL_PASSWORD"
        )
    except errors.UnsupportedSaslMechanismError as exc:
        return f"{where}: {exc}; set CHURNWATCH_KAFKA_SASL_MECHANISM to one it enables"
    except ssl.SSLError as exc:
        return (
            f"{where}: TLS handshake failed ({exc.reason or exc}); check "
            "CHURNWATCH_KAFKA_SSL_CAFILE / _CERTFILE / _KEYFILE and that the listener speaks TLS"
        )
    except (errors.KafkaError, OSError, TimeoutError):
        return None  # unreachable or not speaking our protocol: not a credentials problem
    conn.close()
    return None


def librdkafka_options(settings: CommonSettings) -> dict[str, Any]:
    """The same for confluent-kafka (librdkafka's dotted configuration names)."""
    options: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol.lower()}
    if uses_sasl(settings):
        options |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": _password(settings),
        }
    if uses_tls(settings):
        for key, path in (
            ("ssl.ca.location", settings.kafka_ssl_cafile),
            ("ssl.certificate.location", settings.kafka_ssl_certfile),
            ("ssl.key.location", settings.kafka_ssl_keyfile),
        ):
            if path is not None:
                options[key] = str(path)
        check = "https" if settings.kafka_ssl_check_hostname else "none"
        options["ssl.endpoint.identification.algorithm"] = check
    return options

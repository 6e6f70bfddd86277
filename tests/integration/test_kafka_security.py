"""Kafka SASL on a real broker: every client library, through the settings.

A private single-node Kafka (KRaft, the local stack's jars, no Maven) listens
with SASL_PLAINTEXT and the PLAIN mechanism only; its controller listener stays
plaintext on the next port. Through ``CHURNWATCH_KAFKA_*`` settings alone:

- kafka-python (``make_admin``, ``make_producer``, ``make_consumer``) creates
  a topic, produces and consumes;
- aiokafka (``aiokafka_options``) produces and consumes;
- Faust (``faust_credentials``): the real notifier worker runs against the
  broker, consumes an alert and publishes its action;
- a wrong password is one clear line, at the helpers and at the command
  line, not a traceback.

The broker is started once for the module (about 5-10 s on a 2-core machine)
and stopped by its pid at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import TopicPartition
from pydantic import SecretStr

from services.common.errors import ConfigError
from services.common.kafka import ensure_topics, make_consumer, make_producer
from services.common.kafka_security import aiokafka_options
from services.common.settings import CommonSettings, env_for, load_settings
from services.launcher import Services
from tests.conftest import Isolated, free_port
from tests.integration.test_notifier_flow import vip_user
from tests.notifier_data import sample_alert

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "churnwatch", "cw-sasl-secret"
JAAS = (
    "org.apache.kafka.common.security.plain.PlainLoginModule required "
    'username="admin" password="admin-secret" '
    f'user_admin="admin-secret" user_{USER}="{PASSWORD}";'
)
PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}
log.dirs={data}
num.partitions=2
offsets.topic.replication.factor=1
offsets.topic.num.partitions=2
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


def kafka_libs() -> Path:
    """The broker's jars, fetched from Maven Central like ``churnwatch stack up`` does."""
    from services.stack.local import LocalStack

    return LocalStack(load_settings(CommonSettings)).kafka.fetch()


def free_port_pair() -> int:
    for _ in range(100):
        port = free_port()
        try:
            with __import__("socket").socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def sasl_settings(port: int, *, password: str = PASSWORD, **extra: Any) -> CommonSettings:
    return CommonSettings(
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=USER,
        kafka_sasl_password=SecretStr(password),
        **extra,
    )


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommonSettings]:
    libs, java = kafka_libs(), shutil.which("java")
    assert java is not None, "the SASL broker needs a JDK (java on PATH)"
    home = tmp_path_factory.mktemp("sasl-kafka")
    port = free_port_pair()
    props = home / "server.properties"
    props.write_text(PROPERTIES.format(port=port, cport=port + 1, jaas=JAAS, data=home / "data"))
    cmd = [java, "-Xms128m", "-Xmx512m", "-cp", f"{libs}/*"]
    log4j = REPO / "deploy" / "local" / "log4j2.properties"
    cmd.insert(1, f"-Dlog4j2.configurationFile={log4j}")
    # Kafka's own ids never start with "-" (Uuid.randomUuid draws again): the format
    # tool would read such an id as an option and fail (1 run in 64 did).
    cluster = "-"
    while cluster.startswith("-"):
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    subprocess.run(
        [*cmd, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)],
        check=True,
        capture_output=True,
    )
    started = time.monotonic()
    with (home / "kafka.log").open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT
        )
    settings = sasl_settings(port, home=home)
    try:
        from services.common.kafka import broker_answers

        while not broker_answers(settings, timeout_ms=2000):
            assert proc.poll() is None, (home / "kafka.log").read_text()[-3000:]
            assert time.monotonic() - started < 90, "the SASL broker did not start in 90 s"
            time.sleep(0.3)
        print(f"SASL broker ready in {time.monotonic() - started:.1f} s")
        yield settings
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_kafka_python_helpers_produce_and_consume(sasl_broker: CommonSettings) -> None:
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    ensure_topics(sasl_broker, [topic])
    producer = make_producer(sasl_broker)
    producer.send(topic, key=b"k", value=b"over SASL").get(timeout=30)
    producer.close()
    consumer = make_consumer(sasl_broker, enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        assert next(iter(consumer)).value == b"over SASL"
    finally:
        consumer.close()


def test_aiokafka_options_produce_and_consume(sasl_broker: CommonSettings) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"sasl-aio-{uuid.uuid4().hex[:8]}"
    ensure_topics(sasl_broker, [topic])
    bootstrap, security = sasl_broker.kafka_bootstrap, aiokafka_options(sasl_broker)

    async def roundtrip() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **security)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"aiokafka over SASL", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **security
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            return [r.value for records in batch.values() for r in records]
        finally:
            await consumer.stop()

    assert asyncio.run(roundtrip()) == [b"aiokafka over SASL"]


def test_faust_worker_consumes_and_publishes_over_sasl(
    sasl_broker: CommonSettings, stack: CommonSettings, tmp_path: Path
) -> None:
    """The notifier worker (Faust, aiokafka) on the SASL broker; Redis from the local stack."""
    iso = Isolated(stack, tmp_path)
    settings = iso.settings.model_copy(
        update={
            name: getattr(sasl_broker, name)
            for name in CommonSettings.model_fields
            if name.startswith("kafka_")
        }
    )
    env = iso.env | env_for(settings) | {"CHURNWATCH_NOTIFIER_DEFERRED_POLL_S": "1"}
    assert env["CHURNWATCH_KAFKA_SASL_PASSWORD"] == PASSWORD  # the child gets the secret
    ensure_topics(settings, [settings.topic_alerts, settings.topic_actions])
    user = vip_user(iso.run)  # not in the control group
    alert = sample_alert(user, model_version="sasl@1")
    services = Services(settings, env, names=("notifier",), logs=tmp_path / "logs")
    consumer = make_consumer(settings, enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        services.start()
        producer = make_producer(settings)
        producer.send(settings.topic_alerts, key=user.encode(), value=orjson.dumps(alert))
        producer.flush(timeout=30)
        producer.close()
        parts = [
            TopicPartition(settings.topic_actions, p)
            for p in consumer.partitions_for_topic(settings.topic_actions) or ()
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        actions: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while not actions and time.monotonic() < deadline:
            services.check()
            actions += [orjson.loads(m.value) for m in consumer]
        # No contact registered: the e-mail is suppressed, and that decision is published.
        assert [(a["alert_id"], a["status"]) for a in actions] == [
            (alert["alert_id"], "suppressed")
        ]
    finally:
        services.stop()
        consumer.close()
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*"))
    assert PASSWORD not in logs


def test_wrong_password_is_one_clear_error(sasl_broker: CommonSettings) -> None:
    wrong = sasl_broker.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    with pytest.raises(ConfigError, match="refused the credentials"):
        ensure_topics(wrong, ["never-created"])
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refused the credentials"):
        make_producer(wrong)
    print(f"make_producer gave up after {time.monotonic() - started:.1f} s")

    env = env_for(wrong) | {"CHURNWATCH_NOTIFIER_METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "notifier"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused the credentials" in done.stderr
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout


def test_sasl_without_credentials_fails_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_KAFKA_SASL")}
    env["CHURNWATCH_KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "notifier", "redrive", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "CHURNWATCH_KAFKA_SASL_USERNAME" in done.stderr
    assert "Traceback" not in done.stderr

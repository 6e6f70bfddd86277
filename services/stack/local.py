"""The local stack: a real single-node Kafka (KRaft) and a real Redis on loopback.

Kafka's jars come from Maven Central through ``deploy/local/pom.xml`` and run
on the machine's JDK; Redis is Debian's ``redis-server`` (installed with
apt-get when missing). Everything lives under ``$CHURNWATCH_HOME``:

    kafka/libs/     the broker's jars            redis/data/   AOF and RDB
    kafka/data/     the KRaft log directories    redis/redis.conf
    kafka/server.properties, kafka.pid, kafka.log   redis.pid, redis.log

With ``CHURNWATCH_REDIS_CLUSTER=true`` (``stack up --redis-cluster``) the Redis
is a three-master Redis Cluster instead (``redis_cluster.py``), its nodes on
``CHURNWATCH_REDIS_URL``'s port and the next two, under ``redis-cluster/<port>/``.

``up`` is idempotent (a process that is already ours and answering is reused),
``down`` stops only the processes whose pid files ``up`` wrote (every cluster
node's too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from services.common.errors import ConfigError
from services.common.settings import CommonSettings

if TYPE_CHECKING:
    from services.stack.redis_cluster import LocalRedisCluster

DEPLOY_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def answers(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                return True
        except OSError:
            return False


def kafka_endpoint(settings: CommonSettings) -> Endpoint:
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    return Endpoint(host, int(port))


def redis_endpoint(settings: CommonSettings) -> Endpoint:
    url = urlparse(settings.redis_url)
    return Endpoint(url.hostname or "127.0.0.1", url.port or 6379)


def _is_loopback(host: str) -> bool:
    return host in {"localhost", "::1"} or host.startswith("127.")


def pid_alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process runs and its command line has ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def stop_process(pid_file: Path, marker: str, *, what: str, say: Say) -> None:
    """Stop the process ``up`` started (SIGTERM, then SIGKILL after 30 s); forget its pid."""
    pid = pid_alive(pid_file, marker)
    if pid is not None:
        say(f"stopping {what} (pid {pid}) ...")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid_file, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid_file, marker):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _render(template: str, target: Path, **values: object) -> None:
    text = Template((DEPLOY_LOCAL / template).read_text()).substitute(values)
    target.write_text(text)


def _spawn(cmd: list[str], *, log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def wait_until(check: Callable[[], bool], *, what: str, timeout: float, say: Say) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.25)
    say(f"{what} is ready")


class LocalStack:
    """Provision, start, stop and check the local Kafka and Redis."""

    def __init__(self, settings: CommonSettings, *, say: Say = print) -> None:
        self.settings = settings
        self.say = say
        self.home = settings.home.resolve()
        self.kafka_dir = self.home / "kafka"
        self.redis_dir = self.home / "redis"
        self.kafka = kafka_endpoint(settings)
        self.redis = redis_endpoint(settings)
        self.cluster_dir = self.home / "redis-cluster"

    @property
    def redis_name(self) -> str:
        return "redis-cluster" if self.settings.redis_cluster else "redis"

    def address(self, name: str) -> str:
        """Where the service ``name`` of :meth:`status` listens."""
        if name == "kafka":
            return f"{self.kafka.host}:{self.kafka.port}"
        if name == "redis-cluster":
            return f"{self.redis.host}:{self.redis.port}-{self.redis.port + 2}"
        return f"{self.redis.host}:{self.redis.port}"

    def redis_cluster(self) -> LocalRedisCluster:
        from services.stack.redis_cluster import LocalRedisCluster

        return LocalRedisCluster(
            self.cluster_dir, host=self.redis.host, port=self.redis.port, say=self.say
        )

    # -- Kafka -------------------------------------------------------------
    def fetch_kafka(self) -> Path:
        """Copy the broker's jars from Maven Central (once), showing progress."""
        libs = self.kafka_dir / "libs"
        marker = libs / ".complete"
        if marker.exists():
            return libs
        if shutil.which("mvn") is None:
            raise ConfigError("Maven (mvn) is needed to fetch Kafka: apt-get install maven")
        libs.mkdir(parents=True, exist_ok=True)
        self.say("fetching Kafka jars from Maven Central (first run only) ...")
        cmd = [
            "mvn",
            "-B",
            "-f",
            str(DEPLOY_LOCAL / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        downloaded, tail = 0, list[str]()
        for line in proc.stdout:
            tail = [*tail[-30:], line.rstrip()]
            if "Downloaded from" in line:
                downloaded += 1
                if downloaded % 10 == 0:
                    self.say(f"  ... {downloaded} artifacts downloaded")
        if proc.wait() != 0:
            raise ConfigError("mvn could not fetch Kafka:\n" + "\n".join(tail))
        jars = len(list(libs.glob("*.jar")))
        self.say(f"Kafka jars ready ({jars} jars, {downloaded} downloaded)")
        marker.touch()
        return libs

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise ConfigError("a JDK (java) is needed to run Kafka: apt-get install openjdk-17-jdk")
        return [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={DEPLOY_LOCAL / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def start_kafka(self) -> None:
        pid_file = self.kafka_dir / "kafka.pid"
        if pid_alive(pid_file, "kafka.Kafka") and self.kafka.answers():
            self.say(f"Kafka already running on {self.kafka.host}:{self.kafka.port}")
            return
        if self.kafka.answers():
            if not self.kafka_ready():
                raise ConfigError(
                    f"port {self.kafka.port} is taken by something that is not Kafka; "
                    "stop it or set CHURNWATCH_KAFKA_BOOTSTRAP to another port"
                )
            self.say(
                f"using the Kafka already answering on {self.kafka.host}:{self.kafka.port} "
                "(not started by this stack: `down` leaves it alone)"
            )
            return
        libs = self.fetch_kafka()
        data = self.kafka_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = self.kafka_dir / "server.properties"
        _render(
            "server.properties.template",
            props,
            host=self.kafka.host,
            port=self.kafka.port,
            controller_port=self.kafka.port + 1,
            data_dir=data,
            partitions=self.settings.topic_partitions,
        )
        if not (data / "meta.properties").exists():
            cluster_id = (
                subprocess.run(
                    self._java(libs, "kafka.tools.StorageTool", "random-uuid"),
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            subprocess.run(
                self._java(
                    libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)
                ),
                check=True,
                capture_output=True,
            )
            self.say(f"formatted KRaft storage (cluster {cluster_id})")
        _spawn(
            self._java(libs, "kafka.Kafka", str(props)),
            log=self.kafka_dir / "kafka.log",
            pid_file=pid_file,
        )
        self.say(f"starting Kafka on {self.kafka.host}:{self.kafka.port} ...")
        wait_until(self.kafka_ready, what="Kafka", timeout=90, say=self.say)

    def kafka_ready(self) -> bool:
        if not self.kafka.answers():
            return False
        from services.common.kafka import broker_answers

        return broker_answers(self.settings.kafka_bootstrap)

    # -- Redis -------------------------------------------------------------
    def install_redis(self) -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        if os.geteuid() != 0:
            raise ConfigError("redis-server is missing: run `sudo apt-get install redis-server`")
        self.say("installing redis-server with apt-get ...")
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "redis-server"],
        ):
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            if done.returncode != 0:
                raise ConfigError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return shutil.which("redis-server") or "/usr/bin/redis-server"

    def start_redis(self) -> None:
        pid_file = self.redis_dir / "redis.pid"
        if pid_alive(pid_file, "redis-server") and self.redis.answers():
            self.say(f"Redis already running on {self.redis.host}:{self.redis.port}")
            return
        if self.redis.answers():
            if not self.redis_ready():
                raise ConfigError(
                    f"port {self.redis.port} is taken by something that is not Redis; "
                    "stop it or set CHURNWATCH_REDIS_URL to another port"
                )
            self.say(
                f"using the Redis already answering on {self.redis.host}:{self.redis.port} "
                "(not started by this stack: `down` leaves it alone)"
            )
            return
        server = self.install_redis()
        data = self.redis_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.redis_dir / "redis.conf"
        _render(
            "redis.conf.template", conf, host=self.redis.host, port=self.redis.port, data_dir=data
        )
        _spawn([server, str(conf)], log=self.redis_dir / "redis.log", pid_file=pid_file)
        self.say(f"starting Redis on {self.redis.host}:{self.redis.port} ...")
        wait_until(self.redis_ready, what="Redis", timeout=30, say=self.say)

    def redis_ready(self) -> bool:
        import redis

        if self.settings.redis_cluster:
            return self.redis_cluster().ready()
        try:
            return bool(redis.Redis.from_url(self.settings.redis_url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    # -- the whole stack ---------------------------------------------------
    def up(self) -> None:
        for endpoint, name in ((self.kafka, "Kafka"), (self.redis, "Redis")):
            if not _is_loopback(endpoint.host):
                raise ConfigError(
                    f"{name} is configured at {endpoint.host}, not on loopback: the local stack "
                    "only runs on this machine. Use your own servers without `stack up`."
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.kafka_dir.mkdir(exist_ok=True)
        self.redis_dir.mkdir(exist_ok=True)
        if self.settings.redis_cluster:
            self.redis_cluster().up()
        else:
            self.start_redis()
        self.start_kafka()
        from services.common.kafka import ensure_topics

        ensure_topics(self.settings)
        if self.settings.redis_cluster:
            self.say(
                f"stack is up; services use CHURNWATCH_REDIS_URL={self.settings.redis_url} "
                "CHURNWATCH_REDIS_CLUSTER=true"
            )
            return
        self.say("stack is up")

    def down(self) -> None:
        for pid_file, marker in (
            (self.kafka_dir / "kafka.pid", "kafka.Kafka"),
            (self.redis_dir / "redis.pid", "redis-server"),
        ):
            stop_process(pid_file, marker, what=marker, say=self.say)
        self._stop_cluster_nodes()
        self.say("stack is down")

    def _stop_cluster_nodes(self) -> None:
        """Every cluster node ``up --redis-cluster`` started, whatever its ports."""
        from services.stack.redis_cluster import LocalRedisCluster

        for pid_file in sorted(self.cluster_dir.glob("*/redis.pid")):
            port = int(pid_file.parent.name)
            node = LocalRedisCluster(
                self.cluster_dir, host=self.redis.host, port=port, nodes=1, say=self.say
            )
            node.down()

    def status(self) -> dict[str, bool]:
        return {"kafka": self.kafka_ready(), self.redis_name: self.redis_ready()}

"""The local stack: a real single-node Kafka (KRaft) and a real Redis on loopback.

Kafka's jars come from Maven Central through ``deploy/local/pom.xml`` and run
on the machine's JDK (``kafka_broker.py``); Redis is Debian's ``redis-server``,
installed with apt-get when missing (``redis_server.py``). What they share (pid
files, spawning, waiting) is ``processes.py``. Everything lives under
``$CHURNWATCH_HOME``:

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

from typing import TYPE_CHECKING

from services.common.errors import ConfigError
from services.common.settings import CommonSettings
from services.stack.kafka_broker import KafkaBroker
from services.stack.processes import Say
from services.stack.redis_server import RedisServer

if TYPE_CHECKING:
    from services.stack.redis_cluster import LocalRedisCluster


def _is_loopback(host: str) -> bool:
    return host in {"localhost", "::1"} or host.startswith("127.")


class LocalStack:
    """Provision, start, stop and check the local Kafka and Redis."""

    def __init__(self, settings: CommonSettings, *, say: Say = print) -> None:
        self.settings = settings
        self.say = say
        self.home = settings.home.resolve()
        self.kafka = KafkaBroker(settings, self.home / "kafka", say=say)
        # With redis_cluster only its endpoint counts: the cluster's host and first port.
        self.redis = RedisServer(settings, self.home / "redis", say=say)
        self.cluster_dir = self.home / "redis-cluster"

    @property
    def redis_name(self) -> str:
        return "redis-cluster" if self.settings.redis_cluster else "redis"

    def address(self, name: str) -> str:
        """Where the service ``name`` of :meth:`status` listens."""
        kafka, redis = self.kafka.endpoint, self.redis.endpoint
        if name == "kafka":
            return f"{kafka.host}:{kafka.port}"
        if name == "redis-cluster":
            return f"{redis.host}:{redis.port}-{redis.port + 2}"
        return f"{redis.host}:{redis.port}"

    def redis_cluster(self) -> LocalRedisCluster:
        from services.stack.redis_cluster import LocalRedisCluster

        redis = self.redis.endpoint
        return LocalRedisCluster(self.cluster_dir, host=redis.host, port=redis.port, say=self.say)

    def redis_ready(self) -> bool:
        if self.settings.redis_cluster:
            return self.redis_cluster().ready()
        return self.redis.ready()

    def up(self) -> None:
        for endpoint, name in ((self.kafka.endpoint, "Kafka"), (self.redis.endpoint, "Redis")):
            if not _is_loopback(endpoint.host):
                raise ConfigError(
                    f"{name} is configured at {endpoint.host}, not on loopback: the local stack "
                    "only runs on this machine. Use your own servers without `stack up`."
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.kafka.dir.mkdir(exist_ok=True)
        self.redis.dir.mkdir(exist_ok=True)
        if self.settings.redis_cluster:
            self.redis_cluster().up()
        else:
            self.redis.start()
        self.kafka.start()
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
        self.kafka.stop()
        self.redis.stop()
        self._stop_cluster_nodes()
        self.say("stack is down")

    def _stop_cluster_nodes(self) -> None:
        """Every cluster node ``up --redis-cluster`` started, whatever its ports."""
        from services.stack.redis_cluster import LocalRedisCluster

        for pid_file in sorted(self.cluster_dir.glob("*/redis.pid")):
            port = int(pid_file.parent.name)
            node = LocalRedisCluster(
                self.cluster_dir, host=self.redis.endpoint.host, port=port, nodes=1, say=self.say
            )
            node.down()

    def status(self) -> dict[str, bool]:
        return {"kafka": self.kafka.ready(), self.redis_name: self.redis_ready()}

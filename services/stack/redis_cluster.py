"""A local three-master Redis Cluster on loopback, from Debian's ``redis-server``.

``churnwatch stack up --redis-cluster`` and the test fixtures run it through
:class:`LocalRedisCluster`. Node ``i`` listens on ``port + i`` (its cluster bus
on ``port + i + 10000``) and keeps everything under ``<root>/<port>/``:
``redis.conf``, ``nodes.conf`` (the node's view of the cluster), the
append-only files, ``redis.pid`` and ``redis.log``.

The first ``up`` joins the empty nodes with ``redis-cli --cluster create
--cluster-replicas 0``; later ones restart the nodes, which find each other
again through their ``nodes.conf``. ``up`` is idempotent and ``down`` stops only
the nodes whose pid files ``up`` wrote.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from services.common.errors import ConfigError
from services.stack.processes import Endpoint, Say, pid_alive, spawn, stop_process, wait_until

NODES = 3
SLOTS = 16384

_CONF = """# A node of the local Redis Cluster, written by `churnwatch stack up --redis-cluster`.
bind {host}
port {port}
protected-mode yes
daemonize no
dir {data_dir}
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
# Features and model checkpoints must survive a restart: append-only file.
appendonly yes
appendfsync everysec
save ""
maxmemory-policy noeviction
"""


def cluster_url(host: str, port: int) -> str:
    """The URL the services take (with ``CHURNWATCH_REDIS_CLUSTER=true``).

    >>> cluster_url("127.0.0.1", 17001)
    'redis://127.0.0.1:17001/0'
    """
    return f"redis://{host}:{port}/0"


class LocalRedisCluster:
    """Start, stop and check ``NODES`` cluster-enabled redis-server masters."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int,
        nodes: int = NODES,
        say: Say = print,
    ) -> None:
        self.root = root
        self.host = host
        self.ports = [port + i for i in range(nodes)]  # nodes < NODES: only to stop them
        self.say = say

    @property
    def url(self) -> str:
        return cluster_url(self.host, self.ports[0])

    def _dir(self, port: int) -> Path:
        return self.root / str(port)

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port, socket_timeout=1, socket_connect_timeout=1)

    def _info(self, port: int) -> dict[str, str] | None:
        """``CLUSTER INFO`` of one node, None when it does not answer as a cluster node."""
        try:
            with self._client(port) as client:
                info = client.execute_command("CLUSTER INFO")
        except redis.RedisError:
            return None
        if isinstance(info, bytes | str):  # redis-py parses it into a dict; older ones did not
            text = info.decode() if isinstance(info, bytes) else info
            info = dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
        return {str(name): str(value) for name, value in info.items()}

    def ready(self) -> bool:
        """Every node answers and sees a cluster of ``NODES`` with all slots served."""
        for port in self.ports:
            info = self._info(port)
            if (
                info is None
                or info.get("cluster_state") != "ok"
                or info.get("cluster_known_nodes") != str(NODES)
                or info.get("cluster_slots_ok") != str(SLOTS)
            ):
                return False
        return True

    def up(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise ConfigError("redis-server is missing: run `sudo apt-get install redis-server`")
        if self.ready():
            self.say(
                f"Redis Cluster already running on {self.host}:{self.ports[0]}-{self.ports[-1]}"
            )
            return
        for port in self.ports:
            self._start_node(server, port)
        infos = [self._info(port) for port in self.ports]
        if all(info is not None and info.get("cluster_known_nodes") == "1" for info in infos):
            if any(info and info.get("cluster_slots_assigned") != "0" for info in infos):
                raise ConfigError(
                    f"the Redis Cluster nodes under {self.root} hold slots but do not know "
                    "each other: stop them (`churnwatch stack down`) and remove that directory"
                )
            self._create()
        self.say("waiting for cluster_state:ok ...")
        wait_until(self.ready, what="Redis Cluster", timeout=60, say=self.say)
        self.say(f"Redis Cluster URL: {self.url} (with CHURNWATCH_REDIS_CLUSTER=true)")

    def _start_node(self, server: str, port: int) -> None:
        node = self._dir(port)
        pid_file = node / "redis.pid"
        endpoint = Endpoint(self.host, port)
        if pid_alive(pid_file, "redis-server") and endpoint.answers():
            return
        if endpoint.answers():
            raise ConfigError(
                f"port {port} is taken by something that is not a node of this Redis Cluster; "
                "stop it or choose other ports"
            )
        node.mkdir(parents=True, exist_ok=True)
        conf = node / "redis.conf"
        conf.write_text(_CONF.format(host=self.host, port=port, data_dir=node))
        spawn([server, str(conf)], log=node / "redis.log", pid_file=pid_file)
        self.say(f"starting Redis Cluster node on {self.host}:{port} ...")
        wait_until(
            lambda: self._info(port) is not None, what=f"node {port}", timeout=30, say=self.say
        )

    def _create(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ConfigError(
                "redis-cli is needed to create the Redis Cluster: "
                "run `sudo apt-get install redis-tools`"
            )
        nodes = [f"{self.host}:{port}" for port in self.ports]
        self.say(f"creating the Redis Cluster of {', '.join(nodes)} ...")
        done = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ConfigError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}")

    def down(self) -> None:
        for port in self.ports:
            stop_process(
                self._dir(port) / "redis.pid",
                "redis-server",
                what=f"Redis Cluster node {port}",
                say=self.say,
            )

    def started(self) -> bool:
        """Whether ``up`` started any node that still runs (``down`` would stop it)."""
        return any(pid_alive(self._dir(p) / "redis.pid", "redis-server") for p in self.ports)

"""The local stack's single Redis: Debian's ``redis-server`` under ``$CHURNWATCH_HOME/redis``.

:class:`RedisServer` installs ``redis-server`` with apt-get when it is missing
(as root only), writes ``redis.conf`` from its template in ``deploy/local``
(the AOF and RDB in ``data/``), and runs it with its pid in ``redis.pid`` and its
output in ``redis.log``. A Redis already answering on the port that this stack
did not start is used as it is and never stopped. The Redis Cluster variant is
``redis_cluster.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from services.common.errors import ConfigError
from services.common.settings import CommonSettings
from services.stack.processes import (
    Endpoint,
    Say,
    already_up,
    render,
    spawn,
    stop_process,
    wait_until,
)

MARKER = "redis-server"  # in the command line of the server's process


def redis_endpoint(settings: CommonSettings) -> Endpoint:
    url = urlparse(settings.redis_url)
    return Endpoint(url.hostname or "127.0.0.1", url.port or 6379)


def install_redis(*, say: Say) -> str:
    """The path of ``redis-server``, installed with apt-get first when missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise ConfigError("redis-server is missing: run `sudo apt-get install redis-server`")
    say("installing redis-server with apt-get ...")
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


class RedisServer:
    """Start, check and stop the Redis of ``settings.redis_url`` in ``directory``."""

    def __init__(self, settings: CommonSettings, directory: Path, *, say: Say = print) -> None:
        self.settings = settings
        self.dir = directory
        self.endpoint = redis_endpoint(settings)
        self.pid_file = directory / "redis.pid"
        self.say = say

    def start(self) -> None:
        at = self.endpoint
        if already_up(
            "Redis",
            at,
            pid_file=self.pid_file,
            marker=MARKER,
            ready=self.ready,
            setting="CHURNWATCH_REDIS_URL",
            say=self.say,
        ):
            return
        server = install_redis(say=self.say)
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        render("redis.conf.template", conf, host=at.host, port=at.port, data_dir=data)
        spawn([server, str(conf)], log=self.dir / "redis.log", pid_file=self.pid_file)
        self.say(f"starting Redis on {at.host}:{at.port} ...")
        wait_until(self.ready, what="Redis", timeout=30, say=self.say)

    def ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.settings.redis_url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server ``start`` started, if it did."""
        stop_process(self.pid_file, MARKER, what=MARKER, say=self.say)

"""What every server of the local stack shares, whichever server it is.

An :class:`Endpoint` to knock on, a pid file naming the process ``up`` started
(:func:`pid_alive`, :func:`stop_process`), starting it detached with its log
(:func:`spawn`), waiting until it answers (:func:`wait_until`), and its
configuration written from a template in ``deploy/local`` (:func:`render`).
Kafka (``kafka_broker.py``), the single Redis (``redis_server.py``) and the
Redis Cluster nodes (``redis_cluster.py``) are all run with these.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from services.common.errors import ConfigError

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


def pid_alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process runs and its command line has ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def already_up(
    what: str,
    at: Endpoint,
    *,
    pid_file: Path,
    marker: str,
    ready: Callable[[], bool],
    setting: str,
    say: Say,
) -> bool:
    """Whether ``what`` answers at ``at`` already, so there is nothing to start: the one
    this stack started (``pid_file``), or another one, used as it is and never stopped.
    A port taken by something that is not ``what`` is a ConfigError naming ``setting``."""
    if pid_alive(pid_file, marker) and at.answers():
        say(f"{what} already running on {at.host}:{at.port}")
        return True
    if not at.answers():
        return False
    if not ready():
        raise ConfigError(
            f"port {at.port} is taken by something that is not {what}; "
            f"stop it or set {setting} to another port"
        )
    say(
        f"using the {what} already answering on {at.host}:{at.port} "
        "(not started by this stack: `down` leaves it alone)"
    )
    return True


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


def render(template: str, target: Path, **values: object) -> None:
    """Write ``deploy/local/<template>`` to ``target`` with its ``$names`` filled in."""
    text = Template((DEPLOY_LOCAL / template).read_text()).substitute(values)
    target.write_text(text)


def spawn(cmd: list[str], *, log: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in a session of its own, appending to ``log``; its pid goes to ``pid_file``."""
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

"""The churnwatch services as child processes, for the commands and tests that run them.

:class:`Services` starts ``python -m services.cli <name>`` for each service in a
session of its own, its output appended to ``<logs>/<name>.log``, fails with the
log's tail as soon as one has exited (:meth:`Services.check`), and stops them all
(SIGTERM, then SIGKILL after 20 s). :func:`wait_http` waits for one to answer.
``churnwatch demo``, ``replay`` and ``backfill``, the benchmarks and the tests
that need real services all run them this way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.common.settings import CommonSettings

SERVICES = ("ingest", "scorer", "notifier", "api")


class Services:
    """The four services as child processes, logs under $CHURNWATCH_HOME/logs."""

    def __init__(
        self,
        settings: CommonSettings,
        env: dict[str, str],
        *,
        names: tuple[str, ...] = SERVICES,
        logs: Path | None = None,
    ) -> None:
        self.logs = logs or settings.home.resolve() / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.names = names
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name in self.names:
            log = (self.logs / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
            print(f"started {name:8} pid {self.procs[name].pid}  log {self.logs / name}.log")

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_http(url: str, timeout: float, services: Services) -> None:
    """Until ``url`` answers 200; RuntimeError if a service exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")

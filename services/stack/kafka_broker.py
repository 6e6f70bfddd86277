"""The local stack's Kafka: one KRaft node on the machine's JDK, under ``$CHURNWATCH_HOME/kafka``.

:class:`KafkaBroker` fetches the broker's jars from Maven Central through
``deploy/local/pom.xml`` (once: ``libs/.complete`` marks them done), writes
``server.properties`` from its template, formats the KRaft storage on the first
start, and runs ``kafka.Kafka`` with its pid in ``kafka.pid`` and its output in
``kafka.log``. A Kafka already answering on the port that this stack did not
start is used as it is and never stopped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from services.common.errors import ConfigError
from services.common.settings import CommonSettings
from services.stack.processes import (
    DEPLOY_LOCAL,
    Endpoint,
    Say,
    already_up,
    render,
    spawn,
    stop_process,
    wait_until,
)

MARKER = "kafka.Kafka"  # in the command line of the broker's JVM


def kafka_endpoint(settings: CommonSettings) -> Endpoint:
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    return Endpoint(host, int(port))


class KafkaBroker:
    """Fetch, start, check and stop the broker of ``settings.kafka_bootstrap`` in ``directory``."""

    def __init__(self, settings: CommonSettings, directory: Path, *, say: Say = print) -> None:
        self.settings = settings
        self.dir = directory
        self.endpoint = kafka_endpoint(settings)
        self.pid_file = directory / "kafka.pid"
        self.say = say

    def fetch(self) -> Path:
        """Copy the broker's jars from Maven Central (once), showing progress."""
        libs = self.dir / "libs"
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

    def start(self) -> None:
        at = self.endpoint
        if already_up(
            "Kafka",
            at,
            pid_file=self.pid_file,
            marker=MARKER,
            ready=self.ready,
            setting="CHURNWATCH_KAFKA_BOOTSTRAP",
            say=self.say,
        ):
            return
        libs = self.fetch()
        props = self._configure(libs)
        spawn(
            self._java(libs, "kafka.Kafka", str(props)),
            log=self.dir / "kafka.log",
            pid_file=self.pid_file,
        )
        self.say(f"starting Kafka on {at.host}:{at.port} ...")
        wait_until(self.ready, what="Kafka", timeout=90, say=self.say)

    def _configure(self, libs: Path) -> Path:
        """Write ``server.properties``; format the KRaft storage if it never was."""
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = self.dir / "server.properties"
        render(
            "server.properties.template",
            props,
            host=self.endpoint.host,
            port=self.endpoint.port,
            controller_port=self.endpoint.port + 1,
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
        return props

    def ready(self) -> bool:
        if not self.endpoint.answers():
            return False
        from services.common.kafka import broker_answers

        return broker_answers(self.settings.kafka_bootstrap)

    def stop(self) -> None:
        """Stop the broker ``start`` started, if it did."""
        stop_process(self.pid_file, MARKER, what=MARKER, say=self.say)

"""``already_up``: the local stack starts a server only when nothing answers on its port;
it uses another one's server as it is, and refuses a port something else holds."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.stack.processes import Endpoint, already_up


@pytest.fixture
def listening() -> Iterator[Endpoint]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield Endpoint("127.0.0.1", server.getsockname()[1])


def check(at: Endpoint, tmp_path: Path, *, ready: bool, said: list[str]) -> bool:
    return already_up(
        "Kafka",
        at,
        pid_file=tmp_path / "kafka.pid",  # none: this stack started nothing
        marker="kafka.Kafka",
        ready=lambda: ready,
        setting="CHURNWATCH_KAFKA_BOOTSTRAP",
        say=said.append,
    )


def test_a_free_port_is_started_on(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = Endpoint("127.0.0.1", s.getsockname()[1])
    said: list[str] = []
    assert check(free, tmp_path, ready=True, said=said) is False and said == []


def test_another_kafka_is_used_and_left_alone(listening: Endpoint, tmp_path: Path) -> None:
    said: list[str] = []
    assert check(listening, tmp_path, ready=True, said=said) is True
    assert "not started by this stack" in said[0]


def test_a_port_held_by_something_else_is_refused(listening: Endpoint, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not Kafka; stop it or set CHURNWATCH_KAFKA_BOOTSTRAP"):
        check(listening, tmp_path, ready=False, said=[])

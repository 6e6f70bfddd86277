"""churnwatch_notifier_consumer_lag: the backlog the notifier reports on /metrics.

The pure count over highwater marks and next offsets, then the agent through
Faust's ``test_context()``: an alert in hand is not handled yet, a handled one
is, a revoked partition is forgotten, and a scrape never raises (the consumer
not started, a partition revoked between the read of the offsets and of its
highwater). No Kafka: the consumer's highwater is a dict here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from faust.types import TP
from prometheus_client import REGISTRY

from services.notifier.adapters.memory_directory import MemoryDirectory
from services.notifier.app import create_app, highwater
from services.notifier.config import NotifierSettings
from services.notifier.progress import AlertProgress, backlog
from services.notifier.runtime import NotifierRuntime
from tests.notifier_data import sample_alert


def test_the_backlog_is_each_partitions_end_minus_its_next_offset() -> None:
    assert backlog({0: 3, 1: 10}, {0: 10, 1: 12}) == 9
    assert backlog({}, {}) == 0
    # Not fetched from yet (end unknown): 0, not an error.
    assert backlog({0: 3, 1: 10}, {0: 10, 1: None}) == 7
    # An end read before the records just handled were fetched: 0, never negative.
    assert backlog({0: 12}, {0: 10}) == 0
    # A partition the agent took nothing from since its assignment counts 0.
    assert backlog({0: 3}, {0: 10, 1: 50}) == 7


def test_progress_counts_the_alert_in_hand_until_it_is_done() -> None:
    ends: dict[Any, int | None] = {("alerts", 0): 10, ("alerts", 1): None}
    progress = AlertProgress(end_of=ends.get)
    assert progress.lag() == 0
    progress.take(("alerts", 0), 0)
    assert progress.lag() == 10
    progress.done(("alerts", 0), 0)
    assert progress.lag() == 9
    progress.take(("alerts", 1), 4)  # its end not known yet
    assert progress.lag() == 9
    ends[("alerts", 1)] = 6
    assert progress.lag() == 11
    progress.forget([("alerts", 0)])
    assert progress.lag() == 2
    progress.done(("alerts", 1), 5)
    assert progress.lag() == 0


class Gate:
    """A notifier whose alerts wait for ``release``: the test sees one in hand."""

    def __init__(self) -> None:
        self.taken = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_alert(self, alert: dict[str, Any]) -> list[Any]:
        self.taken += 1
        self.entered.set()
        await self.release.wait()
        return []


class GatedRuntime(NotifierRuntime):
    def __init__(self, settings: NotifierSettings) -> None:
        super().__init__(settings)
        self.gate = Gate()
        self.directory = MemoryDirectory()

    async def notifier(self) -> Any:
        return self.gate


def lag() -> float | None:
    return REGISTRY.get_sample_value("churnwatch_notifier_consumer_lag")


def test_the_agent_reports_its_backlog_at_scrape_time(tmp_path: Path) -> None:
    settings = NotifierSettings(home=tmp_path)
    runtime = GatedRuntime(settings)
    app = create_app(settings, runtime)
    tp = TP(settings.topic_alerts, 0)
    assert highwater(app, tp) is None  # the consumer is not started
    ends: dict[TP, int | None] = {tp: 5}

    def read_end(partition: TP) -> int | None:
        assert partition in ends, "Partition is not assigned"  # as aiokafka does
        return ends[partition]

    app.consumer.highwater = read_end  # type: ignore[method-assign]
    app.flow_control.resume()  # as the worker does once partitions are assigned
    agent = app.agents["services.notifier.app.handle_alerts"]

    async def until(done: Any) -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the agent did not get there")

    async def scenario() -> None:
        gate = runtime.gate
        async with agent.test_context() as test_agent:
            assert lag() == 0  # nothing taken yet
            for bucket in (1, 2):
                value = orjson.dumps(sample_alert("u-lag", bucket=bucket))
                await test_agent.put(value, key=b"u-lag", wait=False)
            await asyncio.wait_for(gate.entered.wait(), 5)
            assert lag() == 5  # offsets 0 (in hand) to 4
            # Revoked between the read of the offsets and of the highwater: 0, no error.
            ends.pop(tp)
            assert highwater(app, tp) is None
            assert lag() == 0
            ends[tp] = 5
            gate.release.set()
            await until(lambda: gate.taken == 2 and lag() == 3)  # 0 and 1 handled
            await app.on_partitions_revoked.send({tp})
            assert lag() == 0  # another worker's backlog now

    asyncio.run(scenario())

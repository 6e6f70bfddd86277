"""``churnwatch bench fold`` runs and ends with its result line (no timing is asserted)."""

from __future__ import annotations

import orjson
import pytest

from bench import fold


def test_the_fold_benchmark_ends_with_its_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert fold.main(["--repeat", "1"]) == 0
    last = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["name"] == "fold_us_per_event" and last["unit"] == "µs/event"
    assert last["ratio"] == pytest.approx(last["value"] / last["baseline_value"], rel=0.01)

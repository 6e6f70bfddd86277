"""The benchmarks ``churnwatch bench NAME`` can run, and the line each one ends with.

Every benchmark is a ``main(argv) -> int`` that prints, as its last line, one
JSON object ``{"name", "value", "unit", "baseline_value", "ratio"}``. A new
benchmark adds one entry to :data:`BENCHMARKS`; modules are imported only when
run, so ``churnwatch --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Sequence

import orjson

from services.common.settings import CommonSettings

# name -> ("module:function", one line of help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "scorer": ("bench.scorer:main", "events/s through one scorer worker vs a bare consume loop"),
    "memory": ("bench.memory:main", "Redis bytes per user after 100,000 users"),
    "sweep": ("bench.sweep:main", "seconds to hand over the silent users among 1,000,000"),
    "e2e-latency": (
        "bench.e2e_latency:main",
        "HTTP accepted -> alert on its topic, p99 under load",
    ),
    "soak": ("bench.soak:main", "the pipeline at a fixed rate for N minutes: lag, memory, errors"),
    "cdnow": ("bench.cdnow:main", "ROC AUC on real CDNOW purchases vs the BG/NBD model"),
    "fold": ("bench.fold:main", "µs an event to fold a busy user's batch into its state"),
    "backfill": (
        "bench.backfill:main",
        "alert precision after a deployment that started on its history vs a fresh one",
    ),
}


def runner(name: str) -> Callable[[Sequence[str]], int]:
    target, _ = BENCHMARKS[name]
    module, func = target.split(":")
    fn: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), func)
    return fn


def run(name: str, argv: Sequence[str] = ()) -> int:
    return int(runner(name)(list(argv)) or 0)


def result_line(name: str, value: float, unit: str, baseline: float, *, ratio: float) -> str:
    """The JSON line every benchmark ends with.

    >>> result_line("x", 2.0, "s", 1.0, ratio=2.0)
    '{"name":"x","value":2.0,"unit":"s","baseline_value":1.0,"ratio":2.0}'
    """
    return orjson.dumps(
        {
            "name": name,
            "value": round(value, 3),
            "unit": unit,
            "baseline_value": round(baseline, 3),
            "ratio": round(ratio, 3),
        }
    ).decode()


def emit(name: str, value: float, unit: str, baseline: float, *, ratio: float) -> None:
    sys.stdout.flush()
    print(result_line(name, value, unit, baseline, ratio=ratio), flush=True)


def fresh_deployment(name: str) -> tuple[str, CommonSettings]:
    """The local stack up, and topics plus a key prefix of this run's own: ``<name>-<run>``."""
    from services.common.kafka import ensure_topics
    from services.common.settings import load_settings, scratch_settings
    from services.stack.local import LocalStack

    base = load_settings(CommonSettings)
    LocalStack(base).up()
    run = f"{name}-{uuid.uuid4().hex[:8]}"
    settings = scratch_settings(base, run)
    ensure_topics(settings)
    return run, settings


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in BENCHMARKS:
        print("usage: python -m bench NAME [options]; NAME is one of " + ", ".join(BENCHMARKS))
        return 2
    return run(args[0], args[1:])

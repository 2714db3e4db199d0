"""The one timer the benchmarks share: wall and CPU seconds of a call, and medians over interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``fn(*args, **kwargs)``.

    CPU time is what a busy machine cannot inflate; wall time is what a user waits.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, time.process_time() - c0, result


def median_seconds(fns: Mapping[str, Callable[[], Any]] | Callable[[], Any], repeats: int,
                   slow: float = 0.5) -> dict[str, float] | float:
    """Median wall time of each function over ``repeats`` interleaved rounds (a busy neighbour slows all alike).

    Each function first runs once to warm up; that run counts as a sample when it took longer than ``slow``
    seconds (a slow call is warm enough, and repeating it costs minutes). One function in, one float out.
    """
    single = callable(fns)
    table = {"fn": fns} if single else dict(fns)
    samples: dict[str, list[float]] = {}
    for name, fn in table.items():
        wall = timed(fn)[0]
        samples[name] = [wall] if wall > slow else []
    for _ in range(repeats):
        for name, fn in table.items():
            if len(samples[name]) < repeats:
                samples[name].append(timed(fn)[0])
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return medians["fn"] if single else medians

"""Repetition statistics and interleaved timing.

Machines drift (turbo clocks, other tenants, page cache), so every backend is timed in the same
rounds: round r runs each backend once, in an order rotated by r, so a slow minute costs all of them
alike and no backend always runs first after another's cache-thrashing call. A figure is the median
of its repetitions; its spread is the inter-quartile range and the min..max.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default 'linear' method), q in [0, 1]."""
    if not samples:
        raise ValueError("quantile of no samples")
    xs = sorted(samples)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Aggregate of one figure's repetitions (same unit as the samples)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR / median: the spread as a fraction, comparable across units."""
        return self.iqr / self.median if self.median else math.nan

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (factor > 0 keeps the order)."""
        return Summary(self.median * factor, self.q1 * factor, self.q3 * factor, self.min * factor, self.max * factor, self.n)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(quantile(samples, 0.5), quantile(samples, 0.25), quantile(samples, 0.75), min(samples), max(samples), len(samples))


def round_robin_order(names: Sequence[str], round_index: int) -> list[str]:
    """`names` rotated left by `round_index`: each backend takes every position in turn."""
    if not names:
        return []
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def interleaved(
    tasks: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    tick: Callable[[], None] = lambda: None,
    settle: float = 0.0,
) -> dict[str, list[float]]:
    """Time each task `reps` times in rotated round-robin order; seconds per call, per task.

    `warmup` untimed rounds first (first-call allocations, lazy kernels); `tick` is called after
    every timed call (a progress bar). `settle` seconds of sleep precede each timed call, untimed:
    thread pools spin-wait after a call (ONNX Runtime's, OpenMP's), and on a machine with as many
    cores as threads the previous backend's spinning threads would slow the next one down.
    """
    names = list(tasks)
    for _ in range(warmup):
        for name in names:
            tasks[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in round_robin_order(names, r):
            if settle:
                time.sleep(settle)
            start = clock()
            tasks[name]()
            samples[name].append(clock() - start)
            tick()
    return samples

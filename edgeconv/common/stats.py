"""Small statistics for timings: medians of paired ratios with bootstrap confidence intervals.

Latency decisions (INT8 op selection) and the benchmarks use the same rule: a difference counts only when the
whole 95% interval of the median paired ratio lies on one side of 1.0.
"""

from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np


def median_ci(values, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the median of `values` (seeded: the same numbers give the same interval)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=np.float64)
    meds = np.median(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_ratio(num, den, level: float = 0.95) -> dict:
    """Median of num[i] / den[i] (times taken in the same repetition) and its bootstrap interval."""
    r = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    lo, hi = median_ci(r, level)
    return {"ratio": float(np.median(r)), "ci": (lo, hi), "n": int(len(r))}


def interleaved_times(
    calls: list[Callable[[], object]], seconds: float = 2.0, min_runs: int = 7, max_runs: int = 200
) -> list[list[float]]:
    """ms per call of each of `calls`: every repetition runs each once, in a shuffled (seeded) order, so load changes
    on a shared machine hit all alike and entry r of every list comes from the same repetition (the pairs that
    `paired_ratio` takes). One untimed warm-up call each first (allocations, kernel choice)."""
    for c in calls:
        c()
    times: list[list[float]] = [[] for _ in calls]
    order, rng = list(range(len(calls))), random.Random(0)
    t_end = time.perf_counter() + seconds
    runs = 0
    while runs < min_runs or (time.perf_counter() < t_end and runs < max_runs):
        rng.shuffle(order)
        for i in order:
            t = time.perf_counter()
            calls[i]()
            times[i].append((time.perf_counter() - t) * 1e3)
        runs += 1
    return times

"""Small statistics for timings: medians of paired ratios with bootstrap confidence intervals.

Latency decisions (INT8 op selection) and the benchmarks use the same rule: a difference counts only when the
whole 95% interval of the median paired ratio lies on one side of 1.0.
"""

from __future__ import annotations

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

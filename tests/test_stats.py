"""The timing statistics behind `--ops auto` (onnxruntime and TFLite) and the benchmarks: interleaved repetitions
and the median paired ratio with its bootstrap interval. No timing is asserted: the pairing and the arithmetic are."""

from __future__ import annotations

import numpy as np

from edgeconv.common.stats import interleaved_times, median_ci, paired_ratio


def test_interleaved_times_runs_every_call_once_per_repetition_in_a_shuffled_order():
    log: list[str] = []
    calls = [lambda name=name: log.append(name) for name in "abc"]
    times = interleaved_times(calls, seconds=0, min_runs=12)
    assert [len(t) for t in times] == [12, 12, 12]
    assert log[:3] == ["a", "b", "c"]  # one untimed warm-up call each, in order
    reps = [log[3 + 3 * i : 6 + 3 * i] for i in range(12)]
    assert all(sorted(r) == ["a", "b", "c"] for r in reps)  # entry r of every list comes from repetition r
    assert len({tuple(r) for r in reps}) > 1  # the order changes between repetitions
    assert all(t >= 0 for ts in times for t in ts)


def test_paired_ratio_cancels_what_both_sides_share():
    rng = np.random.default_rng(0)
    load = rng.uniform(1.0, 5.0, 60)  # a shared machine: every repetition slowed by its own factor
    den = 10.0 * load
    num = 7.0 * load * rng.normal(1.0, 0.01, 60)
    r = paired_ratio(num, den)
    assert abs(r["ratio"] - 0.7) < 0.01 and r["ci"][0] < 0.7 < r["ci"][1] and r["ci"][1] < 1.0
    assert r["n"] == 60
    # the median of one side alone carries the load's spread: its relative interval is far wider
    lo, hi = median_ci(num)
    assert (hi - lo) / np.median(num) > 10 * (r["ci"][1] - r["ci"][0]) / r["ratio"]

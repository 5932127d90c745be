"""Latency statistics, speed-ups and reductions: pure functions on numbers.

Words and units follow trtexec / onnxruntime_perf_test / perf_analyzer: latency in
milliseconds as ``min``, ``mean``, ``p50`` (the median), ``p90``, ``p95``, ``p99``, ``max``;
throughput in items (batch elements) per second.

Percentiles are numpy's default definition (``np.percentile(..., method="linear")``,
Hyndman & Fan type 7): for sorted times ``t[0..n-1]`` the ``q``-th percentile is read at
position ``h = (n - 1)·q/100`` and interpolated linearly between ``t[floor(h)]`` and
``t[ceil(h)]``. With 5 runs, p50 is ``t[2]`` and p90 is ``t[3] + 0.6·(t[4] - t[3])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["PERCENTILES", "LATENCY_KEYS", "latency_stats", "throughput", "speedup", "paired_speedup", "reduction"]

#: The percentiles every latency report carries.
PERCENTILES = (50, 90, 95, 99)
#: Keys of :func:`latency_stats`, in table order.
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p95", "p99", "max")


def latency_stats(times_s: Sequence[float]) -> dict[str, float]:
    """Latency statistics in **milliseconds** of run times given in **seconds**.

    Returns:
        ``{"min", "mean", "p50", "p90", "p95", "p99", "max"}`` (numpy's linear percentiles).

    Raises:
        ValueError: no times, or a negative or non-finite time.
    """
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("latency_stats needs at least one run time")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("run times must be finite and non-negative")
    ms = t * 1e3
    out = {"min": float(ms.min()), "mean": float(ms.mean())}
    for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
        out[f"p{q}"] = float(v)
    out["max"] = float(ms.max())
    return out


def throughput(batch: int, times_s: Sequence[float]) -> float:
    """Items per second of back-to-back runs: ``batch · runs / sum(times)`` (= batch / mean
    latency), what trtexec and perf_analyzer call throughput (infer/s × batch).

    Raises:
        ValueError: no times, or a total time of zero.
    """
    total = float(np.sum(np.asarray(times_s, dtype=np.float64)))
    if len(times_s) == 0 or total <= 0:
        raise ValueError("throughput needs at least one run of positive duration")
    return batch * len(times_s) / total


def speedup(baseline_ms: Mapping[str, float], merged_ms: Mapping[str, float],
            baseline_throughput: float | None = None, merged_throughput: float | None = None) -> dict[str, float]:
    """Speed-up of the merged model over the baseline: ``baseline / merged`` for every latency
    key both have (> 1 means the merged model is faster), and ``throughput`` as
    ``merged / baseline`` when both throughputs are given."""
    out = {k: baseline_ms[k] / merged_ms[k] for k in LATENCY_KEYS
           if k in baseline_ms and k in merged_ms and merged_ms[k] > 0}
    if baseline_throughput and merged_throughput is not None:
        out["throughput"] = merged_throughput / baseline_throughput
    return out


def paired_speedup(baseline_s: Sequence[float], merged_s: Sequence[float]) -> float | None:
    """The median over iterations of ``baseline_i / merged_i``, the two runs of one interleaved
    iteration (back to back): a slow spell of a shared machine that hits both runs of an
    iteration cancels out. None unless both have the same, non-zero number of runs."""
    if len(baseline_s) != len(merged_s) or not len(merged_s):
        return None
    b, m = np.asarray(baseline_s, dtype=np.float64), np.asarray(merged_s, dtype=np.float64)
    if np.any(m <= 0):
        return None
    return float(np.median(b / m))


def reduction(baseline: float | None, merged: float | None) -> float | None:
    """The fraction saved, ``1 - merged / baseline`` (0.63 = 63 % less; negative: more), or
    None when either is missing or the baseline is not positive."""
    if baseline is None or merged is None or baseline <= 0:
        return None
    return 1.0 - merged / baseline

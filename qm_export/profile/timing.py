"""The timing loop: several models timed interleaved, run by run, in one process.

Interleaving is what makes a ratio between two models trustworthy on a shared, noisy machine:
whatever slows the machine down slows both. The order alternates every iteration (rotates, for
more than two models), so neither model always runs first, right after the other one's
caches and thread-pool state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["ProgressFn", "iteration_order", "time_interleaved", "other_cpu_load", "DEFAULT_RUNS", "DEFAULT_WARMUP"]

#: ``progress(description, completed, total)``: called as work advances (total None: open-ended).
ProgressFn = Callable[[str, int, "int | None"], None]

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5


def iteration_order(n: int, i: int) -> list[int]:
    """Which model runs when in iteration ``i``: ``0, 1, ..., n-1`` rotated by ``i`` (for two
    models: ``[0, 1]``, ``[1, 0]``, ``[0, 1]``, ...)."""
    return [(j + i) % n for j in range(n)]


def time_interleaved(calls: Sequence[Callable[[], Any]], *, warmup: int, runs: int | None,
                     duration: float | None = None, progress: ProgressFn | None = None,
                     description: str = "timing", clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Time ``calls`` interleaved: ``warmup`` untimed iterations, then timed ones.

    One iteration runs every call once, in :func:`iteration_order`. The timed loop stops after
    ``runs`` iterations or once ``duration`` seconds have passed since the first timed run
    began (checked after each complete iteration, so every call gets the same number of
    runs, at least one), whichever comes first; ``runs=None`` means no run limit (then
    ``duration`` is required). Warm-up is not counted in ``duration``.

    Returns:
        Per call, its run times in seconds (wall clock of the call alone).

    Raises:
        ValueError: no calls, ``runs`` < 1, a negative ``warmup``, or neither limit given.
    """
    if not calls:
        raise ValueError("nothing to time")
    if runs is None and duration is None:
        raise ValueError("give a run count or a duration")
    if runs is not None and runs < 1:
        raise ValueError("runs must be at least 1")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    if duration is not None and duration <= 0:
        raise ValueError("duration must be positive")
    n = len(calls)
    for i in range(warmup):
        for j in iteration_order(n, i):
            calls[j]()
        if progress:
            progress(f"{description} (warm-up)", i + 1, warmup)
    times: list[list[float]] = [[] for _ in calls]
    start = clock()
    i = 0
    while True:
        for j in iteration_order(n, warmup + i):
            t0 = clock()
            calls[j]()
            times[j].append(clock() - t0)
        i += 1
        if progress:
            progress(description, i, runs)
        if runs is not None and i >= runs:
            break
        if duration is not None and clock() - start >= duration:
            break
    return times


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``, or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _own_jiffies() -> int | None:
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def other_cpu_load() -> Iterator[dict[str, float | None]]:
    """Measure how busy *other* processes kept the machine during the block (Linux).

    Yields a dict whose ``"value"`` is set on exit: the fraction of all CPUs' time that went
    to other processes (``/proc/stat`` busy time minus this process's ``utime + stime``),
    0 on a quiet machine, 0.5 when another process kept one of two cores busy. None where
    ``/proc`` is unavailable. On a shared machine a high value means contended timings.
    """
    out: dict[str, float | None] = {"value": None}
    a, own_a = _busy_jiffies(), _own_jiffies()
    try:
        yield out
    finally:
        b, own_b = _busy_jiffies(), _own_jiffies()
        if a is not None and b is not None and own_a is not None and own_b is not None and b[1] > a[1]:
            other = (b[0] - a[0]) - (own_b - own_a)
            out["value"] = min(1.0, max(0.0, other / (b[1] - a[1])))

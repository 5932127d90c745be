"""Refuse a batch that cannot fit in memory before allocating it: an estimate per input row.

``--batch 100000000`` used to end in an allocation error from deep inside torch or numpy. Every
place that creates inputs of a user's batch size asks :func:`check_batch_fits` first, with an
estimate of the bytes one row costs:

- :func:`feeds_row_bytes`: the inputs alone (exact), for a model known only as an ONNX file
  (``validate``/``profile`` without a source) — a lower bound of what a run needs;
- :func:`forward_row_bytes`: the inputs plus one forward's activations, for a torch model of
  width ``D``, ``H`` heads, MLP width ``F`` and ``N`` tokens:
  ``itemsize · N · (6·D + F) + 4 · 2 · H · N²`` (the residual stream, attention's q/k/v and
  output, the MLP's hidden layer; attention scores and probabilities in float32). A rough
  estimate (within a small factor), enough to refuse a batch that cannot fit and to say what
  would.

The budget is the memory the kernel reports available (``MemAvailable`` in
``/proc/meminfo``); where that cannot be read, nothing is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

__all__ = ["available_bytes", "check_batch_fits", "feeds_row_bytes", "forward_row_bytes", "format_size"]


def available_bytes() -> int | None:
    """Memory available to a new allocation (``MemAvailable``), in bytes; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; up to PiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def feeds_row_bytes(shapes_and_itemsizes: Iterable[tuple[Sequence[int], int]]) -> int:
    """Bytes of one row of the inputs: ``(shape at batch 1, itemsize)`` per input."""
    total = 0
    for shape, itemsize in shapes_and_itemsizes:
        n = 1
        for d in shape:
            n *= max(int(d), 1)
        total += n * int(itemsize)
    return total


def forward_row_bytes(input_row_bytes: int, tokens: int, width: int, heads: int, mlp: int, itemsize: int) -> int:
    """Inputs plus one forward's activations per row (see the module docstring)."""
    n = max(int(tokens), 1)
    return int(input_row_bytes + itemsize * n * (6 * width + mlp) + 4 * 2 * max(heads, 1) * n * n)


def check_batch_fits(option: str, batch: int, row_bytes: int, what: str = "one forward",
                     available: int | None = None) -> None:
    """Raise ``ValueError`` naming ``option`` when ``batch`` rows of ``row_bytes`` exceed the
    available memory (``available``, default :func:`available_bytes`)."""
    budget = available_bytes() if available is None else available
    if budget is None or row_bytes <= 0:
        return
    need = int(batch) * int(row_bytes)
    if need > budget:
        fits = max(budget // row_bytes, 0)
        hint = f"the largest batch that fits is about {fits}" if fits >= 1 else "not even one row fits"
        raise ValueError(
            f"{option} {batch}: {what} needs about {format_size(need)} ({format_size(row_bytes)} per row, "
            f"estimated), more than the {format_size(budget)} available on this machine; {hint}"
        )

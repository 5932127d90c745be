"""Input builders shared by the QuickMerge++ tests (no code under test is called here)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def attn_uniform(key_sets: Sequence[Sequence[int]], n: int, heads: int = 2, batch: int = 1) -> torch.Tensor:
    """Host attention ``(batch, heads, N, N)`` whose head-average row ``q`` is uniform over ``key_sets[q]``.

    A set of even size is split between the heads (head 0 attends to the first half, head 1
    to the second), so the head average is what makes the row uniform; odd sets are given to
    every head whole.
    """
    a = torch.zeros(batch, heads, n, n)
    for q, keys in enumerate(key_sets):
        keys = list(keys)
        if len(keys) % 2 == 0 and heads == 2:
            half = len(keys) // 2
            for h, part in enumerate((keys[:half], keys[half:])):
                a[:, h, q, part] = 1.0 / len(part)
        else:
            a[:, :, q, keys] = 1.0 / len(keys)
    return a


def entropy_uniform(size: int) -> float:
    """Entropy of a uniform distribution over ``size`` outcomes (nats)."""
    return math.log(size)


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


def masses_by_hand(s: Sequence[float], tau: float = 0.5, eps: float = 1e-5) -> list[float]:
    """Spec §3 "Masses" for an all-real row: ``softmax(s / tau) * s + eps``."""
    pi = softmax([v / tau for v in s])
    return [p * v + eps for p, v in zip(pi, s)]


def random_row_mask(gen: torch.Generator, batch: int, n: int, protect: int, p_pad: float = 0.3) -> torch.Tensor:
    """``(B, N)`` bool: protected tokens real, at least one real mergeable token per row."""
    mask = torch.rand(batch, n, generator=gen) >= p_pad
    mask[:, :protect] = True
    for b in range(batch):
        if not bool(mask[b, protect:].any()):
            pick = int(torch.randint(protect, n, (1,), generator=gen))
            mask[b, pick] = True
    return mask


def masked_host_attention(gen: torch.Generator, mask: torch.Tensor, heads: int, sharp: float = 3.0) -> torch.Tensor:
    """A correctly masked host attention ``(B, H, N, N)``: softmax over real keys only.

    Padded query rows are filled the same way (a host computes them); tests overwrite them.
    """
    batch, n = mask.shape
    logits = sharp * torch.randn(batch, heads, n, n, generator=gen)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, -1)


def random_case(
    gen: torch.Generator,
    batch: int,
    n: int,
    dim: int,
    protect: int,
    *,
    pad: bool = True,
    heads: int = 2,
    n_scales: int = 0,
    with_attn: bool = False,
    with_metric: bool = False,
    with_sizes: bool = False,
    with_positions: bool = False,
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Random inputs of one merge: ``x`` plus whichever optional inputs are asked for."""
    case: dict[str, torch.Tensor | list[torch.Tensor]] = {"x": torch.randn(batch, n, dim, generator=gen)}
    mask = random_row_mask(gen, batch, n, protect) if pad else torch.ones(batch, n, dtype=torch.bool)
    case["mask"] = mask
    if with_attn:
        case["attn"] = masked_host_attention(gen, mask, heads)
    if n_scales:
        case["scales"] = [torch.randn(batch, n, dim + 1, generator=gen) for _ in range(n_scales)]
    if with_metric:
        case["metric"] = torch.randn(batch, n, 3, generator=gen)
    if with_sizes:
        case["sizes"] = torch.randint(1, 5, (batch, n), generator=gen).float()
    if with_positions:
        case["positions"] = torch.cumsum(torch.randint(1, 3, (batch, n), generator=gen), 1)
    return case

"""Deterministic index helpers that export to standard ONNX ops TensorRT accepts.

No ``TopK`` (TensorRT stops at ``K = 3840``), no ``NonZero``, no data-dependent shapes, no
scatter with duplicate indices: orderings are built as permutations from counts and cumsums.
"""

from __future__ import annotations

import torch

from .ops import is_exporting

__all__ = ["running_count", "stable_partition", "stable_rank_descending", "first_argmax", "batch_gather", "may_overwrite"]


def may_overwrite(*tensors: torch.Tensor) -> bool:
    """Whether eager code may compute in place on temporaries derived from ``tensors``.

    True outside export tracing (export graphs keep their plain functional form) when autograd
    records nothing for ``tensors``. In-place steps compute the same values with fewer large
    allocations, which on CPU cost as much as the arithmetic.
    """
    if is_exporting():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def running_count(flag: torch.Tensor) -> torch.Tensor:
    """How many entries of ``flag`` ``(B, N)`` (bool or 0/1 ints) are True at or before each
    index; ``(B, N)`` int64.

    The cumsum runs in float32 (exact below 2**24 tokens) because TensorRT's ``CumSum`` takes
    float inputs only.
    """
    return torch.cumsum(flag.to(torch.float32), 1).to(torch.int64)


def stable_partition(flag: torch.Tensor) -> torch.Tensor:
    """Permutation listing the True entries of ``flag`` ``(B, N)`` first, then the False ones.

    Both parts keep index order. Built with cumsum and a scatter of a permutation.

    Returns:
        ``(B, N)`` int64 indices.
    """
    f = flag.long()
    n = flag.shape[1]
    idx = torch.arange(n, device=flag.device).unsqueeze(0).expand_as(f)
    true_upto = running_count(flag)  # True entries at or before i
    n_true = true_upto[:, -1:]
    slot = torch.where(flag, true_upto - 1, n_true + idx - true_upto)
    return torch.empty_like(idx).scatter(1, slot, idx)


def stable_rank_descending(score: torch.Tensor) -> torch.Tensor:
    """Rank of every entry of ``score`` ``(B, N)`` sorted descending, equal values lower index first.

    Eager mode uses a stable sort; under export the rank is counted pairwise
    (``#{j: s_j > s_i} + #{j < i: s_j == s_i}``), which needs no ``TopK`` and so has no
    3840 limit in TensorRT. Both give the same ranks.

    Returns:
        ``(B, N)`` int64, a permutation of ``0..N-1`` per row.
    """
    n = score.shape[1]
    if is_exporting():
        si = score.unsqueeze(2)  # [b, i, 1]
        sj = score.unsqueeze(1)  # [b, 1, j]
        idx = torch.arange(n, device=score.device)
        before = idx.unsqueeze(0) < idx.unsqueeze(1)  # [i, j]: j < i
        ahead = (sj > si) | ((sj == si) & before.unsqueeze(0))
        return ahead.sum(-1)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(n, device=score.device).unsqueeze(0).expand_as(order)
    return torch.empty_like(order).scatter(1, order, ranks)


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the largest entry along the last axis, the lowest index among equal maxima.

    Exported as ``min{j : v_j == max v}`` so that every runtime breaks ties the same way;
    eager mode uses ``torch.argmax``, documented to return the first maximal index (the same
    result for NaN-free values, in one pass instead of five). ``(..., K) -> (...)`` int64.
    """
    if not is_exporting():
        return torch.argmax(values, dim=-1)
    k = values.shape[-1]
    vmax = values.amax(-1, keepdim=True)
    idx = torch.arange(k, device=values.device)
    return torch.where(values == vmax, idx, torch.full_like(idx, k)).amin(-1)


def batch_gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[b, index[b, i]]`` for ``t`` ``(B, N, ...)`` and ``index`` ``(B, M)``; ``(B, M, ...)``."""
    if t.dim() == 2:
        return torch.gather(t, 1, index)
    expanded = index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
    return torch.gather(t, 1, expanded)

"""Torch references of the three ``qm`` ops (spec §6): grouping, merge and unmerge.

These are the numbers the Triton kernels, the ONNX function bodies and the TensorRT plugins
are checked against. They see the mergeable tokens only, with local indices.

- ``token_group_index_reference(assign, k)``: a stable counting sort of ``assign`` per row.
- ``token_merge_reference(x, weight, order, offsets)``: per group ``sum(w x) / sum(w)``,
  accumulated in float32; rows of weight 0 are never read; empty groups give zeros.
- ``token_unmerge_reference(y, assign)``: ``y[b, assign[b, i]]``.
"""

from __future__ import annotations

import torch

__all__ = [
    "token_group_index_reference",
    "token_merge_reference",
    "token_unmerge_reference",
    "group_of_sorted",
]


def token_group_index_reference(assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group tokens by ``assign``.

    Args:
        assign: ``(B, N)`` integer group of each token, values in ``[0, k)``.
        k: number of groups ``K``.

    Returns:
        ``order`` ``(B, N)`` int32, token indices sorted by group then by index, and
        ``offsets`` ``(B, K + 1)`` int32: group ``j`` is ``order[offsets[j]:offsets[j+1]]``.
    """
    a = assign.long()
    batch = a.shape[0]
    counts = torch.zeros(batch, k, dtype=torch.int64, device=a.device)
    counts.scatter_add_(1, a, torch.ones_like(a))
    offsets = torch.cat([counts.new_zeros(batch, 1), counts.cumsum(1)], dim=1)
    order = torch.sort(a, dim=1, stable=True).indices
    return order.to(torch.int32), offsets.to(torch.int32)


def group_of_sorted(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """Group of each sorted position ``p in [0, n)``: the ``j`` with ``offsets[j] <= p < offsets[j+1]``.

    Args:
        offsets: ``(B, K + 1)`` int group boundaries.
        n: number of tokens ``N``.

    Returns:
        ``(B, N)`` int64.
    """
    positions = torch.arange(n, device=offsets.device, dtype=torch.int64)
    positions = positions.unsqueeze(0).expand(offsets.shape[0], n).contiguous()
    return torch.searchsorted(offsets[:, 1:].long().contiguous(), positions, right=True)


def token_merge_reference(
    x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Weighted mean of each group.

    Args:
        x: ``(B, N, D)`` float tokens (any float dtype; rows with weight 0 may hold NaN).
        weight: ``(B, N)`` float weights ``>= 0``.
        order, offsets: the grouping from :func:`token_group_index_reference`.

    Returns:
        ``(B, K, D)`` in ``x.dtype``: ``sum_i w_i x_i / sum_i w_i`` over each group in float32,
        zeros where the weights sum to 0.
    """
    batch, n, dim = x.shape
    k = offsets.shape[1] - 1
    # Group of every token in its original position (order is a permutation: a plain scatter).
    group = torch.empty(batch, n, dtype=torch.int64, device=x.device)
    group.scatter_(1, order.long(), group_of_sorted(offsets, n))
    w = weight.float()
    read = w > 0
    # Rows with weight 0 are not read: their products are replaced, never multiplied (NaN-safe).
    contrib = (x.float() * w.unsqueeze(-1)).masked_fill_(~read.unsqueeze(-1), 0.0)
    # scatter_add visits tokens in index order: each group sums its members in index order.
    num = torch.zeros(batch, k, dim, dtype=torch.float32, device=x.device)
    num.scatter_add_(1, group.unsqueeze(-1).expand(batch, n, dim), contrib)
    den = torch.zeros(batch, k, dtype=torch.float32, device=x.device)
    den.scatter_add_(1, group, w.masked_fill(~read, 0.0))
    den = den.unsqueeze(-1)
    out = num.div_(torch.where(den > 0, den, torch.ones_like(den)))
    return out.masked_fill_(~(den > 0), 0.0).to(x.dtype)


def token_unmerge_reference(y: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Gather ``y`` ``(B, M, D)`` back to ``(B, N, D)`` by ``assign`` ``(B, N)`` in ``[0, M)``."""
    batch, n = assign.shape
    idx = assign.long().unsqueeze(-1).expand(batch, n, y.shape[-1])
    return torch.gather(y, 1, idx)

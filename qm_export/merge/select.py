"""Masses and seed selection (spec §3 "Masses", "Seeds"; §4 Gumbel-top-k for training)."""

from __future__ import annotations

import torch

from .indexing import stable_partition, stable_rank_descending

__all__ = ["gumbel_noise", "masses", "select_seeds", "last_real_index", "row_keep_score"]


def gumbel_noise(
    shape: torch.Size | tuple[int, ...], device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(U))``, ``U ~ Uniform(0, 1)``, float32 (open interval)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    u = u.clamp(tiny, 1.0 - torch.finfo(torch.float32).eps / 2)
    return -torch.log(-torch.log(u))


def masses(
    s: torch.Tensor, real: torch.Tensor, tau: float, eps: float, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Token masses ``m = softmax(s / tau [+ gumbel]) * s + eps`` over real tokens, 0 for padding.

    Args:
        s: ``(B, N')`` float32 saliency.
        real: ``(B, N')`` bool.
        tau, eps: temperature and floor.
        noise: optional ``(B, N')`` Gumbel noise (training).

    Returns:
        ``(B, N')`` float32.
    """
    logits = s / tau
    if noise is not None:
        logits = logits + noise
    logits = torch.where(real, logits, torch.tensor(float("-inf"), device=s.device))
    pi = torch.softmax(logits, dim=-1)
    return torch.where(real, pi * s + eps, torch.zeros_like(s))


def last_real_index(real: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row ``(B, N') -> (B, 1)`` int64."""
    idx = torch.arange(real.shape[1], device=real.device).unsqueeze(0).expand(real.shape)
    return torch.where(real, idx, torch.full_like(idx, -1)).amax(1, keepdim=True)


def select_seeds(
    score: torch.Tensor, real: torch.Tensor, k: int | torch.SymInt, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the ``K`` seeds of each row.

    Args:
        score: ``(B, N')`` float32 ranking key (``s``, or ``s / tau + gumbel`` in training);
            padded entries must rank below every real one.
        real: ``(B, N')`` bool.
        k: ``K``.
        causal: force the last real token to be a seed (it replaces the ``K``-th ranked).

    Returns:
        ``seeds`` ``(B, K)`` and ``others`` ``(B, N' - K)`` int64 local indices, both ascending.
    """
    rank = stable_rank_descending(score)
    is_seed = rank < k
    if causal:
        n = real.shape[1]
        idx = torch.arange(n, device=real.device).unsqueeze(0)
        is_last = idx == last_real_index(real)
        last_missing = ~(is_seed & is_last).any(1, keepdim=True)
        is_seed = is_seed & ~(last_missing & (rank == k - 1))  # no bool Where in ONNX Runtime
        is_seed = is_seed | is_last
    perm = stable_partition(is_seed)
    return perm[:, :k], perm[:, k:]


def row_keep_score(
    score: torch.Tensor, real: torch.Tensor, k_row: torch.Tensor, causal: bool
) -> torch.Tensor:
    """Ranking key that gives row ``b`` exactly ``k_row[b]`` real seeds under :func:`select_seeds`.

    Three tiers, each in the order of ``score`` (stable, lower index first on ties): the
    ``k_row[b]`` best real tokens (in causal mode the last real token replaces the
    ``k_row[b]``-th, as :func:`select_seeds` does with ``K``), then the padded tokens, then the
    other real tokens. With ``K - k_row[b]`` at most the row's padding count, the ``K`` seeds are
    the row's own ``k_row[b]`` seeds plus padding seeds; a row without padding (``k_row = K``)
    gets exactly the seeds it would get without this key.

    Args:
        score: ``(B, N')`` float32 ranking key (padding below every real token).
        real: ``(B, N')`` bool.
        k_row: ``(B,)`` int64 seeds wanted per row.
        causal: keep the last real token among the row's seeds.

    Returns:
        ``(B, N')`` float32 key (distinct values, larger ranks first).
    """
    n = score.shape[1]
    rank = stable_rank_descending(score)
    k = k_row.long().unsqueeze(1)
    chosen = real & (rank < k)
    if causal:
        idx = torch.arange(n, device=real.device).unsqueeze(0)
        is_last = idx == last_real_index(real)
        missing = ~(chosen & is_last).any(1, keepdim=True)
        chosen = (chosen & ~(missing & (rank == k - 1))) | is_last  # no bool Where in ONNX Runtime
    tier = torch.where(chosen, 0, torch.where(real, 2, 1))
    return -(tier * n + rank).to(torch.float32)

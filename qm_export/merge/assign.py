"""Assignment of tokens to seeds and centroid refinement (spec §3 "Assignment", "Refinement").

``g_hat`` is the ``(B, N', Dm)`` float32 normalised assignment feature with padded rows set
to 0; ``seeds``/``others`` are the ascending local indices from :func:`select_seeds`.
"""

from __future__ import annotations

import torch

from . import ops
from .ops import is_exporting
from .indexing import batch_gather, first_argmax, may_overwrite
from .saliency import normalise

__all__ = ["eligibility", "assign_to_seeds", "refine"]


def eligibility(
    token_idx: torch.Tensor,
    token_real: torch.Tensor,
    seeds: torch.Tensor,
    seed_real: torch.Tensor,
    causal: bool,
) -> torch.Tensor:
    """Which seeds each token may join; ``(B, T, K)`` bool.

    A real token may join the real seeds (in causal mode only those at its index or later);
    a padded token the padded seeds if there are any, else every seed.

    Args:
        token_idx: ``(B, T)`` local indices of the tokens; ``token_real`` ``(B, T)`` bool.
        seeds: ``(B, K)`` local seed indices; ``seed_real`` ``(B, K)`` bool.
    """
    real_ok = seed_real.unsqueeze(1)
    if causal:
        real_ok = real_ok & (seeds.unsqueeze(1) >= token_idx.unsqueeze(2))
    any_pad_seed = (~seed_real).any(1, keepdim=True)
    # Boolean algebra, not ``torch.where``: ONNX Runtime has no ``Where`` kernel for bool.
    pad_ok = ((~seed_real) | ~any_pad_seed).unsqueeze(1)
    token_real = token_real.unsqueeze(2)
    return (token_real & real_ok) | (~token_real & pad_ok)


def _best_eligible(sim: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """``sim`` is a fresh similarity product; autograd needs none of its values."""
    if may_overwrite():
        return first_argmax(sim.masked_fill_(~eligible, float("-inf")))
    neg = torch.tensor(float("-inf"), device=sim.device, dtype=sim.dtype)
    return first_argmax(torch.where(eligible, sim, neg))


def _scatter_groups(
    n: int, seeds: torch.Tensor, others: torch.Tensor | None, others_group: torch.Tensor | None
) -> torch.Tensor:
    """``assign'`` ``(B, N')``: each seed its own group, ``others`` to ``others_group``."""
    batch, k = seeds.shape
    own = torch.arange(k, device=seeds.device).unsqueeze(0).expand(batch, k)
    assign = torch.zeros(batch, n, dtype=torch.int64, device=seeds.device)
    if others is not None:
        assign = assign.scatter(1, others, others_group)
    return assign.scatter(1, seeds, own)


def assign_to_seeds(
    g_hat: torch.Tensor,
    real: torch.Tensor,
    seeds: torch.Tensor,
    others: torch.Tensor,
    causal: bool,
) -> torch.Tensor:
    """Every non-seed token joins its most similar eligible seed (ties: lower seed).

    Only the ``N' - K`` non-seed tokens are compared with the ``K`` seeds, so the cost is
    ``(N' - K) * K * Dm``.

    Returns:
        ``assign'`` ``(B, N')`` int64 in ``[0, K)``.
    """
    seed_feat = batch_gather(g_hat, seeds)
    other_feat = batch_gather(g_hat, others)
    sim = torch.matmul(other_feat, seed_feat.transpose(1, 2))  # (B, N'-K, K)
    if _all_eligible(real, causal):
        group = first_argmax(sim)
    else:
        elig = eligibility(others, torch.gather(real, 1, others), seeds, torch.gather(real, 1, seeds), causal)
        group = _best_eligible(sim, elig)
    return _scatter_groups(real.shape[1], seeds, others, group)


def _all_eligible(real: torch.Tensor, causal: bool) -> bool:
    """Eager shortcut: in global mode without padding every token may join every seed, so the
    eligibility mask is all True and can be skipped (export always builds it)."""
    return not causal and not is_exporting() and bool(real.all())


def refine(
    assign: torch.Tensor,
    g_hat: torch.Tensor,
    m: torch.Tensor,
    real: torch.Tensor,
    seeds: torch.Tensor,
    causal: bool,
    iters: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` rounds of: mass-weighted centroids, then re-assign by ``g_hat . mu``.

    Centroids ``normalise(sum_i m_i g_hat_i)`` (1e-6 floor on the sum, spec §3) are computed as
    a ``TokenMerge`` of ``g_hat`` with weights ``m`` (the mean, spec §6) times the group's mass.
    Seeds stay in their own group.

    Returns:
        the refined ``assign'`` ``(B, N')`` int64 and the last round's centroids ``(B, K, Dm)``.
    """
    n = real.shape[1]
    idx = torch.arange(n, device=real.device).unsqueeze(0).expand(real.shape)
    elig = eligibility(idx, real, seeds, torch.gather(real, 1, seeds), causal)
    mu = batch_gather(g_hat, seeds)
    for _ in range(iters):
        order, offsets = ops.group_index(assign, seeds)
        # mu_j = normalise(sum_i m_i g_i) (spec §3): the TokenMerge mean times the group's mass.
        mass = ops.group_sum(m, real, order, offsets)
        mu = normalise(ops.merge(g_hat, m, order, offsets) * mass.unsqueeze(-1))
        sim = torch.matmul(g_hat, mu.transpose(1, 2))  # (B, N', K)
        assign = _best_eligible(sim, elig)
        own = torch.arange(seeds.shape[1], device=seeds.device).unsqueeze(0).expand_as(seeds)
        assign = assign.scatter(1, seeds, own)
    return assign, mu

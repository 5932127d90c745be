"""Entropy-aware saliency (spec §3, "Saliency"), all in float32.

Shapes: ``B`` batch, ``N`` tokens, ``P`` protected, ``N' = N - P`` mergeable, ``H`` heads.
``real`` is the ``(B, N')`` bool mask of real mergeable tokens. Padded entries are never read
into a real token's value: they are replaced with ``where``, never multiplied by the mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .indexing import may_overwrite, running_count, stable_partition

__all__ = [
    "attention_entropy",
    "attention_rows",
    "self_similarity_entropy",
    "row_entropy",
    "minmax_real",
    "prior_surprise",
    "saliency",
    "PriorFn",
]

#: ``prior(Z, mask) -> (B, N', D)``, see spec §5.
PriorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_ENTROPY_FLOOR = 1e-12
_RANGE_FLOOR = 1e-6
_NORM_FLOOR = 1e-6


def row_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H = -sum_j p_j log(max(p_j, 1e-12))`` over the last axis; ``(..., M) -> (...)``."""
    if may_overwrite(p):  # same arithmetic, two fewer (B, N', N) temporaries
        return -p.clamp_min(_ENTROPY_FLOOR).log_().mul_(p).sum(-1)
    return -(p * torch.log(p.clamp_min(_ENTROPY_FLOOR))).sum(-1)


def normalise(f: torch.Tensor) -> torch.Tensor:
    """``f / max(||f||, 1e-6)`` over the last axis."""
    return f / torch.linalg.vector_norm(f, dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)


def attention_rows(attn: torch.Tensor, protect: int) -> torch.Tensor:
    """Head-averaged attention rows of the mergeable queries, ``(B, H, N, N) -> (B, N', N)`` float32."""
    return torch.mean(attn[:, :, protect:, :], dim=1, dtype=torch.float32)


def attention_entropy(attn: torch.Tensor, protect: int) -> torch.Tensor:
    """Entropy of the head-averaged attention rows of the mergeable queries.

    Args:
        attn: ``(B, H, N, N)`` attention probabilities of the host layer.
        protect: ``P``.

    Returns:
        ``(B, N')`` float32 (padded query rows hold values that must not be read).
    """
    return row_entropy(attention_rows(attn, protect))


def self_similarity_entropy(
    features: torch.Tensor, real: torch.Tensor, protect: int, sim_temp: float
) -> torch.Tensor:
    """Entropy of ``softmax(F^ F^T / sim_temp)`` over the real mergeable keys.

    Args:
        features: ``(B, N, D_l)`` hidden states of one scale.
        real: ``(B, N')`` bool.
        protect: ``P``.
        sim_temp: softmax temperature.

    Returns:
        ``(B, N')`` float32.
    """
    f = features[:, protect:, :].float()
    f = torch.where(real.unsqueeze(-1), normalise(f), torch.zeros((), device=f.device))
    logits = torch.matmul(f, f.transpose(1, 2))
    if may_overwrite():  # autograd needs neither value: in place on the (B, N', N') product
        logits = logits.div_(sim_temp).masked_fill_(~real.unsqueeze(1), float("-inf"))
    else:
        logits = logits / sim_temp
        logits = torch.where(real.unsqueeze(1), logits, torch.tensor(float("-inf"), device=f.device))
    return row_entropy(torch.softmax(logits, dim=-1))


def minmax_real(values: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalise ``values`` ``(B, N')`` over the real tokens of each row.

    Returns ``(normalised, range)``: ``(v - min) / max(max - min, 1e-6)`` and the row's
    ``max - min`` ``(B,)`` (padded entries of ``normalised`` are meaningless).
    """
    inf = torch.tensor(float("inf"), device=values.device)
    vmin = torch.where(real, values, inf).amin(-1, keepdim=True)
    vmax = torch.where(real, values, -inf).amax(-1, keepdim=True)
    rng = vmax - vmin
    return (values - vmin) / rng.clamp_min(_RANGE_FLOOR), rng.squeeze(-1)


def previous_real(real: torch.Tensor) -> torch.Tensor:
    """Index of the previous real token of each token, ``-1`` when none; ``(B, N')`` int64.

    Written with cumsum and gather (no ``cummax``) so that it exports to standard ONNX ops.
    """
    n = real.shape[1]
    idx = torch.arange(n, device=real.device).unsqueeze(0).expand_as(real)
    before = running_count(real) - real.long()  # real tokens strictly before i
    compact = stable_partition(real)  # real indices first, in index order
    prev = torch.gather(compact, 1, (before - 1).clamp_min(0))
    return torch.where(before > 0, prev, torch.full_like(idx, -1))


def prior_surprise(prior: PriorFn, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """How badly the prior predicts each real token from the ones before it (spec §3).

    Args:
        prior: ``prior(Z, mask) -> (B, N', D)``; ``Z`` has padded rows set to 0.
        tokens: ``(B, N', D)`` mergeable tokens.
        real: ``(B, N')`` bool.

    A prior with ``accepts_positions = True`` is called as ``prior(Z, mask, rank)`` with each
    real token's rank among the real tokens as its position id: the positions
    :func:`~qm_export.merge.prior.symmetric_next_embedding_loss` trains it with (real tokens
    packed to the front, ``0..n-1``), whatever the padding layout, protected tokens or earlier
    merges.

    Returns:
        ``u`` ``(B, N')`` float32: ``||prior(Z)[i'] - Z[i]||^2`` with ``i'`` the previous real
        token; the first real token gets the largest ``u`` of the other real tokens (0 if none).
    """
    z = torch.where(real.unsqueeze(-1), tokens.float(), torch.zeros((), device=tokens.device))
    if getattr(prior, "accepts_positions", False):
        rank = (running_count(real) - 1).clamp_min(0)
        pred = prior(z, real, rank).float()
    else:
        pred = prior(z, real).float()
    prev = previous_real(real)
    pred_prev = torch.gather(pred, 1, prev.clamp_min(0).unsqueeze(-1).expand_as(pred))
    u = (pred_prev - z).pow(2).sum(-1)
    has_prev = real & (prev >= 0)
    neg = torch.tensor(float("-inf"), device=u.device)
    u_max = torch.where(has_prev, u, neg).amax(-1, keepdim=True)
    u_max = torch.where(torch.isfinite(u_max), u_max, torch.zeros_like(u_max))
    return torch.where(has_prev, u, u_max.expand_as(u))


def saliency(
    real: torch.Tensor,
    protect: int,
    *,
    attn: list[torch.Tensor] | None,
    scales: list[torch.Tensor],
    attn_rows: list[torch.Tensor] | None = None,
    sim_temp: float,
    high_entropy_salient: bool,
    prior: PriorFn | None = None,
    prior_weight: float = 0.0,
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency ``s`` of every mergeable token.

    Args:
        real: ``(B, N')`` bool, real mergeable tokens.
        protect: ``P``.
        attn: host attention ``(B, H, N, N)`` per scale, or None to use ``scales``.
        scales: hidden states ``(B, N, D_l)`` per scale (self-similarity entropy).
        attn_rows: ``attention_rows`` of each ``attn`` when already computed (input checks
            compute them, so the attention is read once); None computes them here.
        sim_temp, high_entropy_salient: see :class:`QuickMergeConfig`.
        prior, prior_weight, tokens: optional prior guidance over ``tokens`` ``(B, N', D)``.

    Returns:
        ``s`` ``(B, N')`` float32 in ``[0, 1]`` for real tokens, ``-1`` for padding, and the
        smallest entropy range over scales per row ``(B,)`` (degenerate rows: below ``1e-3``).
    """
    if attn_rows is not None:
        entropies = [row_entropy(rows) for rows in attn_rows]
    elif attn is not None:
        entropies = [attention_entropy(a, protect) for a in attn]
    else:
        entropies = [self_similarity_entropy(f, real, protect, sim_temp) for f in scales]
    normalised, ranges = zip(*(minmax_real(h, real) for h in entropies))
    s = torch.stack(normalised, 0).mean(0)
    if not high_entropy_salient:
        s = 1.0 - s
    if prior is not None and prior_weight > 0:
        if tokens is None:
            raise ValueError("prior guidance needs the mergeable tokens (tokens=None)")
        u_hat, _ = minmax_real(prior_surprise(prior, tokens, real), real)
        s = (1.0 - prior_weight) * s + prior_weight * u_hat
    s = torch.where(real, s, torch.full_like(s, -1.0))
    return s, torch.stack(ranges, 0).amin(0)

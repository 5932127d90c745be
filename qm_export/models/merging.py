"""Token bookkeeping for models that merge inside their layers.

Every model family (reference architectures and Hugging Face adapters) carries the same
per-token state through its layers: sizes, position ids, the padding mask, and ``source`` — for
every *original* token, its index in the current (merged) sequence — so that dense outputs can
be unmerged back to every original position at the end, whatever the number of merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..merge import QuickMergeConfig, quickmerge, unmerge
from ..merge.quickmerge import MergeInfo
from ..merge.saliency import PriorFn

__all__ = [
    "TokenState",
    "merge_tokens",
    "seed_index",
    "proportional_bias",
    "attention_bias",
    "real_sizes",
    "unmerge_to_input",
]


@dataclass
class TokenState:
    """Per-token state of a sequence of ``M`` current tokens standing for ``N0`` original ones.

    Attributes:
        sizes: ``(B, M)`` float32, original tokens per current token (0 for merged padding).
        positions: ``(B, M)`` int64 position ids.
        mask: ``(B, M)`` bool, True for real tokens.
        source: ``(B, N0)`` int64, index in the current sequence of every original token.
    """

    sizes: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor

    @classmethod
    def initial(
        cls, batch: int, n: int, device: torch.device,
        mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
    ) -> "TokenState":
        """State of an unmerged sequence of ``n`` tokens (optional ``mask``/``positions`` ``(B, n)``)."""
        if mask is None:
            mask = torch.ones(batch, n, dtype=torch.bool, device=device)
        if positions is None:
            positions = torch.arange(n, device=device).unsqueeze(0).expand(batch, n)
        source = torch.arange(n, device=device).unsqueeze(0).expand(batch, n)
        return cls(torch.ones(batch, n, dtype=torch.float32, device=device), positions.long(), mask.bool(), source)


def merge_tokens(
    hidden: torch.Tensor,
    state: TokenState,
    config: QuickMergeConfig,
    *,
    attn: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scales: Sequence[torch.Tensor] | None = None,
    metric: torch.Tensor | None = None,
    prior: PriorFn | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
    extra: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, TokenState, MergeInfo, list[torch.Tensor]]:
    """Merge ``hidden`` ``(B, M, D)`` and update ``state``.

    ``extra`` are further ``(B, M, ...)`` per-token tensors that follow the merged tokens by
    taking their seed's value (e.g. a residual stream kept apart).

    Returns:
        ``(merged (B, M', D), new_state, info, extra_merged)``.
    """
    merged, info = quickmerge(
        hidden, config, attn=attn, scales=scales, sizes=state.sizes, positions=state.positions,
        metric=metric, mask=state.mask, prior=prior, training=training, generator=generator,
    )
    source = torch.gather(info["assign"], 1, state.source)
    new_state = TokenState(info["sizes"], info["positions"], info["mask"], source)
    keep_idx = seed_index(info, config.protect)
    extra_merged = [unmerge(t, keep_idx) for t in extra]
    return merged, new_state, info, extra_merged


def seed_index(info: MergeInfo, protect: int) -> torch.Tensor:
    """Index in the input of the token each merged token is named after: ``(B, P + K)`` int64.

    The protected tokens, then the seeds (``info["seeds"]``).
    """
    seeds = info["seeds"]
    protected = torch.arange(protect, device=seeds.device).unsqueeze(0).expand(seeds.shape[0], protect)
    return torch.cat([protected, seeds], 1)


def proportional_bias(state: TokenState, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive key bias ``(B, 1, 1, M)``: ``log(size)`` for real keys, ``-inf`` for padding.

    Proportional attention (ToMe): a merged key standing for ``s`` tokens counts ``s`` times.
    """
    real = state.mask
    logs = torch.log(torch.where(real, state.sizes, torch.ones_like(state.sizes)))
    bias = torch.where(real, logs, torch.full_like(logs, float("-inf")))
    return bias[:, None, None, :].to(dtype)


def real_sizes(state: TokenState) -> torch.Tensor:
    """``(B, M)`` float32 sizes with padding at 0 (a padded token stands for no real token)."""
    return torch.where(state.mask, state.sizes, torch.zeros_like(state.sizes))


def attention_bias(state: TokenState, causal: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive attention bias of a layer over the current tokens.

    Proportional attention (``+log(size)`` on real keys, ``-inf`` on padded keys) and, when
    ``causal``, position-based causality (key ``j`` visible to query ``i`` iff
    ``pos_j <= pos_i``). In the causal bias every query may attend to itself, with bias 0 when
    it is padding, so that padded query rows stay finite (a NaN there would reach real rows
    through ``0 * NaN`` in the value product).

    Returns:
        ``(B, 1, 1, M)`` without ``causal``; ``(B, 1, M, M)`` with it.
    """
    key = proportional_bias(state, torch.float32)
    if not causal:
        return key.to(dtype)
    pos = state.positions
    allowed = pos.unsqueeze(1) <= pos.unsqueeze(2)  # [b, i, j]
    neg = torch.tensor(float("-inf"), device=pos.device)
    bias = torch.where(allowed.unsqueeze(1), key, neg)
    own = torch.where(state.mask, torch.log(torch.where(state.mask, state.sizes, torch.ones_like(state.sizes))),
                      torch.zeros_like(state.sizes))
    eye = torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)
    bias = torch.where(eye, own[:, None, :, None], bias)
    return bias.to(dtype)


def unmerge_to_input(hidden: torch.Tensor, state: TokenState) -> torch.Tensor:
    """Dense outputs back to every original position: ``(B, M, D) -> (B, N0, D)``."""
    return unmerge(hidden, state.source)

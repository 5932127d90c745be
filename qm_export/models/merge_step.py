"""The merge step a layer runs between its attention and its MLP, as pure functions.

Reference families (:mod:`qm_export.models.stack`) and the Hugging Face adapters call the same
functions, so that every model merges the same way:

- :func:`scale_feature` turns one layer's attention probabilities (``saliency="attention"``)
  or its hidden states (``saliency="self"``) into the feature kept for multi-scale saliency;
- :func:`push_history` keeps the last ``scales - 1`` of them;
- :func:`merge_step` merges the residual stream with QuickMerge++ (saliency from the host
  layer's probabilities plus the history), updates the :class:`TokenState` and carries the
  history over to the merged tokens (:func:`carry_history`).

Shapes: ``B`` batch, ``M`` tokens before the merge, ``M'`` after, ``D`` width, ``H`` heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..merge import QuickMergeConfig, unmerge
from ..merge.quickmerge import MergeInfo
from ..merge.saliency import PriorFn
from .merging import TokenState, merge_tokens, seed_index

__all__ = ["MergeStepOutput", "scale_feature", "push_history", "carry_history", "merge_step"]


class MergeStepOutput(NamedTuple):
    """``hidden`` ``(B, M', D)``, the new ``state``, quickmerge's ``info`` and the carried ``history``."""

    hidden: torch.Tensor
    state: TokenState
    info: MergeInfo
    history: list[torch.Tensor]


def scale_feature(saliency: str, probs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """One layer's contribution to multi-scale saliency.

    Args:
        saliency: ``"attention"`` or ``"self"``.
        probs: ``(B, H, M, M)`` attention probabilities of the layer.
        hidden: ``(B, M, D)`` residual stream after the layer's attention sub-block.

    Returns:
        ``(B, M, M)`` float32 head-averaged probabilities (entropy over heads is taken of the
        head mean, so nothing is lost), or ``hidden`` itself.
    """
    if saliency == "attention":
        return probs.mean(1, dtype=torch.float32)
    return hidden


def push_history(history: Sequence[torch.Tensor], feature: torch.Tensor, scales: int) -> list[torch.Tensor]:
    """Append ``feature`` and keep the last ``scales - 1`` entries (``[]`` when ``scales == 1``)."""
    keep = scales - 1
    if keep <= 0:
        return []
    return (list(history) + [feature])[-keep:]


def carry_history(
    history: Sequence[torch.Tensor], saliency: str, info: MergeInfo, protect: int
) -> list[torch.Tensor]:
    """Express earlier layers' saliency features over the merged tokens.

    Hidden states ``(B, M, D)`` take the value of the token each merged token is named after
    (its seed, or the protected token). Attention ``(B, M, M)`` takes that token's row, and
    each merged key gets the summed probability of its group's keys (the rows still sum to 1):
    what that layer would give under proportional attention if a group's keys were equal.

    Returns:
        the features over ``M' = P + K`` tokens: ``(B, M', D)`` or ``(B, M', M')``.
    """
    if not history:
        return []
    keep_idx = seed_index(info, protect)
    carried = [unmerge(h, keep_idx) for h in history]  # rows follow the merged tokens
    if saliency != "attention":
        return carried
    m_new = keep_idx.shape[1]
    groups = torch.arange(m_new, device=keep_idx.device)
    one_hot = (info["assign"].unsqueeze(-1) == groups).to(torch.float32)  # (B, M, M')
    return [torch.matmul(rows, one_hot) for rows in carried]


def merge_step(
    hidden: torch.Tensor,
    state: TokenState,
    config: QuickMergeConfig,
    *,
    saliency: str,
    probs: torch.Tensor,
    metric: torch.Tensor | None = None,
    history: Sequence[torch.Tensor] = (),
    scales: int = 1,
    prior: PriorFn | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> MergeStepOutput:
    """Merge the residual stream ``hidden`` ``(B, M, D)`` inside a layer, after its attention.

    Args:
        hidden: ``(B, M, D)`` residual stream after the attention sub-block.
        state: the token state before the merge.
        config: this layer's :class:`QuickMergeConfig`.
        saliency: ``"attention"`` (entropy of ``probs`` and the history's attention rows) or
            ``"self"`` (self-similarity of ``hidden`` and the history's hidden states).
        probs: ``(B, H, M, M)`` this layer's attention probabilities (read with ``"attention"``).
        metric: ``(B, M, Dm)`` assignment features (e.g. keys averaged over heads); default
            ``hidden``.
        history: earlier layers' features over the same ``M`` tokens (oldest first, at most
            ``scales - 1``), from :func:`scale_feature` / :func:`push_history`.
        scales: the multi-scale window (this layer and ``scales - 1`` before it).
        prior: the layer's autoregressive prior, when ``config.prior_weight > 0``.
        training: Gumbel selection (spec §4) with ``generator``.

    Returns:
        :class:`MergeStepOutput`; its ``history`` is the window for the next layer (this
        layer's feature appended, the last ``scales - 1`` kept) carried to the merged tokens.
    """
    if saliency == "attention":
        attn: list[torch.Tensor] | None = [h.unsqueeze(1) for h in history] + [probs]
        features = None
    elif saliency == "self":
        attn, features = None, list(history) + [hidden]
    else:
        raise ValueError(f"saliency must be 'attention' or 'self', got {saliency!r}")
    merged, new_state, info, _ = merge_tokens(
        hidden, state, config, attn=attn, scales=features, metric=metric,
        prior=prior, training=training, generator=generator,
    )
    window = push_history(history, scale_feature(saliency, probs, hidden), scales)
    carried = carry_history(window, saliency, info, config.protect)
    return MergeStepOutput(merged, new_state, info, carried)

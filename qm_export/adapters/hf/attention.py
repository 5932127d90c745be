"""Attention over merged tokens for the Hugging Face adapters.

Two pieces shared by every family: the additive key bias of a :class:`TokenState`
(proportional attention, padding, causality) and one attention call that either returns the
probabilities (eager math, for saliency) or runs ``scaled_dot_product_attention``.

Masked entries use ``finfo(dtype).min`` rather than ``-inf`` (as ``transformers`` does): a padded
query row whose keys are all masked then stays finite, so padding can never turn into NaN and
reach a real token through ``probs @ V`` (``0 * NaN`` is NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.merging import TokenState

__all__ = ["attention_bias", "attend"]


def attention_bias(state: TokenState, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias for the current tokens of ``state``.

    Real keys get ``log(size)`` (a merged key standing for ``s`` tokens counts ``s`` times, as
    in ToMe's proportional attention); padded keys get ``finfo(dtype).min``. In causal mode a
    key ``j`` is visible to query ``i`` iff ``positions[j] <= positions[i]`` (a causal merge puts
    a merged token at its group's last position), and every query sees itself, so even a row
    of padding only has a finite softmax.

    Returns:
        ``(B, 1, 1, M)`` (global) or ``(B, 1, M, M)`` (causal), in ``dtype``.
    """
    real = state.mask
    logs = torch.log(torch.where(real, state.sizes, torch.ones_like(state.sizes)).float())
    neg = torch.finfo(dtype).min
    if not causal:
        return torch.where(real, logs, neg)[:, None, None, :].to(dtype)
    pos = state.positions
    m = pos.shape[1]
    allowed = real.unsqueeze(1) & (pos.unsqueeze(1) <= pos.unsqueeze(2))  # [b, query, key]
    allowed = allowed | torch.eye(m, dtype=torch.bool, device=pos.device).unsqueeze(0)
    value = torch.where(real, logs, torch.zeros_like(logs)).unsqueeze(1)
    return torch.where(allowed, value, neg).unsqueeze(1).to(dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scaling: float,
    dropout_p: float,
    training: bool,
    want_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention of ``q``, ``k``, ``v`` ``(B, H, M, dh)`` under an additive ``bias``.

    Args:
        bias: ``(B, 1, 1 or M, M)`` from :func:`attention_bias`.
        scaling: factor on ``q . k`` (``dh ** -0.5`` for these models).
        dropout_p: attention dropout, applied only when ``training``.
        want_probs: compute the probabilities explicitly (eager) and return them; otherwise
            use ``scaled_dot_product_attention`` and return None.

    Returns:
        ``(context (B, M, H * dh), probs (B, H, M, M) float32 or None)``; the probabilities are
        taken before dropout.
    """
    batch, heads, m, dh = q.shape
    p = dropout_p if training else 0.0
    if want_probs:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling + bias
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        weights = probs.to(v.dtype)
        if p > 0:
            weights = F.dropout(weights, p=p, training=True)
        out = torch.matmul(weights, v)
    else:
        probs = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scaling)
    return out.transpose(1, 2).reshape(batch, m, heads * dh), probs

"""Transformer building blocks shared by the reference families (plain torch, export-friendly).

Attention computes its probabilities explicitly (``softmax(q k^T / sqrt(d) + bias)``) so that a
merge layer can read them as saliency; the bias carries proportional attention (``+log(size)``
on merged keys), padding (``-inf``) and causality. No fused kernels, no tensor-value branches.

Shapes: ``B`` batch, ``M`` current tokens, ``D`` width, ``H`` heads, ``dh = D / H``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "AttentionOutput",
    "attention_with_probs",
    "split_heads",
    "merge_heads",
    "SelfAttention",
    "MLP",
    "Block",
]


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, M, D) -> (B, H, M, D / H)``."""
    batch, m, dim = t.shape
    return t.reshape(batch, m, heads, dim // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``(B, H, M, dh) -> (B, M, H * dh)``."""
    batch, heads, m, dh = t.shape
    return t.transpose(1, 2).reshape(batch, m, heads * dh)


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that returns its probabilities.

    Args:
        q: ``(B, H, Mq, dh)`` queries.
        k, v: ``(B, H, Mk, dh)`` keys and values.
        bias: additive bias broadcastable to ``(B, H, Mq, Mk)`` (``log(size)``, ``-inf``
            for keys a query must not see). Every query row must keep one finite entry.

    Returns:
        ``(out (B, H, Mq, dh) in v's dtype, probs (B, H, Mq, Mk) float32)``. Scores and the
        softmax are float32 whatever the model dtype.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (1.0 / math.sqrt(q.shape[-1]))
    probs = torch.softmax(scores + bias.float(), dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


class AttentionOutput(NamedTuple):
    """What one attention sub-block returns.

    - ``hidden`` ``(B, M, D)``: the residual stream after the sub-block.
    - ``probs`` ``(B, H, M, Mk)`` float32 attention probabilities.
    - ``key``, ``value`` ``(B, H, Mk, dh)``: the keys/values attended over (the KV cache).
    - ``metric`` ``(B, M, dh)``: keys averaged over heads (ToMe's assignment feature).
    """

    hidden: torch.Tensor
    probs: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    metric: torch.Tensor


#: Standard deviation of the attention scores ``q.k / sqrt(dh)`` at random init (unit-variance
#: inputs). PyTorch's default ``Linear`` init gives about 1/3, i.e. nearly uniform attention,
#: whose entropies are all alike; trained models attend far more selectively.
INIT_SCORE_STD = 2.0


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (GPT-2 / timm layout).

    At random init the query and key projections are drawn so that the attention scores have
    a standard deviation of about :data:`INIT_SCORE_STD`, so that attention entropies, and so
    QuickMerge++ saliency, differ between tokens as in trained models.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.normal_(self.qkv.weight[: 2 * dim], std=math.sqrt(INIT_SCORE_STD / dim))

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend ``x`` ``(B, M, D)`` over itself (after ``past`` keys/values, if given).

        Returns ``(out (B, M, D), probs, key, value, metric)`` as in :class:`AttentionOutput`;
        ``key``/``value`` include ``past``; ``metric`` covers the new tokens only.
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        metric = k.mean(1)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        out, probs = attention_with_probs(q, k, v, bias)
        return self.proj(merge_heads(out)), probs, k, v, metric


class MLP(nn.Module):
    """``Linear -> GELU -> Linear``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A transformer layer split in two halves so that a merge can sit between them.

    ``attend`` runs the attention sub-block (residual included), ``feed_forward`` the MLP
    sub-block. ``norm_first=True`` is the pre-norm layout (ViT, GPT-2): ``h + f(norm(h))``;
    ``False`` the post-norm layout (BERT): ``norm(h + f(h))``. Either way a merge between the
    halves merges the residual stream that leaves the attention sub-block.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, norm_first: bool, eps: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden)

    def attend(
        self,
        h: torch.Tensor,
        bias: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> AttentionOutput:
        """Attention sub-block on ``h`` ``(B, M, D)``; see :class:`AttentionOutput`."""
        if self.norm_first:
            out, probs, k, v, metric = self.attn(self.norm1(h), bias, past)
            hidden = h + out
        else:
            out, probs, k, v, metric = self.attn(h, bias, past)
            hidden = self.norm1(h + out)
        return AttentionOutput(hidden, probs, k, v, metric)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """MLP sub-block on ``h`` ``(B, M, D)``."""
        if self.norm_first:
            return h + self.mlp(self.norm2(h))
        return self.norm2(h + self.mlp(h))


def token_and_position_embeddings(vocab_size: int, max_positions: int, dim: int) -> tuple[nn.Embedding, nn.Embedding]:
    """Token and learned position tables for the text families, initialised as BERT / GPT-2 do
    (normal, std 0.02)."""
    tables = nn.Embedding(vocab_size, dim), nn.Embedding(max_positions, dim)
    for table in tables:
        nn.init.normal_(table.weight, std=0.02)
    return tables

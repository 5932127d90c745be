"""The autoregressive prior (spec §5): a compact causal transformer over merged tokens.

It predicts each token's embedding from the tokens before it; at inference its surprise
feeds saliency. Trained with the symmetric next-embedding loss
``MSE(prior(z)[:, :-1], z[:, 1:]) + MSE(prior(flip(z))[:, :-1], flip(z)[:, 1:])``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .indexing import batch_gather, stable_partition

__all__ = ["AutoregressivePrior", "symmetric_next_embedding_loss", "sinusoidal_positions"]


def sinusoidal_positions(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal embedding of integer position ids ``(B, N) -> (B, N, width)`` float32."""
    half = width // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / max(half, 1)
    )
    angle = positions.float().unsqueeze(-1) * freq
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], -1)
    if emb.shape[-1] < width:
        emb = torch.nn.functional.pad(emb, (0, width - emb.shape[-1]))
    return emb


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, n, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(batch, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = torch.where(allowed.unsqueeze(1), scores, torch.tensor(float("-inf"), device=h.device))
        att = torch.softmax(scores, dim=-1)
        out = torch.matmul(att, v).transpose(1, 2).reshape(batch, n, width)
        h = h + self.proj(out)
        return h + self.mlp(self.norm2(h))


class AutoregressivePrior(nn.Module):
    """Causal transformer predicting the next token's embedding (spec §5).

    Called as ``prior(Z, mask[, positions])`` with ``Z`` ``(B, N', D)``, ``mask`` ``(B, N')``
    (True = real) and optional integer ``positions`` ``(B, N')`` (default ``0..N'-1``); returns
    ``(B, N', D)``: output ``i`` predicts the next real token after ``i``. Padded tokens are
    masked out of attention, so they never change a real token's prediction.
    """

    accepts_positions = True

    def __init__(self, dim: int, width: int = 128, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.dim, self.width, self.layers_n, self.heads = dim, width, layers, heads
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def config(self) -> dict[str, int]:
        """Constructor arguments (saved next to the weights)."""
        return {"dim": self.dim, "width": self.width, "layers": self.layers_n, "heads": self.heads}

    def forward(
        self, z: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, n, _ = z.shape
        if positions is None:
            positions = torch.arange(n, device=z.device).unsqueeze(0).expand(batch, n)
        z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
        h = self.inp(z.to(self.inp.weight.dtype)) + sinusoidal_positions(positions, self.width).to(self.inp.weight.dtype)
        idx = torch.arange(n, device=z.device)
        causal = idx.unsqueeze(0) <= idx.unsqueeze(1)  # [query, key]
        # Real keys only; a query always sees itself, so padded query rows stay finite.
        allowed = causal.unsqueeze(0) & (mask.unsqueeze(1) | torch.eye(n, dtype=torch.bool, device=z.device))
        for block in self.blocks:
            h = block(h, allowed)
        return self.out(self.norm(h))


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    err = torch.where(valid.unsqueeze(-1), (pred - target).pow(2), torch.zeros((), device=pred.device))
    count = valid.sum() * pred.shape[-1]
    return err.sum() / count.clamp_min(1)


def symmetric_next_embedding_loss(
    prior: nn.Module, z: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric next-embedding loss of ``prior`` on merged sequences ``z`` ``(B, N, D)``.

    Padding (``mask`` False) is excluded: the real tokens of each row are packed to the front
    (in order for the forward term, reversed for the flipped term) and only pairs of
    consecutive real tokens count.
    """
    batch, n, _ = z.shape
    if mask is None:
        mask = torch.ones(batch, n, dtype=torch.bool, device=z.device)
    z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
    n_real = mask.sum(1, keepdim=True)
    idx = torch.arange(n, device=z.device).unsqueeze(0).expand(batch, n)
    packed = stable_partition(mask)  # real tokens first, in order
    rev = torch.where(idx < n_real, n_real - 1 - idx, idx)  # reverse the real prefix
    flipped = torch.gather(packed, 1, rev)
    valid = idx < n_real
    pair = valid[:, :-1] & valid[:, 1:]
    loss = z.new_zeros(())
    for order in (packed, flipped):
        seq = batch_gather(z, order)
        pred = prior(seq, valid)
        loss = loss + _masked_mse(pred[:, :-1], seq[:, 1:], pair)
    return loss

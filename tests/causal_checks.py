"""Shared inputs and assertions for causal-LM forwards (the merged prefill and the embed merge alike)."""

from __future__ import annotations

import torch


def assert_never_attends_later(attentions) -> None:
    """No attention probability reaches a key at a later position than its query, in any
    layer (``attentions``: ``(probs (B, H, M, M), positions (B, M))`` per layer), and every
    layer has such pairs, so the check is not vacuous."""
    for layer, (probs, positions) in enumerate(attentions):
        later = positions.unsqueeze(1) > positions.unsqueeze(2)  # [b, query, key]: key after query
        leaked = torch.where(later.unsqueeze(1), probs, torch.zeros(()))
        assert later.any() and float(leaked.abs().max()) == 0.0, layer


def token_ids(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Seeded token ids ``(batch, n)`` in ``[0, 1000)``."""
    return torch.randint(0, 1000, (batch, n), generator=torch.Generator().manual_seed(seed))

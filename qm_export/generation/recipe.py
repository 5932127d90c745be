"""The ``causal-lm`` recipes as a :class:`~qm_export.generation.contract.GenerationModel`."""

from __future__ import annotations

import torch

from ..models.base import KVCache
from ..models.causal_lm import CausalLM
from ..models.stack import LayerCache
from .contract import CacheSpec

__all__ = ["RecipeGeneration"]


class RecipeGeneration:
    """:class:`CausalLM`'s ``forward`` (prefill, merging the prompt) and ``generate_step``
    (decode) in the contract's form; the model is shared, not copied."""

    def __init__(self, model: CausalLM, dtype: torch.dtype = torch.float32) -> None:
        c = model.config
        self.model = model
        self.spec = CacheSpec(
            depth=c.depth, kv_heads=c.heads, head_dim=c.dim // c.heads, vocab_size=c.vocab_size,
            max_positions=c.max_positions, dtype=dtype,
        )

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[LayerCache]]:
        """``(B, N)`` ids and mask -> ``(logits (B, vocab), cache)``."""
        out = self.model(input_ids, attention_mask)
        assert out.cache is not None
        return out["logits"], out.cache.layers

    def decode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: list[LayerCache]
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """``(B, 1)`` ids at ``(B, 1)`` positions -> ``(logits (B, vocab), cache one longer)``."""
        logits, new = self.model.generate_step(input_ids, KVCache(list(cache), position_ids[:, 0]))
        return logits, new.layers

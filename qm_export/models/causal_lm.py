"""``causal-lm``: a decoder-only language model with QuickMerge++ on the prompt (GPT-2 layout).

Prefill merges the context in ``causal`` mode (a token only joins a seed at the same or a
later index, so a merged token sits at its group's last position) and attends causally by
position ids; it returns the next-token ``logits`` at the last real position and a KV cache
whose layers hold the tokens each layer's attention saw (merged length after a merge), with
their positions and sizes. :meth:`CausalLM.generate_step` then decodes one token at a time
over that cache; generated tokens are never merged (spec: merging applies to a known prompt).

Padding: right or left, through ``attention_mask``; position ids count real tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..generation.contract import flatten_cache, present_names
from ..merge.indexing import batch_gather, running_count
from ..merge.ops import is_exporting
from .base import KVCache, MergingModel, ModelOutput
from .layers import token_and_position_embeddings
from .encoder import EncoderConfig, check_text_inputs, example_text_inputs
from .merging import TokenState

__all__ = ["CausalLMConfig", "CausalLM", "SIZES", "cache_output_names"]


@dataclass(frozen=True)
class CausalLMConfig(EncoderConfig):
    """GPT-2 geometry: the LM head is tied to the token embedding."""

    vocab_size: int = 50257
    max_positions: int = 1024
    layer_norm_eps: float = 1e-5


SIZES = {
    "tiny": CausalLMConfig(vocab_size=1000, max_positions=128, dim=32, depth=3, heads=4),  # room for 64 new tokens
    "small": CausalLMConfig(dim=512, depth=6, heads=8),
    "base": CausalLMConfig(dim=768, depth=12, heads=12),  # GPT-2 small (124M)
}

def cache_output_names(depth: int) -> tuple[str, ...]:
    """``present.{layer}.{key,value,positions,sizes}`` for every layer, layer-major."""
    return present_names(depth)


def text_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``(B, N)`` int64 counting real tokens (``0`` on leading padding)."""
    return (running_count(mask) - 1).clamp_min(0)


class CausalLM(MergingModel):
    """Inputs ``input_ids``, ``attention_mask`` ``(B, N)``; outputs ``logits`` ``(B, vocab)`` of
    the token after the last real one, then the per-layer KV cache (:func:`cache_output_names`)."""

    family = "causal-lm"
    config_class = CausalLMConfig
    protect = 0
    mode = "causal"
    norm_first = True
    input_names = ("input_ids", "attention_mask")
    dynamic_sequence = True

    def _build(self) -> None:
        c = self.config
        self.tok_embed, self.pos_embed = token_and_position_embeddings(c.vocab_size, c.max_positions, c.dim)

    def _build_head(self) -> None:
        self.norm = nn.LayerNorm(self.config.dim, eps=self.config.layer_norm_eps)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied LM head on ``(B, D)`` -> ``(B, vocab)``."""
        return F.linear(self.norm(h), self.tok_embed.weight)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None, output_attentions: bool = False,
    ) -> ModelOutput:
        """Prefill ``input_ids`` ``(B, N)`` (merging the context); see the class docstring."""
        mask = check_text_inputs(input_ids, attention_mask, self.config.max_positions)
        batch, n = input_ids.shape
        positions = text_positions(mask)
        h = self.tok_embed(input_ids) + self.pos_embed(positions)
        state = TokenState.initial(batch, n, h.device, mask=mask, positions=positions)
        out = self.stack(h, state, generator=generator, collect_cache=True, collect_attentions=output_attentions)
        idx = torch.arange(n, device=mask.device).unsqueeze(0)
        last = torch.where(mask, idx, torch.full_like(idx, -1)).amax(1, keepdim=True)  # (B, 1)
        current = torch.gather(out.state.source, 1, last)  # where the last real token went
        h_last = batch_gather(out.hidden, current)[:, 0]
        outputs = {"logits": self._logits(h_last)}
        assert out.cache is not None
        outputs.update(zip(cache_output_names(len(out.cache)), flatten_cache(out.cache)))
        next_position = torch.gather(positions, 1, last)[:, 0] + 1
        return ModelOutput(outputs, out.merges, out.tokens, KVCache(out.cache, next_position), out.attentions)

    def generate_step(self, next_token: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Decode one token per row over the (merged) ``cache``.

        Args:
            next_token: ``(B,)`` or ``(B, 1)`` integer token ids.
            cache: from :meth:`forward` or a previous step.

        Returns:
            ``(logits (B, vocab) of the token after next_token, the cache extended by it)``.
        """
        if next_token.dim() == 1:
            next_token = next_token.unsqueeze(1)
        if not is_exporting():
            if next_token.is_floating_point() or next_token.shape != (cache.next_position.shape[0], 1):
                raise ValueError(
                    f"next_token must be integer ids of shape (B,) or (B, 1) with B={cache.next_position.shape[0]}, "
                    f"got {tuple(next_token.shape)} {next_token.dtype}"
                )
            if int(cache.next_position.max()) >= self.config.max_positions:
                raise ValueError(f"the sequence is full: max_positions={self.config.max_positions}")
        pos = cache.next_position.unsqueeze(1)
        h = self.tok_embed(next_token) + self.pos_embed(pos)
        h, layers = self.stack.decode(h, cache.layers, pos)
        return self._logits(h[:, 0]), KVCache(layers, cache.next_position + 1)

    def output_names(self) -> tuple[str, ...]:
        return ("logits",) + cache_output_names(self.config.depth)

    def example_inputs(self, shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return example_text_inputs(shapes["input_ids"], self.config.vocab_size, generator)

"""``encoder``: a bidirectional text encoder with QuickMerge++ inside (BERT layout).

Token + learned position embeddings and an embedding LayerNorm, post-norm layers, padding-aware
through ``attention_mask`` (padded keys get ``-inf``; padded tokens are never read by a merge).
Outputs ``last_hidden_state`` unmerged back to ``(B, N, D)`` (every original position gets its
merged token; padded positions are zeros) and ``pooled``, the mean over real tokens, computed on the merged tokens as
``sum(size h) / sum(size)`` (merged padding has size 0 and never counts). No token-type
embeddings and no pooler (sentence-embedding style).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..merge.ops import is_exporting
from .base import MergingModel, ModelOutput, TransformerConfig
from .layers import token_and_position_embeddings
from .merging import TokenState, unmerge_to_input
from .vit import size_weighted_mean

__all__ = ["EncoderConfig", "TextEncoder", "SIZES", "check_text_inputs", "example_text_inputs"]


@dataclass(frozen=True)
class EncoderConfig(TransformerConfig):
    """Vocabulary and maximum length of a text model (``max_positions`` learned positions)."""

    vocab_size: int = 30522
    max_positions: int = 512
    layer_norm_eps: float = 1e-12

    def positive_ints(self) -> tuple[str, ...]:
        return super().positive_ints() + ("vocab_size", "max_positions")


SIZES = {
    "tiny": EncoderConfig(vocab_size=1000, max_positions=64, dim=32, depth=3, heads=4),
    "small": EncoderConfig(dim=384, depth=6, heads=12),  # all-MiniLM-L6-v2 geometry
    "base": EncoderConfig(dim=768, depth=12, heads=12),  # BERT-base geometry
}


def check_text_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_positions: int
) -> torch.Tensor:
    """Check ``input_ids`` ``(B, N)`` and ``attention_mask``; return the ``(B, N)`` bool mask.

    Value checks (every row has a real token) run in eager mode only.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if attention_mask is None:
        attention_mask = torch.ones(input_ids.shape, dtype=torch.int64, device=input_ids.device)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    mask = attention_mask != 0
    if not is_exporting():
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, N), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > max_positions:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, more than max_positions={max_positions}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        empty = ~mask.any(1)
        if bool(empty.any()):
            raise ValueError(f"attention_mask row {int(empty.nonzero()[0, 0])} has no real token")
    return mask


def example_text_inputs(shape: tuple[int, ...], vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``input_ids`` ``(B, N)`` and an int64 ``attention_mask`` whose last row (when
    ``B > 1``) is right-padded to about three quarters of ``N``, so padding is exercised."""
    batch, n = shape
    ids = torch.randint(0, vocab_size, (batch, n), generator=generator)
    mask = torch.ones(batch, n, dtype=torch.int64)
    if batch > 1 and n > 1:
        mask[-1, max(1, (3 * n) // 4):] = 0
    return ids, mask


class TextEncoder(MergingModel):
    """Inputs ``input_ids``, ``attention_mask`` ``(B, N)``; outputs ``last_hidden_state``
    ``(B, N, D)`` and ``pooled`` ``(B, D)``."""

    family = "encoder"
    config_class = EncoderConfig
    protect = 0
    mode = "global"
    norm_first = False
    input_names = ("input_ids", "attention_mask")
    dynamic_sequence = True

    def _build(self) -> None:
        c = self.config
        self.tok_embed, self.pos_embed = token_and_position_embeddings(c.vocab_size, c.max_positions, c.dim)
        self.embed_norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)

    def _build_head(self) -> None:
        pass

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None, output_attentions: bool = False,
    ) -> ModelOutput:
        """Encode ``input_ids`` ``(B, N)`` (``attention_mask``: 1 real, 0 padding)."""
        mask = check_text_inputs(input_ids, attention_mask, self.config.max_positions)
        batch, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(batch, n)
        h = self.embed_norm(self.tok_embed(input_ids) + self.pos_embed(positions))
        state = TokenState.initial(batch, n, h.device, mask=mask, positions=positions)
        out = self.stack(h, state, generator=generator, collect_attentions=output_attentions)
        # Without a merge every token is still in place: no unmerge (an identity gather) in the graph.
        dense = unmerge_to_input(out.hidden, out.state) if out.merges else out.hidden
        outputs = {
            "last_hidden_state": torch.where(mask.unsqueeze(-1), dense, torch.zeros((), dtype=dense.dtype, device=dense.device)),
            "pooled": size_weighted_mean(out.hidden, out.state),
        }
        return ModelOutput(outputs, out.merges, out.tokens, attentions=out.attentions)

    def output_names(self) -> tuple[str, ...]:
        return ("last_hidden_state", "pooled")

    def example_inputs(self, shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return example_text_inputs(shapes["input_ids"], self.config.vocab_size, generator)

"""Vision transformers (``ViTModel``, ``ViTForImageClassification``).

Layer split (pre-LayerNorm): ``attend`` = ``x + dropout(attn(layernorm_before(x)))``; the merge
sits after it; ``feed_forward`` = ``h + dropout(mlp(layernorm_after(h)))``. The class token
(index 0) is protected by default, so the pooler and the classifier read it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attention import attend
from .common import finish_output, initial_state, padding_mask, reject_unsupported
from .family import Family
from .runner import run_layers
from ...models.merging import unmerge_to_input

__all__ = ["VIT"]


def _layers(base: nn.Module) -> Sequence[nn.Module]:
    if hasattr(base, "layers"):
        return base.layers
    return base.encoder.layer


def _check(base: nn.Module) -> None:
    layers = _layers(base)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    if len(layers) and not all(hasattr(layers[0].attention, n) for n in names):
        raise ValueError(f"{type(base).__name__}: unsupported module layout (this adapter follows transformers 5.x modeling code)")


def _qkv(attention: nn.Module, x: torch.Tensor):
    batch, n, _ = x.shape
    shape = (batch, n, -1, attention.head_dim)
    q = attention.q_proj(x).view(shape).transpose(1, 2)
    k = attention.k_proj(x).view(shape).transpose(1, 2)
    v = attention.v_proj(x).view(shape).transpose(1, 2)
    return q, k, v


def _attend(layer: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool):
    at = layer.attention
    q, k, v = _qkv(at, layer.layernorm_before(h))
    ctx, probs = attend(q, k, v, bias, at.scaling, at.attention_dropout, at.training, want_probs)
    return layer.dropout(at.o_proj(ctx)) + h, probs, k


def _feed_forward(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return h + layer.dropout(layer.mlp(layer.layernorm_after(h)))


def _forward(
    self: nn.Module,
    pixel_values: torch.Tensor | None = None,
    bool_masked_pos: torch.Tensor | None = None,
    interpolate_pos_encoding: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    **kwargs: Any,
) -> Any:
    """``ViTModel.forward`` with QuickMerge++ inside; dense outputs unmerged to ``(B, N, D)``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    reject_unsupported(type(self).__name__, output_attentions=output_attentions)
    if pixel_values is None:
        raise ValueError("You have to specify pixel_values")
    expected = self.embeddings.patch_embeddings.projection.weight.dtype
    if pixel_values.dtype != expected:
        pixel_values = pixel_values.to(expected)
    embeddings = self.embeddings(
        pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
    )
    batch, n = embeddings.shape[:2]
    mask = padding_mask(attention_mask, batch, n, embeddings.device)
    state = initial_state(batch, n, embeddings.device, mask, None)
    collect = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
    hidden, state, all_hidden = run_layers(
        self.quickmerge, _layers(self), embeddings, state, training=self.training, collect_hidden=collect,
    )
    sequence = unmerge_to_input(self.layernorm(hidden), state)
    pooled = self.pooler(sequence) if self.pooler is not None else None
    out = BaseModelOutputWithPooling(
        last_hidden_state=sequence, pooler_output=pooled,
        hidden_states=tuple(all_hidden) if all_hidden is not None else None,
    )
    return finish_output(out, return_dict)


VIT = Family(
    name="vit",
    base_classes=("ViTModel",),
    default_protect=1,
    default_mode="global",
    layers=_layers,
    check=_check,
    attend=_attend,
    feed_forward=_feed_forward,
    forward=_forward,
)

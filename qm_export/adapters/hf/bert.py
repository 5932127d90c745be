"""BERT-family encoders (``BertModel`` and the ``BertFor*`` heads built on it).

Layer split (post-LayerNorm): ``attend`` = self-attention + ``LayerNorm(dense(ctx) + x)``;
the merge sits after it; ``feed_forward`` = intermediate + output (``LayerNorm(... + h)``).
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

__all__ = ["BERT"]

_LAYOUT = "{name}: unsupported module layout (this adapter follows transformers 5.x modeling code)"


def _layers(base: nn.Module) -> Sequence[nn.Module]:
    return base.encoder.layer


def _check(base: nn.Module) -> None:
    config = base.config
    layer = base.encoder.layer[0] if len(base.encoder.layer) else None
    if layer is not None and not all(hasattr(layer.attention.self, n) for n in ("query", "key", "value", "scaling")):
        raise ValueError(_LAYOUT.format(name=type(base).__name__))
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError("QuickMerge++ patches BERT encoders only; this config has is_decoder/add_cross_attention set")
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise ValueError(f"QuickMerge++ supports BERT with absolute positions, got position_embedding_type={kind!r}")


def _attend(layer: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool):
    sa = layer.attention.self
    batch, n, _ = h.shape
    shape = (batch, n, -1, sa.attention_head_size)
    q = sa.query(h).view(shape).transpose(1, 2)
    k = sa.key(h).view(shape).transpose(1, 2)
    v = sa.value(h).view(shape).transpose(1, 2)
    ctx, probs = attend(q, k, v, bias, sa.scaling, sa.dropout.p, sa.training, want_probs)
    return layer.attention.output(ctx, h), probs, k


def _feed_forward(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return layer.output(layer.intermediate(h), h)


def _forward(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> Any:
    """``BertModel.forward`` with QuickMerge++ inside; dense outputs unmerged to ``(B, N, D)``."""
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    reject_unsupported(
        type(self).__name__, cache=cache, past_key_values=past_key_values, use_cache=use_cache,
        encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
        output_attentions=output_attentions,
    )
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    embeddings = self.embeddings(
        input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
    )
    batch, n = embeddings.shape[:2]
    mask = padding_mask(attention_mask, batch, n, embeddings.device)
    state = initial_state(batch, n, embeddings.device, mask, position_ids)
    collect = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
    hidden, state, all_hidden = run_layers(
        self.quickmerge, _layers(self), embeddings, state, training=self.training, collect_hidden=collect,
    )
    sequence = unmerge_to_input(hidden, state)
    pooled = self.pooler(sequence) if self.pooler is not None else None
    out = BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=sequence, pooler_output=pooled,
        hidden_states=tuple(all_hidden) if all_hidden is not None else None,
    )
    return finish_output(out, return_dict)


BERT = Family(
    name="encoder",
    base_classes=("BertModel",),
    default_protect=1,
    default_mode="global",
    layers=_layers,
    check=_check,
    attend=_attend,
    feed_forward=_feed_forward,
    forward=_forward,
)

"""GPT-2 (``GPT2Model``, ``GPT2LMHeadModel``): causal merging of the context.

Layer split (pre-LayerNorm): ``attend`` = ``x + resid_dropout(c_proj(attn(ln_1(x))))``; the
merge sits after it; ``feed_forward`` = ``h + mlp(ln_2(h))``. Merging is causal (a token only
joins a seed at the same or a later index; a merged token sits at its group's last position),
so no merged token sees the future. ``context_length`` (a forward keyword, or the patch's
default) limits merging to the first tokens; later ones (a continuation) stay unmerged.

Caveat (spec §3): dense per-position outputs are unmerged, and a merged group's output mixes
in its later members — evaluate on continuations, or at the last context position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attention import attend
from .common import finish_output, initial_state, padding_mask, reject_unsupported
from .family import CausalHooks, Family
from .runner import run_layers
from ...models.merging import unmerge_to_input

__all__ = ["GPT2"]


def _layers(base: nn.Module) -> Sequence[nn.Module]:
    return base.h


def _check(base: nn.Module) -> None:
    if len(base.h) and not all(hasattr(base.h[0].attn, n) for n in ("c_attn", "c_proj", "split_size", "head_dim", "scaling")):
        raise ValueError(f"{type(base).__name__}: unsupported module layout (this adapter follows transformers 5.x modeling code)")
    if getattr(base.config, "add_cross_attention", False):
        raise ValueError("QuickMerge++ patches GPT-2 without cross-attention; this config has add_cross_attention=True")


def _attend_kv(block: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool, pos: Any = None,
               past: tuple[torch.Tensor, torch.Tensor] | None = None):
    at = block.attn
    batch, n, _ = h.shape
    q, k, v = at.c_attn(block.ln_1(h)).split(at.split_size, dim=2)
    shape = (batch, n, -1, at.head_dim)
    q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    ctx, probs = attend(q, k, v, bias, at.scaling, at.attn_dropout.p, at.training, want_probs)
    return at.resid_dropout(at.c_proj(ctx)) + h, probs, k, v


def _attend(block: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool):
    hidden, probs, k, _ = _attend_kv(block, h, bias, want_probs)
    return hidden, probs, k


def _embed(base: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return base.drop(base.wte(input_ids) + base.wpe(positions))


def _geometry(config: Any) -> tuple[int, int, int]:
    return int(config.n_head), int(config.n_embd) // int(config.n_head), int(config.n_positions)


def _feed_forward(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return h + block.mlp(block.ln_2(h))


def _context_length(value: Any, n: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"context_length must be an int or None, got {value!r}")
    if not 1 <= value <= n:
        raise ValueError(f"context_length must be in [1, {n}] (the sequence length), got {value}")
    return None if value == n else value


def run_causal(
    base: nn.Module,
    layers: Sequence[nn.Module],
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    context_length: int | None,
    output_hidden_states: bool | None,
    final_norm: nn.Module,
    position_embed: Any = None,
) -> dict[str, Any]:
    """A causal LM's patched layer loop (GPT-2, Llama): the token state from the mask and
    positions, the context length (the call's, else the patch's), :func:`run_layers`, then
    ``final_norm``; returns the output fields ``last_hidden_state`` (unmerged to ``(B, N, D)``)
    and ``hidden_states``."""
    batch, n = hidden.shape[:2]
    mask = padding_mask(attention_mask, batch, n, hidden.device)
    state = initial_state(batch, n, hidden.device, mask, position_ids)
    patch = base.quickmerge
    ctx = _context_length(context_length if context_length is not None else patch.context_length, n)
    collect = bool(output_hidden_states if output_hidden_states is not None else base.config.output_hidden_states)
    hidden, state, all_hidden = run_layers(
        patch, layers, hidden, state, training=base.training, context_length=ctx, collect_hidden=collect,
        position_embed=position_embed,
    )
    return {"last_hidden_state": unmerge_to_input(final_norm(hidden), state),
            "hidden_states": tuple(all_hidden) if all_hidden is not None else None}


def _forward(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    cache: Any = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    use_cache: bool | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    past_key_values: Any = None,
    context_length: int | None = None,
    **kwargs: Any,
) -> Any:
    """``GPT2Model.forward`` with causal QuickMerge++ inside; outputs unmerged to ``(B, N, D)``."""
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    reject_unsupported(
        type(self).__name__, cache=cache, past_key_values=past_key_values, use_cache=use_cache,
        encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
        output_attentions=output_attentions,
    )
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.wte(input_ids)
    batch, n = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(n, device=inputs_embeds.device).unsqueeze(0)
    hidden = inputs_embeds + self.wpe(position_ids).to(inputs_embeds.device)
    if token_type_ids is not None:
        hidden = hidden + self.wte(token_type_ids)
    hidden = self.drop(hidden)
    out = run_causal(
        self, _layers(self), hidden, attention_mask, position_ids, context_length, output_hidden_states, self.ln_f,
    )
    return finish_output(BaseModelOutputWithPastAndCrossAttentions(**out), return_dict)


GPT2 = Family(
    name="causal-lm",
    base_classes=("GPT2Model",),
    default_protect=0,
    default_mode="causal",
    layers=_layers,
    check=_check,
    attend=_attend,
    feed_forward=_feed_forward,
    forward=_forward,
    causal=CausalHooks(
        attend_kv=_attend_kv, embed=_embed, final_norm=lambda base, h: base.ln_f(h), geometry=_geometry,
    ),
)

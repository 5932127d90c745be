"""Llama (``LlamaModel``, ``LlamaForCausalLM``): RoPE, RMSNorm, SwiGLU, grouped-query attention.

Layer split (pre-RMSNorm): ``attend`` = ``x + o_proj(attn(input_layernorm(x)))``; the merge
sits after it; ``feed_forward`` = ``h + mlp(post_attention_layernorm(h))`` (the model's own
MLP: SwiGLU for Llama). Merging is causal, as GPT-2's: a token only joins a seed at the same
or a later index and a merged token sits at its group's last (largest) position.

RoPE: queries and keys are rotated at the *current* tokens' positions, computed by the model's
own ``rotary_emb`` module (so every static RoPE variant it implements is covered) and
recomputed after each merge: the keys of the layers after a merge are rotated at the merged
token's position (its group's largest). Rope types whose frequencies depend on the largest
position seen (``dynamic``, ``longrope``) are refused: their data-dependent update does not
export. Keys and values stay at ``num_key_value_heads`` (GQA) and are repeated per query head
only inside attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attention import attend
from .common import finish_output, reject_unsupported
from .family import CausalHooks, Family
from .gpt2 import run_causal

__all__ = ["LLAMA", "UNSUPPORTED_ROPE"]

#: rope types with a data-dependent frequency update (not traceable for export).
UNSUPPORTED_ROPE = ("dynamic", "longrope")
_LAYER_MODULES = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")


def _layers(base: nn.Module) -> Sequence[nn.Module]:
    return base.layers


def _rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope parameters are not supported by the Llama adapter")
    return str(params.get("rope_type", params.get("type", "default"))) if isinstance(params, dict) else "default"


def _check(base: nn.Module) -> None:
    name = type(base).__name__
    layout = f"{name}: unsupported module layout (this adapter follows transformers 5.x modeling_llama)"
    if not all(hasattr(base, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")):
        raise ValueError(layout)
    for layer in base.layers:
        if not all(hasattr(layer, n) for n in _LAYER_MODULES) or not all(hasattr(layer.self_attn, n) for n in _ATTN_MODULES):
            raise ValueError(layout)
    rope = _rope_type(base.config)
    if rope in UNSUPPORTED_ROPE:
        raise ValueError(f"{name}: rope type {rope!r} is not supported (its frequencies change with the longest "
                         f"position seen, which does not export); supported: every static rope type of the model's "
                         f"rotary_emb, not {list(UNSUPPORTED_ROPE)}")
    if getattr(base.config, "sliding_window", None) or getattr(base.config, "pretraining_tp", 1) not in (1, None):
        raise ValueError(f"{name}: sliding-window attention and pretraining_tp > 1 are not supported")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, H, M, dh)`` rotated by ``cos``/``sin`` ``(B, M, dh)``."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, H_kv, T, dh) -> (B, H_kv * groups, T, dh)`` (each key head once per query head)."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def _attend_kv(layer: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool, pos: Any,
               past: tuple[torch.Tensor, torch.Tensor] | None = None):
    if pos is None:
        raise ValueError("the Llama adapter's attention needs the RoPE (cos, sin) of the current tokens")
    at = layer.self_attn
    x = layer.input_layernorm(h)
    shape = (h.shape[0], h.shape[1], -1, at.head_dim)
    q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (at.q_proj, at.k_proj, at.v_proj))
    cos, sin = pos
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    groups = at.num_key_value_groups
    dropout = float(getattr(at, "attention_dropout", 0.0))
    ctx, probs = attend(q, _repeat_kv(k, groups), _repeat_kv(v, groups), bias, at.scaling, dropout, at.training, want_probs)
    return h + at.o_proj(ctx), probs, k, v


def _attend(layer: nn.Module, h: torch.Tensor, bias: torch.Tensor, want_probs: bool):
    raise TypeError("Llama layers attend with RoPE: use the family's causal.attend_kv with position embeddings")


def _feed_forward(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _position_embed(base: nn.Module, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``(B, M, dh)`` of the model's own rotary embedding at ``positions``."""
    return base.rotary_emb(h, positions)


def _geometry(config: Any) -> tuple[int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(config.num_key_value_heads), int(head_dim), int(config.max_position_embeddings)


def _forward(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    use_cache: bool | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    past_key_values: Any = None,
    context_length: int | None = None,
    **kwargs: Any,
) -> Any:
    """``LlamaModel.forward`` with causal QuickMerge++ inside; outputs unmerged to ``(B, N, D)``.

    Positions default to ``0..N-1`` (as ``transformers``); pass ``position_ids`` for left
    padding (``LoadedModel.generation`` counts real tokens itself).
    """
    from transformers.modeling_outputs import BaseModelOutputWithPast

    reject_unsupported(type(self).__name__, cache=cache, past_key_values=past_key_values, use_cache=use_cache,
                       output_attentions=output_attentions)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    if position_ids is None:
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
    out = run_causal(
        self, _layers(self), inputs_embeds, attention_mask, position_ids, context_length, output_hidden_states,
        self.norm, position_embed=lambda h, pos: _position_embed(self, h, pos),
    )
    return finish_output(BaseModelOutputWithPast(**out), return_dict)


LLAMA = Family(
    name="causal-lm",
    base_classes=("LlamaModel",),
    default_protect=0,
    default_mode="causal",
    layers=_layers,
    check=_check,
    attend=_attend,
    feed_forward=_feed_forward,
    forward=_forward,
    causal=CausalHooks(
        attend_kv=_attend_kv, embed=lambda base, ids, positions: base.embed_tokens(ids),
        final_norm=lambda base, h: base.norm(h), geometry=_geometry, position_embed=_position_embed,
    ),
)

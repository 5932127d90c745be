"""What the adapter needs to know about one Hugging Face model family.

A family splits each transformer layer in two — ``attend`` (attention and its residual, with
the layer's own modules) and ``feed_forward`` (the rest of the layer) — so that a merge can
sit between them, "inside the layer, after its attention". It also provides the replacement
``forward`` of the family's base model (``BertModel``, ``ViTModel``, ``GPT2Model``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Family", "AttendFn", "AttendKVFn", "CausalHooks"]

#: ``attend(layer, hidden, bias, want_probs) -> (hidden_after_attention, probs | None, keys)``
#: with ``hidden`` ``(B, M, D)``, ``bias`` ``(B, 1, 1|M, M)``, ``probs`` ``(B, H, M, M)`` and
#: ``keys`` ``(B, H, M, dh)``.
AttendFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, bool],
    tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor],
]

#: ``attend_kv(layer, hidden, bias, want_probs, pos, past) -> (hidden, probs | None, key, value)``:
#: ``attend`` that also takes the family's position embedding ``pos`` (RoPE cos/sin, or None)
#: and an optional cache ``past = (key, value)`` ``(B, H_kv, T, dh)`` the new tokens attend
#: after (``bias`` then covers ``T + M`` keys); returns the keys and values it attended over
#: (past ones first), ``(B, H_kv, T + M, dh)``, keys after RoPE.
AttendKVFn = Callable[..., tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class CausalHooks:
    """What a causal LM family adds for generation (prefill + decode over a merged cache).

    Attributes:
        attend_kv: see :data:`AttendKVFn`; the layer loop uses it instead of ``attend``.
        embed: ``embed(base, input_ids (B, M), positions (B, M)) -> (B, M, D)``.
        final_norm: ``final_norm(base, hidden) -> hidden`` (the norm before the LM head).
        geometry: ``geometry(config) -> (kv_heads, head_dim, max_positions)``.
        position_embed: ``position_embed(base, hidden, positions) -> pos`` for ``attend_kv``
            (Llama: the model's own rotary embedding's ``(cos, sin)``); None: no such input.
    """

    attend_kv: AttendKVFn
    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    final_norm: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    geometry: Callable[[Any], tuple[int, int, int]]
    position_embed: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None


@dataclass(frozen=True)
class Family:
    """One supported model family.

    Attributes:
        name: ``"encoder"``, ``"vit"`` or ``"causal-lm"`` (the ``LoadedModel.family`` value).
        base_classes: names of the base model classes the patch replaces the forward of.
        default_protect: leading tokens never merged (1 = the class token).
        default_mode: ``"global"`` or ``"causal"``.
        layers: the base model's transformer layers, in order.
        check: raise ``ValueError`` for a configuration or module layout (transformers
            version) the adapter does not cover.
        attend, feed_forward: the two halves of a layer.
        forward: the replacement ``forward(self, ...)`` of the base model.
        causal: generation hooks of a causal LM family (:class:`CausalHooks`), else None.
    """

    name: str
    base_classes: tuple[str, ...]
    default_protect: int
    default_mode: str
    layers: Callable[[nn.Module], Sequence[nn.Module]]
    check: Callable[[nn.Module], None]
    attend: AttendFn
    feed_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    forward: Callable[..., Any]
    causal: CausalHooks | None = None

"""The generation contract: what a causal LM exposes so that it can be exported as two graphs
(``prefill`` and ``decode``) over a merged KV cache, and what those graphs are called.

Every causal source (the ``causal-lm`` recipes, Hugging Face GPT-2 and Llama folders, GGUF
checkpoints) provides a :class:`GenerationModel`; everything downstream (the exporter, the
torch / ONNX Runtime / TensorRT generation runners, ``validate``, ``profile``, ``generate``) is
written against it alone.

Cache layout (one :class:`~qm_export.models.stack.LayerCache` per layer, the tokens that
layer's attention saw — merged length after a merge):

- ``key``, ``value`` ``(B, H_kv, T_l, dh)`` in the model's dtype (``H_kv`` < heads under
  grouped-query attention; Llama keys are stored *after* RoPE at their own position);
- ``positions`` ``(B, T_l)`` int64: a merged token carries its group's largest position;
- ``sizes`` ``(B, T_l)`` float32: original tokens per cached token, 0 on padding.

Positions count real tokens (left padding gets position 0 and size 0), so the position of
the first generated token is ``attention_mask.sum(1)`` and each step adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # a leaf module: the model families import the names from here
    from ..models.stack import LayerCache

__all__ = [
    "CACHE_FIELDS", "CacheSpec", "GenerationModel", "past_names", "present_names",
    "flatten_cache", "unflatten_cache", "first_positions",
]

#: per-layer cache tensors, in graph order.
CACHE_FIELDS = ("key", "value", "positions", "sizes")


def present_names(depth: int) -> tuple[str, ...]:
    """``present.{i}.{key,value,positions,sizes}`` for every layer, layer-major (ONNX Runtime
    GenAI / Optimum naming, plus our ``positions`` and ``sizes``)."""
    return tuple(f"present.{layer}.{f}" for layer in range(depth) for f in CACHE_FIELDS)


def past_names(depth: int) -> tuple[str, ...]:
    """``past_key_values.{i}.{key,value,positions,sizes}``, the decode graph's cache inputs."""
    return tuple(f"past_key_values.{layer}.{f}" for layer in range(depth) for f in CACHE_FIELDS)


def flatten_cache(layers: "list[LayerCache]") -> tuple[torch.Tensor, ...]:
    """Layer-major flat tuple in :data:`CACHE_FIELDS` order (the graphs' order)."""
    return tuple(getattr(c, f) for c in layers for f in CACHE_FIELDS)


def unflatten_cache(flat: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> "list[LayerCache]":
    """Inverse of :func:`flatten_cache`; ``len(flat)`` must be a multiple of 4."""
    if len(flat) % len(CACHE_FIELDS):
        raise ValueError(f"a flat cache has 4 tensors per layer, got {len(flat)}")
    from ..models.stack import LayerCache

    n = len(CACHE_FIELDS)
    return [LayerCache(*flat[i:i + n]) for i in range(0, len(flat), n)]


def first_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` int64: the position of the first generated token (real tokens counted)."""
    return attention_mask.to(torch.int64).sum(1, keepdim=True)


@dataclass(frozen=True)
class CacheSpec:
    """What a decode graph's cache must look like.

    Attributes:
        depth: layers (each with its own cache length).
        kv_heads, head_dim: ``H_kv`` and ``dh`` of the cached keys and values.
        vocab_size: logits width.
        max_positions: the model's context: positions ``0 .. max_positions - 1``.
        dtype: the keys' and values' dtype (the model's precision).
        eos_token_id: the end-of-sequence id, if the source has one.
    """

    depth: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    dtype: torch.dtype = torch.float32
    eos_token_id: int | None = None


@runtime_checkable
class GenerationModel(Protocol):
    """A causal LM as two pure functions over the merged cache (both under ``torch.no_grad``
    by the caller; both traceable by ``torch.onnx.export(dynamo=True)``).

    - ``prefill(input_ids, attention_mask)``: ``(B, N)`` int64 each -> ``(logits (B, vocab) of
      the token after the last real one, cache)``; the prompt is merged here (``causal`` mode).
    - ``decode(input_ids, position_ids, cache)``: ``input_ids`` ``(B, 1)`` int64, its
      ``position_ids`` ``(B, 1)`` int64 -> ``(logits (B, vocab) of the next token, the cache
      one longer per layer)``; nothing is merged. Attention over the cache adds ``log(size)``
      to each key (``-inf`` where ``size == 0``); every cached position is earlier than the
      new one, so no causal mask is needed.
    """

    spec: CacheSpec

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[LayerCache]]: ...

    def decode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: list[LayerCache]
    ) -> tuple[torch.Tensor, list[LayerCache]]: ...

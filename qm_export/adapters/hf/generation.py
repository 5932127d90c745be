"""Patched Hugging Face causal LMs (GPT-2, Llama) as a
:class:`~qm_export.generation.contract.GenerationModel`: prefill + decode over the merged cache.

``prefill`` runs the family's layers through :func:`~.runner.run_layers` with the patch's
causal QuickMerge++ schedule (no merges when the model is not patched: the baseline, same
code), collecting every layer's keys and values as its attention saw them (merged length
after a merge, Llama keys after RoPE at their own, merged positions) with positions and
sizes; it returns the next-token logits at the last real prompt token, wherever the merge
put it (``state.source``). ``decode`` runs one token per row over that cache with the size
bias ``log(size)`` (``-inf`` on padding), as the recipes' ``generate_step``.

Positions count real tokens (left padding gets position 0, size 0): a left-padded row gives
the logits of the same row without padding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...generation.contract import CacheSpec
from ...merge.indexing import batch_gather
from ...models.causal_lm import text_positions
from ...models.merging import TokenState
from ...models.schedule import MergeSchedule
from ...models.stack import LayerCache
from .patch import resolve_base
from .runner import QuickMergePatch, run_layers

__all__ = ["HFGeneration"]


class HFGeneration:
    """The generation contract of a ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` (patched with
    :func:`~.patch.apply_quickmerge` in causal mode, or not patched: no merges).

    The model is shared, not copied; the patch is looked up at every call, so
    ``apply_quickmerge`` / ``remove_quickmerge`` after construction take effect.

    Args:
        model: the LM-head model (its ``lm_head`` makes the logits).
        dtype: ``spec.dtype`` (default: the model's parameters' dtype).
        eos_token_id: ``spec.eos_token_id`` (default: the config's, if an int).
        recent: the last ``recent`` prompt tokens are never merged (a recent window: the
            prompt's first ``N - recent`` tokens merge, as the patched forward's
            ``context_length``); 0 (default): the whole prompt merges. Exact for left-padded
            or unpadded prompts (right padding would put padding in the window).
    """

    def __init__(self, model: nn.Module, *, dtype: torch.dtype | None = None, eos_token_id: int | None = None,
                 recent: int = 0) -> None:
        if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
            raise ValueError(f"recent must be an int >= 0, got {recent!r}")
        self.recent = recent
        base, family = resolve_base(model)
        if family.causal is None or base is model or not isinstance(getattr(model, "lm_head", None), nn.Module):
            raise TypeError(f"HFGeneration needs a causal LM with its head (GPT2LMHeadModel, LlamaForCausalLM), "
                            f"got {type(model).__name__}")
        self.model, self.base, self.family = model, base, family
        self.hooks = family.causal
        self.layers = family.layers(base)
        kv_heads, head_dim, max_positions = self.hooks.geometry(base.config)
        if eos_token_id is None:
            eos = getattr(base.config, "eos_token_id", None)
            eos_token_id = eos if isinstance(eos, int) else (eos[0] if isinstance(eos, (list, tuple)) and eos else None)
        self.spec = CacheSpec(
            depth=len(self.layers), kv_heads=kv_heads, head_dim=head_dim, vocab_size=int(base.config.vocab_size),
            max_positions=max_positions, dtype=dtype or next(model.parameters()).dtype, eos_token_id=eos_token_id,
        )
        self._unpatched = QuickMergePatch(
            family, MergeSchedule(mode="causal"), method="quickmerge", metric="hidden", priors={},
            generator=None, context_length=None,
        )

    def _patch(self) -> QuickMergePatch:
        patch = getattr(self.base, "quickmerge", None)
        return patch if isinstance(patch, QuickMergePatch) else self._unpatched

    def _position_embed(self, h: torch.Tensor, positions: torch.Tensor) -> Any:
        hook = self.hooks.position_embed
        return None if hook is None else hook(self.base, h, positions)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.hooks.final_norm(self.base, h))

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[LayerCache]]:
        """``(B, N)`` int64 ids and mask -> ``(logits (B, vocab), cache)``; merges the prompt."""
        mask = attention_mask != 0
        batch, n = input_ids.shape
        positions = text_positions(mask)
        h = self.hooks.embed(self.base, input_ids, positions)
        state = TokenState.initial(batch, n, h.device, mask=mask, positions=positions)
        cache: list[LayerCache] = []
        h, state, _ = run_layers(
            self._patch(), self.layers, h, state, training=False,
            context_length=max(n - self.recent, 1) if self.recent else None,
            position_embed=self._position_embed if self.hooks.position_embed is not None else None, cache=cache,
        )
        idx = torch.arange(n, device=mask.device).unsqueeze(0)
        last = torch.where(mask, idx, torch.zeros_like(idx)).amax(1, keepdim=True)  # (B, 1)
        current = torch.gather(state.source, 1, last)  # where the last real token went
        return self._logits(batch_gather(h, current)[:, 0]), cache

    def decode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: list[LayerCache]
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """``(B, 1)`` ids at ``(B, 1)`` positions -> ``(logits (B, vocab), cache one longer)``."""
        h = self.hooks.embed(self.base, input_ids, position_ids)
        pos = self._position_embed(h, position_ids)
        own = torch.zeros(h.shape[0], 1, 1, 1, dtype=torch.float32, device=h.device)
        ones = torch.ones(h.shape[0], 1, dtype=torch.float32, device=h.device)
        new: list[LayerCache] = []
        for layer, c in zip(self.layers, cache, strict=True):
            bias = torch.cat([c.bias(), own], dim=-1).to(h.dtype)
            h1, _, key, value = self.hooks.attend_kv(layer, h, bias, False, pos, (c.key, c.value))
            new.append(LayerCache(key, value, torch.cat([c.positions, position_ids], 1), torch.cat([c.sizes, ones], 1)))
            h = self.family.feed_forward(layer, h1)
        return self._logits(h[:, 0]), new

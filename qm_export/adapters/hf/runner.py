"""The layer loop of a patched model: attention, (merge), feed-forward, with the token state.

:class:`QuickMergePatch` is the small module a patch registers on the base model (as
``base.quickmerge``): the parsed schedule, the options, the priors. :func:`run_layers` is what
every family's replacement ``forward`` calls between its embeddings and its output head.

A schedule entry ``embed`` (layer ``EMBED = -1``) merges the embeddings before layer 0, with
self-similarity saliency (no attention exists yet) and the embeddings as matching features
(also for ToMe and ``metric="keys"``: there are no keys before layer 0); every layer then runs
on the merged tokens. It is no scale of a later merge's multi-scale window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...merge import QuickMergeConfig
from ...merge.indexing import running_count
from ...merge.quickmerge import MergeInfo
from ...merge.tome_export import ToMeInfo, tome_merge
from ...models.merging import TokenState, unmerge_to_input
from ...models.schedule import EMBED, MergeSchedule
from ...models.stack import LayerCache, _layer_cache
from .attention import attention_bias
from .family import Family
from .steps import causal_tome_step, quickmerge_step, tome_step

__all__ = ["QuickMergePatch", "Recorder", "RankPositions", "recording", "run_layers"]


class RankPositions(nn.Module):
    """Calls a prior with each real token's rank among the real tokens as its position.

    ``symmetric_next_embedding_loss`` packs real tokens to the front and calls the prior with
    the default positions ``0..n-1``, so at inference the prior sees the same positions it was
    trained with, whatever the padding layout, the protected tokens or earlier merges.
    """

    accepts_positions = True

    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, z: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        rank = (running_count(mask) - 1).clamp_min(0)
        if getattr(self.prior, "accepts_positions", False):
            return self.prior(z, mask, rank)
        return self.prior(z, mask)


@dataclass
class Recorder:
    """Collects what merge layers saw and did during one forward (prior fitting, export debug).

    Attributes:
        capture_layers: layers whose post-attention states are kept in ``inputs`` (any layer;
            ``EMBED`` = -1: the embeddings, before the embed merge).
        inputs: ``(layer, hidden (B, M, D), mask (B, M), positions (B, M), n_ctx)`` per capture.
        merges: ``(layer, info)`` per QuickMerge++ merge, in order (``info`` as
            :func:`quickmerge` returns it: ``assign``, ``seeds``, ``saliency``, ...), and per
            batched ToMe merge (``tome_impl="batched"``: a ``ToMeInfo``, no ``seeds``).
    """

    capture_layers: frozenset[int] = frozenset()
    inputs: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, int | None]] = field(default_factory=list)
    merges: list[tuple[int, MergeInfo | ToMeInfo]] = field(default_factory=list)


class QuickMergePatch(nn.Module):
    """State of a patch; registered on the base model as ``base.quickmerge``.

    ``method`` is ``"quickmerge"`` or ``"tome"``; ``tome_impl`` is ToMe's step: ``"rows"``
    (eager, per row: :func:`~.steps.tome_step`) or ``"batched"`` (exportable:
    :func:`~qm_export.merge.tome_export.tome_merge`); ``metric`` is ``"keys"`` (attention keys
    averaged over heads, as ToMe) or ``"hidden"``; ``priors`` maps a layer index (as a string)
    to its prior. The base model's ``training`` flag picks Gumbel (train) or deterministic
    (eval) selection.
    """

    def __init__(
        self,
        family: Family,
        plan: MergeSchedule,
        *,
        method: str,
        metric: str,
        priors: dict[int, nn.Module],
        generator: torch.Generator | None,
        context_length: int | None,
        tome_impl: str = "rows",
    ) -> None:
        super().__init__()
        self.family = family
        self.plan = plan
        self.method = method
        self.tome_impl = tome_impl
        self.metric = metric
        self.priors = nn.ModuleDict({str(layer): RankPositions(p) for layer, p in priors.items()})
        self.generator = generator
        self.context_length = context_length
        self.recorder: Recorder | None = None
        self.window_layers = _window_layers(plan)

    def extra_repr(self) -> str:
        method = f"{self.method} ({self.tome_impl})" if self.method == "tome" else self.method
        return f"family={self.family.name}, method={method}, schedule={self.plan.describe()!r}"


@contextmanager
def recording(patch: QuickMergePatch, capture_layers: frozenset[int] = frozenset()) -> Iterator[Recorder]:
    """Record what the merge layers of ``patch`` see and do during the calls in the block."""
    recorder = Recorder(capture_layers=frozenset(capture_layers))
    previous, patch.recorder = patch.recorder, recorder
    try:
        yield recorder
    finally:
        patch.recorder = previous


def _window_layers(plan: MergeSchedule) -> frozenset[int]:
    """Layers whose attention (or hidden states) feed a merge's multi-scale saliency."""
    layers: set[int] = set()
    prev = -1
    for merge in plan.merges:  # an embed merge (layer -1) has no window and leaves prev at -1
        layers.update(range(max(prev + 1, merge.layer - plan.scales + 1), merge.layer + 1))
        prev = merge.layer
    return frozenset(layers)


def _merge_step(
    patch: QuickMergePatch,
    layer: int,
    config: QuickMergeConfig,
    hidden: torch.Tensor,
    state: TokenState,
    *,
    n_ctx: int | None,
    attn: Sequence[torch.Tensor] | None,
    scales: Sequence[torch.Tensor] | None,
    metric: torch.Tensor,
    training: bool,
) -> tuple[torch.Tensor, TokenState, int | None]:
    """One merge of ``hidden`` ``(B, M, D)`` at ``layer`` (``EMBED``: the embeddings) by the
    patch's method; records it; returns ``(merged, state, n_ctx)``."""
    recorder = patch.recorder
    if recorder is not None and layer == EMBED and layer in recorder.capture_layers:
        recorder.inputs.append((layer, hidden, state.mask, state.positions, n_ctx))
    if patch.method == "tome" and config.mode == "causal":  # the causal-safe baseline (steps.py)
        hidden, state, tome_info, n_ctx = causal_tome_step(hidden, state, config, metric, n_ctx=n_ctx)
        if recorder is not None:
            recorder.merges.append((layer, tome_info))
    elif patch.method == "tome" and patch.tome_impl == "batched":
        hidden, state, tome_info = tome_merge(hidden, state, config, metric)
        if recorder is not None:
            recorder.merges.append((layer, tome_info))
    elif patch.method == "tome":
        hidden, state = tome_step(hidden, state, config, metric)
    else:
        prior = patch.priors[str(layer)] if str(layer) in patch.priors else None
        if prior is None and config.prior_weight > 0:
            config = config.replace(prior_weight=0.0)  # a layer left out of a {layer: prior} map
        hidden, state, info, n_ctx = quickmerge_step(
            hidden, state, config, n_ctx=n_ctx, attn=attn, scales=scales,
            metric=metric, prior=prior, training=training, generator=patch.generator,
        )
        if recorder is not None:
            recorder.merges.append((layer, info))
    return hidden, state, n_ctx


def run_layers(
    patch: QuickMergePatch,
    layers: Sequence[nn.Module],
    hidden: torch.Tensor,
    state: TokenState,
    *,
    training: bool,
    context_length: int | None = None,
    collect_hidden: bool = False,
    position_embed: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    cache: list[LayerCache] | None = None,
) -> tuple[torch.Tensor, TokenState, list[torch.Tensor] | None]:
    """Run ``layers`` on ``hidden`` ``(B, N, D)`` with the merges of ``patch.plan``.

    A causal LM family (``family.causal``) runs ``attend_kv`` with ``position_embed(hidden,
    state.positions)`` (recomputed after every merge: a merged token's RoPE is at its
    position); ``cache``, a list, then receives every layer's :class:`LayerCache` (the keys
    and values its attention saw, zeros on padding, with positions and sizes).

    Returns:
        ``(hidden (B, M, D), state, all_hidden)``; ``all_hidden`` (when ``collect_hidden``)
        holds the unmerged ``(B, N, D)`` input of every layer and the last output.
    """
    plan, family = patch.plan, patch.family
    causal = plan.mode == "causal"
    use_attn = plan.saliency == "attention" and patch.method == "quickmerge"
    recorder = patch.recorder
    n_ctx = context_length
    bias = attention_bias(state, causal, hidden.dtype)
    embed_config = plan.config_for(EMBED)
    if embed_config is not None:
        hidden, state, n_ctx = _merge_step(
            patch, EMBED, embed_config, hidden, state, n_ctx=n_ctx, attn=None, scales=None, metric=hidden,
            training=training,
        )
        bias = attention_bias(state, causal, hidden.dtype)
    if cache is not None and family.causal is None:
        raise ValueError(f"family {family.name!r} has no KV cache to collect")
    pos = position_embed(hidden, state.positions) if position_embed is not None else None
    all_hidden = [unmerge_to_input(hidden, state)] if collect_hidden else None
    window: list[torch.Tensor] = []
    for i, layer in enumerate(layers):
        in_window = i in patch.window_layers
        if family.causal is not None:
            h1, probs, keys, values = family.causal.attend_kv(layer, hidden, bias, in_window and use_attn, pos, None)
            if cache is not None:
                cache.append(_layer_cache(keys, values, state))
        else:
            h1, probs, keys = family.attend(layer, hidden, bias, in_window and use_attn)
        if in_window:
            window = [*window, probs if use_attn else h1][-plan.scales:]
        if recorder is not None and i in recorder.capture_layers:
            recorder.inputs.append((i, h1, state.mask, state.positions, n_ctx))
        config = plan.config_for(i)
        if config is not None:
            metric = keys.mean(1) if patch.metric == "keys" else h1
            h1, state, n_ctx = _merge_step(
                patch, i, config, h1, state, n_ctx=n_ctx,
                attn=window if use_attn else None, scales=None if use_attn else window,
                metric=metric, training=training,
            )
            window = []
            bias = attention_bias(state, causal, hidden.dtype)
            pos = position_embed(h1, state.positions) if position_embed is not None else None
        hidden = family.feed_forward(layer, h1)
        if all_hidden is not None:
            all_hidden.append(unmerge_to_input(hidden, state))
    return hidden, state, all_hidden

"""A stack of transformer layers with QuickMerge++ merges inside the scheduled layers.

Layer ``l`` runs ``attend`` (attention sub-block over the current tokens, bias from the token
state), then, if the schedule merges in ``l``, :func:`~qm_export.models.merge_step.merge_step`
on the residual stream (or, with ``method="tome"``, the ToMe baseline
:func:`~qm_export.merge.tome_export.tome_merge`, matching on the layer's keys averaged over
heads, to the same token counts), then ``feed_forward`` (MLP sub-block) on the merged tokens. Merging
between the halves lets the merge read the layer's own attention probabilities, and the MLP,
the larger half of the layer's cost, already runs on fewer tokens.

A merge on the embeddings (schedule key ``embed``, layer ``EMBED = -1``) runs before block 0
on the stack's input: QuickMerge++ with self-similarity saliency (no attention exists yet:
``quickmerge(h, attn=None, scales=None)``, spec §3's "the one scale is x") and the embeddings
as assignment metric, or ToMe matching on the embeddings; every layer then runs on the merged
tokens. It is one scale: nothing exists before layer 0, so it neither reads nor starts the
multi-scale history, and later merges' windows are those they would have without it (the
layers before them, on the merged tokens).

Shapes: ``B`` batch, ``M`` current tokens, ``D`` width, ``H`` heads, ``dh = D / H``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..merge import AutoregressivePrior, QuickMergeConfig
from ..merge.quickmerge import MergeInfo
from ..merge.tome_export import ToMeInfo, tome_merge
from .layers import Block
from .merge_step import merge_step, push_history, scale_feature
from .merging import TokenState, attention_bias, merge_tokens, real_sizes
from .schedule import EMBED, MergeSchedule

__all__ = ["LayerCache", "StackOutput", "MergingStack", "seeded", "MERGE_METHODS", "check_method"]

#: Merge methods of a stack: QuickMerge++ (the spec) or the ToMe baseline at the same counts.
MERGE_METHODS = ("quickmerge", "tome")


def check_method(method: str, schedule: MergeSchedule, *, causal: bool = False, what: str = "this model") -> None:
    """Refuse an unknown ``method``, and ToMe where it cannot run.

    ToMe's bipartite matching ignores token order (a causal-mode schedule or a ``causal``
    stack is refused), takes no prior (``prior_weight > 0`` is refused) and keeps at most one
    class token.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    if method != "tome":
        return
    if causal or schedule.mode == "causal":
        raise ValueError(
            f"method='tome' cannot merge {what}: it merges in causal mode, and ToMe's bipartite matching "
            "ignores token order (a merged token could see later tokens); use method='quickmerge'"
        )
    if float(schedule.options.get("prior_weight", 0.0)) > 0:
        raise ValueError("method='tome' takes no prior (prior_weight > 0); ToMe matches on attention keys only")
    if schedule.protect not in (0, 1):
        raise ValueError(f"method='tome' supports protect 0 or 1 (a class token), got protect={schedule.protect}")


@dataclass
class LayerCache:
    """One layer's KV cache over the tokens its attention saw.

    ``key``/``value`` ``(B, H, M, dh)``; ``positions`` ``(B, M)`` int64; ``sizes`` ``(B, M)``
    float32, original tokens per cached token (0 for padding: such a key is never attended).
    """

    key: torch.Tensor
    value: torch.Tensor
    positions: torch.Tensor
    sizes: torch.Tensor

    def bias(self) -> torch.Tensor:
        """``(B, 1, 1, M)`` key bias: ``log(size)``, ``-inf`` where ``size == 0``."""
        real = self.sizes > 0
        logs = torch.log(torch.where(real, self.sizes, torch.ones_like(self.sizes)))
        return torch.where(real, logs, torch.full_like(logs, float("-inf")))[:, None, None, :]


@dataclass
class StackOutput:
    """What :meth:`MergingStack.forward` returns.

    - ``hidden`` ``(B, M, D)`` and ``state``: the final tokens and their state.
    - ``merges``: quickmerge's info of every merge, in layer order (ToMe's
      :class:`~qm_export.merge.tome_export.ToMeInfo` with ``method="tome"``); an embed merge
      is the first.
    - ``tokens``: tokens entering each layer, then the number leaving the last (``depth + 1``);
      after an embed merge the first entry is the merged count.
    - ``cache``: per-layer :class:`LayerCache` (``collect_cache=True``), else None.
    - ``attentions``: per layer ``(probs (B, H, M, M), positions (B, M))`` when asked for.
    """

    hidden: torch.Tensor
    state: TokenState
    merges: list[MergeInfo | ToMeInfo]
    tokens: list[Any]
    cache: list[LayerCache] | None = None
    attentions: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class seeded:
    """Context manager: a forked global RNG seeded with ``seed`` (seeded random init)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._fork = torch.random.fork_rng(devices=[])

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def _layer_cache(key: torch.Tensor, value: torch.Tensor, state: TokenState) -> LayerCache:
    """The cache of one layer; padded entries hold zeros (they are never attended)."""
    real = state.mask[:, None, :, None]
    zero = torch.zeros((), dtype=key.dtype, device=key.device)
    return LayerCache(torch.where(real, key, zero), torch.where(real, value, zero), state.positions, real_sizes(state))


class MergingStack(nn.Module):
    """``depth`` :class:`Block` layers with the merges of ``schedule``.

    Args:
        dim, depth, heads, mlp_hidden, norm_first, eps: the layers' geometry.
        causal: position-based causal attention (decoder-only models).
        schedule: where and how much to merge (its ``protect``/``mode`` already set).
        prior_config: ``AutoregressivePrior`` arguments (``width``, ``layers``, ``heads``)
            for the per-merge-layer priors built when ``prior_weight > 0``.
        seed: seed of the priors' random init (the blocks use the caller's RNG).
        method: ``"quickmerge"`` (default) or ``"tome"``: ToMe merges the same layers to the
            same token counts, matching on the layer's keys averaged over heads (on the
            embeddings for an embed merge; :func:`check_method` says where it cannot run).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_hidden: int,
        *,
        norm_first: bool,
        eps: float,
        causal: bool,
        schedule: MergeSchedule,
        prior_config: Mapping[str, int] | None = None,
        seed: int = 0,
        method: str = "quickmerge",
    ) -> None:
        super().__init__()
        schedule.check_layers(depth)
        check_method(method, schedule, causal=causal)
        self.method = method
        self.causal = causal
        self.schedule = schedule
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_hidden, norm_first=norm_first, eps=eps) for _ in range(depth)
        )
        self.configs: dict[int, QuickMergeConfig] = {
            layer: cfg for layer in schedule.layers if (cfg := schedule.config_for(layer)) is not None
        }
        self.priors = nn.ModuleDict()
        if float(schedule.options.get("prior_weight", 0.0)) > 0:
            for layer in schedule.layers:
                # seed + 1 + layer; the embed merge's (layer -1) after the last layer's, apart from the model's seed
                with seeded(seed + 1 + (depth if layer == EMBED else layer)):
                    self.priors[str(layer)] = AutoregressivePrior(dim, **dict(prior_config or {}))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(
        self,
        h: torch.Tensor,
        state: TokenState,
        *,
        generator: torch.Generator | None = None,
        collect_cache: bool = False,
        collect_attentions: bool = False,
    ) -> StackOutput:
        """Run the layers on ``h`` ``(B, M, D)`` with token ``state``; merges per the schedule."""
        saliency, scales = self.schedule.saliency, self.schedule.scales
        history: list[torch.Tensor] = []
        merges: list[MergeInfo | ToMeInfo] = []
        tome = self.method == "tome"
        cache: list[LayerCache] = []
        attentions: list[tuple[torch.Tensor, torch.Tensor]] = []
        embed_cfg = self.configs.get(EMBED)
        if embed_cfg is not None:
            h, state, embed_info = self.merge_embeddings(h, state, embed_cfg, generator=generator)
            merges.append(embed_info)
        tokens: list[Any] = [h.shape[1]]
        bias = attention_bias(state, self.causal, h.dtype)
        for layer, block in enumerate(self.blocks):
            a = block.attend(h, bias)
            h = a.hidden
            if collect_cache:
                cache.append(_layer_cache(a.key, a.value, state))
            if collect_attentions:
                attentions.append((a.probs, state.positions))
            cfg = self.configs.get(layer)
            if cfg is None:
                if scales > 1 and not tome:
                    history = push_history(history, scale_feature(saliency, a.probs, h), scales)
            elif tome:
                h, state, tome_info = tome_merge(h, state, cfg, a.metric)
                merges.append(tome_info)
                bias = attention_bias(state, self.causal, h.dtype)
            else:
                prior = self.priors[str(layer)] if str(layer) in self.priors else None
                if prior is None and cfg.prior_weight > 0:  # a layer without a (fitted) prior
                    cfg = cfg.replace(prior_weight=0.0)
                h, state, info, history = merge_step(
                    h, state, cfg, saliency=saliency, probs=a.probs, metric=a.metric,
                    history=history, scales=scales, prior=prior,
                    training=self.training, generator=generator,
                )
                merges.append(info)
                bias = attention_bias(state, self.causal, h.dtype)
            h = block.feed_forward(h)
            tokens.append(h.shape[1])
        return StackOutput(
            h, state, merges, tokens,
            cache if collect_cache else None,
            attentions if collect_attentions else None,
        )

    def merge_embeddings(
        self, h: torch.Tensor, state: TokenState, cfg: QuickMergeConfig, *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, TokenState, MergeInfo | ToMeInfo]:
        """The embed merge (schedule key ``embed``): ``h`` ``(B, N, D)`` before layer 0.

        QuickMerge++ with self-similarity saliency of ``h`` (no attention exists yet), ``h``
        as the assignment metric, the state's masks/sizes/positions, the embed prior when
        ``prior_weight > 0``; or, with ``method="tome"``, ToMe matching on ``h``.
        """
        if self.method == "tome":
            return tome_merge(h, state, cfg, h)
        key = str(EMBED)
        prior = self.priors[key] if key in self.priors else None
        if prior is None and cfg.prior_weight > 0:
            cfg = cfg.replace(prior_weight=0.0)
        merged, new_state, info, _ = merge_tokens(
            h, state, cfg, attn=None, scales=None, metric=None, prior=prior,
            training=self.training, generator=generator,
        )
        return merged, new_state, info

    def decode(
        self, h: torch.Tensor, cache: list[LayerCache], positions: torch.Tensor
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """One new token per row over a (merged) cache; nothing is merged.

        Args:
            h: ``(B, 1, D)`` the new token's embedding.
            cache: one :class:`LayerCache` per layer.
            positions: ``(B, 1)`` int64 position of the new token (after every cached one).

        Returns:
            ``(hidden (B, 1, D), cache with the new token appended)``.
        """
        if len(cache) != self.depth:
            raise ValueError(f"cache has {len(cache)} layers, the model has {self.depth}")
        new_cache: list[LayerCache] = []
        own = torch.zeros(h.shape[0], 1, 1, 1, dtype=torch.float32, device=h.device)
        ones = torch.ones(h.shape[0], 1, dtype=torch.float32, device=h.device)
        for block, c in zip(self.blocks, cache):
            bias = torch.cat([c.bias(), own], dim=-1)
            a = block.attend(h, bias, past=(c.key, c.value))
            new_cache.append(LayerCache(
                a.key, a.value, torch.cat([c.positions, positions], 1), torch.cat([c.sizes, ones], 1)
            ))
            h = block.feed_forward(a.hidden)
        return h, new_cache

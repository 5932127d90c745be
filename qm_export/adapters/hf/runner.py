"""The layer loop of a patched model: attention, (merge), feed-forward, with the token state.

:class:`QuickMergePatch` is the small module a patch registers on the base model (as
``base.quickmerge``): the parsed schedule, the options, the priors. :func:`run_layers` is what
every family's replacement ``forward`` calls between its embeddings and its output head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ...merge.indexing import running_count
from ...merge.quickmerge import MergeInfo
from ...merge.tome_export import ToMeInfo, tome_merge
from ...models.merging import TokenState, unmerge_to_input
from ...models.schedule import MergeSchedule
from .attention import attention_bias
from .family import Family
from .steps import quickmerge_step, tome_step

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
        capture_layers: layers whose post-attention states are kept in ``inputs`` (any layer).
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
    for merge in plan.merges:
        layers.update(range(max(prev + 1, merge.layer - plan.scales + 1), merge.layer + 1))
        prev = merge.layer
    return frozenset(layers)


def run_layers(
    patch: QuickMergePatch,
    layers: Sequence[nn.Module],
    hidden: torch.Tensor,
    state: TokenState,
    *,
    training: bool,
    context_length: int | None = None,
    collect_hidden: bool = False,
) -> tuple[torch.Tensor, TokenState, list[torch.Tensor] | None]:
    """Run ``layers`` on ``hidden`` ``(B, N, D)`` with the merges of ``patch.plan``.

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
    all_hidden = [unmerge_to_input(hidden, state)] if collect_hidden else None
    window: list[torch.Tensor] = []
    for i, layer in enumerate(layers):
        in_window = i in patch.window_layers
        h1, probs, keys = family.attend(layer, hidden, bias, in_window and use_attn)
        if in_window:
            window = [*window, probs if use_attn else h1][-plan.scales:]
        if recorder is not None and i in recorder.capture_layers:
            recorder.inputs.append((i, h1, state.mask, state.positions, n_ctx))
        config = plan.config_for(i)
        if config is not None:
            metric = keys.mean(1) if patch.metric == "keys" else h1
            if patch.method == "tome" and patch.tome_impl == "batched":
                h1, state, tome_info = tome_merge(h1, state, config, metric)
                if recorder is not None:
                    recorder.merges.append((i, tome_info))
            elif patch.method == "tome":
                h1, state = tome_step(h1, state, config, metric)
            else:
                prior = patch.priors[str(i)] if str(i) in patch.priors else None
                if prior is None and config.prior_weight > 0:
                    config = config.replace(prior_weight=0.0)  # a layer left out of a {layer: prior} map
                h1, state, info, n_ctx = quickmerge_step(
                    h1, state, config, n_ctx=n_ctx,
                    attn=window if use_attn else None, scales=None if use_attn else window,
                    metric=metric, prior=prior, training=training, generator=patch.generator,
                )
                if recorder is not None:
                    recorder.merges.append((i, info))
            window = []
            bias = attention_bias(state, causal, hidden.dtype)
        hidden = family.feed_forward(layer, h1)
        if all_hidden is not None:
            all_hidden.append(unmerge_to_input(hidden, state))
    return hidden, state, all_hidden

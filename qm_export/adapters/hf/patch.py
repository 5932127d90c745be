"""``apply_quickmerge`` / ``remove_quickmerge``: patch a Hugging Face model in place.

The patch replaces the ``forward`` of one base-model *instance* (an instance attribute; the
class is never touched, so other instances stay as they are) and registers a small
:class:`QuickMergePatch` module as ``base.quickmerge``. No weight is copied or moved: every
parameter of the model stays the same object. ``remove_quickmerge`` deletes both again.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...models.schedule import EMBED, EMBED_KEY, layer_label, parse_schedule
from .bert import BERT
from .family import Family
from .gpt2 import GPT2
from .llama import LLAMA
from .runner import QuickMergePatch
from .vit import VIT

__all__ = ["apply_quickmerge", "remove_quickmerge", "is_patched", "resolve_base", "SUPPORTED", "DEFAULT_PRIOR_WEIGHT"]

SUPPORTED = (
    "BertModel and the BertFor* heads built on it (BERT-family encoders, e.g. all-MiniLM-L6-v2), "
    "ViTModel, ViTForImageClassification, GPT2Model, GPT2LMHeadModel, LlamaModel, LlamaForCausalLM"
)
_FAMILIES: tuple[Family, ...] = (BERT, VIT, GPT2, LLAMA)
_HEADS = {"vit": ("ViTForImageClassification",), "causal-lm": ("GPT2LMHeadModel", "LlamaForCausalLM")}
METHODS = ("quickmerge", "tome")
METRICS = ("keys", "hidden")
#: ToMe's step: per row, eager (the quality benchmark's) or batched and exportable.
TOME_IMPLS = ("rows", "batched")
#: ``prior_weight`` used when a prior is given without one.
DEFAULT_PRIOR_WEIGHT = 0.3


def _class_names(obj: object) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def resolve_base(model: nn.Module) -> tuple[nn.Module, Family]:
    """The base model whose forward is patched, and its family; ``TypeError`` if unsupported."""
    names = _class_names(model)
    for family in _FAMILIES:
        if names & set(family.base_classes):
            return model, family
        prefix = getattr(model, "base_model_prefix", None)
        inner = getattr(model, prefix, None) if isinstance(prefix, str) else None
        allowed = _HEADS.get(family.name)
        is_head = (type(model).__name__ in allowed) if allowed else type(model).__name__.startswith("BertFor")
        if inner is not None and is_head and _class_names(inner) & set(family.base_classes):
            return inner, family
    raise TypeError(f"apply_quickmerge does not support {type(model).__name__}; supported: {SUPPORTED}")


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (or its base model) carries a QuickMerge++ patch."""
    base, _ = resolve_base(model)
    return isinstance(getattr(base, "quickmerge", None), QuickMergePatch)


def _load_prior(prior: Any, dim: int, where: str) -> nn.Module:
    if isinstance(prior, (str, Path)):
        from ...priors.io import load_prior

        module = load_prior(prior)
    elif isinstance(prior, nn.Module):
        module = prior
    else:
        raise TypeError(f"{where} must be a path to a .safetensors prior or an nn.Module, got {type(prior).__name__}")
    prior_dim = getattr(module, "dim", None)
    if prior_dim is not None and prior_dim != dim:
        raise ValueError(f"{where} predicts {prior_dim}-dim tokens but the model's hidden size is {dim}")
    ref = next(module.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    try:  # a probe call: prior(Z (1, 2, D), mask (1, 2)) must return (1, 2, D)
        with torch.no_grad():
            out = module(torch.zeros(1, 2, dim, device=device), torch.ones(1, 2, dtype=torch.bool, device=device))
    except Exception as exc:  # any failure here would otherwise surface deep in a forward pass
        raise ValueError(f"{where} must be callable as prior(Z (B, N, {dim}), mask (B, N)); a probe call failed: {exc}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 2, dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{where} must return (B, N, {dim}) for Z of shape (B, N, {dim}); a probe returned {got}")
    return module


def _priors(prior: Any, layers: tuple[int, ...], dim: int) -> dict[int, nn.Module]:
    if prior is None:
        return {}
    if isinstance(prior, Mapping):
        out = {}
        for key, value in prior.items():
            layer = EMBED if key in (EMBED_KEY, EMBED) else int(key)
            if layer not in layers:
                raise ValueError(f"prior given for layer {layer_label(layer)}, which does not merge "
                                 f"(merge layers: {[layer_label(x) for x in layers]})")
            out[layer] = _load_prior(value, dim, f"prior[{key!r}]")
        return out
    module = _load_prior(prior, dim, "prior")
    return {layer: module for layer in layers}


def apply_quickmerge(
    model: nn.Module,
    schedule: Any,
    *,
    protect: int | None = None,
    mode: str | None = None,
    saliency: str = "attention",
    scales: int = 1,
    metric: str | None = None,
    method: str = "quickmerge",
    prior: Any = None,
    prior_weight: float | None = None,
    per_row_keep: bool = True,
    context_length: int | None = None,
    generator: torch.Generator | None = None,
    tome_impl: str = "rows",
    **options: Any,
) -> nn.Module:
    """Patch a supported Hugging Face model in place with QuickMerge++ and return it.

    Args:
        model: ``BertModel``/``BertFor*``, ``ViTModel``/``ViTForImageClassification``,
            ``GPT2Model``/``GPT2LMHeadModel``, ``LlamaModel``/``LlamaForCausalLM``.
        schedule: ``{layer: keep_ratio_or_keep}`` (merge inside that layer, after its
            attention; the key ``"embed"`` merges the embeddings before layer 0, with
            self-similarity saliency), a per-layer list (1.0 = no merge), a single ratio (one
            merge in layer 0), the CLI string ``"embed:0.5,1:0.5,4:0.7"`` or a
            :class:`MergeSchedule`.
        protect: leading tokens never merged (default 1 for BERT's ``[CLS]`` and ViT's class
            token, 0 for GPT-2).
        mode: ``"global"`` (default for encoders/ViT) or ``"causal"`` (required for GPT-2).
        saliency: ``"attention"`` (the host layer's attention probabilities; merge layers run
            eager attention) or ``"self"`` (self-similarity of the post-attention states).
        scales: layers feeding multi-scale saliency (the merge layer and those before it,
            back to the previous merge).
        metric: assignment (matching) features: ``"hidden"`` (the states being merged; the
            default for QuickMerge++, as in the spec) or ``"keys"`` (the layer's attention keys
            averaged over heads; the default for ToMe, as published).
        method: ``"quickmerge"`` or ``"tome"`` (the ToMe baseline, same layers and reduction;
            on a causal LM the causal-safe variant: ToMe's matching, each merged token at its
            group's largest position, several passes per layer when needed).
        prior: a fitted prior (``.safetensors`` path or module) used in every merge layer, or
            ``{layer: prior}`` (``"embed"`` or -1 for the embed merge; merge layers missing
            from it merge without prior guidance).
        prior_weight: weight of the prior's surprise (default 0.3 with a prior, else 0).
        per_row_keep: each padded row keeps as many tokens as it would alone (default True).
        context_length: causal LMs only: merge only the first tokens (a per-call ``context_length``
            keyword of the forward overrides it).
        generator: random source of the Gumbel selection in ``train()`` mode.
        tome_impl: ToMe's step (``method="tome"``): ``"rows"`` (default; eager, a loop over
            rows, each row loses exactly the real tokens QuickMerge++ removes there, at most
            half per layer) or ``"batched"`` (:func:`~qm_export.merge.tome_export.tome_merge`:
            exportable, several passes per layer when needed, ``K`` from the padded length as
            in the spec, ``per_row_keep`` not applied). Both agree on unpadded rows.
        **options: further :class:`QuickMergeConfig` fields (``tau``, ``eps``, ``sim_temp``,
            ``refine_iters``, ``high_entropy_salient``).

    Raises:
        TypeError: unsupported model class, bad option types.
        ValueError: bad schedule or option values, an already patched model.
    """
    base, family = resolve_base(model)
    if isinstance(getattr(base, "quickmerge", None), QuickMergePatch):
        raise ValueError(f"{type(model).__name__} is already patched with QuickMerge++; call remove_quickmerge() first")
    if hasattr(base, "quickmerge") or "forward" in vars(base):
        raise ValueError(f"{type(base).__name__} already has a 'quickmerge' attribute or an instance-level forward")
    family.check(base)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if metric is None:
        metric = "keys" if method == "tome" else "hidden"
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if tome_impl not in TOME_IMPLS:
        raise ValueError(f"tome_impl must be one of {TOME_IMPLS}, got {tome_impl!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    mode = family.default_mode if mode is None else mode
    if context_length is not None and family.name != "causal-lm":
        raise ValueError(f"context_length applies to causal language models only, not {type(base).__name__}")
    layers = family.layers(base)
    plan = parse_schedule(
        schedule, num_layers=len(layers),
        protect=family.default_protect if protect is None else protect, mode=mode, saliency=saliency,
        scales=scales, per_row_keep=per_row_keep, **options,
    )
    if family.default_mode == "causal" and plan.mode != "causal":
        raise ValueError(f"{type(base).__name__} is a causal model; mode must be 'causal', got {plan.mode!r}")
    if prior_weight is None:
        prior_weight = plan.options.get("prior_weight", DEFAULT_PRIOR_WEIGHT if prior is not None else 0.0)
    plan = plan.replace(options={**plan.options, "prior_weight": prior_weight})  # re-validates
    priors = _priors(prior, plan.layers, base.config.hidden_size)
    if plan.options["prior_weight"] > 0 and not priors:
        raise ValueError(f"prior_weight={prior_weight} needs a prior (prior=None)")
    if method == "tome":
        if plan.mode != "global" and family.default_mode != "causal":
            raise ValueError("the ToMe baseline supports mode='global' only")
        if plan.protect not in (0, 1):
            raise ValueError(f"the ToMe baseline supports protect 0 or 1, got {plan.protect}")
        if priors:
            raise ValueError("the ToMe baseline takes no prior")
    patch = QuickMergePatch(
        family, plan, method=method, metric=metric, priors=priors, generator=generator, context_length=context_length,
        tome_impl=tome_impl,
    )
    ref = next(base.parameters(), None)
    if ref is not None:
        patch.to(device=ref.device)
    base.add_module("quickmerge", patch)
    base.forward = types.MethodType(family.forward, base)
    return model


def remove_quickmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_quickmerge`: the model runs its own forward again. Returns ``model``."""
    base, _ = resolve_base(model)
    if not isinstance(getattr(base, "quickmerge", None), QuickMergePatch):
        raise ValueError(f"{type(model).__name__} is not patched with QuickMerge++")
    del base.quickmerge
    if "forward" in vars(base):
        del base.forward
    return model

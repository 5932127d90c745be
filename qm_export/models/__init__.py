"""Model families with QuickMerge++ inside: schedules, token state, reference models, loaders.

- :mod:`.schedule` / :mod:`.merging` / :mod:`.merge_step`: where to merge, the token state
  carried through layers, the merge step between a layer's attention and its MLP;
- :mod:`.layers` / :mod:`.stack` / :mod:`.base`: blocks, the merging layer stack, the base model;
- :mod:`.vit`, :mod:`.encoder`, :mod:`.causal_lm`, :mod:`.video`: the reference families
  (registered in :mod:`.families`);
- :mod:`.source` / :mod:`.export_view`: :func:`load_source` and the export view.
"""

from __future__ import annotations

from .base import KVCache, MergingModel, ModelOutput, TransformerConfig
from .families import FAMILIES, SIZES, build_model, family_class
from .merge_step import MergeStepOutput, carry_history, merge_step, push_history, scale_feature
from .merging import (
    TokenState,
    attention_bias,
    merge_tokens,
    proportional_bias,
    real_sizes,
    seed_index,
    unmerge_to_input,
)
from .schedule import LayerMerge, MergeSchedule, parse_schedule
from .source import LoadedModel, load_source, register_source_loader

__all__ = [
    "FAMILIES",
    "KVCache",
    "LayerMerge",
    "LoadedModel",
    "MergeSchedule",
    "MergeStepOutput",
    "MergingModel",
    "ModelOutput",
    "SIZES",
    "TokenState",
    "TransformerConfig",
    "attention_bias",
    "build_model",
    "carry_history",
    "family_class",
    "load_source",
    "merge_step",
    "merge_tokens",
    "parse_schedule",
    "proportional_bias",
    "push_history",
    "real_sizes",
    "register_source_loader",
    "scale_feature",
    "seed_index",
    "unmerge_to_input",
]

"""QuickMerge++ in PyTorch: the reference every backend must match (spec: docs/spec.md).

Read in this order: ``config`` (settings, the K rule), ``saliency`` (entropy, prior surprise),
``select`` (masses, seeds), ``assign`` (assignment, refinement), ``ops`` / ``ops_reference``
(grouping, merge, unmerge), ``quickmerge`` (the layer), ``module`` and ``prior`` (modules),
``tome`` (the ToMe baseline), ``tome_export`` (ToMe batched and exportable, at QuickMerge++'s
token counts).
"""

from __future__ import annotations

from .config import QuickMergeConfig, ratio_fraction, resolve_keep
from .module import QuickMerge
from .prior import AutoregressivePrior, symmetric_next_embedding_loss
from .quickmerge import MergeInfo, quickmerge, unmerge
from .tome import bipartite_merge
from .tome_export import ToMeInfo, tome_merge, tome_passes, tome_tokens

__all__ = [
    "AutoregressivePrior",
    "MergeInfo",
    "QuickMerge",
    "QuickMergeConfig",
    "ToMeInfo",
    "bipartite_merge",
    "quickmerge",
    "ratio_fraction",
    "resolve_keep",
    "symmetric_next_embedding_loss",
    "tome_merge",
    "tome_passes",
    "tome_tokens",
    "unmerge",
]

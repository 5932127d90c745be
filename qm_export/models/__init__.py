"""Model families with QuickMerge++ inside: schedules, token state, reference models, adapters."""

from __future__ import annotations

from .merging import TokenState, merge_tokens, proportional_bias, unmerge_to_input
from .schedule import LayerMerge, MergeSchedule, parse_schedule

__all__ = [
    "LayerMerge",
    "MergeSchedule",
    "TokenState",
    "merge_tokens",
    "parse_schedule",
    "proportional_bias",
    "unmerge_to_input",
]

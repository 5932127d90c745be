"""Opt-in recording of every merge a forward pass makes, for parity validation.

``with record_merges() as records: model(...)`` collects one :class:`MergeRecord` per
``quickmerge`` call, in call order (= merge-layer order). Nothing is recorded outside the
context or while tracing for export; the recording holds the float32 numbers the spec's
near-tie rules are judged on (saliency, entropy ranges, assignment similarities).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import QuickMergeConfig

__all__ = ["MergeRecord", "record_merges", "recording_active", "add_record"]

_ACTIVE: list[list["MergeRecord"]] = []


@dataclass
class MergeRecord:
    """One merge as torch computed it.

    Attributes:
        config: the layer's config; ``protect`` is ``P``.
        seeds: ``(B, K)`` int64 indices in the layer's input (``P + local``).
        assign: ``(B, N)`` int64 indices in the merged sequence.
        saliency: ``(B, N')`` float32 (``-1`` at padding).
        entropy_range: ``(B,)`` float32, smallest entropy range over scales.
        similarity: ``(B, N', K)`` float32, each token's similarity to each group target used by
            the final assignment (seed features, or the last refinement's centroids).
        eligible: ``(B, N', K)`` bool, which groups each token may join.
        real: ``(B, N')`` bool.
        tokens: ``(B, N', D)`` the mergeable tokens the merge received (what a prior for this
            layer reads; used by ``qm-export fit-prior``).
    """

    config: QuickMergeConfig
    seeds: torch.Tensor
    assign: torch.Tensor
    saliency: torch.Tensor
    entropy_range: torch.Tensor
    similarity: torch.Tensor
    eligible: torch.Tensor
    real: torch.Tensor
    tokens: torch.Tensor | None = None


def recording_active() -> bool:
    """True inside :func:`record_merges`."""
    return bool(_ACTIVE)


def add_record(record: MergeRecord) -> None:
    """Append ``record`` to every active recording."""
    for records in _ACTIVE:
        records.append(record)


@contextlib.contextmanager
def record_merges() -> Iterator[list[MergeRecord]]:
    """Collect a :class:`MergeRecord` for every merge run inside the block."""
    records: list[MergeRecord] = []
    _ACTIVE.append(records)
    try:
        yield records
    finally:
        _ACTIVE.remove(records)

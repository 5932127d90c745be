"""``nn.Module`` wrapper of :func:`quickmerge` for use inside models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import QuickMergeConfig
from .quickmerge import MergeInfo, quickmerge

__all__ = ["QuickMerge"]


class QuickMerge(nn.Module):
    """One QuickMerge++ layer.

    ``eval()`` gives the deterministic selection of spec §3 (what export traces); ``train()``
    the Gumbel selection of spec §4. A prior (spec §5) is used when ``prior_weight > 0``.

    Args:
        config: the layer's :class:`QuickMergeConfig`; ``**overrides`` replace its fields.
        prior: optional ``nn.Module`` called as ``prior(Z, mask)``.
    """

    def __init__(
        self, config: QuickMergeConfig | None = None, prior: nn.Module | None = None, **overrides: Any
    ) -> None:
        super().__init__()
        cfg = QuickMergeConfig() if config is None else config
        if not isinstance(cfg, QuickMergeConfig):
            raise TypeError(f"config must be a QuickMergeConfig, got {type(cfg).__name__}: {cfg!r}")
        self.config = cfg.replace(**overrides) if overrides else cfg
        self.prior = prior

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(
        self,
        x: torch.Tensor,
        *,
        attn: torch.Tensor | Sequence[torch.Tensor] | None = None,
        scales: Sequence[torch.Tensor] | None = None,
        sizes: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        metric: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, MergeInfo]:
        """Merge ``x`` ``(B, N, D)``; see :func:`quickmerge` for the arguments and outputs."""
        use_prior = self.prior is not None and self.config.prior_weight > 0
        return quickmerge(
            x,
            self.config,
            attn=attn,
            scales=scales,
            sizes=sizes,
            positions=positions,
            metric=metric,
            mask=mask,
            prior=self.prior if use_prior else None,
            training=self.training,
            generator=generator,
        )

"""``video``: a video transformer classifier over tubelets (ViViT / VideoMAE-style geometry).

A ``Conv3d`` cuts ``(B, C, T, S, S)`` clips into ``tubelet x patch x patch`` space-time
patches; then, as in :mod:`~qm_export.models.vit`: a class token (``protect=1``), learned
positions, pre-norm layers, a final norm and a linear head on the pooled token. Video has the
most redundant tokens of all families, which is where merging pays most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..merge.ops import is_exporting
from .base import MergingModel, ModelOutput, TransformerConfig
from .vit import POOLS, check_pixels, classifier_output, patch_tokens

__all__ = ["VideoConfig", "VideoTransformer", "SIZES"]


@dataclass(frozen=True)
class VideoConfig(TransformerConfig):
    """Clips of ``frames`` frames of ``image_size`` squared pixels, ``tubelet x patch_size^2`` tubelets."""

    frames: int = 16
    image_size: int = 224
    patch_size: int = 16
    tubelet: int = 2
    channels: int = 3
    num_classes: int = 400
    pool: str = "cls"
    layer_norm_eps: float = 1e-6

    def positive_ints(self) -> tuple[str, ...]:
        return super().positive_ints() + ("frames", "image_size", "patch_size", "tubelet", "channels", "num_classes")

    def validate(self) -> None:
        super().validate()
        if self.image_size % self.patch_size:
            raise ValueError(f"VideoConfig: image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if self.frames % self.tubelet:
            raise ValueError(f"VideoConfig: frames={self.frames} must be divisible by tubelet={self.tubelet}")
        if self.pool not in POOLS:
            raise ValueError(f"VideoConfig.pool must be one of {POOLS}, got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.frames // self.tubelet) * (self.image_size // self.patch_size) ** 2


SIZES = {
    "tiny": VideoConfig(frames=4, image_size=32, patch_size=8, dim=32, depth=3, heads=4, num_classes=10),
    "small": VideoConfig(frames=8, image_size=112, dim=384, depth=12, heads=6),
    "base": VideoConfig(dim=768, depth=12, heads=12),
}


class VideoTransformer(MergingModel):
    """Clip classifier; input ``pixel_values`` ``(B, C, T, S, S)``, output ``logits`` ``(B, classes)``."""

    family = "video"
    config_class = VideoConfig
    protect = 1
    mode = "global"
    norm_first = True
    input_names = ("pixel_values",)
    dynamic_sequence = False

    def _build(self) -> None:
        c = self.config
        kernel = (c.tubelet, c.patch_size, c.patch_size)
        self.patch_embed = nn.Conv3d(c.channels, c.dim, kernel_size=kernel, stride=kernel)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, c.dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, c.num_patches + 1, c.dim))

    def _build_head(self) -> None:
        c = self.config
        self.norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(
        self, pixel_values: torch.Tensor, *, generator: torch.Generator | None = None,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Classify ``pixel_values`` ``(B, C, T, S, S)``; outputs ``logits`` and ``pooled``."""
        c = self.config
        if not is_exporting():
            check_pixels(pixel_values, (c.channels, c.frames, c.image_size, c.image_size),
                         "(channels, frames, image_size, image_size)")
        tokens = patch_tokens(self.patch_embed, pixel_values.to(self.patch_embed.weight.dtype))
        return classifier_output(self, tokens, generator, output_attentions)

    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def example_inputs(self, shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(shapes["pixel_values"], generator=generator),)

"""``video``: a video transformer classifier over tubelets (ViViT / VideoMAE-style geometry).

A ``Conv3d`` cuts ``(B, C, T, S, S)`` clips into ``tubelet x patch x patch`` space-time
patches; then, as in :mod:`~qm_export.models.vit`: a class token (``protect=1``), learned
positions, pre-norm layers, a final norm and a linear head on the pooled token. Video has the
most redundant tokens of all families, which is where merging pays most.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import TransformerConfig
from .vit import POOLS, ViT

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


class VideoTransformer(ViT):
    """Clip classifier; input ``pixel_values`` ``(B, C, T, S, S)``, output ``logits`` ``(B, classes)``.

    A :class:`~qm_export.models.vit.ViT` whose patch embedding is a ``Conv3d`` over tubelets.
    """

    family = "video"
    config_class = VideoConfig

    def _patch_embedding(self) -> nn.Module:
        c = self.config
        kernel = (c.tubelet, c.patch_size, c.patch_size)
        return nn.Conv3d(c.channels, c.dim, kernel_size=kernel, stride=kernel)

    def _pixel_shape(self) -> tuple[tuple[int, ...], str]:
        c = self.config
        return (c.channels, c.frames, c.image_size, c.image_size), "(channels, frames, image_size, image_size)"

"""``vit``: a Vision Transformer image classifier with QuickMerge++ inside (timm layout).

Patch embedding (a strided conv), a class token (``protect=1``: never merged), learned
positions, pre-norm layers, a final LayerNorm, and a linear head on the pooled token: the class
token (``pool="cls"``) or the size-weighted mean of the other tokens (``pool="mean"``, so a
merged token counts as many times as the patches it stands for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..merge.ops import is_exporting
from .base import MergingModel, ModelOutput, TransformerConfig
from .merging import TokenState, real_sizes

__all__ = ["ViTConfig", "ViT", "SIZES", "patch_tokens", "size_weighted_mean"]

POOLS = ("cls", "mean")


@dataclass(frozen=True)
class ViTConfig(TransformerConfig):
    """ViT geometry: ``image_size`` square images cut into ``patch_size`` patches."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000
    pool: str = "cls"
    layer_norm_eps: float = 1e-6

    def positive_ints(self) -> tuple[str, ...]:
        return super().positive_ints() + ("image_size", "patch_size", "channels", "num_classes")

    def validate(self) -> None:
        super().validate()
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if self.pool not in POOLS:
            raise ValueError(f"ViTConfig.pool must be one of {POOLS}, got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES = {
    "tiny": ViTConfig(image_size=32, patch_size=8, dim=32, depth=4, heads=4, num_classes=10),
    "small": ViTConfig(dim=384, depth=12, heads=6),
    "base": ViTConfig(dim=768, depth=12, heads=12),
}


def patch_tokens(embed: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Conv patch embedding ``(B, C, ...) -> (B, D, ...)`` flattened to tokens ``(B, N, D)``."""
    return embed(pixels).flatten(2).transpose(1, 2)


def size_weighted_mean(h: torch.Tensor, state: TokenState, start: int = 0) -> torch.Tensor:
    """Mean of ``h[:, start:]`` ``(B, M, D)`` over original tokens: ``sum(size h) / sum(size)``.

    Padding has weight 0 and its values are never read. Returns ``(B, D)`` in ``h``'s dtype.
    """
    w = real_sizes(state)[:, start:]
    x = torch.where(state.mask[:, start:, None], h[:, start:].float(), torch.zeros((), device=h.device))
    total = (x * w.unsqueeze(-1)).sum(1)
    return (total / w.sum(1, keepdim=True).clamp_min(1e-6)).to(h.dtype)


def classifier_output(model: MergingModel, tokens: torch.Tensor, generator: torch.Generator | None,
                      output_attentions: bool) -> ModelOutput:
    """Class token + learned positions -> layers -> norm -> pooled -> ``logits`` ``(B, classes)``.

    Shared by the image and video classifiers (``model`` has ``cls_token``, ``pos_embed``,
    ``stack``, ``norm``, ``head`` and ``config.pool``).
    """
    batch = tokens.shape[0]
    cls = model.cls_token.expand(batch, -1, -1).to(tokens.dtype)
    h = torch.cat([cls, tokens], 1) + model.pos_embed.to(tokens.dtype)
    state = TokenState.initial(batch, h.shape[1], h.device)
    out = model.stack(h, state, generator=generator, collect_attentions=output_attentions)
    h = model.norm(out.hidden)
    pooled = h[:, 0] if model.config.pool == "cls" else size_weighted_mean(h, out.state, start=1)
    logits = model.head(pooled)
    return ModelOutput({"logits": logits, "pooled": pooled}, out.merges, out.tokens,
                       attentions=out.attentions)


def check_pixels(pixels: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """Eager-only shape and dtype check of an image/video input."""
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor, got {getattr(pixels, 'dtype', type(pixels).__name__)}")
    if pixels.dim() != len(expected) + 1 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"pixel_values must have shape (B, {', '.join(map(str, expected))}) {what}, got {tuple(pixels.shape)}")


class ViT(MergingModel):
    """Image classifier; input ``pixel_values`` ``(B, C, S, S)``, outputs ``logits`` ``(B, classes)``."""

    family = "vit"
    config_class = ViTConfig
    protect = 1
    mode = "global"
    norm_first = True
    input_names = ("pixel_values",)
    dynamic_sequence = False

    def _patch_embedding(self) -> nn.Module:
        c = self.config
        return nn.Conv2d(c.channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)

    def _pixel_shape(self) -> tuple[tuple[int, ...], str]:
        """The expected ``pixel_values`` shape after the batch axis, and how to name it."""
        c = self.config
        return (c.channels, c.image_size, c.image_size), "(channels, image_size, image_size)"

    def _build(self) -> None:
        c = self.config
        self.patch_embed = self._patch_embedding()
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
        """Classify ``pixel_values`` ``(B, C, S, S)`` (``(B, C, T, S, S)`` for video); outputs
        ``logits`` and ``pooled`` ``(B, D)``."""
        if not is_exporting():
            check_pixels(pixel_values, *self._pixel_shape())
        tokens = patch_tokens(self.patch_embed, pixel_values.to(self.patch_embed.weight.dtype))
        return classifier_output(self, tokens, generator, output_attentions)

    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def example_inputs(self, shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(shapes["pixel_values"], generator=generator),)

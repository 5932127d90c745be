"""The registry of reference families: name -> model class and its named sizes.

To add a family: write ``qm_export/models/<family>.py`` with a config dataclass (subclass of
:class:`~qm_export.models.base.TransformerConfig`), a ``SIZES`` dict and a
:class:`~qm_export.models.base.MergingModel` subclass, list it here, and add recipes
``models/<family>-<size>.toml``. See ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import causal_lm, encoder, video, vit
from .base import MergingModel, TransformerConfig

__all__ = ["FAMILIES", "SIZES", "family_class", "build_model"]

#: family name -> model class.
FAMILIES: dict[str, type[MergingModel]] = {
    "vit": vit.ViT,
    "encoder": encoder.TextEncoder,
    "causal-lm": causal_lm.CausalLM,
    "video": video.VideoTransformer,
}

#: family name -> size name -> config.
SIZES: dict[str, dict[str, TransformerConfig]] = {
    "vit": vit.SIZES,
    "encoder": encoder.SIZES,
    "causal-lm": causal_lm.SIZES,
    "video": video.SIZES,
}


def family_class(family: str) -> type[MergingModel]:
    """The model class of ``family``; ``ValueError`` naming the known families otherwise."""
    try:
        return FAMILIES[family]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}") from None


def build_model(
    family: str,
    config: str | TransformerConfig | Mapping[str, Any] = "tiny",
    schedule: Any = None,
    *,
    merge_options: Mapping[str, Any] | None = None,
    prior_config: Mapping[str, int] | None = None,
    seed: int = 0,
    method: str = "quickmerge",
) -> MergingModel:
    """Build a reference model (random init, seeded) in ``eval()`` mode.

    Args:
        family: ``"vit"``, ``"encoder"``, ``"causal-lm"`` or ``"video"``.
        config: a size name (``"tiny"``, ``"small"``, ``"base"``), a config, or a mapping of
            config fields.
        schedule, merge_options, prior_config, seed, method: see :class:`MergingModel`
            (``method="tome"``: the ToMe baseline at the same layers and token counts).
    """
    cls = family_class(family)
    if isinstance(config, str):
        sizes = SIZES[family]
        if config not in sizes:
            raise ValueError(f"unknown size {config!r} for family {family!r}; known: {list(sizes)}")
        config = sizes[config]
    model = cls(config, schedule, merge_options=merge_options, prior_config=prior_config, seed=seed, method=method)
    return model.eval()

"""Generation in PyTorch: the reference every runtime is compared with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .contract import GenerationModel, flatten_cache

__all__ = ["TorchGeneration"]


class TorchGeneration:
    """A :class:`~.contract.GenerationModel` as a :class:`~.loop.GenerationBackend` (numpy in and
    out; the cache stays torch tensors)."""

    name = "torch"

    def __init__(self, model: GenerationModel) -> None:
        self.model = model
        self.spec = model.spec

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, Any]:
        with torch.no_grad():
            logits, cache = self.model.prefill(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return logits.float().numpy(), cache

    def decode(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]:
        with torch.no_grad():
            logits, cache = self.model.decode(torch.from_numpy(input_ids), torch.from_numpy(position_ids), cache)
        return logits.float().numpy(), cache

    def cache_bytes(self, cache: Any) -> int:
        return sum(t.numel() * t.element_size() for t in flatten_cache(cache))

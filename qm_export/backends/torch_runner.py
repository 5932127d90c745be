"""The source model in PyTorch as a runner: the reference every other backend is judged by.

It runs :attr:`LoadedModel.export_module` (eval semantics: deterministic selection) under
:func:`~qm_export.merge.recording.record_merges`, so after each :meth:`TorchRunner.run` the
float32 numbers of every merge (saliency, similarities, entropy ranges) are available in
:attr:`TorchRunner.records` for the near-tie judgement of selection flips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..merge.recording import MergeRecord, record_merges

__all__ = ["TorchRunner", "to_torch_inputs", "to_numpy"]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 (which numpy lacks) is widened to float32 exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def to_torch_inputs(loaded: Any, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Named numpy feeds as the model's positional tensors; float inputs take the model's
    dtype (a bf16 model is fed float32 arrays, cast here).

    Raises:
        ValueError: a missing input.
    """
    missing = [n for n in loaded.input_names if n not in feeds]
    if missing:
        raise ValueError(f"inputs {missing} missing; the model takes {list(loaded.input_names)}")
    out = []
    for name, example in zip(loaded.input_names, loaded.example_inputs):
        out.append(torch.from_numpy(np.ascontiguousarray(feeds[name])).to(example.dtype))
    return tuple(out)


class TorchRunner:
    """Run a :class:`~qm_export.models.LoadedModel` (built with ``debug_outputs=True`` for
    selection parity) on numpy feeds."""

    name = "torch"

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded
        self.input_names = list(loaded.input_names)
        self.output_names = list(loaded.output_names)
        self.records: list[MergeRecord] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = to_torch_inputs(self.loaded, feeds)
        with torch.no_grad(), record_merges() as records:
            outs = self.loaded.export_module(*inputs)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        self.records = list(records)
        return {n: to_numpy(o) for n, o in zip(self.output_names, outs)}

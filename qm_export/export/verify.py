"""Parity of an exported model against torch eval on seeded inputs (library side of ``convert``).

For each input set: run torch under :func:`record_merges`, run the runtime on the debug model
(whose outputs include every merge's ``assign``/``seeds``), compare selection with the near-tie
rules of :mod:`.parity` and values with the precision's tolerance; then check that the saved
model (debug outputs stripped) gives bit-identical outputs to the verified debug model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backends import Runner
from ..merge.recording import record_merges
from .onnx_export import ExportedModel, is_debug_output
from .parity import ParityResult, compare_outputs, compare_selection

__all__ = ["VerifyReport", "verify_export", "run_torch", "to_numpy_feeds"]


@dataclass
class VerifyReport:
    """Parity of every runtime on every input set."""

    results: list[ParityResult] = field(default_factory=list)
    saved_matches_debug: bool | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and self.saved_matches_debug is not False

    def counts(self) -> dict[str, int]:
        keys = ("seed_flip_rows", "seed_near_ties", "assign_flips", "assign_near_ties",
                "consequence_flips", "degenerate_rows", "bugs")
        return {k: sum(getattr(layer, k) for r in self.results for layer in r.layers) for k in keys}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "saved_matches_debug": self.saved_matches_debug,
            "totals": self.counts(),
            "results": [r.to_json() for r in self.results],
        }


def to_numpy_feeds(names: Sequence[str], inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Torch inputs to a named numpy feed dict (bf16 has no numpy type: passed as float32 is
    wrong, so it is refused)."""
    feeds = {}
    for name, t in zip(names, inputs):
        if t.dtype == torch.bfloat16:
            raise TypeError(f"input {name!r} is bfloat16, which numpy runtimes cannot be fed")
        feeds[name] = t.detach().cpu().numpy()
    return feeds


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def run_torch(loaded: Any, inputs: Sequence[torch.Tensor]) -> tuple[dict[str, np.ndarray], list]:
    """Torch eval outputs by name and the merge records of the forward pass."""
    with torch.no_grad(), record_merges() as records:
        outs = loaded.export_module(*inputs)
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return {n: _numpy(o) for n, o in zip(loaded.output_names, outs)}, list(records)


def _layer_pairs(outputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    i = 0
    while f"merge{i}_assign" in outputs:
        pairs.append((outputs[f"merge{i}_assign"], outputs[f"merge{i}_seeds"]))
        i += 1
    return pairs


def verify_export(
    loaded: Any,
    exported: ExportedModel,
    input_sets: Sequence[Sequence[torch.Tensor]],
    runners: Sequence[Callable[[str], Runner]],
    *,
    atol: float,
    rtol: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Check ``exported`` against torch on every input set with every runner factory.

    Args:
        loaded: the model (with debug outputs) that was exported.
        exported: the export result (its ``debug_path`` is run).
        input_sets: seeded inputs, one tuple per shape.
        runners: factories ``path -> Runner`` (e.g. ``OrtRunner``).
        atol, rtol: value tolerance of the precision.
    """
    report = VerifyReport()
    names = list(loaded.input_names)
    loaded_runners = []
    for factory in runners:
        try:
            loaded_runners.append(factory(str(exported.debug_path)))
        except Exception as err:  # a runtime that cannot load the file: a finding, not a crash
            name = getattr(factory, "name", getattr(factory, "__name__", "runtime"))
            raise ValueError(f"{name} cannot load the exported model: {err}") from None
    first_outputs: dict[str, np.ndarray] | None = None
    for inputs in input_sets:
        torch_out, records = run_torch(loaded, inputs)
        feeds = to_numpy_feeds(names, inputs)
        shapes = {n: list(t.shape) for n, t in zip(names, inputs)}
        batch = int(inputs[0].shape[0])
        main_torch = {k: v for k, v in torch_out.items() if not is_debug_output(k)}
        for runner in loaded_runners:
            if progress:
                progress(f"{runner.name} on {shapes}")
            other = runner.run(feeds)
            if first_outputs is None and runner.name == "onnxruntime":
                first_outputs = other
            layers, flips, diverged = compare_selection(records, _layer_pairs(other))
            outputs = compare_outputs(main_torch, {k: v for k, v in other.items() if not is_debug_output(k)},
                                      atol=atol, rtol=rtol, exclude_rows=diverged, batch=batch)
            report.results.append(ParityResult(runner.name, shapes, layers, outputs, flips))
    if exported.path != exported.debug_path and input_sets:
        from ..backends.onnxruntime import OrtRunner

        saved = OrtRunner(exported.path).run(to_numpy_feeds(names, input_sets[0]))
        if first_outputs is None:
            first_outputs = OrtRunner(exported.debug_path).run(to_numpy_feeds(names, input_sets[0]))
        report.saved_matches_debug = all(
            np.array_equal(saved[k], first_outputs[k], equal_nan=True) for k in saved
        )
    return report

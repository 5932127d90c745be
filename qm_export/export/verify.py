"""Parity of an exported model against torch eval on seeded inputs (library side of ``convert``).

The comparison itself is :func:`qm_export.validate.compare.compare_backends` (the same code
``qm-export validate`` runs): torch under :func:`record_merges` as the reference, each runtime
on the debug model (whose outputs include every merge's ``assign``/``seeds``), selection judged
with the near-tie rules of :mod:`.parity`, values with the precision's tolerance. Then the saved
model (debug outputs stripped) must give bit-identical outputs to the verified debug model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Runner
from ..backends.torch_runner import TorchRunner, to_numpy
from .onnx_export import ExportedModel
from .parity import NEAR_TIE, ParityResult

__all__ = ["VerifyError", "VerifyReport", "verify_export", "run_torch", "to_numpy_feeds"]


class VerifyError(RuntimeError):
    """A runtime could not load or run the exported model: a failure the check found (the
    CLI exits 1), not a bad input."""


@dataclass
class VerifyReport:
    """Parity of every runtime on every input set."""

    results: list[ParityResult] = field(default_factory=list)
    saved_matches_debug: bool | None = None
    near_tie: float = NEAR_TIE

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and self.saved_matches_debug is not False

    def counts(self) -> dict[str, int]:
        keys = ("seed_flip_rows", "seed_near_ties", "assign_flips", "assign_near_ties",
                "consequence_flips", "degenerate_rows", "bugs")
        return {k: sum(getattr(layer, k) for r in self.results for layer in r.layers) for k in keys}

    def not_compared(self) -> list[str]:
        """``"runtime at BxS"`` for each run whose values were not compared at all (every row
        left out for a near-tie flip or a degenerate row: it passed on selection alone)."""
        return [f"{r.backend} at {r.input_label}" for r in self.results if not r.values_compared]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "near_tie": self.near_tie,
            "values_compared": not self.not_compared(),
            "values_not_compared": self.not_compared(),
            "saved_matches_debug": self.saved_matches_debug,
            "totals": self.counts(),
            "results": [r.to_json() for r in self.results],
        }


def to_numpy_feeds(names: Sequence[str], inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Torch inputs to a named numpy feed dict; bfloat16 (which numpy lacks) is widened to
    float32 exactly, what a bf16 model's float32 upcast twin takes."""
    return {name: to_numpy(t) for name, t in zip(names, inputs)}


def run_torch(loaded: Any, inputs: Sequence[torch.Tensor]) -> tuple[dict[str, np.ndarray], list]:
    """Torch eval outputs by name and the merge records of the forward pass."""
    runner = TorchRunner(loaded)
    outs = runner.run({n: to_numpy(t) for n, t in zip(loaded.input_names, inputs)})
    return outs, runner.records


def verify_export(
    loaded: Any,
    exported: ExportedModel,
    input_sets: Sequence[Sequence[torch.Tensor]],
    runners: Sequence[Callable[[str], Runner]],
    *,
    atol: float,
    rtol: float = 0.0,
    near_tie: float = NEAR_TIE,
    progress: Callable[[str], None] | None = None,
    upcast: bool = False,
) -> VerifyReport:
    """Check ``exported`` against torch on every input set with every runner factory.

    Args:
        loaded: the model (with debug outputs) that was exported.
        exported: the export result (its ``debug_path`` is run).
        input_sets: seeded inputs, one tuple per shape.
        runners: factories ``path -> Runner`` (e.g. ``OrtRunner``).
        atol, rtol: value tolerance of the precision; near_tie: its ``δ``.
        upcast: run the float32 upcast twins of the files (a bfloat16 export, see
            :mod:`.upcast`), the debug model and the saved one alike.

    Raises:
        VerifyError: a runtime cannot load or run the exported model.
    """
    with tempfile.TemporaryDirectory(prefix="qm-verify-") as tmp:
        debug_path, saved_path = exported.debug_path, exported.path
        if upcast:
            from .upcast import write_upcast

            debug_path = write_upcast(exported.debug_path, tmp, "debug")
            saved_path = debug_path if exported.path == exported.debug_path else write_upcast(exported.path, tmp, "saved")
        return _verify(loaded, debug_path, saved_path, input_sets, runners, atol=atol, rtol=rtol,
                       near_tie=near_tie, progress=progress)


def _verify(loaded: Any, debug_path: Path, saved_path: Path, input_sets: Sequence[Sequence[torch.Tensor]],
            runners: Sequence[Callable[[str], Runner]], *, atol: float, rtol: float, near_tie: float,
            progress: Callable[[str], None] | None) -> VerifyReport:
    from ..backends.onnxruntime import OrtRunner
    from ..validate.compare import compare_backends

    report = VerifyReport(near_tie=near_tie)
    names = list(loaded.input_names)
    loaded_runners = []
    for factory in runners:
        try:
            loaded_runners.append(factory(str(debug_path)))
        except Exception as err:  # a runtime that cannot load the file: a finding, not a crash
            name = getattr(factory, "name", getattr(factory, "__name__", "runtime"))
            raise VerifyError(f"{name} cannot load the exported model: {err}") from None
    feeds = [to_numpy_feeds(names, inputs) for inputs in input_sets]
    comp = compare_backends(TorchRunner(loaded), loaded_runners, feeds, near_tie=near_tie, atol=atol, rtol=rtol,
                            progress=progress, keep_outputs=True)
    if comp.failures:
        name, why = next(iter(comp.failures.items()))
        raise VerifyError(f"{name} failed to run the exported model: {why}")
    report.results = comp.results
    if saved_path != debug_path and feeds:
        saved = OrtRunner(saved_path).run(feeds[0])
        first = comp.outputs.get("ort", [None])[0]
        if first is None:
            first = OrtRunner(debug_path).run(feeds[0])
        report.saved_matches_debug = all(np.array_equal(saved[k], first[k], equal_nan=True) for k in saved)
    return report

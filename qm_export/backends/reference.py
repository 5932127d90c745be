"""The ONNX reference evaluator (``onnx.reference``): an independent, slow implementation."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ReferenceRunner"]


class ReferenceRunner:
    """Run an ONNX file with ``onnx.reference.ReferenceEvaluator`` (model-local functions included)."""

    name = "onnx-reference"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(os.fspath(path))
        self.evaluator = ReferenceEvaluator(model)
        self.input_names = [i.name for i in model.graph.input]
        self.output_names = [o.name for o in model.graph.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.evaluator.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))

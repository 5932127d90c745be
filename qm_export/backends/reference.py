"""The ONNX reference evaluator (``onnx.reference``): an independent, slow implementation."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ReferenceRunner"]


def _gather_elements_op() -> type:
    """``GatherElements`` with ``np.take_along_axis``: onnx's own uses ``np.choose``, which
    fails on axes longer than 64 ("Need at least 0 and at most 64 array objects")."""
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        def _run(self, data, indices, axis=None):  # type: ignore[no-untyped-def]
            axis = 0 if axis is None else int(axis)
            idx = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, idx, axis=axis),)

    return GatherElements


class ReferenceRunner:
    """Run an ONNX file with ``onnx.reference.ReferenceEvaluator`` (model-local functions included)."""

    name = "onnx-ref"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import onnx
        import onnx.inliner
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(os.fspath(path))
        # Local functions run in nested evaluators that would not see ``new_ops``: inline them
        # (the same ops, so the same semantics).
        model = onnx.inliner.inline_local_functions(model)
        self.evaluator = ReferenceEvaluator(model, new_ops=[_gather_elements_op()])
        self.input_names = [i.name for i in model.graph.input]
        self.output_names = [o.name for o in model.graph.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.evaluator.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))

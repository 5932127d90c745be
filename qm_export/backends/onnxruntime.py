"""ONNX Runtime runner (CPU by default; CUDA when ``onnxruntime-gpu`` is installed and asked for).

Polygraphy's ``OnnxrtRunner`` would fit, but it adds nothing here (no dynamic-shape or
allocation work to hand off: ORT does both) and costs its logger and activation protocol on
every call; the CUDA runner (:mod:`.ort_cuda`) needs the raw session for its placement check.
Polygraphy is used where it is the tool of the field: TensorRT (:mod:`.tensorrt`) and the
``RunResults`` file format (:mod:`.run_results`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["OrtRunner"]


class OrtRunner:
    """Run an ONNX file with ONNX Runtime.

    Args:
        path: the ``.onnx`` file (external data next to it is found by ORT).
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        threads: intra-op threads (default: ORT's choice).
    """

    name = "ort"

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.fspath(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))

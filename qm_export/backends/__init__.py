"""Runtimes behind one small interface: ``Runner.run(feeds) -> outputs`` (numpy in, numpy out).

``onnxruntime`` and the ONNX reference evaluator run here; ``tensorrt`` imports TensorRT lazily.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Runner"]


class Runner(Protocol):
    """A loaded model that maps named numpy inputs to named numpy outputs."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` holds every input by name; returns every output by name."""
        ...

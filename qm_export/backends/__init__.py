"""Runtimes behind one small interface: ``Runner.run(feeds) -> outputs`` (numpy in, numpy out).

| name | runtime | module |
| --- | --- | --- |
| ``torch`` | the source model in PyTorch (eval semantics, merges recorded) | :mod:`.torch_runner` |
| ``ort`` | ONNX Runtime, CPU execution provider | :mod:`.onnxruntime` |
| ``ort-cuda`` | ONNX Runtime, CUDA execution provider (``onnxruntime-gpu``) | :mod:`.ort_cuda` |
| ``trt`` | a TensorRT engine (Polygraphy's ``TrtRunner``), qm plugins registered | :mod:`.tensorrt` |
| ``onnx-ref`` | ``onnx.reference``, an independent and slow implementation | :mod:`.reference` |

Every runtime is imported lazily, inside :func:`open_runner`. A runtime whose package or
device is missing raises :class:`BackendUnavailable` with a sentence saying why, which the
commands report as *skipped* instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Runner",
    "BackendUnavailable",
    "BACKENDS",
    "ONNX_BACKENDS",
    "parse_backends",
    "open_runner",
]

#: Every backend name, in the order reports list them.
BACKENDS = ("torch", "ort", "ort-cuda", "trt", "onnx-ref")
#: Backends that run an ONNX file (``trt`` runs an engine, or builds one from an ONNX file).
ONNX_BACKENDS = ("ort", "ort-cuda", "onnx-ref")


class Runner(Protocol):
    """A loaded model that maps named numpy inputs to named numpy outputs."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` holds every input by name; returns every output by name."""
        ...


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (package or device missing); ``why`` says which."""

    def __init__(self, backend: str, why: str) -> None:
        super().__init__(f"{backend}: {why}")
        self.backend = backend
        self.why = why


def parse_backends(text: str | Sequence[str]) -> list[str]:
    """``"ort,onnx-ref"`` (or a list) -> ``["ort", "onnx-ref"]``, duplicates dropped.

    Raises:
        ValueError: an empty list or an unknown name (the message lists the known ones).
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for raw in items:
        name = str(raw).strip()
        if not name:
            continue
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no backend given; known: {', '.join(BACKENDS)}")
    return names


def open_runner(name: str, model: str | os.PathLike[str] | None = None, *, loaded: Any = None,
                threads: int | None = None) -> Runner:
    """Load ``model`` (an ``.onnx`` file, or an engine for ``trt``) in backend ``name``.

    Args:
        name: one of :data:`BACKENDS`.
        model: the file to run (not used by ``torch``).
        loaded: the source model (:class:`~qm_export.models.LoadedModel`) for ``torch``.
        threads: intra-op threads for the CPU runtimes (default: the runtime's choice).

    Raises:
        BackendUnavailable: the runtime's package or device is missing.
        ValueError: an unknown name, or a missing ``model``/``loaded``.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "torch":
        if loaded is None:
            raise ValueError("the torch backend needs the source model (loaded=...)")
        from .torch_runner import TorchRunner

        return TorchRunner(loaded)
    if model is None:
        raise ValueError(f"backend {name!r} needs a model file")
    if name == "ort":
        from .onnxruntime import OrtRunner

        return OrtRunner(model, threads=threads)
    if name == "onnx-ref":
        from .reference import ReferenceRunner

        return ReferenceRunner(model)
    if name == "ort-cuda":
        from .ort_cuda import OrtCudaRunner

        return OrtCudaRunner(model, threads=threads)
    from .tensorrt import TrtRunner

    return TrtRunner(model)

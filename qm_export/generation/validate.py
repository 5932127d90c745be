"""``validate`` of a generation folder: generation parity on every runtime that is present.

The prefill graph is validated as any model (selection per merge layer, values); this adds
greedy generation over both graphs, teacher-forced on torch's tokens (:mod:`.parity`), on
each runtime: ``ort`` (CPU), ``ort-cuda`` and ``trt`` when present, each else reported
skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .folder import GenerationFolder

__all__ = ["GENERATION_BACKENDS", "validate_generation", "open_generation_backend", "summarise"]

GENERATION_BACKENDS = ("ort", "ort-cuda", "trt")


class Skipped(Exception):
    """A runtime that is not present (its package or device), with why."""


def open_generation_backend(name: str, folder: GenerationFolder, threads: int | None = None) -> Any:
    """The :class:`~.loop.GenerationBackend` ``name`` over ``folder``.

    Raises:
        Skipped: the runtime is not installed / has no device.
        ValueError: unknown name, or graphs that do not form one model.
    """
    if name == "ort":
        from .ort_backend import OrtGeneration

        return OrtGeneration(folder, threads=threads)
    if name == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skipped("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
        from .ort_backend import OrtGeneration

        backend = OrtGeneration(folder, providers=["CUDAExecutionProvider"], threads=threads)
        backend.name = "ort-cuda"
        return backend
    if name == "trt":
        from .trt_backend import TrtGeneration, trt_unavailable

        why = trt_unavailable(folder)
        if why is not None:
            raise Skipped(why)
        return TrtGeneration(folder)
    raise ValueError(f"--backends: unknown generation backend {name!r}; known: {', '.join(GENERATION_BACKENDS)}")


def summarise(steps: int, results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    """The report's ``generation`` entry: totals over the runtimes that ran, and each one."""
    ran = list(results.values())
    return {
        "steps": steps,
        "identical": bool(ran) and all(r["identical"] for r in ran),
        "near_ties": sum(r["near_ties"] for r in ran),
        "bugs": sum(r["bugs"] for r in ran),
        "ok": bool(ran) and all(r["ok"] for r in ran),
        "backends": results,
        "skipped": skipped,
    }


def validate_generation(folder: GenerationFolder, loaded: Any, prompt: Sequence[Any], *, steps: int,
                        atol: float, rtol: float, backends: Sequence[str] | None = None, threads: int | None = None,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generation parity of ``folder`` against ``loaded.generation`` (torch) for ``steps``
    greedy steps from ``prompt`` (ids, mask tensors or arrays); see :func:`summarise`."""
    import numpy as np

    from .parity import compare_generation
    from .torch_backend import TorchGeneration

    import tempfile

    from .folder import upcast_folder

    say = progress or (lambda _msg: None)
    ids, mask = (np.asarray(t) for t in prompt[:2])
    upcast = None
    if str(folder.spec.dtype) == "torch.bfloat16":  # ORT's CPU provider has no bfloat16 kernels
        upcast = tempfile.TemporaryDirectory(prefix="qm-export-upcast-")
        say("bf16: writing the float32 upcast twins of both graphs")
        cpu_folder = upcast_folder(folder, upcast.name)
    else:
        cpu_folder = folder
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    reference = TorchGeneration(loaded.generation)
    for name in backends or GENERATION_BACKENDS:
        if name not in GENERATION_BACKENDS:
            continue
        try:
            runtime = open_generation_backend(name, cpu_folder if name == "ort" else folder, threads)
        except Skipped as why:
            skipped[name] = str(why)
            continue
        done = [0]

        def step(_t: int, name: str = name) -> None:
            done[0] += 1
            say(f"generation on {name}: {done[0]}/{2 * steps} steps (torch, then {name})")

        results[name] = compare_generation(reference, runtime, ids, mask, steps=steps, atol=atol, rtol=rtol,
                                           on_step=step).to_json()
        results[name]["upcast"] = upcast is not None and name == "ort"
    if upcast is not None:
        upcast.cleanup()
    return summarise(steps, results, skipped)

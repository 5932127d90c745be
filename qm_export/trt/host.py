"""What ``qm-export build`` checks of the machine before TensorRT builds anything.

Each check fails with a :class:`BuildError` of one line naming what is missing, instead of a
traceback or TensorRT's "failed to build the engine" after minutes:

- a CUDA device visible to the driver (ctypes on ``libcuda``, not torch, whose CPU builds and
  too-new CUDA builds report none);
- for models with qm nodes: the AOT kernel target (compute capability, capped PTX version),
  which is also what the sidecar records. No host C compiler is needed: the AOT kernels are
  compiled with an explicit target, which never starts Triton's driver layer (the part that
  compiles C); ``tests/test_plugin_ptx.py`` compiles them with no compiler on ``PATH``;
- ``trt.Builder(logger)`` itself, which raises ``TypeError: ... factory function returned
  nullptr`` when the driver is too old for this TensorRT.
"""

from __future__ import annotations

from typing import Any

from .prepare import BuildError

__all__ = ["check_cuda_device", "aot_kernel_target", "create_builder", "one_line"]


def one_line(text: object) -> str:
    """``text`` as one line: whitespace runs (newlines included) become single spaces."""
    return " ".join(str(text).split())


def check_cuda_device() -> dict[str, Any]:
    """Device 0 as the CUDA driver sees it: ``{"name", "compute_capability", "driver_cuda"}``.

    Raises:
        BuildError: no NVIDIA driver, or it sees no CUDA device (the message says which).
    """
    from qm_export_plugins.cuda import CudaUnavailable, query_device

    try:
        device = query_device()
    except CudaUnavailable as exc:
        raise BuildError(f"qm-export build needs a CUDA GPU: {one_line(exc)}") from None
    return {"name": device.name, "compute_capability": f"{device.cc // 10}.{device.cc % 10}",
            "driver_cuda": device.driver_cuda}


def aot_kernel_target() -> dict[str, Any]:
    """The target and PTX version the qm AOT kernels are compiled for (the sidecar's record).

    Raises:
        BuildError: no CUDA device, triton missing, or a GPU the PTX table does not know.
    """
    try:
        from qm_export_plugins.aot import kernel_target
        from qm_export_plugins.cuda import CudaUnavailable

        return kernel_target().as_dict()
    except CudaUnavailable as exc:
        raise BuildError(f"qm-export build needs a CUDA GPU: {one_line(exc)}") from None
    except ImportError as exc:
        raise BuildError(f"the qm AOT kernels need triton ({one_line(exc)}); pip install 'qm-export[trt]'") from None
    except ValueError as exc:
        raise BuildError(f"the qm AOT kernels cannot target this GPU: {one_line(exc)}") from None


def create_builder(trt: Any, logger: Any) -> Any:
    """``trt.Builder(logger)``, or a :class:`BuildError` naming the likely cause.

    Raises:
        BuildError: TensorRT could not create a builder (its message kept, on one line).
    """
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:
        raise BuildError(
            f"TensorRT {getattr(trt, '__version__', '?')} could not create a builder ({one_line(exc)}): "
            "the NVIDIA driver is likely too old for this TensorRT, or no GPU is usable; "
            "check nvidia-smi and TensorRT's support matrix"
        ) from None
    if builder is None:
        raise BuildError("TensorRT returned no builder: the NVIDIA driver is likely too old for this TensorRT")
    return builder

"""Compile a ``qm`` kernel ahead of time for a TensorRT AOT plugin (needs triton, not TensorRT).

``compile_kernel`` turns the same ``@triton.jit`` function the torch launcher uses into PTX
with ``triton.compiler.ASTSource`` + ``triton.compile`` (triton 3.8: dict signatures keyed by
argument name). Without ``target`` it compiles for CUDA device 0 as the driver reports it
(:func:`kernel_target`, ctypes on ``libcuda``; never Triton's driver layer, which follows torch
and needs a host C compiler), at the PTX ISA version that driver loads (:mod:`.ptx`), and
emits the plain ``.target sm_XX`` rather than Triton's arch-specific ``sm_XXa``.

Triton appends hidden ``global_scratch`` / ``profile_scratch`` pointer parameters to every
kernel; TensorRT passes only inputs, scalars and outputs. A kernel that would use either
buffer is refused, and :func:`trim_entry_params` removes the (then unreferenced) hidden
parameters from the PTX entry, so the PTX declares exactly the arguments TensorRT passes
instead of relying on the driver reading past TensorRT's argument array.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .cuda import query_device
from .ptx import capped_ptx_version, driver_ptx_version, plain_target, ptx_version_text
from .specs import KERNEL_NAMES, aot_attrs, launch_arg_count, launch_config, triton_signature

__all__ = ["CompiledKernel", "KernelTarget", "compile_kernel", "jit_function", "kernel_target",
           "triton_ptx_version", "trim_entry_params"]

_PARAM_NAME = re.compile(r"([A-Za-z_$][\w$]*)\s*$")


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel ready for ``KernelLaunchParams``.

    Attributes:
        name: PTX entry name.
        ptx: PTX text.
        block_x: threads per program (``32 * num_warps``).
        shared_mem: dynamic shared memory in bytes.
    """

    name: str
    ptx: str
    block_x: int
    shared_mem: int


@dataclass(frozen=True)
class KernelTarget:
    """What the AOT kernels are compiled for on this machine.

    Attributes:
        cc: compute capability of CUDA device 0 (``90`` = sm_90).
        ptx_version: the PTX ISA version compiled for (``84`` = 8.4), :func:`ptx.capped_ptx_version`.
        triton_ptx_version: what Triton would have stamped (its bundled ``ptxas``).
        driver_cuda: the CUDA version of the driver (``"12.4"``).
        device: the device name.
    """

    cc: int
    ptx_version: int
    triton_ptx_version: int
    driver_cuda: str
    device: str

    def as_dict(self) -> dict[str, Any]:
        """The sidecar's record: ``{"target": "sm_90", "ptx_version": "8.4", ...}``."""
        return {
            "target": f"sm_{self.cc}",
            "ptx_version": ptx_version_text(self.ptx_version),
            "triton_ptx_version": ptx_version_text(self.triton_ptx_version),
            "driver_cuda": self.driver_cuda,
            "device": self.device,
        }


def triton_ptx_version(cc: int) -> int:
    """The PTX ISA version Triton stamps for ``cc`` by default: that of the ``ptxas`` it ships."""
    from triton.backends.nvidia.compiler import get_ptxas, ptx_get_version

    return int(ptx_get_version(get_ptxas(cc).version))


@functools.lru_cache(maxsize=1)
def kernel_target() -> KernelTarget:
    """Device 0's compute capability and the PTX version its driver loads (asked once per process).

    Raises:
        cuda.CudaUnavailable: no NVIDIA driver or no visible CUDA device (the message says which).
        ValueError: a compute capability the PTX table does not know.
    """
    device = query_device()
    default = triton_ptx_version(device.cc)
    ptx = capped_ptx_version(default, driver_ptx_version(device.driver_version), device.cc)
    return KernelTarget(device.cc, ptx, default, device.driver_cuda, device.name)


def jit_function(op: str):
    """The plugin's kernel, the ``JITFunction`` the torch launcher uses too.

    Raises:
        RuntimeError: triton was imported with ``TRITON_INTERPRET=1`` (its library functions
            are then interpreter objects that cannot be compiled).
    """
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    from qm_export.kernels import triton_kernels

    kernel = getattr(triton_kernels, KERNEL_NAMES[op])
    if not isinstance(kernel, JITFunction) or not isinstance(tl.cdiv, JITFunction):
        raise RuntimeError(
            "triton was imported with TRITON_INTERPRET=1: kernels cannot be compiled ahead of time "
            "in this process (unset TRITON_INTERPRET before importing triton)"
        )
    return kernel


def compile_kernel(
    op: str,
    dtypes: Sequence[str],
    shapes: Sequence[Sequence[Any]],
    *,
    target: Any = None,
    ptx_version: int | None = None,
) -> CompiledKernel:
    """Compile the kernel of plugin ``op`` for I/O dtypes ``dtypes`` (``trt.DataType`` names).

    ``shapes`` are the input shapes (shape expressions or ints): they choose the constexprs
    (static dims only) through :func:`specs.launch_config`. ``target`` is a
    ``triton.backends.compiler.GPUTarget``; without it, :func:`kernel_target` (device 0, and
    its capped PTX version unless ``ptx_version`` is given). ``ptx_version`` (``84`` = 8.4)
    defaults, with an explicit ``target``, to Triton's own. The PTX names the plain target.

    Raises:
        RuntimeError: the compiled kernel needs global or profile scratch memory.
        cuda.CudaUnavailable: no ``target`` and no CUDA device visible to the driver.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    if target is None:
        chosen = kernel_target()
        target = GPUTarget("cuda", chosen.cc, 32)
        ptx_version = chosen.ptx_version if ptx_version is None else ptx_version

    from qm_export.kernels.config import static_dim

    cfg = launch_config(op, shapes)
    fn = jit_function(op)
    signature = triton_signature(op, dtypes, tuple(cfg.constexprs))
    d_static = static_dim(shapes[0][2]) if op != "TokenGroupIndex" else None
    src = triton.compiler.ASTSource(
        fn=fn, signature=signature, constexprs=cfg.constexprs, attrs=aot_attrs(op, d_static)
    )
    options: dict[str, Any] = {"num_warps": cfg.num_warps}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(src, target=target, options=options)
    meta = compiled.metadata
    scratch = {k: getattr(meta, k, 0) for k in ("global_scratch_size", "profile_scratch_size")}
    if any(scratch.values()):
        raise RuntimeError(f"{op}: compiled kernel needs scratch memory TensorRT does not provide: {scratch}")
    ptx = plain_target(trim_entry_params(compiled.asm["ptx"], meta.name, launch_arg_count(op)))
    return CompiledKernel(meta.name, ptx, meta.num_warps * 32, meta.shared)


def trim_entry_params(ptx: str, entry: str, keep: int) -> str:
    """``ptx`` with the parameters of ``.entry entry`` after the first ``keep`` removed.

    Only parameters the PTX never references may go: Triton's hidden scratch pointers of a
    kernel whose scratch sizes are 0.

    Raises:
        RuntimeError: no such entry, fewer than ``keep`` parameters, or a parameter to drop
            is referenced in the PTX.
    """
    head = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\(", ptx)
    if head is None:
        raise RuntimeError(f"PTX has no .entry {entry!r}")
    close = ptx.find(")", head.end())
    if close < 0:
        raise RuntimeError(f"PTX .entry {entry!r} has no closing parenthesis")
    params = [p for p in ptx[head.end() : close].split(",") if p.strip()]
    if len(params) < keep:
        raise RuntimeError(f"PTX .entry {entry!r} declares {len(params)} parameters, TensorRT passes {keep}")
    body = ptx[:head.start()] + ptx[close:]
    for extra in params[keep:]:
        name = _PARAM_NAME.search(extra)
        if name is None or re.search(r"\b" + re.escape(name.group(1)) + r"\b", body):
            raise RuntimeError(
                f"PTX .entry {entry!r}: parameter {extra.strip()!r} beyond the {keep} TensorRT passes is used"
            )
    kept = ",".join(params[:keep])
    return ptx[: head.end()] + kept + ("\n" if keep and not kept.endswith("\n") else "") + ptx[close:]

"""Launch a TensorRT plugin's AOT kernel (its PTX) with CuPy, the way TensorRT launches it.

Used by ``gpu_kernel_check.py`` (correctness) and ``bench_kernels.py`` (the ``triton_aot``
rows). The kernel is what ``aot_impl`` hands TensorRT: ``plugins.aot.compile_kernel`` for this
GPU, loaded through the CUDA driver from PTX, launched with the grid / block / shared memory
of ``specs.launch_config`` and exactly TensorRT's arguments (input pointers, int32 scalars,
output pointers). Needs CuPy and a CUDA device.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
#: ``trt.DataType`` member name -> torch dtype, for the plugins' I/O types.
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64}


def import_plugins():
    """``qm_export_plugins``, or the repository's ``plugins/`` under that name when not installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import qm_export_plugins
    except ImportError:
        sys.modules["qm_export_plugins"] = importlib.import_module("plugins")
        sys.modules["qm_export_plugins.aot"] = importlib.import_module("plugins.aot")
        import qm_export_plugins
    return qm_export_plugins


class AotLaunch:
    """One plugin kernel compiled for this GPU, bound to fixed tensors: ``launch()`` runs it.

    Args:
        op: plugin name (``TokenMerge`` ...).
        inputs: the node's input tensors, in node order (CUDA, contiguous).
        outputs: preallocated output tensors.
    """

    def __init__(self, op: str, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]):
        import cupy as cp
        import numpy as np

        qp = import_plugins()
        from qm_export_plugins.aot import compile_kernel

        names = {dtype: name for name, dtype in TORCH_DTYPES.items()}
        shapes = [tuple(t.shape) for t in inputs]
        self.kernel = compile_kernel(op, [names[t.dtype] for t in (*inputs, *outputs)], shapes)
        self.grid = tuple(int(g) for g in qp.launch_config(op, shapes).grid)
        args = [*inputs, *qp.scalar_args(op, shapes), *outputs]
        if len(args) != qp.launch_arg_count(op):
            raise AssertionError(f"{op}: {len(args)} arguments, TensorRT passes {qp.launch_arg_count(op)}")
        self.args = tuple(
            cp.asarray(v.view(torch.int16) if v.dtype in (torch.float16, torch.bfloat16) else v)
            if isinstance(v, torch.Tensor)
            else np.int32(v)
            for v in args
        )
        fd, path = tempfile.mkstemp(suffix=".ptx")
        with os.fdopen(fd, "w") as f:
            f.write(self.kernel.ptx)
        try:
            self.module = cp.RawModule(path=path)  # the driver JIT-compiles the PTX, as in TensorRT
            self.function = self.module.get_function(self.kernel.name)
        finally:
            os.unlink(path)

    def launch(self) -> None:
        """Enqueue the kernel on CuPy's current stream (the legacy default stream, as torch's)."""
        if min(self.grid) > 0:
            self.function(self.grid, (self.kernel.block_x, 1, 1), self.args, shared_mem=self.kernel.shared_mem)

"""The ``torch.ops.qm`` custom ops (registered on import; triton is not imported here).

- ``torch.ops.qm.token_group_index(assign, k) -> (order, offsets)``
- ``torch.ops.qm.token_merge(x, weight, order, offsets) -> merged``
- ``torch.ops.qm.token_unmerge(y, assign) -> out``

CPU tensors run the torch references (:mod:`qm_export.merge.ops_reference`); CUDA tensors run
the Triton kernels (or the references, with a warning, when triton is not installed). Fake
implementations give shapes and dtypes for tracing; under ``torch.onnx.export(dynamo=True)``
the ops become ``qm`` nodes through :func:`qm_export.kernels.onnx_translation_table`.
The CUDA path trusts index values (no device sync), as a TensorRT plugin does; the kernels
never read out of bounds whatever the values.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

from ..merge.ops_reference import (
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)
from .checks import FLOAT_DTYPES, INDEX_DTYPES, check_k, check_shape, check_tensor

__all__ = ["triton_available"]


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _use_triton(t: torch.Tensor) -> bool:
    if not t.is_cuda:
        return False
    if triton_available():
        return True
    warnings.warn(
        "triton is not installed: torch.ops.qm.* run the torch reference on CUDA "
        "(pip install 'qm-export[kernels]' for the Triton kernels)",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def _check_merge(x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> None:
    check_tensor("x", x, 3, FLOAT_DTYPES, contiguous=False)
    check_tensor("weight", weight, 2, (torch.float32,), contiguous=False)
    check_tensor("order", order, 2, INDEX_DTYPES, contiguous=False)
    check_tensor("offsets", offsets, 2, INDEX_DTYPES, contiguous=False)
    check_shape("weight", weight, tuple(x.shape[:2]), "B, N of x")
    check_shape("order", order, tuple(x.shape[:2]), "B, N of x")
    if offsets.shape[0] != x.shape[0] or offsets.shape[1] < 2:
        raise ValueError(
            f"offsets must have shape (B={x.shape[0]}, K+1) with K >= 1, got {tuple(offsets.shape)}"
        )


def _check_unmerge(y: torch.Tensor, assign: torch.Tensor) -> None:
    check_tensor("y", y, 3, FLOAT_DTYPES, contiguous=False)
    check_tensor("assign", assign, 2, INDEX_DTYPES, contiguous=False)
    if assign.shape[0] != y.shape[0]:
        raise ValueError(f"assign must have batch {y.shape[0]} (B of y), got shape {tuple(assign.shape)}")


@torch.library.custom_op("qm::token_group_index", mutates_args=())
def token_group_index(assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort of ``assign`` ``(B, N)`` into ``k`` groups: ``order (B, N)``, ``offsets (B, k+1)`` int32."""
    check_tensor("assign", assign, 2, INDEX_DTYPES, contiguous=False)
    check_k(k)
    if _use_triton(assign):
        from .launch import token_group_index as kernel

        return kernel(assign.contiguous(), k, validate=False)
    return token_group_index_reference(assign, k)


@token_group_index.register_fake
def _(assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n = assign.shape
    order = assign.new_empty((batch, n), dtype=torch.int32)
    return order, assign.new_empty((batch, k + 1), dtype=torch.int32)


@torch.library.custom_op("qm::token_merge", mutates_args=())
def token_merge(
    x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Per-group weighted mean ``(B, K, D)`` in ``x.dtype`` (float32 accumulation, zeros for weightless groups)."""
    _check_merge(x, weight, order, offsets)
    if _use_triton(x):
        from .launch import token_merge as kernel

        return kernel(
            x.contiguous(), weight.contiguous(), order.contiguous(), offsets.contiguous(), validate=False
        )
    return token_merge_reference(x, weight, order, offsets)


@token_merge.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], offsets.shape[1] - 1, x.shape[2]))


@torch.library.custom_op("qm::token_unmerge", mutates_args=())
def token_unmerge(y: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """``y[b, assign[b, i]]``: ``(B, N, D)`` in ``y.dtype``."""
    _check_unmerge(y, assign)
    if _use_triton(y):
        from .launch import token_unmerge as kernel

        return kernel(y.contiguous(), assign.contiguous(), validate=False)
    return token_unmerge_reference(y, assign)


@token_unmerge.register_fake
def _(y: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    return y.new_empty((assign.shape[0], assign.shape[1], y.shape[2]))

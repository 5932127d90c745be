"""The three ``qm`` ops as the merge code calls them (spec §6).

One call site, three destinations:

- under ONNX export: a ``qm::TokenGroupIndex`` / ``qm::TokenMerge`` / ``qm::TokenUnmerge`` node
  with ``plugin_namespace="qm"`` and ``plugin_version="1"`` (the exporter adds the
  model-local function bodies, see :mod:`qm_export.export.functions`);
- on CUDA tensors without autograd, and when the Triton kernels are importable: the
  ``torch.ops.qm.*`` custom ops backed by the kernels;
- otherwise: the torch references in :mod:`qm_export.merge.ops_reference` (differentiable).

Indices passed to the nodes are int32, as the contract says.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from .ops_reference import (
    token_group_index_reference,
    token_merge_reference,
    token_unmerge_reference,
)

__all__ = ["PLUGIN_ATTRS", "group_index", "group_sum", "merge", "unmerge", "is_exporting", "emit_qm_nodes"]

#: The only attributes a ``qm`` node carries.
PLUGIN_ATTRS = {"plugin_namespace": "qm", "plugin_version": "1"}


_EMIT_QM_NODES = False


@contextlib.contextmanager
def emit_qm_nodes() -> Iterator[None]:
    """Inside the block, the ops trace to ``qm::`` nodes (``torch.onnx.ops.symbolic``) also when
    ``torch.export.export`` is called directly, e.g. before handing the program to
    ``torch.onnx.export``. (``torch.onnx.export`` of a module sets this by itself.)"""
    global _EMIT_QM_NODES
    previous, _EMIT_QM_NODES = _EMIT_QM_NODES, True
    try:
        yield
    finally:
        _EMIT_QM_NODES = previous


def _onnx_nodes() -> bool:
    return _EMIT_QM_NODES or torch.onnx.is_in_onnx_export()


def is_exporting() -> bool:
    """True while torch is tracing for export (ONNX, ``torch.export``, ``torch.compile``)."""
    return bool(
        _onnx_nodes()
        or torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
    )


@functools.cache
def _kernel_ops_available() -> bool:
    """Whether the Triton-backed ``torch.ops.qm`` custom ops can be used on CUDA."""
    if not torch.cuda.is_available():
        return False
    try:
        import qm_export.kernels as kernels  # registers torch.ops.qm.*; triton is imported lazily
    except ImportError:
        return False
    # Without triton the custom ops would only rerun the reference on CUDA.
    return kernels.triton_available() and hasattr(torch.ops, "qm") and hasattr(torch.ops.qm, "token_merge")


def _use_kernels(*tensors: torch.Tensor) -> bool:
    if not all(t.is_cuda for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _kernel_ops_available()


def group_index(assign: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort of ``assign`` ``(B, N')`` into ``K = seeds.shape[1]`` groups.

    Returns ``order`` ``(B, N')`` and ``offsets`` ``(B, K + 1)``, both int32.
    """
    assign = assign.to(torch.int32)
    batch, n = assign.shape
    k = seeds.shape[1]
    if _onnx_nodes():
        order, offsets = torch.onnx.ops.symbolic_multi_out(
            "qm::TokenGroupIndex",
            (assign, seeds),
            PLUGIN_ATTRS,
            dtypes=(torch.int32, torch.int32),
            shapes=((batch, n), (batch, k + 1)),
            version=1,
        )
        return order, offsets
    if _use_kernels(assign):
        return torch.ops.qm.token_group_index(assign, k)
    return token_group_index_reference(assign, k)


def merge(
    x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Per-group weighted mean ``(B, K, D)`` of ``x`` ``(B, N', D)`` with float32 ``weight``."""
    weight = weight.float()
    if _onnx_nodes():
        batch, _, dim = x.shape
        return torch.onnx.ops.symbolic(
            "qm::TokenMerge",
            (x, weight, order, offsets),
            PLUGIN_ATTRS,
            dtype=x.dtype,
            shape=(batch, offsets.shape[1] - 1, dim),
            version=1,
        )
    if _use_kernels(x, weight):
        return torch.ops.qm.token_merge(x, weight, order, offsets)
    return token_merge_reference(x, weight, order, offsets)


def unmerge(y: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """``y[b, assign[b, i]]`` for ``y`` ``(B, M, D)`` and ``assign`` ``(B, N)``; ``(B, N, D)``."""
    assign = assign.to(torch.int32)
    if _onnx_nodes():
        batch, n = assign.shape
        return torch.onnx.ops.symbolic(
            "qm::TokenUnmerge",
            (y, assign),
            PLUGIN_ATTRS,
            dtype=y.dtype,
            shape=(batch, n, y.shape[2]),
            version=1,
        )
    if _use_kernels(y):
        return torch.ops.qm.token_unmerge(y, assign)
    return token_unmerge_reference(y, assign)


def group_sum(
    values: torch.Tensor, real: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Sum of ``values`` ``(B, N')`` over each group's real members; ``(B, K)`` float32.

    Computed as (mean of the real members, a ``TokenMerge`` with weight 1 per real member)
    x (their count, an exact integer prefix-sum difference), so that no float prefix sum over
    the whole row loses precision at large ``N'``; a one-token group gets its value back
    exactly, a group of padding only gets 0. Padded values are never read.
    """
    ones = torch.where(real, torch.ones((), device=values.device), torch.zeros((), device=values.device))
    mean = merge(values.float().unsqueeze(-1), ones, order, offsets).squeeze(-1)
    from .indexing import running_count  # indexing imports this module

    csum = running_count(torch.gather(real, 1, order.long()))
    csum = torch.cat([torch.zeros_like(csum[:, :1]), csum], 1)
    off = offsets.long()
    count = torch.gather(csum, 1, off[:, 1:]) - torch.gather(csum, 1, off[:, :-1])
    return mean * count.float()

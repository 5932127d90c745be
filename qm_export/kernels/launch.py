"""Check inputs and launch the Triton kernels of the ``qm`` ops (spec §6).

Tensors must be on CUDA, or on the CPU with ``TRITON_INTERPRET=1`` (the Triton interpreter:
exact but slow, for tests). ``launch_*`` write into caller-given outputs, as TensorRT does;
the public functions allocate them. Triton is imported on first launch only.

Public functions (``qm_export.kernels`` re-exports them):

- ``token_group_index(assign, k)`` -> ``order (B, N)`` int32, ``offsets (B, K+1)`` int32
- ``token_merge(x, weight, order, offsets)`` -> ``(B, K, D)`` in ``x.dtype``
- ``token_unmerge(y, assign)`` -> ``(B, N, D)`` in ``y.dtype``
- ``merge_groups(x, assign, weight, k)``: the first two composed.
"""

from __future__ import annotations

import os
import sys

import torch

from .checks import FLOAT_DTYPES, INDEX_DTYPES, check_k, check_range, check_shape, check_tensor
from .config import check_grid, group_index_config, merge_config, unmerge_config

__all__ = [
    "FLOAT_DTYPES",
    "launch_token_group_index",
    "launch_token_merge",
    "launch_token_unmerge",
    "merge_groups",
    "token_group_index",
    "token_merge",
    "token_unmerge",
]


def _interpreting() -> bool:
    """Whether triton runs (or, once imported, will run) kernels in its interpreter.

    Triton fixes the mode when it is imported (its own ``@jit`` library functions are built
    then), so ``TRITON_INTERPRET=1`` must be set before ``import triton``.
    """
    if "triton" in sys.modules:
        import triton.language as tl
        from triton.runtime.jit import JITFunction

        return not isinstance(tl.cdiv, JITFunction)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _kernel(name: str):
    """The ``@triton.jit`` kernel ``name`` (imports triton on first use)."""
    from . import triton_kernels

    return getattr(triton_kernels, name)


def _check_device(**tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k}={t.device}" for k, t in tensors.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    device = devices.pop()
    if device.type == "cuda":
        return
    if device.type == "cpu" and _interpreting():
        return
    if device.type == "cpu":
        raise ValueError(
            "the Triton kernels run on CUDA tensors, or on CPU tensors only under the Triton "
            "interpreter (TRITON_INTERPRET=1 set before triton is imported); got device=cpu. "
            "On CPU use torch.ops.qm.* or qm_export.merge.ops_reference instead."
        )
    raise ValueError(f"unsupported device {device} (CUDA, or CPU with TRITON_INTERPRET=1)")


def _launch(name: str, cfg, args: tuple, device: torch.device) -> None:
    kernel = _kernel(name)
    grid = tuple(int(g) for g in cfg.grid)
    if min(grid) == 0:
        return
    check_grid(grid, name)
    kwargs = dict(cfg.constexprs)
    if device.type == "cuda":
        kwargs["num_warps"] = cfg.num_warps
        with torch.cuda.device(device):
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def launch_token_group_index(
    assign: torch.Tensor, seeds: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor
) -> None:
    """Run the group-index kernel into ``order (B, N)`` and ``offsets (B, K+1)`` (int32, contiguous).

    ``assign`` ``(B, N)`` int32; ``seeds`` any contiguous tensor whose shape is ``(B, K)``
    (never read; TensorRT passes the node's ``seeds`` input here).
    """
    batch, n = assign.shape
    k = seeds.shape[1]
    cfg = group_index_config(batch, n, k)
    _launch("token_group_index_kernel", cfg, (assign, seeds, n, k, order, offsets), assign.device)


def launch_token_merge(
    x: torch.Tensor, weight: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor
) -> None:
    """Run the merge kernel into ``out`` ``(B, K, D)`` (``x``'s dtype, contiguous)."""
    batch, n, d = x.shape
    k = offsets.shape[1] - 1
    cfg = merge_config(batch, k, d)
    _launch("token_merge_kernel", cfg, (x, weight, order, offsets, n, k, d, out), x.device)


def launch_token_unmerge(y: torch.Tensor, assign: torch.Tensor, out: torch.Tensor) -> None:
    """Run the unmerge kernel into ``out`` ``(B, N, D)`` (``y``'s dtype, contiguous)."""
    batch, m, d = y.shape
    n = assign.shape[1]
    cfg = unmerge_config(batch, n, d)
    _launch("token_unmerge_kernel", cfg, (y, assign, m, n, d, out), y.device)


def token_group_index(
    assign: torch.Tensor, k: int, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort of ``assign`` ``(B, N)`` (int32/int64, values in ``[0, k)``) into ``k`` groups.

    Returns ``order`` ``(B, N)`` int32 (token indices sorted by group, then index) and
    ``offsets`` ``(B, k+1)`` int32 (group ``j`` is ``order[offsets[j]:offsets[j+1]]``).
    ``validate`` also checks the values (one device sync).
    """
    check_tensor("assign", assign, 2, INDEX_DTYPES)
    k = check_k(k)
    _check_device(assign=assign)
    if validate:
        check_range("assign", assign, k)
    assign = assign.to(torch.int32)
    batch, n = assign.shape
    order = torch.empty(batch, n, dtype=torch.int32, device=assign.device)
    offsets = torch.empty(batch, k + 1, dtype=torch.int32, device=assign.device)
    seeds = torch.empty(batch, k, dtype=torch.int32, device=assign.device)
    launch_token_group_index(assign, seeds, order, offsets)
    return order, offsets


def token_merge(
    x: torch.Tensor,
    weight: torch.Tensor,
    order: torch.Tensor,
    offsets: torch.Tensor,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Per-group weighted mean of ``x`` ``(B, N, D)`` (fp32/fp16/bf16) with ``weight`` ``(B, N)`` float32.

    ``order`` ``(B, N)`` and ``offsets`` ``(B, K+1)`` come from :func:`token_group_index`.
    Returns ``(B, K, D)`` in ``x.dtype``: ``sum(w x) / sum(w)`` over members with ``w > 0``,
    accumulated in float32 in index order; zeros where the weights sum to 0. Rows with
    ``w <= 0`` are not read (they may hold NaN). ``validate`` also checks index values.
    """
    check_tensor("x", x, 3, FLOAT_DTYPES)
    check_tensor("weight", weight, 2, (torch.float32,))
    check_tensor("order", order, 2, INDEX_DTYPES)
    check_tensor("offsets", offsets, 2, INDEX_DTYPES)
    batch, n, d = x.shape
    check_shape("weight", weight, (batch, n), "B, N of x")
    check_shape("order", order, (batch, n), "B, N of x")
    if offsets.shape[0] != batch or offsets.shape[1] < 2:
        raise ValueError(f"offsets must have shape (B={batch}, K+1) with K >= 1, got {tuple(offsets.shape)}")
    _check_device(x=x, weight=weight, order=order, offsets=offsets)
    if validate:
        check_range("order", order, n)
        check_range("offsets", offsets, n + 1)
        if offsets.numel() and (
            bool((offsets[:, 1:] < offsets[:, :-1]).any()) or bool((offsets[:, -1] != n).any())
        ):
            raise ValueError(f"offsets must be non-decreasing per row and end at N={n}")
    order, offsets = order.to(torch.int32), offsets.to(torch.int32)
    k = offsets.shape[1] - 1
    out = torch.empty(batch, k, d, dtype=x.dtype, device=x.device)
    launch_token_merge(x, weight, order, offsets, out)
    return out


def token_unmerge(y: torch.Tensor, assign: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """``y[b, assign[b, i]]`` for ``y`` ``(B, M, D)`` (fp32/fp16/bf16) and ``assign`` ``(B, N)`` in ``[0, M)``.

    Returns ``(B, N, D)`` in ``y.dtype``. ``validate`` also checks the index values.
    """
    check_tensor("y", y, 3, FLOAT_DTYPES)
    check_tensor("assign", assign, 2, INDEX_DTYPES)
    if assign.shape[0] != y.shape[0]:
        raise ValueError(f"assign must have batch {y.shape[0]} (B of y), got shape {tuple(assign.shape)}")
    _check_device(y=y, assign=assign)
    if validate:
        check_range("assign", assign, y.shape[1])
    assign = assign.to(torch.int32)
    batch, n = assign.shape
    out = torch.empty(batch, n, y.shape[2], dtype=y.dtype, device=y.device)
    launch_token_unmerge(y, assign, out)
    return out


def merge_groups(
    x: torch.Tensor, assign: torch.Tensor, weight: torch.Tensor, k: int, *, validate: bool = True
) -> torch.Tensor:
    """Group by ``assign`` ``(B, N)`` into ``k`` groups, then merge ``x`` ``(B, N, D)`` with ``weight``.

    ``token_merge(x, weight, *token_group_index(assign, k))``: ``(B, k, D)`` in ``x.dtype``.
    """
    check_tensor("x", x, 3, FLOAT_DTYPES)
    check_tensor("assign", assign, 2, INDEX_DTYPES)
    check_shape("assign", assign, tuple(x.shape[:2]), "B, N of x")
    order, offsets = token_group_index(assign, k, validate=validate)
    return token_merge(x, weight, order, offsets, validate=False)

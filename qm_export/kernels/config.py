"""Block sizes and grids of the three kernels, in one place, as plain functions of the dims.

The dims may be Python ints (the torch launcher) or TensorRT shape expressions (the plugin's
``aot_impl``): grids are written with ``+ - * //`` only, dimension on the left, so they work
for both (``tensorrt.plugin.ShapeExpr`` has no ``__radd__``). Constexprs (block sizes) must be
build-time integers, so they are chosen from *static* dims only (an int, or ``None`` when the
dim is only known at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "LaunchConfig",
    "cdiv",
    "check_grid",
    "group_index_config",
    "merge_config",
    "unmerge_config",
    "static_dim",
]

#: Widest feature slice one program handles (elements).
MAX_BLOCK_D = 1024
#: Feature slice assumed when ``D`` is not known at build time.
DEFAULT_BLOCK_D = 1024
#: Elements per program of the unmerge gather (``ROWS * BLOCK_D``).
UNMERGE_TILE = 4096
#: Tile of the group-index kernel (tokens per program, and tokens compared per step).
GROUP_BLOCK = 64
#: Members of a group whose loads are issued together by the merge kernel.
MERGE_UNROLL = 4


@dataclass(frozen=True)
class LaunchConfig:
    """How to launch one kernel.

    Attributes:
        grid: ``(x, y, z)`` program counts (ints or shape expressions).
        constexprs: the kernel's ``tl.constexpr`` arguments by name.
        num_warps: warps per program (threads per block = ``32 * num_warps``).
    """

    grid: tuple[Any, Any, Any]
    constexprs: dict[str, int]
    num_warps: int


#: CUDA's grid limits: axis 0 below 2**31, axes 1 and 2 at most 65535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def check_grid(grid: tuple[int, int, int], kernel: str) -> None:
    """Raise ``ValueError`` naming ``kernel`` and the dims when ``grid`` exceeds CUDA's limits.

    The grids put the batch on axis 0, so only absurd sizes (``B*K >= 2**31`` groups, or
    ``D > 65535 * 1024`` features) get here.
    """
    if any(g > lim for g, lim in zip(grid, GRID_LIMITS)):
        raise ValueError(
            f"{kernel}: launch grid {tuple(grid)} exceeds CUDA's limits {GRID_LIMITS}; "
            "split the batch or the feature dim into smaller calls"
        )


def cdiv(a: Any, b: int) -> Any:
    """``ceil(a / b)`` for a non-negative int or shape expression ``a`` and an int ``b > 0``."""
    return (a + (b - 1)) // b


def static_dim(dim: Any) -> int | None:
    """``dim`` as an int when it is known at build time, else ``None``.

    Accepts ints and TensorRT ``ShapeExpr`` objects (duck-typed: ``is_fake``, ``is_constant``,
    ``constant_value()``); never evaluates a symbolic expression as a bool.
    """
    if isinstance(dim, int):
        return dim
    if getattr(dim, "is_fake", True):
        return None
    if dim.is_constant:
        return int(dim.constant_value())
    return None


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _block_d(d_static: int | None) -> int:
    if d_static is None or d_static <= 0:
        return DEFAULT_BLOCK_D
    return min(max(_next_pow2(d_static), 16), MAX_BLOCK_D)


def group_index_config(b: Any, n: Any, k: Any) -> LaunchConfig:
    """``token_group_index_kernel``: grid ``((cdiv(N, BLOCK) + cdiv(K + 1, BLOCK)) * B, 1, 1)``.

    Each row owns that many consecutive programs: the first ``cdiv(N, BLOCK)`` rank tokens,
    the rest write offsets.
    ``BLOCK = 64`` with 4 warps for every ``N``: compiled for sm_90, a 128-wide tile needs 254
    registers per thread at 8 warps (one block per SM), a 64-wide one 113 at 4 warps
    (``scripts/ptx_report.py``).
    """
    block, num_warps = GROUP_BLOCK, 4
    per_row = cdiv(n, block) + cdiv(k + 1, block)
    return LaunchConfig((per_row * b, 1, 1), {"BLOCK": block}, num_warps)


def merge_config(b: Any, k: Any, d: Any) -> LaunchConfig:
    """``token_merge_kernel``: one program per (group, ``BLOCK_D`` slice): grid ``(B*K, cdiv(D, BLOCK_D), 1)``."""
    block_d = _block_d(static_dim(d))
    num_warps = max(1, min(4, block_d // 256))
    constexprs = {"BLOCK_D": block_d, "UNROLL": MERGE_UNROLL}
    return LaunchConfig((b * k, cdiv(d, block_d), 1), constexprs, num_warps)


def unmerge_config(b: Any, n: Any, d: Any) -> LaunchConfig:
    """``token_unmerge_kernel``: ``ROWS`` tokens x ``BLOCK_D`` features per program.

    Grid ``(cdiv(N, ROWS) * B, cdiv(D, BLOCK_D), 1)``; ``ROWS * BLOCK_D = 4096``.
    """
    block_d = _block_d(static_dim(d))
    rows = max(1, UNMERGE_TILE // block_d)
    return LaunchConfig((cdiv(n, rows) * b, cdiv(d, block_d), 1), {"ROWS": rows, "BLOCK_D": block_d}, 4)

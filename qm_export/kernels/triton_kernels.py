"""Triton kernels of the three ``qm`` ops (spec §6). Importing this module imports triton.

Every kernel takes its parameters in TensorRT's AOT order, so the same ``@triton.jit``
function is launched by :mod:`qm_export.kernels.launch` and compiled by the TensorRT plugin:

    input pointers (node-input order, read or not) | int32 scalars | output pointers | constexprs

Kernels write every output element they own (TensorRT hands over uninitialised buffers), use
no scratch memory and no atomics, so a result depends on the inputs only: the same bits every
run. Indices are int32; offsets into tensors are computed in int64. Indices outside their
valid range are never dereferenced (the row reads as zeros), so bad input cannot fault.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["token_group_index_kernel", "token_merge_kernel", "token_unmerge_kernel"]


@triton.jit
def token_group_index_kernel(
    assign_ptr,  # (B, N) int32 group of each token
    seeds_ptr,  # (B, K) never read: only its shape gives K (TensorRT passes it anyway)
    N,
    K,
    order_ptr,  # (B, N) int32 out: token indices sorted by (group, index)
    offsets_ptr,  # (B, K + 1) int32 out: group j is order[offsets[j]:offsets[j + 1]]
    BLOCK: tl.constexpr,
):
    """Stable counting sort of one row by pairwise counting. Grid ``(B * (T_N + T_K),)``.

    Each row has ``T_N + T_K`` consecutive programs (the batch is folded into grid axis 0,
    whose limit is 2**31 - 1, so any ``B`` launches). Program
    ``t < T_N = cdiv(N, BLOCK)`` of a row ranks tokens ``[t*BLOCK, (t+1)*BLOCK)``: the sorted
    position of token ``i`` is ``#{j : (a_j, j) < (a_i, i)}``, which is a permutation of
    ``[0, N)`` whatever the values of ``a``. Program ``t >= T_N`` writes
    ``offsets[j] = #{i : a_i < j}`` for ``BLOCK`` values of ``j``.
    """
    n_tiles = tl.cdiv(N, BLOCK)
    per_row = n_tiles + tl.cdiv(K + 1, BLOCK)
    pid = tl.program_id(0)
    tile = pid % per_row
    row = (pid // per_row).to(tl.int64)
    a_row = assign_ptr + row * N
    lanes = tl.arange(0, BLOCK)
    if tile < n_tiles:
        i = tile * BLOCK + lanes
        i_ok = i < N
        a_i = tl.load(a_row + i, mask=i_ok, other=0)
        # Counts per (i, j lane), summed over j once at the end: no cross-lane reduction per tile.
        hits = tl.zeros([BLOCK, BLOCK], dtype=tl.int32)
        # Tiles before this one: j < i, so (a_j, j) < (a_i, i) iff a_j <= a_i.
        for jt in range(0, tile):
            j = jt * BLOCK + lanes
            a_j = tl.load(a_row + j)
            hits += (a_j[None, :] <= a_i[:, None]).to(tl.int32)
        # This tile: compare the keys in full.
        j = tile * BLOCK + lanes
        j_ok = j < N
        a_j = tl.load(a_row + j, mask=j_ok, other=0)
        before = (a_j[None, :] < a_i[:, None]) | ((a_j[None, :] == a_i[:, None]) & (j[None, :] < i[:, None]))
        hits += (before & j_ok[None, :]).to(tl.int32)
        # Tiles after this one: j > i, so (a_j, j) < (a_i, i) iff a_j < a_i.
        for jt in range(tile + 1, n_tiles):
            j = jt * BLOCK + lanes
            j_ok = j < N
            a_j = tl.load(a_row + j, mask=j_ok, other=0)
            hits += ((a_j[None, :] < a_i[:, None]) & j_ok[None, :]).to(tl.int32)
        pos = tl.sum(hits, axis=1)
        tl.store(order_ptr + row * N + pos, i, mask=i_ok)
    else:
        g = (tile - n_tiles) * BLOCK + lanes
        g_ok = g <= K
        hits = tl.zeros([BLOCK, BLOCK], dtype=tl.int32)
        for it in range(0, n_tiles):
            i = it * BLOCK + lanes
            i_ok = i < N
            a_i = tl.load(a_row + i, mask=i_ok, other=0)
            hits += ((a_i[None, :] < g[:, None]) & i_ok[None, :]).to(tl.int32)
        count = tl.sum(hits, axis=1)
        tl.store(offsets_ptr + row * (K + 1) + g, count, mask=g_ok)


@triton.jit
def token_merge_kernel(
    x_ptr,  # (B, N, D) float tokens
    weight_ptr,  # (B, N) float32 weights >= 0
    order_ptr,  # (B, N) int32 from token_group_index_kernel
    offsets_ptr,  # (B, K + 1) int32
    N,
    K,
    D,
    out_ptr,  # (B, K, D) out, x's dtype
    BLOCK_D: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """Weighted mean of one group over a ``BLOCK_D`` slice. Grid ``(B * K, cdiv(D, BLOCK_D))``.

    Walks the group's members in sorted order (index order within the group), ``UNROLL`` at
    a time so their loads are in flight together, and accumulates ``w * x`` and ``w`` in
    float32 one member after the other: a fixed summation order, hence run-to-run identical
    bits. A member with ``w <= 0`` (or NaN) is masked out of the load: its row is not read.
    """
    group = tl.program_id(0).to(tl.int64)
    row = group // K
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    start = tl.maximum(tl.load(offsets_ptr + group + row), 0)
    end = tl.minimum(tl.load(offsets_ptr + group + row + 1), N)
    x_row = x_ptr + row * N * D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    wsum = 0.0
    for base in range(start, end, UNROLL):
        for u in tl.static_range(UNROLL):
            p = base + u
            valid = p < end
            idx = tl.load(order_ptr + row * N + p, mask=valid, other=0)
            valid = valid & (idx >= 0) & (idx < N)
            w = tl.load(weight_ptr + row * N + idx, mask=valid, other=0.0)
            read = valid & (w > 0.0)
            w = tl.where(read, w, 0.0)
            xv = tl.load(x_row + idx.to(tl.int64) * D + d, mask=d_ok & read, other=0.0)
            acc += xv.to(tl.float32) * w
            wsum += w
    safe = tl.where(wsum > 0.0, wsum, 1.0)
    # div_rn: IEEE division (a plain / compiles to the approximate div.full.f32).
    result = tl.where(wsum > 0.0, tl.math.div_rn(acc, safe), 0.0)
    tl.store(out_ptr + group * D + d, result.to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def token_unmerge_kernel(
    y_ptr,  # (B, M, D) float merged tokens
    assign_ptr,  # (B, N) int32 in [0, M)
    M,
    N,
    D,
    out_ptr,  # (B, N, D) out, y's dtype
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out[b, i] = y[b, assign[b, i]]`` for ``ROWS`` tokens and a ``BLOCK_D`` slice.

    Grid ``(B * cdiv(N, ROWS), cdiv(D, BLOCK_D))``, the batch folded into axis 0 (any ``B``).
    An index outside ``[0, M)`` gives a zero row.
    """
    per_row = tl.cdiv(N, ROWS)
    pid = tl.program_id(0)
    row = (pid // per_row).to(tl.int64)
    i = (pid % per_row) * ROWS + tl.arange(0, ROWS)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    i_ok = i < N
    d_ok = d < D
    a = tl.load(assign_ptr + row * N + i, mask=i_ok, other=0)
    a_ok = i_ok & (a >= 0) & (a < M)
    src = y_ptr + (row * M + a) * D
    vals = tl.load(src[:, None] + d[None, :], mask=a_ok[:, None] & d_ok[None, :], other=0.0)
    dst = out_ptr + (row * N + i) * D
    tl.store(dst[:, None] + d[None, :], vals, mask=i_ok[:, None] & d_ok[None, :])

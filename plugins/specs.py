"""Everything about the ``qm`` TensorRT plugins that does not need TensorRT (tested on CPU).

The plugins (``qm_plugins.py``) are thin: shapes, scalars, grids, Triton signatures and
type combinations all come from the plain functions here, which take shape *expressions*
(TensorRT ``ShapeExpr`` in the plugin, ints in tests) and dtype *names* (``trt.DataType``
member names: ``FLOAT``, ``HALF``, ``BF16``, ``INT32``, ``INT64``).

Plugin I/O, in node order (spec §6):

- ``qm::TokenGroupIndex(assign (B,N) int32, seeds (B,K) int32|int64) -> order (B,N) int32, offsets (B,K+1) int32``
- ``qm::TokenMerge(x (B,N,D) float, weight (B,N) fp32, order (B,N) int32, offsets (B,K+1) int32) -> (B,K,D) x.dtype``
- ``qm::TokenUnmerge(y (B,M,D) float, assign (B,N) int32) -> (B,N,D) y.dtype``
"""

from __future__ import annotations

from typing import Any, Sequence

from qm_export.kernels.config import (
    LaunchConfig,
    group_index_config,
    merge_config,
    unmerge_config,
)

__all__ = [
    "AUTOTUNE_TYPES",
    "KERNEL_NAMES",
    "PLUGIN_NAMES",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "TRITON_TYPES",
    "aot_attrs",
    "expand_type_combinations",
    "kernel_params",
    "launch_arg_count",
    "launch_config",
    "output_shapes",
    "plugin_id",
    "scalar_args",
    "triton_signature",
    "cuda_array_interface",
]

PLUGIN_NAMESPACE = "qm"
PLUGIN_VERSION = "1"
PLUGIN_NAMES = ("TokenGroupIndex", "TokenMerge", "TokenUnmerge")

#: Kernel (in ``qm_export.kernels.triton_kernels``) behind each plugin.
KERNEL_NAMES = {
    "TokenGroupIndex": "token_group_index_kernel",
    "TokenMerge": "token_merge_kernel",
    "TokenUnmerge": "token_unmerge_kernel",
}

#: ``trt.DataType`` member name -> Triton element type.
TRITON_TYPES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT32": "i32", "INT64": "i64"}

#: ``AutoTuneCombination`` type strings, one entry per I/O (inputs then outputs). ``|`` ties
#: positions together (x and the output share one float type), ``*`` varies independently.
AUTOTUNE_TYPES = {
    "TokenGroupIndex": "INT32, INT32*INT64, INT32, INT32",
    "TokenMerge": "FP32|FP16|BF16, FP32, INT32, INT32, FP32|FP16|BF16",
    "TokenUnmerge": "FP32|FP16|BF16, INT32, FP32|FP16|BF16",
}

#: Names of the kernel's I/O pointer parameters (node inputs then outputs) and scalars.
_IO = {
    "TokenGroupIndex": (("assign_ptr", "seeds_ptr"), ("N", "K"), ("order_ptr", "offsets_ptr")),
    "TokenMerge": (("x_ptr", "weight_ptr", "order_ptr", "offsets_ptr"), ("N", "K", "D"), ("out_ptr",)),
    "TokenUnmerge": (("y_ptr", "assign_ptr"), ("M", "N", "D"), ("out_ptr",)),
}

_AUTOTUNE_NAMES = {"FP32": "FLOAT", "FP16": "HALF"}


def _check_op(op: str) -> None:
    if op not in PLUGIN_NAMES:
        raise ValueError(f"unknown qm plugin {op!r}; known: {list(PLUGIN_NAMES)}")


def kernel_params(op: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The kernel's (input pointer, int32 scalar, output pointer) parameter names, in order."""
    _check_op(op)
    return _IO[op]


def launch_arg_count(op: str) -> int:
    """How many arguments TensorRT passes the AOT kernel: input pointers, scalars, output pointers."""
    return sum(len(group) for group in kernel_params(op))


def plugin_id(op: str) -> str:
    """``"qm::<op>"``, the id ``tensorrt.plugin.register`` takes."""
    _check_op(op)
    return f"{PLUGIN_NAMESPACE}::{op}"


def output_shapes(op: str, shapes: Sequence[Sequence[Any]]) -> tuple[tuple[Any, ...], ...]:
    """Output shapes from the input shapes (ints or shape expressions), one tuple per output.

    Only ``+``/``-`` on dims, never a comparison, so it is safe on TensorRT's fake expressions.
    """
    _check_op(op)
    if op == "TokenGroupIndex":
        assign, seeds = shapes
        return (assign[0], assign[1]), (assign[0], seeds[1] + 1)
    if op == "TokenMerge":
        x, _weight, _order, offsets = shapes
        return ((x[0], offsets[1] - 1, x[2]),)
    y, assign = shapes
    return ((assign[0], assign[1], y[2]),)


def scalar_args(op: str, shapes: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """The kernel's int32 scalars (after the input pointers), from the input shapes."""
    _check_op(op)
    if op == "TokenGroupIndex":
        assign, seeds = shapes
        return assign[1], seeds[1]  # N, K
    if op == "TokenMerge":
        x, _weight, _order, offsets = shapes
        return x[1], offsets[1] - 1, x[2]  # N, K, D
    y, assign = shapes
    return y[1], assign[1], y[2]  # M, N, D


def launch_config(op: str, shapes: Sequence[Sequence[Any]]) -> LaunchConfig:
    """Grid, constexprs and warps, from the same functions the torch launcher uses."""
    _check_op(op)
    if op == "TokenGroupIndex":
        assign, seeds = shapes
        return group_index_config(assign[0], assign[1], seeds[1])
    if op == "TokenMerge":
        x, _weight, _order, offsets = shapes
        return merge_config(x[0], offsets[1] - 1, x[2])
    y, assign = shapes
    return unmerge_config(y[0], assign[1], y[2])


def triton_signature(op: str, dtypes: Sequence[str], constexprs: Sequence[str] = ()) -> dict[str, str]:
    """``ASTSource`` signature: kernel argument name -> Triton type, in parameter order.

    Args:
        op: plugin name.
        dtypes: ``trt.DataType`` member names of the I/O, inputs then outputs (the order of
            ``AUTOTUNE_TYPES``).
        constexprs: names of the kernel's constexpr arguments, typed ``"constexpr"``.
    """
    _check_op(op)
    inputs, scalars, outputs = _IO[op]
    pointers = inputs + outputs
    if len(dtypes) != len(pointers):
        raise ValueError(f"{op} has {len(pointers)} inputs and outputs, got {len(dtypes)} dtypes")
    unknown = [d for d in dtypes if d not in TRITON_TYPES]
    if unknown:
        raise ValueError(f"unsupported dtype(s) {unknown} for {op}; supported: {list(TRITON_TYPES)}")
    types = dict(zip(pointers, (f"*{TRITON_TYPES[d]}" for d in dtypes)))
    sig = {name: types[name] for name in inputs}
    sig.update({name: "i32" for name in scalars})
    sig.update({name: types[name] for name in outputs})
    sig.update({name: "constexpr" for name in constexprs})
    return sig


def aot_attrs(op: str, d_static: int | None) -> dict[tuple[int, ...], list[list[Any]]]:
    """``ASTSource`` attrs: tell Triton ``D`` is a multiple of 16 when it is (enables wide loads).

    Only for a ``D`` known at build time; pointers get no alignment claim (TensorRT's
    plugin-I/O alignment is not documented where we could read it).
    """
    _check_op(op)
    inputs, scalars, _ = _IO[op]
    if "D" not in scalars or d_static is None or d_static % 16:
        return {}
    return {(len(inputs) + scalars.index("D"),): [["tt.divisibility", 16]]}


def expand_type_combinations(io_types: str) -> list[tuple[str, ...]]:
    """The type combinations an ``AutoTuneCombination`` string stands for (``trt.DataType`` names).

    Same rules as ``tensorrt.plugin``: ``|`` entries are zipped (all of one length), ``*``
    entries multiply. Used to test ``AUTOTUNE_TYPES``.
    """
    entries = [e.strip() for e in io_types.split(",")]
    tied = {len(e.split("|")) for e in entries if "|" in e}
    if len(tied) > 1:
        raise ValueError(f"'|' entries of different lengths in {io_types!r}")
    n_tied = tied.pop() if tied else 1
    combos: list[list[str]] = []
    for t in range(n_tied):
        local = [[e.split("|")[t] if "|" in e else e.split("*")[0] for e in entries]]
        for pos, e in enumerate(entries):
            if "*" in e:
                local = [[*c[:pos], alt, *c[pos + 1 :]] for alt in e.split("*") for c in local]
        combos.extend(local)
    return [tuple(_AUTOTUNE_NAMES.get(t, t) for t in c) for c in combos]


_TYPESTR = {"FLOAT": "<f4", "HALF": "<f2", "BF16": "<i2", "INT32": "<i4", "INT64": "<i8"}


def cuda_array_interface(ptr: int, shape: Sequence[int], dtype: str) -> dict[str, Any]:
    """A ``__cuda_array_interface__`` (v3, contiguous) for a TensorRT buffer.

    ``tensorrt.plugin.Tensor`` refuses BF16 there, so BF16 is described as int16 (view it
    as bfloat16 afterwards). No ``stream``: the caller runs on TensorRT's stream.
    """
    if dtype not in _TYPESTR:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {list(_TYPESTR)}")
    return {
        "shape": tuple(int(s) for s in shape),
        "typestr": _TYPESTR[dtype],
        "data": (int(ptr), False),
        "strides": None,
        "version": 3,
    }

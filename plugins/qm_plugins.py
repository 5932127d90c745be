"""TensorRT Python plugins ``qm::TokenGroupIndex`` / ``qm::TokenMerge`` / ``qm::TokenUnmerge``.

Imports tensorrt: only :func:`qm_export_plugins.register_plugins` imports this module. The
decorators here register each plugin's creator (version "1", namespace "qm", no attributes)
with TensorRT's plugin registry when :func:`define` runs.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` validates the decorated
functions' annotations as objects (``typing.get_origin(...) is tuple``), not strings.
"""

import contextlib
from typing import List, Tuple, Union

import tensorrt as trt
import tensorrt.plugin as trtp

from . import specs

__all__ = ["define"]

_DEFINED: set = set()


def _shapes(*descs):
    return [d.shape_expr for d in descs]


def _dtype_names(descs):
    return [d.dtype.name for d in descs]


def _aot_result(op, inputs, outputs):
    """``(kernel name, PTX, KernelLaunchParams, SymIntExprs)`` for one type/format combination."""
    from .aot import compile_kernel

    shapes = _shapes(*inputs)
    kernel = compile_kernel(op, _dtype_names(list(inputs) + list(outputs)), shapes)
    cfg = specs.launch_config(op, shapes)
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = cfg.grid
    params.block_x = kernel.block_x
    params.shared_mem = kernel.shared_mem
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in specs.scalar_args(op, shapes)])
    return kernel.name, kernel.ptx, params, scalars


@contextlib.contextmanager
def _on_stream(stream: int):
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        yield


def _as_torch(t):
    """A zero-copy torch view of a ``trtp.Tensor`` (BF16 included, unlike its own interface)."""
    import torch

    dtype = t.dtype.name

    class _Buffer:
        __cuda_array_interface__ = specs.cuda_array_interface(t.data_ptr, tuple(t.shape), dtype)

    view = torch.as_tensor(_Buffer(), device="cuda")
    return view.view(torch.bfloat16) if dtype == "BF16" else view


def _define_group_index(aot: bool, jit: bool) -> None:
    op = "TokenGroupIndex"
    pid = specs.plugin_id(op)

    @trtp.register(pid)
    def _desc(assign: trtp.TensorDesc, seeds: trtp.TensorDesc) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        order, offsets = specs.output_shapes(op, _shapes(assign, seeds))
        return trtp.from_shape_expr(order, dtype=trt.int32), trtp.from_shape_expr(offsets, dtype=trt.int32)

    @trtp.autotune(pid)
    def _tune(
        assign: trtp.TensorDesc, seeds: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc]
    ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(specs.AUTOTUNE_TYPES[op], "LINEAR")]

    if aot:

        @trtp.aot_impl(pid)
        def _aot(
            assign: trtp.TensorDesc,
            seeds: trtp.TensorDesc,
            outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],
            tactic: int,
        ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
            return _aot_result(op, (assign, seeds), outputs)

    if jit:

        @trtp.impl(pid)
        def _impl(
            assign: trtp.Tensor, seeds: trtp.Tensor, outputs: Tuple[trtp.Tensor, trtp.Tensor], stream: int
        ) -> None:
            from qm_export.kernels.launch import launch_token_group_index

            with _on_stream(stream):
                launch_token_group_index(*(_as_torch(t) for t in (assign, seeds, *outputs)))


def _define_merge(aot: bool, jit: bool) -> None:
    op = "TokenMerge"
    pid = specs.plugin_id(op)

    @trtp.register(pid)
    def _desc(
        x: trtp.TensorDesc, weight: trtp.TensorDesc, order: trtp.TensorDesc, offsets: trtp.TensorDesc
    ) -> trtp.TensorDesc:
        (shape,) = specs.output_shapes(op, _shapes(x, weight, order, offsets))
        return trtp.from_shape_expr(shape, dtype=x.dtype)

    @trtp.autotune(pid)
    def _tune(
        x: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        order: trtp.TensorDesc,
        offsets: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(specs.AUTOTUNE_TYPES[op], "LINEAR")]

    if aot:

        @trtp.aot_impl(pid)
        def _aot(
            x: trtp.TensorDesc,
            weight: trtp.TensorDesc,
            order: trtp.TensorDesc,
            offsets: trtp.TensorDesc,
            outputs: Tuple[trtp.TensorDesc],
            tactic: int,
        ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
            return _aot_result(op, (x, weight, order, offsets), outputs)

    if jit:

        @trtp.impl(pid)
        def _impl(
            x: trtp.Tensor,
            weight: trtp.Tensor,
            order: trtp.Tensor,
            offsets: trtp.Tensor,
            outputs: Tuple[trtp.Tensor],
            stream: int,
        ) -> None:
            from qm_export.kernels.launch import launch_token_merge

            with _on_stream(stream):
                launch_token_merge(*(_as_torch(t) for t in (x, weight, order, offsets, *outputs)))


def _define_unmerge(aot: bool, jit: bool) -> None:
    op = "TokenUnmerge"
    pid = specs.plugin_id(op)

    @trtp.register(pid)
    def _desc(y: trtp.TensorDesc, assign: trtp.TensorDesc) -> trtp.TensorDesc:
        (shape,) = specs.output_shapes(op, _shapes(y, assign))
        return trtp.from_shape_expr(shape, dtype=y.dtype)

    @trtp.autotune(pid)
    def _tune(
        y: trtp.TensorDesc, assign: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
    ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(specs.AUTOTUNE_TYPES[op], "LINEAR")]

    if aot:

        @trtp.aot_impl(pid)
        def _aot(
            y: trtp.TensorDesc, assign: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int
        ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
            return _aot_result(op, (y, assign), outputs)

    if jit:

        @trtp.impl(pid)
        def _impl(y: trtp.Tensor, assign: trtp.Tensor, outputs: Tuple[trtp.Tensor], stream: int) -> None:
            from qm_export.kernels.launch import launch_token_unmerge

            with _on_stream(stream):
                launch_token_unmerge(*(_as_torch(t) for t in (y, assign, *outputs)))


def define(aot: bool = True, jit: bool = True) -> List[str]:
    """Define and register the three plugins once per process; returns their ids.

    The implementations chosen by the first call stay (``tensorrt.plugin`` cannot redefine a
    plugin); a later call asking for a different choice raises ``ValueError``.
    """
    key = (aot, jit)
    if _DEFINED and key not in _DEFINED:
        raise ValueError(f"qm plugins already registered with (aot, jit)={next(iter(_DEFINED))}, not {key}")
    if not _DEFINED:
        _define_group_index(aot, jit)
        _define_merge(aot, jit)
        _define_unmerge(aot, jit)
        _DEFINED.add(key)
    return [specs.plugin_id(op) for op in specs.PLUGIN_NAMES]

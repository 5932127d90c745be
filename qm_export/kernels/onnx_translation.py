"""Translate the ``torch.ops.qm`` custom ops to ``qm`` ONNX nodes for the dynamo exporter.

Use::

    torch.onnx.export(model, args, dynamo=True,
                      custom_translation_table=qm_export.kernels.onnx_translation_table())
    model = attach_qm_functions(onnx_program.model_proto)   # the function bodies

What works in torch 2.13 / onnxscript 0.7: a plain Python translation function that calls an
``onnxscript.values.Op`` built on an ``onnx.defs.OpSchema`` made here (and *not* registered
with onnx, so onnx's global schema registry is untouched). The exporter's tracer needs a schema
to name inputs, attributes and outputs (two for ``TokenGroupIndex``); ``Opset("qm", 1).TokenMerge``
fails because no schema is registered for the domain. Each node carries exactly
``plugin_namespace="qm"`` and ``plugin_version="1"`` (spec §6).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

__all__ = ["onnx_translation_table", "qm_op_schemas"]

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_INTS = ["tensor(int32)", "tensor(int64)"]


@functools.cache
def qm_op_schemas() -> dict[str, Any]:
    """``onnx.defs.OpSchema`` of the three ``qm`` ops by name (unregistered)."""
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter

    def attrs() -> list:
        return [
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
        ]

    def schema(name: str, inputs: list, outputs: list, constraints: list) -> OpSchema:
        return OpSchema(
            name, "qm", 1, inputs=inputs, outputs=outputs, type_constraints=constraints, attributes=attrs()
        )

    i32 = "tensor(int32)"
    return {
        "TokenGroupIndex": schema(
            "TokenGroupIndex",
            [param("assign", i32), param("seeds", "I")],
            [param("order", i32), param("offsets", i32)],
            [("I", _INTS, "seeds: only the shape (B, K) is read")],
        ),
        "TokenMerge": schema(
            "TokenMerge",
            [param("x", "T"), param("weight", "tensor(float)"), param("order", i32), param("offsets", i32)],
            [param("merged", "T")],
            [("T", _FLOATS, "token dtype")],
        ),
        "TokenUnmerge": schema(
            "TokenUnmerge",
            [param("y", "T"), param("assign", i32)],
            [param("out", "T")],
            [("T", _FLOATS, "token dtype")],
        ),
    }


def _qm_op(name: str):
    from onnxscript.values import Op, Opset

    return Op(Opset("qm", 1), name, qm_op_schemas()[name])


def _as(value, dtype_name: str):
    """``value`` cast to the ONNX dtype ``dtype_name`` unless it already has it."""
    import onnx_ir as ir
    from onnxscript import opset18 as op

    target = getattr(ir.DataType, dtype_name)
    if getattr(value, "dtype", None) == target:
        return value
    return op.Cast(value, to=int(target))


def _translate_group_index(assign, k: int):
    from onnxscript import opset18 as op

    from ..merge.ops import PLUGIN_ATTRS

    import onnx

    assign = _as(assign, "INT32")
    # The node's ``seeds`` input only gives K: int32 zeros of shape (B, K), built in-graph.
    batch = op.Shape(assign, start=0, end=1)
    seeds_shape = op.Concat(batch, op.Constant(value_ints=[k]), axis=0)
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.INT32, [1], [0])
    seeds = op.ConstantOfShape(seeds_shape, value=zero)
    return _qm_op("TokenGroupIndex")(assign, seeds, **PLUGIN_ATTRS)


def _translate_merge(x, weight, order, offsets):
    from ..merge.ops import PLUGIN_ATTRS

    return _qm_op("TokenMerge")(
        x, _as(weight, "FLOAT"), _as(order, "INT32"), _as(offsets, "INT32"), **PLUGIN_ATTRS
    )


def _translate_unmerge(y, assign):
    from ..merge.ops import PLUGIN_ATTRS

    return _qm_op("TokenUnmerge")(y, _as(assign, "INT32"), **PLUGIN_ATTRS)


def onnx_translation_table() -> dict[Any, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: the ``torch.ops.qm``
    custom ops to ``qm::TokenGroupIndex`` / ``qm::TokenMerge`` / ``qm::TokenUnmerge`` nodes."""
    import torch

    from . import custom_ops  # noqa: F401  (registers torch.ops.qm.*)

    return {
        torch.ops.qm.token_group_index.default: _translate_group_index,
        torch.ops.qm.token_merge.default: _translate_merge,
        torch.ops.qm.token_unmerge.default: _translate_unmerge,
    }

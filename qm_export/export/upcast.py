"""The float32 *upcast twin* of a bfloat16 model, for runtimes without bfloat16 kernels.

ONNX Runtime's CPU provider implements almost no op in bfloat16 ("Could not find an
implementation for Conv(22)"), so a bf16 export cannot run there as is. Its upcast twin is the
same graph with every bfloat16 tensor type, initializer, constant and ``Cast``/``CastLike``
target made float32: the same ops, the same bf16-rounded weights (bf16 -> fp32 is exact), only
the arithmetic between them is float32 instead of bfloat16.

What comparing it with torch's bf16 model checks: the graph and its weights (an export
mistake shows up as it does in fp32), and selection under bf16 inputs to the merge, judged with
bf16's near-tie gap (``4e-2``) and tolerance. What it cannot check: bf16 rounding of the
intermediates themselves; that is TensorRT's (or another bf16 runtime's) to show, through
``validate --backends trt`` on the engine.

Proto-level surgery (types are fields of protos; onnx-ir would round-trip the same names).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["upcast_bf16", "has_bf16", "write_upcast"]

_BF16 = TensorProto.BFLOAT16
_F32 = TensorProto.FLOAT
#: Attributes whose integer value is an element type.
_DTYPE_ATTRS = {"to", "dtype", "output_dtype"}


def _tensor(t: TensorProto) -> TensorProto:
    if t.data_type != _BF16:
        return t
    arr = numpy_helper.to_array(t).astype(np.float32)
    new = numpy_helper.from_array(arr, t.name)
    t.CopyFrom(new)
    return t


def _type(tp: onnx.TypeProto) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type == _BF16:
        tp.tensor_type.elem_type = _F32
    elif which == "sequence_type":
        _type(tp.sequence_type.elem_type)
    elif which == "optional_type":
        _type(tp.optional_type.elem_type)


def _nodes(nodes) -> None:
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.INT and attr.name in _DTYPE_ATTRS and attr.i == _BF16:
                attr.i = _F32
            elif attr.type == onnx.AttributeProto.TENSOR:
                _tensor(attr.t)
            elif attr.type == onnx.AttributeProto.TENSORS:
                for t in attr.tensors:
                    _tensor(t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _graph(g)
            elif attr.type == onnx.AttributeProto.TYPE_PROTO:
                _type(attr.tp)


def _graph(graph: onnx.GraphProto) -> None:
    for t in graph.initializer:
        _tensor(t)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        _type(vi.type)
    _nodes(graph.node)


def has_bf16(model: onnx.ModelProto) -> bool:
    """Whether any graph input, output or initializer is bfloat16."""
    vis = list(model.graph.input) + list(model.graph.output)
    return (any(vi.type.tensor_type.elem_type == _BF16 for vi in vis)
            or any(t.data_type == _BF16 for t in model.graph.initializer))


def upcast_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 upcast twin of ``model`` (a new proto; ``model`` is left as it is).

    Raises:
        ValueError: an initializer whose data lives in an external file that was not loaded.
    """
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    for t in twin.graph.initializer:
        if t.data_type == _BF16 and t.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"initializer {t.name!r} is bfloat16 external data that was not loaded; "
                             "load the model with its external data first")
    _graph(twin.graph)
    for fn in twin.functions:
        _nodes(fn.node)
        for vi in getattr(fn, "value_info", []):
            _type(vi.type)
    twin.metadata_props.add(key="qm_export.upcast", value="bf16->fp32")
    return twin


def write_upcast(src, folder, name: str) -> "Path":
    """The upcast twin of the ONNX file ``src`` written as ``folder/name.onnx`` (weights as
    external data beside it); returns its path."""
    import os
    from pathlib import Path

    src, folder = Path(src), Path(folder)
    twin = upcast_bf16(onnx.load(os.fspath(src)))
    out = folder / f"{name}.onnx"
    onnx.save(twin, os.fspath(out), save_as_external_data=True, all_tensors_to_one_file=True,
              location=out.name + ".data", size_threshold=1024)
    return out

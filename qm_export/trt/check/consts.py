"""Build-time constants: is an input of a node known before the engine runs, and what is it?

TensorRT needs some inputs to be build-time constants (OneHot's depth, CumSum's axis) and
limits others (TopK's K). A value is constant when it is an initializer, a ``Constant``
node, or a small shape/arithmetic op (folded with ``onnx.reference``) of constants; ``Shape``
of a tensor whose shape is fully static also counts.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ConstantResolver"]

# Ops folded when all their inputs are constant: cheap, deterministic, shape-like.
_FOLDABLE = frozenset(
    """Identity Cast CastLike Reshape Squeeze Unsqueeze Concat Gather Slice Add Sub Mul Div Min Max Neg Abs
    Floor Ceil Mod Size ConstantOfShape Range Expand ReduceMin ReduceMax ReduceProd ReduceSum Equal Where
    Less Greater Sqrt Clip""".split()
)
_MAX_ELEMENTS = 1 << 16


def _array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's value, or None when it is not a readable constant (an unknown data type,
    data that does not match its dims, more than :data:`_MAX_ELEMENTS` elements)."""
    if any(d < 0 for d in tensor.dims) or int(np.prod([int(d) for d in tensor.dims], dtype=object)) > _MAX_ELEMENTS:
        return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - a malformed tensor is not a constant the check can use
        return None


class ConstantResolver:
    """Values of the constant tensors of one scope (a graph with its subgraphs, or a function body).

    ``initializers``: name -> TensorProto; ``nodes``: every node of the scope (subgraphs
    included); ``shapes``: name -> static shape (tuple of ints) where known; ``opset``: the
    default-domain opset used to fold.
    """

    def __init__(
        self,
        initializers: Mapping[str, onnx.TensorProto],
        nodes: Iterable[onnx.NodeProto],
        shapes: Mapping[str, tuple[int, ...]],
        opset: int,
    ) -> None:
        self._initializers = dict(initializers)
        self._producer: dict[str, tuple[onnx.NodeProto, int]] = {}
        for node in nodes:
            for i, out in enumerate(node.output):
                if out:
                    self._producer[out] = (node, i)
        self._shapes = dict(shapes)
        self._opset = opset
        self._memo: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of tensor ``name``, or ``None`` when it is not known at build time."""
        if not name:
            return None
        if name not in self._memo:
            self._memo[name] = None  # guards against cycles
            self._memo[name] = self._compute(name)
        return self._memo[name]

    def is_constant(self, name: str) -> bool:
        return self.value(name) is not None

    def is_weight(self, name: str) -> bool:
        """An initializer or the output of a ``Constant`` node: what the parser holds as weights
        (a constant folded from other ops is a tensor to it)."""
        if name in self._initializers:
            return True
        producer = self._producer.get(name)
        return producer is not None and producer[0].op_type == "Constant" and self.value(name) is not None

    def _compute(self, name: str) -> np.ndarray | None:
        if name in self._initializers:
            tensor = self._initializers[name]
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return _array(tensor)
        if name not in self._producer:
            return None
        node, index = self._producer[name]
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return self._constant_node(node)
        if node.op_type == "Shape":
            return self._shape_of(node)
        if node.op_type not in _FOLDABLE:
            return None
        feeds = {}
        for inp in node.input:
            if not inp:
                continue
            val = self.value(inp)
            if val is None or val.size > _MAX_ELEMENTS:
                return None
            feeds[inp] = val
        return self._fold(node, feeds, index)

    def _constant_node(self, node: onnx.NodeProto) -> np.ndarray | None:
        for attr in node.attribute:
            if attr.ref_attr_name:
                return None
            if attr.name == "value":  # never external data: check reads no tensor bytes from files
                return None if attr.t.data_location == onnx.TensorProto.EXTERNAL else _array(attr.t)
            if attr.name == "value_int":
                return np.array(attr.i, dtype=np.int64)
            if attr.name == "value_ints":
                return np.array(list(attr.ints), dtype=np.int64)
            if attr.name == "value_float":
                return np.array(attr.f, dtype=np.float32)
            if attr.name == "value_floats":
                return np.array(list(attr.floats), dtype=np.float32)
        return None

    def _shape_of(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self._shapes.get(node.input[0]) if node.input else None
        if shape is None:
            return None
        start, end = 0, len(shape)
        for attr in node.attribute:
            if attr.name == "start":
                start = attr.i
            elif attr.name == "end":
                end = attr.i
        return np.array(shape[slice(start, end)], dtype=np.int64)

    def _fold(self, node: onnx.NodeProto, feeds: dict[str, Any], index: int) -> np.ndarray | None:
        if any(a.ref_attr_name for a in node.attribute):
            return None
        from onnx.reference import ReferenceEvaluator

        try:
            outs = ReferenceEvaluator(node, opsets={"": self._opset}).run(None, feeds)
        except Exception:  # noqa: BLE001 - an unfoldable node simply is not a known constant
            return None
        return np.asarray(outs[index]) if index < len(outs) else None

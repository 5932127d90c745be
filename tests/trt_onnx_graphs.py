"""Small hand-built ONNX graphs for the TensorRT check and build tests (onnx.helper only).

``export_like_model`` looks like what qm-export exports: standard ops for selection, three
``qm`` nodes with both plugin attributes, and model-local functions of the same names whose
bodies are standard ops (so ONNX Runtime runs the file). The function bodies here are test
fixtures written for these tests, checked against the torch references in
``tests/test_trt_onnx_graphs.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

OPSET = 20
QM_ATTRS = {"plugin_namespace": "qm", "plugin_version": "1"}


def _const(name: str, values, dtype=np.int64) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype=dtype), name))


def qm_node(
    op: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str | None = None,
    domain: str = "qm",
    attrs: dict | None = None,
) -> onnx.NodeProto:
    """A qm node; ``attrs`` replaces the default ``plugin_namespace``/``plugin_version``."""
    return h.make_node(
        op, list(inputs), list(outputs), name=name or f"{op}_0", domain=domain, **(QM_ATTRS if attrs is None else attrs)
    )


def _function(name: str, inputs, outputs, nodes, opset: int) -> onnx.FunctionProto:
    return h.make_function(
        "qm",
        name,
        list(inputs),
        list(outputs),
        nodes,
        [h.make_opsetid("", opset)],
        attributes=["plugin_namespace", "plugin_version"],
    )


def token_unmerge_function(opset: int = OPSET) -> onnx.FunctionProto:
    """``out[b, i] = y[b, assign[b, i]]`` with GatherElements."""
    nodes = [
        h.make_node("Cast", ["assign"], ["a64"], to=TP.INT64),
        _const("two", [2]),
        h.make_node("Unsqueeze", ["a64", "two"], ["a3"]),
        h.make_node("Shape", ["assign"], ["sa"]),
        h.make_node("Shape", ["y"], ["sd"], start=2),
        h.make_node("Concat", ["sa", "sd"], ["shp"], axis=0),
        h.make_node("Expand", ["a3", "shp"], ["idx"]),
        h.make_node("GatherElements", ["y", "idx"], ["out"], axis=1),
    ]
    return _function("TokenUnmerge", ["y", "assign"], ["out"], nodes, opset)


def token_group_index_function(opset: int = OPSET) -> onnx.FunctionProto:
    """Stable sort by group (TopK on ``assign * N + index``) and prefix sums of group counts."""
    nodes = [
        h.make_node("Cast", ["assign"], ["a64"], to=TP.INT64),
        h.make_node("Shape", ["assign"], ["n1"], start=1, end=2),
        h.make_node("Shape", ["seeds"], ["k1"], start=1, end=2),
        h.make_node("Squeeze", ["n1"], ["n"]),
        h.make_node("Squeeze", ["k1"], ["k"]),
        _const("zero", 0),
        _const("one", 1),
        _const("ax1", [1]),
        _const("ax2", [2]),
        _const("axis1", 1),
        h.make_node("Range", ["zero", "n", "one"], ["pos"]),
        h.make_node("Mul", ["a64", "n"], ["scaled"]),
        h.make_node("Add", ["scaled", "pos"], ["key"]),
        h.make_node("TopK", ["key", "n1"], ["sorted_keys", "o64"], axis=1, largest=0, sorted=1),
        h.make_node("Cast", ["o64"], ["order"], to=TP.INT32),
        h.make_node("Range", ["zero", "k", "one"], ["groups"]),
        h.make_node("Unsqueeze", ["a64", "ax2"], ["a3"]),
        h.make_node("Equal", ["a3", "groups"], ["eq"]),
        h.make_node("Cast", ["eq"], ["eq32"], to=TP.INT32),
        h.make_node("ReduceSum", ["eq32", "ax1"], ["counts"], keepdims=0),
        h.make_node("CumSum", ["counts", "axis1"], ["csum"]),
        h.make_node("Shape", ["assign"], ["b1"], start=0, end=1),
        h.make_node("Concat", ["b1", "ax1"], ["zshape"], axis=0),
        h.make_node("ConstantOfShape", ["zshape"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.int32))),
        h.make_node("Concat", ["zeros", "csum"], ["offsets"], axis=1),
    ]
    return _function("TokenGroupIndex", ["assign", "seeds"], ["order", "offsets"], nodes, opset)


def token_merge_function(opset: int = OPSET) -> onnx.FunctionProto:
    """Per-group weighted mean via a (B, K, N) weight matrix; rows with weight 0 are masked."""
    nodes = [
        h.make_node("Cast", ["order"], ["o64"], to=TP.INT64),
        h.make_node("GatherElements", ["weight", "o64"], ["ws"], axis=1),
        _const("ax0", [0]),
        _const("ax1", [1]),
        _const("ax2", [2]),
        _const("ax02", [0, 2]),
        _const("zero", 0),
        _const("one", 1),
        _const("big", [2**31 - 1]),
        h.make_node("Unsqueeze", ["o64", "ax2"], ["o3"]),
        h.make_node("Shape", ["x"], ["sx"]),
        h.make_node("Expand", ["o3", "sx"], ["idx"]),
        h.make_node("GatherElements", ["x", "idx"], ["xs"], axis=1),
        h.make_node("Shape", ["x"], ["n1"], start=1, end=2),
        h.make_node("Squeeze", ["n1"], ["n"]),
        h.make_node("Range", ["zero", "n", "one"], ["pos"]),
        h.make_node("Slice", ["offsets", "ax1", "big", "ax1"], ["ends32"]),
        h.make_node("Cast", ["ends32"], ["ends"], to=TP.INT64),
        h.make_node("Unsqueeze", ["pos", "ax02"], ["pos3"]),
        h.make_node("Unsqueeze", ["ends", "ax1"], ["ends3"]),
        h.make_node("GreaterOrEqual", ["pos3", "ends3"], ["ge"]),
        h.make_node("Cast", ["ge"], ["ge64"], to=TP.INT64),
        h.make_node("ReduceSum", ["ge64", "ax2"], ["g"], keepdims=0),
        h.make_node("Shape", ["ends"], ["k1"], start=1, end=2),
        h.make_node("Squeeze", ["k1"], ["k"]),
        h.make_node("Range", ["zero", "k", "one"], ["groups"]),
        h.make_node("Unsqueeze", ["groups", "ax02"], ["groups3"]),
        h.make_node("Unsqueeze", ["g", "ax1"], ["g3"]),
        h.make_node("Equal", ["groups3", "g3"], ["member"]),
        h.make_node("Cast", ["member"], ["memberf"], to=TP.FLOAT),
        _const("fzero", 0.0, np.float32),
        _const("fone", 1.0, np.float32),
        h.make_node("Greater", ["ws", "fzero"], ["read"]),
        h.make_node("Where", ["read", "ws", "fzero"], ["wpos"]),
        h.make_node("Unsqueeze", ["wpos", "ax1"], ["w3"]),
        h.make_node("Mul", ["memberf", "w3"], ["m"]),
        h.make_node("Unsqueeze", ["read", "ax2"], ["read3"]),
        h.make_node("Where", ["read3", "xs", "fzero"], ["xsafe"]),
        h.make_node("MatMul", ["m", "xsafe"], ["num"]),
        h.make_node("ReduceSum", ["m", "ax2"], ["den"], keepdims=1),
        h.make_node("Greater", ["den", "fzero"], ["has"]),
        h.make_node("Where", ["has", "den", "fone"], ["safe"]),
        h.make_node("Div", ["num", "safe"], ["mean"]),
        h.make_node("Where", ["has", "mean", "fzero"], ["out"]),
    ]
    return _function("TokenMerge", ["x", "weight", "order", "offsets"], ["out"], nodes, opset)


QM_FUNCTIONS = {
    "TokenGroupIndex": token_group_index_function,
    "TokenMerge": token_merge_function,
    "TokenUnmerge": token_unmerge_function,
}


def make_model(
    nodes,
    inputs,
    outputs,
    initializers=(),
    functions=(),
    opset: int = OPSET,
    extra_opsets: dict | None = None,
    metadata: dict | None = None,
) -> onnx.ModelProto:
    """A model from nodes; ``inputs``/``outputs`` are ``(name, elem_type, shape)`` triples."""
    graph = h.make_graph(
        list(nodes),
        "g",
        [h.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [h.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    opsets = [h.make_opsetid("", opset)] + [h.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    if functions and "qm" not in (extra_opsets or {}):
        opsets.append(h.make_opsetid("qm", 1))
    model = h.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 10
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def export_like_model(
    k: int = 4,
    d: int = 8,
    functions: bool = True,
    qm_attrs: dict | None = None,
    opset: int = OPSET,
    n: int | str = "N",
    batch: int | str = "B",
) -> onnx.ModelProto:
    """Selection in standard ops, then TokenGroupIndex -> TokenMerge -> Relu -> TokenUnmerge.

    Inputs: ``x (B, N, D)`` float32. Outputs: ``out (B, N, D)`` and ``merged (B, K, D)``.
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "red_axes"),
        numpy_helper.from_array(np.array([k], np.int64), "K"),
        numpy_helper.from_array(rng.standard_normal((d, k)).astype(np.float32), "W"),
    ]
    nodes = [
        h.make_node("ReduceMean", ["x", "red_axes"], ["scores"], keepdims=0, name="saliency"),
        h.make_node("TopK", ["scores", "K"], ["top_values", "seeds64"], axis=1, name="select_seeds"),
        h.make_node("Cast", ["seeds64"], ["seeds"], to=TP.INT32, name="seeds_i32"),
        h.make_node("MatMul", ["x", "W"], ["logits"], name="similarity"),
        h.make_node("ArgMax", ["logits"], ["assign64"], axis=2, keepdims=0, name="assign"),
        h.make_node("Cast", ["assign64"], ["assign"], to=TP.INT32, name="assign_i32"),
        h.make_node("Sigmoid", ["scores"], ["weight"], name="weights"),
        qm_node("TokenGroupIndex", ["assign", "seeds"], ["order", "offsets"], "group", attrs=qm_attrs),
        qm_node("TokenMerge", ["x", "weight", "order", "offsets"], ["merged"], "merge", attrs=qm_attrs),
        h.make_node("Relu", ["merged"], ["y"], name="block"),
        qm_node("TokenUnmerge", ["y", "assign"], ["out"], "unmerge", attrs=qm_attrs),
    ]
    fns = [make(opset) for make in QM_FUNCTIONS.values()] if functions else []
    return make_model(
        nodes,
        [("x", TP.FLOAT, [batch, n, d])],
        [("out", TP.FLOAT, [batch, n, d]), ("merged", TP.FLOAT, [batch, k, d])],
        inits,
        fns,
        opset,
        extra_opsets={"qm": 1},
    )


def single_op_model(
    node: onnx.NodeProto,
    inputs,
    outputs,
    initializers=(),
    functions=(),
    opset: int = OPSET,
    extra_opsets: dict | None = None,
) -> onnx.ModelProto:
    """A model around one node (plus its initializers)."""
    return make_model([node], inputs, outputs, initializers, functions, opset, extra_opsets)

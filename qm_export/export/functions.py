"""Model-local ONNX functions of the three ``qm`` ops (spec §6), bodies in standard ONNX ops.

A model with ``qm::TokenGroupIndex`` / ``qm::TokenMerge`` / ``qm::TokenUnmerge`` nodes runs in
ONNX Runtime (and ``onnx.reference``) once :func:`attach_qm_functions` has added these
functions; TensorRT with the ``qm`` plugins registered runs the plugins instead.

The bodies stay TensorRT-friendly when inlined (``onnx.inliner.inline_local_functions``):
no TopK, NonZero, OneHot or reducing scatter, and every output shape follows from input
shapes. The price is quadratic memory: grouping compares all token pairs ``(B, N, N)`` and
the merge multiplies a ``(B, K, N)`` membership matrix, so the inlined path suits N of a few
thousand; the plugins and kernels are linear.

- ``TokenGroupIndex``: ``pos_i = #{j: a_j < a_i} + #{j < i: a_j == a_i}`` (Less, Equal,
  ReduceSum); ``order[pos_i] = i`` (ScatterElements, no reduction, ``pos`` is a permutation);
  ``offsets[j] = #{i: a_i < j}`` for ``j`` in ``Range(0, K + 1)``, ``K`` from ``seeds``' shape.
- ``TokenMerge``: gather ``x`` and ``w`` into sorted order, ``contrib = Where(w > 0, w x, 0)``
  in float32 (unread rows may hold NaN), membership ``offsets[j] <= p < offsets[j+1]``,
  ``MatMul`` for the sums, ``Where`` for groups of weight 0, cast back to ``x``'s dtype.
- ``TokenUnmerge``: ``GatherElements`` along the token axis.
"""

from __future__ import annotations

import functools

import onnx
from onnxscript import FLOAT, INT32, INT64, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

__all__ = ["MIN_OPSET", "QM_DOMAIN", "QM_OPS", "attach_qm_functions", "qm_function_protos"]

QM_DOMAIN = "qm"
#: The bodies use ``Shape(start, end)`` and ``CastLike``: default-domain opset 15 or later.
MIN_OPSET = 15
QM_OPS = ("TokenGroupIndex", "TokenMerge", "TokenUnmerge")

_qm = Opset(QM_DOMAIN, 1)


@script(_qm, default_opset=op)
def TokenGroupIndex(assign, seeds, plugin_namespace: str, plugin_version: str):
    a = op.Cast(assign, to=INT64.dtype)
    n = op.Shape(a, start=1, end=2)
    k = op.Shape(seeds, start=1, end=2)
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    a_i = op.Unsqueeze(a, [2])  # (B, N, 1)
    a_j = op.Unsqueeze(a, [1])  # (B, 1, N)
    idx = op.Range(zero, op.Squeeze(n), one)  # (N,)
    j_before_i = op.Less(op.Unsqueeze(idx, [0]), op.Unsqueeze(idx, [1]))  # [i, j] = j < i
    before = op.Or(op.Less(a_j, a_i), op.And(op.Equal(a_j, a_i), j_before_i))
    pos = op.ReduceSum(op.Cast(before, to=INT64.dtype), [2], keepdims=0)  # (B, N)
    tokens = op.Expand(op.Cast(idx, to=INT32.dtype), op.Shape(a))  # int32 (B, N)
    # pos is a permutation of [0, N): every element of the data input is overwritten.
    order = op.ScatterElements(tokens, pos, tokens, axis=1)
    groups = op.Range(zero, op.Add(op.Squeeze(k), one), one)  # (K + 1,)
    below = op.Less(a_j, op.Unsqueeze(groups, [0, 2]))  # (B, K + 1, N)
    offsets = op.Cast(op.ReduceSum(op.Cast(below, to=INT64.dtype), [2], keepdims=0), to=INT32.dtype)
    return order, offsets


@script(_qm, default_opset=op)
def TokenMerge(x, weight, order, offsets, plugin_namespace: str, plugin_version: str):
    idx = op.Cast(order, to=INT64.dtype)
    w = op.GatherElements(op.Cast(weight, to=FLOAT.dtype), idx, axis=1)  # (B, N) sorted
    x_idx = op.Expand(op.Unsqueeze(idx, [2]), op.Shape(x))
    xs = op.Cast(op.GatherElements(x, x_idx, axis=1), to=FLOAT.dtype)  # (B, N, D) sorted
    zero_f = op.Constant(value_float=0.0)
    read = op.Greater(w, zero_f)
    w_read = op.Where(read, w, zero_f)
    contrib = op.Where(op.Unsqueeze(read, [2]), op.Mul(xs, op.Unsqueeze(w_read, [2])), zero_f)
    off = op.Cast(offsets, to=INT64.dtype)
    n = op.Shape(idx, start=1, end=2)
    k1 = op.Shape(off, start=1, end=2)
    start = op.Unsqueeze(op.Slice(off, [0], op.Sub(k1, [1]), [1]), [2])  # (B, K, 1)
    end = op.Unsqueeze(op.Slice(off, [1], k1, [1]), [2])
    p = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1)), [0, 1])
    member = op.Cast(op.And(op.GreaterOrEqual(p, start), op.Less(p, end)), to=FLOAT.dtype)  # (B, K, N)
    num = op.MatMul(member, contrib)  # (B, K, D)
    den = op.MatMul(member, op.Unsqueeze(w_read, [2]))  # (B, K, 1)
    has = op.Greater(den, zero_f)
    mean = op.Div(num, op.Where(has, den, op.Constant(value_float=1.0)))
    return op.CastLike(op.Where(has, mean, zero_f), x)


@script(_qm, default_opset=op)
def TokenUnmerge(y, assign, plugin_namespace: str, plugin_version: str):
    idx = op.Cast(assign, to=INT64.dtype)
    shape = op.Concat(op.Shape(idx), op.Shape(y, start=2, end=3), axis=0)
    return op.GatherElements(y, op.Expand(op.Unsqueeze(idx, [2]), shape), axis=1)


_SCRIPTED = {"TokenGroupIndex": TokenGroupIndex, "TokenMerge": TokenMerge, "TokenUnmerge": TokenUnmerge}


@functools.cache
def _base_protos() -> dict[str, bytes]:
    return {name: fn.to_function_proto().SerializeToString() for name, fn in _SCRIPTED.items()}


def qm_function_protos(opset: int) -> dict[str, onnx.FunctionProto]:
    """Fresh ``FunctionProto`` of each ``qm`` op, importing default-domain opset ``opset``.

    Each declares the attributes ``plugin_namespace`` and ``plugin_version`` (the body ignores them).
    """
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} for the qm function bodies, got {opset}")
    protos = {}
    for name, data in _base_protos().items():
        fn = onnx.FunctionProto()
        fn.ParseFromString(data)
        del fn.opset_import[:]
        fn.opset_import.append(onnx.helper.make_opsetid("", opset))
        if set(fn.attribute) != {"plugin_namespace", "plugin_version"}:
            raise AssertionError(f"{name}: unexpected attributes {list(fn.attribute)}")
        protos[name] = fn
    return protos


def _used_qm_ops(model: onnx.ModelProto) -> set[str]:
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    used, stack = set(), nodes
    while stack:
        node = stack.pop()
        if node.domain == QM_DOMAIN:
            used.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                stack.extend(attr.g.node)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    stack.extend(g.node)
    return used


def attach_qm_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with the function of every ``qm`` op it uses (graph, subgraphs, functions).

    Adds the ``qm`` opset import (version 1) and makes each function import the model's
    default-domain opset version (the checker rejects a mismatch). A ``qm`` function already
    in the model is replaced; other functions are kept.

    Raises:
        TypeError: ``model`` is not a ``ModelProto``.
        ValueError: a ``qm`` node has an unknown op type, or the model's opset is below 15.
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
    used = _used_qm_ops(model)
    unknown = used - set(QM_OPS)
    if unknown:
        raise ValueError(f"unknown qm op type(s) {sorted(unknown)}; known: {list(QM_OPS)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not used:
        return out
    versions = [o.version for o in out.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError("model has no default-domain opset import")
    protos = qm_function_protos(versions[0])
    kept = [f for f in out.functions if not (f.domain == QM_DOMAIN and f.name in QM_OPS)]
    del out.functions[:]
    out.functions.extend(kept)
    out.functions.extend(protos[name] for name in QM_OPS if name in used)
    _import_qm(out.opset_import, "model")
    for fn in out.functions:  # (the repeated field holds copies of ``kept``)
        if fn.domain != QM_DOMAIN and any(node.domain == QM_DOMAIN for node in fn.node):
            _import_qm(fn.opset_import, f"function {fn.domain}::{fn.name}")
    return out


def _import_qm(imports, owner: str) -> None:
    found = [o for o in imports if o.domain == QM_DOMAIN]
    if not found:
        imports.append(onnx.helper.make_opsetid(QM_DOMAIN, 1))
    elif any(o.version != 1 for o in found):
        raise ValueError(f"{owner} imports domain qm at version {found[0].version}, expected 1")

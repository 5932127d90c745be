"""Model-level rules of the TensorRT check: opset range, tensor data types (external data: :mod:`.data_rules`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import onnx

from ..versions import TrtVersion, max_onnx_opset

from ...export.graph_walk import function_key
from .findings import Finding
from .ops import DTYPE_NAMES, dtype_verdict

__all__ = ["opset_findings", "infer_types", "dtype_findings", "MIN_OPSET"]

#: The parser is documented for opset 9 and later.
MIN_OPSET = 9


def opset_findings(opset: int | None, version: TrtVersion) -> list[Finding]:
    """The model's default-domain opset against the range the parser documents."""
    top = max_onnx_opset(version)
    if opset is None:
        return [
            Finding(
                "warning", "opset-range", "the model imports no default-domain ONNX opset", "export with opset 17-20"
            )
        ]
    if opset < MIN_OPSET:
        return [
            Finding(
                "warning",
                "opset-range",
                f"opset {opset} is below {MIN_OPSET}, the oldest the TensorRT {version} parser supports",
                f"re-export with opset {MIN_OPSET}..{top} (or convert with onnx.version_converter)",
            )
        ]
    if opset > top:
        return [
            Finding(
                "warning",
                "opset-range",
                f"opset {opset} is newer than {top}, the newest the TensorRT {version} parser documents; ops whose "
                "newer versions it does not know may fail",
                f"re-export with opset <= {top} (torch.onnx.export(..., opset_version={top}))",
            )
        ]
    return []


def _typed(vis: Iterable[onnx.ValueInfoProto]) -> dict[str, int]:
    return {vi.name: vi.type.tensor_type.elem_type for vi in vis if vi.type.HasField("tensor_type")}


def _graph_types(graph: onnx.GraphProto, out: dict[str, int]) -> None:
    out.update(_typed(graph.input))
    out.update(_typed(graph.output))
    out.update(_typed(graph.value_info))
    out.update({t.name: t.data_type for t in graph.initializer})
    _node_types(graph.node, out)


def _node_types(nodes: Iterable[onnx.NodeProto], out: dict[str, int]) -> None:
    for node in nodes:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and node.output:
                out.setdefault(node.output[0], attr.t.data_type)
            if node.op_type == "Cast" and attr.name == "to" and not attr.ref_attr_name and node.output:
                out.setdefault(node.output[0], int(attr.i))
            if attr.type == onnx.AttributeProto.GRAPH:
                _graph_types(attr.g, out)
            for g in attr.graphs:
                _graph_types(g, out)


def infer_types(model: onnx.ModelProto) -> dict[str | None, dict[str, int]]:
    """Tensor name -> ONNX elem type per scope (``None``: the model graph; ``"qm::TokenMerge"``:
    that function's body), from ONNX shape inference where it succeeds, declared value
    infos, initializers, ``Constant`` and ``Cast`` nodes. A function body is typed from the
    input types at its first call site in the model graph."""
    inferred = _infer(model)
    main: dict[str, int] = {}
    _graph_types(inferred.graph, main)
    scoped: dict[str | None, dict[str, int]] = {None: {k: v for k, v in main.items() if v}}
    for fn in model.functions:
        types: dict[str, int] = {}
        call = next((n for n in model.graph.node if (n.domain, n.op_type) == (fn.domain, fn.name)), None)
        if call is not None:
            types.update(_body_types(model, fn, [main.get(i, 0) for i in call.input]))
        types.update(_typed(getattr(fn, "value_info", [])))
        _node_types(fn.node, types)
        scoped[function_key(fn.domain, fn.name)] = {k: v for k, v in types.items() if v}
    return scoped


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a best effort; declared types still count
        return model


def _body_types(model: onnx.ModelProto, fn: onnx.FunctionProto, input_types: list[int]) -> dict[str, int]:
    """Types inside ``fn``'s body, inferred on a throwaway graph made of the body."""
    inputs = [onnx.helper.make_tensor_value_info(name, t, None) for name, t in zip(fn.input, input_types) if t]
    if len(inputs) != len(fn.input):
        return {}
    graph = onnx.helper.make_graph(
        list(fn.node), fn.name, inputs, [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in fn.output]
    )
    body = onnx.helper.make_model(
        graph, opset_imports=list(fn.opset_import) or list(model.opset_import), functions=list(model.functions)
    )
    body.ir_version = model.ir_version or onnx.IR_VERSION
    out: dict[str, int] = {}
    _graph_types(_infer(body).graph, out)
    return out


def _roles(model: onnx.ModelProto) -> dict[str, str]:
    roles = {t.name: "initializer" for t in model.graph.initializer}
    roles.update({vi.name: "graph input" for vi in model.graph.input if vi.name not in roles})
    roles.update({vi.name: "graph output" for vi in model.graph.output})
    return roles


def dtype_findings(
    model: onnx.ModelProto, scoped_types: dict[str | None, dict[str, int]], version: TrtVersion
) -> list[Finding]:
    """One finding per problem data type, naming up to five of its tensors (all scopes)."""
    roles = _roles(model)
    types = {name: t for scope in scoped_types.values() for name, t in scope.items()}
    types.update(scoped_types.get(None, {}))
    grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for name, dtype in sorted(types.items()):
        verdict = dtype_verdict(dtype, version)
        if verdict is None:
            continue
        severity, reason = verdict
        type_name = DTYPE_NAMES.get(dtype, str(dtype))
        role = roles.get(name, "intermediate")
        if type_name == "UINT8":
            if role in ("graph input", "graph output"):
                continue
            if role == "initializer":
                severity, reason = "info", "UINT8 initializers are converted to INT32 by the parser"
        grouped[(severity, type_name, reason)].append(name)
    findings = []
    for (severity, type_name, reason), names in sorted(grouped.items()):
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        findings.append(
            Finding(
                severity,
                "dtype",
                f"{len(names)} tensor(s) of type {type_name} ({shown}): {reason}",
                _DTYPE_FIX.get(
                    type_name, f"cast {type_name} tensors to a TensorRT type (float32/float16/int32) at export"
                ),
            )
        )
    return findings


_DTYPE_FIX = {
    "INT64": "nothing required; int32 indices halve index traffic (the qm ops use int32)",
    "DOUBLE": "export in float32 (model.float() before export)",
    "UINT8": "keep UINT8 at the network boundary only; cast to int32/float inside",
}

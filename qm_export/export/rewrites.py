"""Graph rewrites applied after tracing (onnx-ir), each keeping the model's semantics."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["rewrite_bool_where"]


def rewrite_bool_where(model: ir.Model) -> int:
    """Replace every ``Where(c, x, y)`` on bool ``x``/``y`` by ``Or(And(c, x), And(Not(c), y))``.

    ONNX Runtime's CPU provider has no ``Where`` kernel for bool data, and torch code (ours or a
    Hugging Face model's) produces one from ``torch.where`` on masks. Both forms broadcast
    alike. Returns the number of nodes rewritten (main graph and local functions).
    """
    count = 0
    graphs: list = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in list(graph):
            if node.op_type != "Where" or node.domain not in ("", "ai.onnx"):
                continue
            cond, x, y = node.inputs
            if x is None or y is None or x.dtype != ir.DataType.BOOL or y.dtype != ir.DataType.BOOL:
                continue
            base = node.name or "where"
            take_x = ir.node("And", [cond, x], name=f"{base}_and_x")
            not_c = ir.node("Not", [cond], name=f"{base}_not")
            take_y = ir.node("And", [not_c.outputs[0], y], name=f"{base}_and_y")
            out = node.outputs[0]
            merged = ir.node("Or", [take_x.outputs[0], take_y.outputs[0]], name=f"{base}_or")
            merged.outputs[0].dtype = ir.DataType.BOOL
            merged.outputs[0].shape = out.shape
            graph.insert_before(node, [take_x, not_c, take_y, merged])
            name = out.name
            out.replace_all_uses_with(merged.outputs[0], replace_graph_outputs=True)
            graph.remove(node, safe=True)
            merged.outputs[0].name = name
            count += 1
    return count

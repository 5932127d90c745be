"""Name the merge's nodes so that profilers can attribute time to it.

Profilers report time per node *name* (ONNX Runtime's ``<name>_kernel_time`` events, TensorRT's
layer profiler), so the export names every node of the merge by its role:

- ``merge_qm/<op>/<name>``: the qm ops (``TokenGroupIndex``, ``TokenMerge``,
  ``TokenUnmerge``), as plugin nodes, or every node of their inlined bodies
  (``merge_impl="inline"``). ONNX Runtime runs a plugin-form node as its inlined local
  function and names those nodes ``_inlfunc_<op>_...``: also the qm ops.
- ``merge_select/<name>``: selection, the nodes that exist only to decide *which* tokens merge
  (saliency, masses, seeds, assignment): every node that feeds a qm node's index or weight
  inputs (``assign``, ``seeds``, ``order``, ``offsets``, ``weight``) without also feeding the
  tokens being merged or unmerged (``TokenMerge``'s ``x``, ``TokenUnmerge``'s ``y``).

:func:`merge_role` reads a name back: ``"qm"``, ``"selection"`` or None.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

__all__ = ["QM_PREFIX", "SELECT_PREFIX", "QM_OPS", "merge_role", "layer_parts", "tag_merge_nodes", "qm_node_name"]

QM_PREFIX = "merge_qm/"
SELECT_PREFIX = "merge_select/"
QM_OPS = ("TokenGroupIndex", "TokenMerge", "TokenUnmerge")
#: qm op -> positions of its data inputs (the tokens moved), the others are selection.
_DATA_INPUTS = {"TokenGroupIndex": (), "TokenMerge": (0,), "TokenUnmerge": (0,)}
_ORT_INLINED = tuple(f"_inlfunc_{op}" for op in QM_OPS)


def _role_of_node(name: str) -> str | None:
    if name.startswith(QM_PREFIX) or name.startswith(_ORT_INLINED):
        return "qm"
    if name.startswith(SELECT_PREFIX):
        return "selection"
    return None


def layer_parts(name: str) -> list[str]:
    """The ONNX node names inside a (possibly fused) TensorRT layer name: ``a + b``,
    ``PWN(a, b)``, ``{ForeignNode[a...b]}`` (first and last node of the fused range),
    ``Reformatting CopyNode for Input Tensor 0 to a``; a plain name is itself."""
    text = name.strip()
    for prefix in ("Reformatting CopyNode for Output Tensor ", "Reformatting CopyNode for Input Tensor "):
        if text.startswith(prefix):
            _, _, text = text.partition(" to ")
    if text.startswith("{ForeignNode[") and text.endswith("]}"):
        text = text[len("{ForeignNode["):-2].replace("...", " + ")
    while text.startswith("PWN(") and text.endswith(")"):
        text = text[4:-1].replace(", ", " + ")
    return [p.strip() for p in text.split(" + ") if p.strip()]


def merge_role(name: str) -> str | None:
    """``"qm"`` for a qm op's node (ours, or ONNX Runtime's inlined ``_inlfunc_<op>`` name),
    ``"selection"``, or None. A fused TensorRT layer (:func:`layer_parts`) has a role when
    every node in its name has that same role."""
    parts = layer_parts(name)
    if len(parts) <= 1:
        return _role_of_node(parts[0] if parts else name)
    roles = {_role_of_node(part) for part in parts}
    return roles.pop() if len(roles) == 1 else None


def qm_node_name(op: str, name: str) -> str:
    """The name a qm node (or a node of its inlined body) gets."""
    return f"{QM_PREFIX}{op}/{name}"


def _ancestors(values: Iterable[ir.Value | None]) -> set[int]:
    """ids of every node that (transitively) produces ``values`` in the main graph."""
    seen: set[int] = set()
    stack = [v.producer() for v in values if v is not None and v.producer() is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
    return seen


def tag_merge_nodes(model: ir.Model) -> dict[str, int]:
    """Rename the qm nodes and the selection nodes of ``model``'s main graph (in place).

    Returns:
        ``{"qm": count, "selection": count}``.
    """
    qm_nodes = [n for n in model.graph if n.domain == "qm" and n.op_type in QM_OPS]
    data = [n.inputs[i] for n in qm_nodes for i in _DATA_INPUTS[n.op_type] if i < len(n.inputs)]
    index = [v for n in qm_nodes for i, v in enumerate(n.inputs) if i not in _DATA_INPUTS[n.op_type]]
    selection = _ancestors(index) - _ancestors(data)
    counts = {"qm": 0, "selection": 0}
    for node in model.graph:
        name = node.name or f"{node.op_type}_{counts['qm'] + counts['selection']}"
        if node.domain == "qm" and node.op_type in QM_OPS:
            if not name.startswith(QM_PREFIX):
                node.name = qm_node_name(node.op_type, name)
            counts["qm"] += 1
        elif id(node) in selection:
            if not name.startswith(SELECT_PREFIX):
                node.name = SELECT_PREFIX + name
            counts["selection"] += 1
    return counts

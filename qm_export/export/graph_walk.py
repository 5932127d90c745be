"""Walk every node of an ONNX model: the main graph, nested subgraphs (If/Loop/Scan bodies)
and model-local function bodies, saying where each node sits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import onnx

from .qm_contract import is_qm_plugin_node

__all__ = ["NodeSite", "function_key", "node_label", "iter_nodes", "qm_plugins_used"]


@dataclass(frozen=True)
class NodeSite:
    """A node and its place.

    ``graph``: a path such as ``main`` or ``main/Loop_3.body``; ``function``: the
    ``domain::name`` of the local function whose body holds it (``None`` for the model graph);
    ``depth``: how many subgraphs deep it is inside that graph or function; ``index``: its
    position in its own graph's node list.
    """

    node: onnx.NodeProto
    graph: str
    function: str | None
    depth: int
    index: int = 0


def function_key(domain: str, name: str) -> str:
    """``("qm", "TokenMerge")`` -> ``"qm::TokenMerge"``; the default domain prints bare."""
    return f"{domain}::{name}" if domain and domain != "ai.onnx" else name


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<op_type>#<index>`` for an unnamed node."""
    return node.name or f"{node.op_type}#{index}"


def _walk(nodes, graph: str, function: str | None, depth: int) -> Iterator[NodeSite]:
    for index, node in enumerate(nodes):
        yield NodeSite(node, graph, function, depth, index)
        for attr in node.attribute:
            subs = []
            if attr.type == onnx.AttributeProto.GRAPH:
                subs = [(attr.name, attr.g)]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                subs = [(f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs)]
            for label, sub in subs:
                path = f"{graph}/{node_label(node, index)}.{label}"
                yield from _walk(sub.node, path, function, depth + 1)


def iter_nodes(model: onnx.ModelProto) -> Iterator[NodeSite]:
    """Every node of ``model``: main graph and its subgraphs first, then each local function."""
    yield from _walk(model.graph.node, "main", None, 0)
    for fn in model.functions:
        key = function_key(fn.domain, fn.name)
        yield from _walk(fn.node, key, key, 0)


def qm_plugins_used(model: onnx.ModelProto) -> list[str]:
    """Sorted ``qm::Name`` of the plugin nodes anywhere in the model (for the engine sidecar)."""
    used = {
        function_key(site.node.domain or "qm", site.node.op_type)
        for site in iter_nodes(model)
        if is_qm_plugin_node(site.node.domain, site.node.op_type)
    }
    return sorted(used)

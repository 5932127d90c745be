"""The *debug twin* of an exported model: the same graph with every merge's ``assign`` and
``seeds`` exposed as outputs again, so a saved model's selection can be validated.

``convert`` saves the model without the debug outputs; dropping them removes the few nodes
that only computed them (e.g. the concatenation of the protected tokens' indices). Before the
file is written, :func:`twin_recipe` keeps exactly those nodes, the initializers only they
read and the output declarations, as a serialized ``GraphProto`` in the metadata key
``qm_export.debug_twin`` (``export_onnx`` does this). :func:`make_debug_twin` splices them back.

The splice works on protobuf names (nodes reference values by name), which is what an ONNX
graph is; an onnx-ir round trip would rebuild the same names. A model whose graph no longer
has a value the recipe reads (edited after export) cannot get a twin: :class:`TwinError`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import onnx

from .onnx_export import is_debug_output

__all__ = ["TWIN_KEY", "TwinError", "twin_recipe", "make_debug_twin", "has_debug_outputs", "MAX_RECIPE_BYTES"]

TWIN_KEY = "qm_export.debug_twin"
#: A recipe larger than this is not stored (it would mean the debug outputs own real weights).
MAX_RECIPE_BYTES = 1 << 20


class TwinError(ValueError):
    """The model cannot be given its debug outputs back; the message says why."""


def has_debug_outputs(model: onnx.ModelProto) -> bool:
    """Whether the graph already outputs ``merge{i}_assign`` / ``merge{i}_seeds``."""
    return any(is_debug_output(o.name) for o in model.graph.output)


def twin_recipe(nodes: Iterable[onnx.NodeProto], initializers: Iterable[onnx.TensorProto],
                outputs: Iterable[onnx.ValueInfoProto]) -> str | None:
    """The nodes and initializers that only the debug ``outputs`` need, base64-encoded as a
    ``GraphProto``; None when there are no debug outputs or the recipe would exceed
    :data:`MAX_RECIPE_BYTES`."""
    outputs = [o for o in outputs if is_debug_output(o.name)]
    if not outputs:
        return None
    graph = onnx.GraphProto(name="qm_export_debug_twin")
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.output.extend(outputs)
    data = graph.SerializeToString()
    if len(data) > MAX_RECIPE_BYTES:
        return None
    return base64.b64encode(data).decode("ascii")


def _available(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        names.update(node.output)
    return names


def _reads(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    return {name for n in nodes for name in n.input if name}


def make_debug_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its debug outputs restored (``model`` itself if it has them).

    Raises:
        TwinError: no ``qm_export.debug_twin`` metadata (not made by ``convert``, or a model
            without merges), an unreadable recipe, or a graph that lost a value it reads.
    """
    if has_debug_outputs(model):
        return model
    meta = {p.key: p.value for p in model.metadata_props}
    if TWIN_KEY not in meta:
        if "qm_export.source" in meta:
            raise TwinError("the model records no debug outputs to restore (it merges nothing, "
                            "or it was converted by an older qm-export)")
        raise TwinError("the model has no merge debug outputs and no qm-export metadata to restore them from "
                        "(re-export it with 'qm-export convert --debug-outputs')")
    try:
        graph = onnx.GraphProto()
        graph.ParseFromString(base64.b64decode(meta[TWIN_KEY], validate=True))
    except Exception as err:
        raise TwinError(f"the model's {TWIN_KEY} metadata is unreadable ({type(err).__name__})") from None
    produced = {name for n in graph.node for name in n.output} | {i.name for i in graph.initializer}
    missing = sorted(_reads(graph.node) - produced - _available(model))
    if missing:
        raise TwinError(f"the graph no longer has the values its merge outputs are computed from ({', '.join(missing[:5])}); "
                        "it was edited after export")
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    twin.graph.node.extend(graph.node)
    twin.graph.initializer.extend(graph.initializer)
    twin.graph.output.extend(graph.output)
    return twin

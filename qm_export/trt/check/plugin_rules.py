"""Rules for ``qm`` plugin nodes: the attribute contract (spec §6) and what the parser of a
given version does with the node (plugin, inlined local function, or nothing it can use)."""

from __future__ import annotations

from typing import Iterator

import onnx

from ...export.qm_contract import QM_DOMAIN, QM_NODE_ATTRS, QM_OPS, QM_PLUGIN_VERSION
from ..versions import (
    BROKEN_PLUGINS_MESSAGE,
    has_aot_plugins,
    has_python_plugins,
    plugin_namespace_from_domain,
    prefers_plugin_over_function,
    python_plugins_broken,
)
from .findings import Finding
from .node_rules import NodeContext

__all__ = ["rule_plugin_contract", "plugin_fate", "PLUGIN_FIX"]

PLUGIN_FIX = (
    'emit the node as qm-export does: domain "qm", plugin_namespace="qm", plugin_version="1", no other attribute'
)


def rule_plugin_contract(ctx: NodeContext) -> Iterator[Finding]:
    """Name, arity, domain and attributes of a ``qm`` node against spec §6."""
    node = ctx.node
    spec = QM_OPS.get(node.op_type)
    if spec is None:
        yield ctx.finding(
            "error",
            "plugin-unknown-op",
            f"{node.domain}::{node.op_type} is in the qm domain but is not a qm op ({', '.join(QM_OPS)})",
            "use one of the qm ops, or move the node out of the qm domain",
        )
        return
    n_in = len(node.input)
    n_out = len([o for o in node.output if o])
    if n_in != len(spec.inputs) or n_out != len(spec.outputs):
        yield ctx.finding(
            "error",
            "plugin-arity",
            f"{spec.name} has {n_in} input(s) and {n_out} output(s); the qm plugin takes {len(spec.inputs)} "
            f"({', '.join(spec.inputs)}) and gives {len(spec.outputs)} ({', '.join(spec.outputs)})",
            PLUGIN_FIX,
        )
    if node.domain != QM_DOMAIN:
        yield ctx.finding(
            "warning",
            "plugin-domain",
            f"{spec.name} sits in domain {node.domain or '(default)'!r}, not 'qm'; ONNX looks its local function up "
            "by domain, and TensorRT 10.10+ takes the domain as plugin namespace only for a node without "
            "plugin_namespace and without a local function of its name",
            PLUGIN_FIX,
        )
    attrs = {a.name: a for a in node.attribute}
    yield from _namespace(ctx, attrs.pop("plugin_namespace", None))
    yield from _version(ctx, attrs.pop("plugin_version", None))
    aot = attrs.pop("aot", None)
    if aot is not None:
        mode = "AOT (aot=1)" if aot.i else "JIT (aot=0, needs Python at run time)"
        yield ctx.finding(
            "warning",
            "plugin-aot-attr",
            f"attribute 'aot' forces {mode} for this node, overriding the build's AOT preference",
            "drop the 'aot' attribute; qm-export build already prefers AOT plugins",
        )
    for name in sorted(attrs):
        yield ctx.finding(
            "error",
            "plugin-extra-attr",
            f"attribute {name!r} is not a field of the qm plugin: the parser drops it (or, if it were a field, AOT "
            "plugins would receive it positionally and never serialize it)",
            f"remove attribute {name!r}; qm ops take their sizes from input shapes",
        )


def _string_value(attr: onnx.AttributeProto) -> str | None:
    return attr.s.decode("utf-8", "replace") if attr.type == onnx.AttributeProto.STRING else None


def _namespace(ctx: NodeContext, attr: onnx.AttributeProto | None) -> Iterator[Finding]:
    if attr is None:
        yield ctx.finding(
            "error",
            "plugin-namespace",
            "no plugin_namespace attribute: with a local function of the same name every TensorRT inlines the "
            "function instead of the plugin (the parser looks the plugin up in namespace '' and keys local "
            "functions by name only); without one, TensorRT before 10.10 finds no plugin at all",
            PLUGIN_FIX,
        )
    elif _string_value(attr) != QM_NODE_ATTRS["plugin_namespace"]:
        yield ctx.finding(
            "error",
            "plugin-namespace",
            f"plugin_namespace is {_string_value(attr) if _string_value(attr) is not None else 'not a string'!r}; "
            "the qm plugins are registered in namespace 'qm'",
            PLUGIN_FIX,
        )


def _version(ctx: NodeContext, attr: onnx.AttributeProto | None) -> Iterator[Finding]:
    if attr is None:
        yield ctx.finding(
            "warning",
            "plugin-version",
            'no plugin_version attribute: the parser assumes "1", which matches, but spec §6 requires it',
            PLUGIN_FIX,
        )
    elif _string_value(attr) != QM_PLUGIN_VERSION:
        yield ctx.finding(
            "error",
            "plugin-version",
            f"plugin_version is {_string_value(attr) if _string_value(attr) is not None else 'not a string'!r}; "
            f"the qm plugins are version {QM_PLUGIN_VERSION!r}",
            PLUGIN_FIX,
        )


def plugin_fate(ctx: NodeContext) -> tuple[str, Finding | None]:
    """What the parser of ``ctx.version`` does with this qm node: ``("plugin", f)``,
    ``("function", f)`` (local function inlined) or ``("missing", f)`` (neither works).

    ``f`` is the finding to report, or ``None`` when the node imports as an AOT plugin.
    Assumes ``qm_export_plugins`` is registered before parsing (``qm-export build`` does it).
    """
    node, v = ctx.node, ctx.version
    has_function = any(name == node.op_type for _, name in ctx.functions)  # the parser keys by name only
    has_ns = any(a.name == "plugin_namespace" for a in node.attribute)
    if has_function and not (has_python_plugins(v) and prefers_plugin_over_function(v, has_ns)):
        why = _why_inlined(ctx, has_ns)
        return "function", ctx.finding(
            "warning",
            "plugin-inlined",
            f"TensorRT {v} inlines the local function {node.op_type} (standard-op body) "
            f"instead of the qm plugin: {why}",
            'use TensorRT >= 10.9 with plugin_namespace="qm" on the node, so the plugin (one fused kernel) is used',
        )
    if not has_python_plugins(v):
        return "missing", ctx.finding(
            "error",
            "plugin-unavailable",
            f"TensorRT {v} has no Python plugins (10.6+) and the model has no local function for {node.op_type}",
            "use TensorRT >= 10.9, or export with the qm local functions (or inlined) so standard ops run instead",
        )
    if not has_function and not has_ns and not (plugin_namespace_from_domain(v) and node.domain == QM_DOMAIN):
        return "missing", ctx.finding(
            "error",
            "plugin-unavailable",
            f"without plugin_namespace, TensorRT {v} looks for {node.op_type} in plugin namespace '' (the fallback "
            "to the node's domain 'qm' needs 10.10+), and there is no local function to inline",
            PLUGIN_FIX,
        )
    if python_plugins_broken(v):
        return "plugin", ctx.finding(
            "error",
            "plugin-broken-trt",
            f"{BROKEN_PLUGINS_MESSAGE}; qm-export build refuses TensorRT {v} for models with qm nodes",
            "use TensorRT 10.13 or 10.15+",
        )
    if not has_aot_plugins(v):
        return "plugin", ctx.finding(
            "warning",
            "plugin-jit-only",
            f"TensorRT {v} has no AOT Python plugins (10.9+): the engine calls the JIT plugin, so it runs only in a "
            "Python process that imported qm_export_plugins, never under trtexec/C++; qm-export build refuses it",
            "use TensorRT >= 10.9",
        )
    return "plugin", None


def _why_inlined(ctx: NodeContext, has_ns: bool) -> str:
    v = ctx.version
    if not has_python_plugins(v):
        return "Python plugins need 10.6+"
    if not v.at_least(10, 7):
        return "parsers before 10.7 always prefer a local function over a plugin of the same name"
    if v.at_least(10, 15):
        return "from 10.15 the parser prefers the plugin only when the node carries plugin_namespace"
    return (
        "without plugin_namespace the parser looks the plugin up in namespace '' (it reads only that attribute "
        "when a local function of the same name exists; the domain fallback applies only without one)"
    )

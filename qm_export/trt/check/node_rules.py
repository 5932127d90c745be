"""Per-node rules of the TensorRT ONNX parser (standard ops). Each rule takes a
:class:`NodeContext` and yields :class:`Finding` s; :data:`NODE_RULES` lists them in order.
The plugin rules for ``qm`` nodes live in :mod:`qm_export.trt.check.plugin_rules`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import onnx

from ..versions import TrtVersion

from ...export.graph_walk import NodeSite, function_key
from ...export.qm_contract import is_qm_plugin_node
from .consts import ConstantResolver
from .findings import Finding
from .ops import DOCUMENTED_TYPES, DTYPE_NAMES, is_documented_unsupported, is_supported_op, op_added_in

__all__ = ["NodeContext", "NODE_RULES", "TOPK_MAX_K"]

#: TopK's K must be below this (operators.md: "K input must be less than 3840").
TOPK_MAX_K = 3840
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class NodeContext:
    """A node with what the rules need to judge it."""

    site: NodeSite
    label: str
    version: TrtVersion
    consts: ConstantResolver
    types: Mapping[str, int]
    functions: frozenset[tuple[str, str]]
    opset: int

    @property
    def node(self) -> onnx.NodeProto:
        return self.site.node

    def finding(self, severity: str, rule: str, message: str, fix: str) -> Finding:
        node = self.node
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else function_key(node.domain, node.op_type)
        return Finding(severity, rule, message, fix, self.label, op, self.site.function, self.site.graph)

    def attr(self, name: str) -> onnx.AttributeProto | None:
        for a in self.node.attribute:
            if a.name == name:
                return a
        return None

    def input(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""


Rule = Callable[[NodeContext], Iterator[Finding]]

_UNSUPPORTED_REASONS = {
    "Unique": "its output shape depends on the data (how many distinct values)",
    "Compress": "its output shape depends on the data (how many true conditions)",
}


def rule_op_support(ctx: NodeContext) -> Iterator[Finding]:
    """Ops the parser has no importer for, and custom-domain ops with neither function nor plugin."""
    node, v = ctx.node, ctx.version
    if is_qm_plugin_node(node.domain, node.op_type) or (node.domain, node.op_type) in ctx.functions:
        return
    if node.domain not in _DEFAULT_DOMAINS:
        yield ctx.finding(
            "error",
            "custom-op",
            f"custom op {node.domain}::{node.op_type} has no TensorRT importer and no model-local function; "
            f"the parser would need a plugin named {node.op_type!r} registered, "
            "and qm-export registers only the qm plugins",
            "replace it with standard ONNX ops, add a local function of the same domain and name, or register a plugin",
        )
        return
    if is_supported_op(node.op_type, v):
        return
    since = op_added_in(node.op_type)
    if since is not None:
        yield ctx.finding(
            "error",
            "op-too-new",
            f"{node.op_type} is imported by TensorRT {since} and later; this check is for {v}",
            f"use TensorRT >= {since}, or export {node.op_type} decomposed into older ops",
        )
        return
    reason = _UNSUPPORTED_REASONS.get(node.op_type)
    documented = (
        "listed as unsupported in operators.md"
        if is_documented_unsupported(node.op_type)
        else "not an op TensorRT imports"
    )
    yield ctx.finding(
        "error",
        "unsupported-op",
        f"{node.op_type} is {documented}" + (f": {reason}" if reason else ""),
        "rewrite it with supported ops (or move it out of the exported graph)",
    )


def _int_attr(ctx: NodeContext, name: str, default: int) -> int | None:
    attr = ctx.attr(name)
    if attr is None:
        return default
    return None if attr.ref_attr_name else int(attr.i)


def _str_attr(ctx: NodeContext, name: str, default: str) -> str | None:
    attr = ctx.attr(name)
    if attr is None:
        return default
    return None if attr.ref_attr_name else attr.s.decode("utf-8", "replace")


def rule_topk(ctx: NodeContext) -> Iterator[Finding]:
    """TopK: ``sorted`` must be 1 and K < 3840; a K not known at build time cannot be proven so."""
    if ctx.node.op_type != "TopK" or ctx.node.domain not in _DEFAULT_DOMAINS:
        return
    if _int_attr(ctx, "sorted", 1) == 0:
        yield ctx.finding(
            "error",
            "topk-unsorted",
            "TopK with sorted=0: TensorRT supports only sorted=1",
            "export TopK with sorted=1 (torch.topk(..., sorted=True))",
        )
    if ctx.opset < 10:
        k = _int_attr(ctx, "k", -1)
        k_value = None if k is None or k < 0 else k
    else:
        arr = ctx.consts.value(ctx.input(1))
        k_value = int(arr.reshape(-1)[0]) if arr is not None and arr.size >= 1 else None
    if k_value is None:
        yield ctx.finding(
            "warning",
            "topk-k-dynamic",
            f"TopK's K ({ctx.input(1) or 'attribute'}) is not a build-time constant, so K < {TOPK_MAX_K} cannot be "
            "proven; TensorRT fails at build or run time when K reaches it",
            f"keep the token count that feeds K below {TOPK_MAX_K} in the profile's max shape, or make K constant",
        )
    elif k_value >= TOPK_MAX_K:
        yield ctx.finding(
            "error",
            "topk-k-limit",
            f"TopK with K={k_value}: TensorRT requires K < {TOPK_MAX_K}",
            f"select fewer than {TOPK_MAX_K} tokens per TopK (split the selection, or lower keep_ratio / token count)",
        )


def rule_scatter_reduction(ctx: NodeContext) -> Iterator[Finding]:
    """ScatterND has no reductions; ScatterElements reductions go through a TensorRT plugin."""
    op = ctx.node.op_type
    if op not in ("ScatterND", "ScatterElements") or ctx.node.domain not in _DEFAULT_DOMAINS:
        return
    reduction = _str_attr(ctx, "reduction", "none")
    if reduction in ("none", ""):
        return
    shown = "(from a function attribute)" if reduction is None else repr(reduction)
    if op == "ScatterND":
        yield ctx.finding(
            "error",
            "scatternd-reduction",
            f"ScatterND with reduction={shown}: TensorRT supports only reduction='none'",
            "use ScatterElements, or (for merging) the qm::TokenMerge op, which needs no scatter-add",
        )
    else:
        yield ctx.finding(
            "warning",
            "scatterelements-reduction",
            f"ScatterElements with reduction={shown} runs through TensorRT's ScatterElements plugin, not a native "
            "layer: slower, and the engine needs libnvinfer_plugin at run time",
            "prefer qm::TokenMerge for grouped sums, or a reduction-free formulation",
        )


def _needs_constant(ctx: NodeContext, op: str, index: int, what: str, rule: str) -> Iterator[Finding]:
    if ctx.node.op_type != op or ctx.node.domain not in _DEFAULT_DOMAINS:
        return
    name = ctx.input(index)
    if name and not ctx.consts.is_constant(name):
        yield ctx.finding(
            "error",
            rule,
            f"{op}'s {what} ({name}) is not a build-time constant; TensorRT requires a constant {what}",
            f"make the {what} an initializer or Constant (fold it with `polygraphy surgeon sanitize --fold-constants`)",
        )


def rule_onehot_depth(ctx: NodeContext) -> Iterator[Finding]:
    """OneHot's depth must be known at build time."""
    yield from _needs_constant(ctx, "OneHot", 1, "depth", "onehot-depth")


def rule_cumsum_axis(ctx: NodeContext) -> Iterator[Finding]:
    """CumSum's axis must be known at build time; before 10.8 it must be an initializer or
    Constant (the 10.1 importer asserts weights; 10.8 added dynamic-axis support)."""
    yield from _needs_constant(ctx, "CumSum", 1, "axis", "cumsum-axis")
    name = ctx.input(1)
    if (
        ctx.node.op_type == "CumSum"
        and ctx.node.domain in _DEFAULT_DOMAINS
        and not ctx.version.at_least(10, 8)
        and ctx.consts.is_constant(name)
        and not ctx.consts.is_weight(name)
    ):
        yield ctx.finding(
            "error",
            "cumsum-axis",
            f"CumSum's axis ({name}) is computed from constants, but TensorRT {ctx.version} needs it as an "
            "initializer or Constant (10.8+ accepts more)",
            "fold the axis into an initializer (`polygraphy surgeon sanitize --fold-constants`)",
        )


_DATA_DEPENDENT = {"NonZero", "NonMaxSuppression"}


def rule_data_dependent(ctx: NodeContext) -> Iterator[Finding]:
    """Supported ops whose output shape depends on the data (sized at run time)."""
    if ctx.node.op_type in _DATA_DEPENDENT and ctx.node.domain in _DEFAULT_DOMAINS:
        yield ctx.finding(
            "warning",
            "data-dependent-shape",
            f"{ctx.node.op_type}'s output shape depends on the data: TensorRT sizes it at run time (data-dependent "
            "shape), which costs a synchronisation and blocks fusion",
            "use a fixed-size formulation (masks, TopK with a constant K) where the count is bounded",
        )


def rule_op_dtype(ctx: NodeContext) -> Iterator[Finding]:
    """The first input's type against the types operators.md documents for the op."""
    node = ctx.node
    allowed = DOCUMENTED_TYPES.get(node.op_type)
    if allowed is None or node.domain not in _DEFAULT_DOMAINS or not node.input:
        return
    dtype = ctx.types.get(node.input[0])
    if dtype is None:
        return
    name = DTYPE_NAMES.get(dtype, str(dtype))
    if name not in allowed:
        yield ctx.finding(
            "warning",
            "op-dtype",
            f"{node.op_type} on {name} input {node.input[0]!r}: operators.md documents only {', '.join(allowed)}",
            f"cast the input to one of {', '.join(allowed)} around {node.op_type}",
        )


NODE_RULES: tuple[Rule, ...] = (
    rule_op_support,
    rule_topk,
    rule_scatter_reduction,
    rule_onehot_depth,
    rule_cumsum_axis,
    rule_data_dependent,
    rule_op_dtype,
)

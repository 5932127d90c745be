"""``qm-export check``: will this ONNX build with TensorRT, and where will it degrade?

Walks the model graph, nested subgraphs and model-local functions, applying the rules of
the TensorRT ONNX parser of a given version (:mod:`.node_rules`, :mod:`.plugin_rules`) and
model-level rules (opset range, data types, external data). No GPU or TensorRT needed.

Findings inside a local function that the parser will not parse (the qm plugin replaces
it, or nothing calls it) are reported as ``info``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

import onnx

from ..versions import DEFAULT_CHECK_VERSION, TrtVersion, max_onnx_opset

from ...export.crash_guard import first_in_child
from ...export.proto_strings import check_strings
from ...export.graph_walk import NodeSite, function_key, iter_nodes, node_label
from ...export.qm_contract import QM_OPS, is_qm_plugin_node
from .consts import ConstantResolver
from .findings import CheckReport, Finding
from .data_rules import external_data_findings
from .model_rules import dtype_findings, infer_types, opset_findings
from .plugin_rules import plugin_fate, rule_plugin_contract
from .node_rules import NODE_RULES, NodeContext

__all__ = ["check_model", "check_onnx_file", "load_onnx"]


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file's graph without its external weights.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path when
    the bytes are not an ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ValueError(f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.input and not model.opset_import):
        raise ValueError(f"{str(path)!r} is not an ONNX model (no graph)")
    check_strings(model, repr(str(path)))
    return model


def check_onnx_file(path: str | Path, version: TrtVersion = DEFAULT_CHECK_VERSION) -> CheckReport:
    """Check the ONNX file at ``path`` against TensorRT ``version``'s parser."""
    model = load_onnx(path)
    return check_model(model, version, name=str(path), base_dir=Path(path).parent)


def _default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return shapes


def _scope_resolvers(model: onnx.ModelProto, opset: int) -> dict[str | None, ConstantResolver]:
    """One constant resolver for the model graph (with its subgraphs) and one per function."""
    sites = list(iter_nodes(model))
    shapes = _static_shapes(model)
    initializers = {t.name: t for t in model.graph.initializer}
    for site in sites:
        for attr in site.node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                initializers.update({t.name: t for t in g.initializer})
    resolvers: dict[str | None, ConstantResolver] = {
        None: ConstantResolver(initializers, (s.node for s in sites if s.function is None), shapes, opset)
    }
    for fn in model.functions:
        key = function_key(fn.domain, fn.name)
        resolvers[key] = ConstantResolver({}, (s.node for s in sites if s.function == key), {}, opset)
    return resolvers


def _function_fates(
    sites: list[NodeSite], fates: dict[int, str], functions: frozenset[tuple[str, str]]
) -> dict[str, str]:
    """``"parsed"`` for each function some parsed call site inlines, else ``"plugin"`` (only
    plugin call sites) or ``"unused"``. ``fates``: id(node) -> fate of each qm node."""
    calls: dict[str | None, list[onnx.NodeProto]] = defaultdict(list)
    for site in sites:
        if (site.node.domain, site.node.op_type) in functions:
            calls[site.function].append(site.node)
    result = {function_key(d, n): "unused" for d, n in functions}
    parsed_scopes: list[str | None] = [None]
    seen: set[str | None] = set()
    while parsed_scopes:
        scope = parsed_scopes.pop()
        if scope in seen:
            continue
        seen.add(scope)
        for node in calls.get(scope, []):
            key = function_key(node.domain, node.op_type)
            if fates.get(id(node), "function") == "function":
                result[key] = "parsed"
                parsed_scopes.append(key)
            elif result[key] == "unused":
                result[key] = "plugin"
    return result


def check_model(
    model: onnx.ModelProto,
    version: TrtVersion = DEFAULT_CHECK_VERSION,
    name: str = "<model>",
    base_dir: Path | None = None,
) -> CheckReport:
    """Check an ``onnx.ModelProto`` against TensorRT ``version``; returns a :class:`CheckReport`."""
    opset = _default_opset(model)
    report = CheckReport(name, version, opset)
    report.findings.extend(opset_findings(opset, version))
    crash = first_in_child(lambda: infer_types(model), "ONNX shape inference")
    if crash is not None:  # the model would crash this process: report it, check without inferred types
        report.findings.append(Finding(
            "error", "runtime-crash", f"{crash} on this model (run in a child process, so check survived it); "
            "the TensorRT parser runs the same code and may crash too",
            "the file is malformed: re-export the model (qm-export convert) or copy it again in full"))
    types = infer_types(model) if crash is None else {None: {}}
    report.findings.extend(dtype_findings(model, types, version))
    report.findings.extend(external_data_findings(model, base_dir))

    functions = frozenset((fn.domain, fn.name) for fn in model.functions)
    resolvers = _scope_resolvers(model, opset or max_onnx_opset(version))
    sites = list(iter_nodes(model))
    node_findings: list[tuple[NodeSite, Finding]] = []
    fates: dict[int, str] = {}
    plugin_counts: dict[str, int] = defaultdict(int)
    for site in sites:
        ctx = NodeContext(
            site,
            node_label(site.node, site.index),
            version,
            resolvers[site.function],
            types.get(site.function, {}),
            functions,
            opset or 0,
        )
        for finding in _node_findings(ctx, fates, plugin_counts):
            node_findings.append((site, finding))

    function_fates = _function_fates(sites, fates, functions)
    for site, finding in node_findings:
        fate = function_fates.get(site.function) if site.function else None
        if fate == "plugin":
            finding = finding.downgraded(f"not parsed: TensorRT {version} uses the qm plugin instead of this function")
        elif fate == "unused":
            finding = finding.downgraded("not parsed: no node calls this function")
        report.findings.append(finding)
    if plugin_counts:
        listing = ", ".join(f"{n}x {op}" for op, n in sorted(plugin_counts.items()))
        report.findings.append(
            Finding(
                "info",
                "plugin-summary",
                f"{listing} import as AOT qm plugins once qm_export_plugins is registered (qm-export build does this)",
                "none needed; building elsewhere, call qm_export_plugins.register_plugins() before parsing and create "
                "the network with PREFER_AOT_PYTHON_PLUGINS (or call register_plugins(jit=False)): with both AOT and "
                "JIT implementations registered TensorRT otherwise raises 'has both AOT and JIT implementations'",
            )
        )
    return report


def _node_findings(ctx: NodeContext, fates: dict[int, str], plugin_counts: dict[str, int]) -> Iterator[Finding]:
    for rule in NODE_RULES:
        yield from rule(ctx)
    node = ctx.node
    if is_qm_plugin_node(node.domain, node.op_type):
        yield from rule_plugin_contract(ctx)
        if node.op_type not in QM_OPS:  # already an error; imports only through its function, if any
            fates[id(node)] = "function" if (node.domain, node.op_type) in ctx.functions else "missing"
            return
        fate, finding = plugin_fate(ctx)
        fates[id(node)] = fate
        if finding is not None:
            yield finding
        elif fate == "plugin":
            plugin_counts[function_key(node.domain or "qm", node.op_type)] += 1

"""Export a loaded model to ONNX in the spec's export form (spec §6).

The dynamo exporter traces the model's eval path (deterministic selection, no random ops);
the merge code emits ``qm::TokenGroupIndex`` / ``qm::TokenMerge`` / ``qm::TokenUnmerge`` nodes,
and this module attaches their model-local function bodies, or inlines them
(``merge_impl="inline"``: standard ops only). Graph surgery uses onnx-ir.

One trace gives two files: a *debug* model whose outputs include every merge layer's
``assign``/``seeds`` (used by validation) and the model that is saved, which drops those
outputs unless ``debug_outputs`` was asked for. Both share every other node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from .. import __version__
from .files import OutputPathError, check_output_path, replace_atomically
from .merge_nodes import QM_PREFIX, qm_node_name, tag_merge_nodes
from .rewrites import rewrite_bool_where

__all__ = [
    "MERGE_IMPLS",
    "DEBUG_PREFIX",
    "EXTERNAL_DATA_THRESHOLD",
    "ExportedModel",
    "export_onnx",
    "is_debug_output",
]

MERGE_IMPLS = ("plugin", "inline")
DEBUG_PREFIX = "merge"
#: Above this many bytes of weights the file is written with external data (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

log = logging.getLogger(__name__)
_QM_CALL_KEY = "qm_export.qm_call"


def is_debug_output(name: str) -> bool:
    """``merge{i}_assign`` / ``merge{i}_seeds`` outputs added by ``--debug-outputs``."""
    if not name.startswith(DEBUG_PREFIX):
        return False
    head, _, tail = name.partition("_")
    return head[len(DEBUG_PREFIX):].isdigit() and tail in ("assign", "seeds")


@dataclass
class ExportedModel:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the saved model; ``debug_path`` the model with every merge's ``assign``/``seeds``
            as outputs (a temporary file unless ``debug_outputs``; removed by :meth:`cleanup`).
        nodes: node count of the main graph; ``function_nodes`` inside local functions.
        qm_nodes: ``{op_type: count}`` of ``qm`` nodes in the main graph.
        functions: names of the model-local functions.
        file_bytes: size of ``path`` plus its external data.
        seconds: export wall time.
    """

    path: Path
    debug_path: Path
    merge_impl: str
    opset: int
    nodes: int
    function_nodes: int
    qm_nodes: dict[str, int]
    functions: list[str]
    input_names: list[str]
    output_names: list[str]
    debug_output_names: list[str]
    external_data: bool
    file_bytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)
    _tmpdir: tempfile.TemporaryDirectory | None = None  # type: ignore[type-arg]

    def cleanup(self) -> None:
        """Remove the temporary debug model (if any)."""
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "merge_impl": self.merge_impl,
            "opset": self.opset,
            "nodes": self.nodes,
            "function_nodes": self.function_nodes,
            "qm_nodes": self.qm_nodes,
            "functions": self.functions,
            "inputs": self.input_names,
            "outputs": self.output_names,
            "external_data": self.external_data,
            "file_bytes": self.file_bytes,
            "export_seconds": round(self.seconds, 2),
        }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and warnings (we report our own)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def trace_to_ir(loaded: Any, opset: int) -> ir.Model:
    """Trace ``loaded.export_module`` and translate it to ONNX; returns the onnx-ir model.

    ``torch.export`` runs first, non-strict, under ``size_oblivious`` (token counts derived
    from a dynamic length, ``K = f(N)``, are not specialised on being 0 or 1) and with runtime
    asserts instead of guards, the merge ops emitting their ``qm`` nodes; then the dynamo ONNX
    exporter translates the program. Doing the first step here (rather than letting
    ``torch.onnx.export`` try its fallbacks) means a model that cannot keep its dynamic axes
    fails loudly instead of being specialised.
    """
    import torch

    from ..merge.ops import emit_qm_nodes
    from ..models.export_view import size_oblivious

    args = tuple(getattr(loaded, "trace_inputs", loaded.example_inputs))
    with _quiet_exporter(), size_oblivious(), emit_qm_nodes():
        program = torch.export.export(
            loaded.export_module, args, dynamic_shapes=loaded.dynamic_shapes, strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            input_names=list(loaded.input_names),
            output_names=list(loaded.output_names),
            opset_version=opset,
            optimize=True,
            verbose=False,
            report=False,
        )
    return onnx_program.model


def _attach_functions(model: ir.Model) -> None:
    from .functions import qm_function_protos

    opset = model.opset_imports.get("", None)
    used = {n.op_type for n in model.graph.all_nodes() if n.domain == "qm"}
    for proto in qm_function_protos(opset).values():
        if proto.name in used:
            fn = ir.serde.deserialize_function(proto)
            model.functions[fn.identifier()] = fn
    if used:
        model.opset_imports["qm"] = 1


def _inline(model: ir.Model) -> None:
    # Mark the qm call nodes; their inlined bodies inherit the call's metadata, and are named
    # after it so that profilers attribute them to the merge (see merge_nodes).
    for node in model.graph:
        if node.domain == "qm":
            node.metadata_props[_QM_CALL_KEY] = f"{node.op_type}/{node.name}"
    ir_passes.InlinePass()(model)
    for i, node in enumerate(model.graph):
        call = node.metadata_props.pop(_QM_CALL_KEY, None)
        if call is not None:
            op, _, name = call.partition("/")
            node.name = qm_node_name(op, f"{name.removeprefix(QM_PREFIX + op + '/')}/{node.name or i}")
    ir_passes.RemoveUnusedFunctionsPass()(model)
    model.opset_imports.pop("qm", None)
    remaining = [n.op_type for n in model.graph.all_nodes() if n.domain == "qm"]
    if remaining:
        raise RuntimeError(f"inlining left qm nodes behind: {remaining}")


def _strip_debug_outputs(model: ir.Model) -> str | None:
    """Drop the debug outputs and the nodes only they needed; returns the debug twin's recipe
    (those nodes, initializers and outputs; see :mod:`.debug_twin`)."""
    from .debug_twin import twin_recipe

    debug = [v for v in model.graph.outputs if is_debug_output(v.name or "")]
    # Serialized now: removing a node disconnects its inputs.
    nodes_before = [(n, ir.serde.serialize_node(n)) for n in model.graph]
    inits_before = dict(model.graph.initializers)
    keep = [v for v in model.graph.outputs if not is_debug_output(v.name or "")]
    model.graph.outputs.clear()
    model.graph.outputs.extend(keep)
    ir_passes.RemoveUnusedNodesPass()(model)
    kept = {id(n) for n in model.graph}
    removed = [proto for n, proto in nodes_before if id(n) not in kept]
    inits = []
    for name, value in inits_before.items():
        if name not in model.graph.initializers and value.const_value is not None:
            tensor = ir.serde.serialize_tensor(value.const_value)
            tensor.name = name
            inits.append(tensor)
    return twin_recipe(removed, inits, [ir.serde.serialize_value(v) for v in debug])


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _save(model: ir.Model, path: Path, external: bool) -> None:
    if external:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)


def _check(path: Path, opset: int) -> None:
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        hint = ""
        if "bfloat16" in str(err) and opset < 22:
            hint = f" (bfloat16 needs opset 22 or later for this op; got opset {opset})"
        raise ValueError(f"the exported model fails onnx.checker.check_model(full_check=True){hint}: {err}") from None


def _count(model: ir.Model) -> tuple[int, int, dict[str, int], list[str]]:
    qm: dict[str, int] = {}
    for node in model.graph:
        if node.domain == "qm":
            qm[node.op_type] = qm.get(node.op_type, 0) + 1
    function_nodes = sum(len(list(fn)) for fn in model.functions.values())
    names = sorted(f"{fn.domain}::{fn.name}" for fn in model.functions.values())
    return len(list(model.graph)), function_nodes, qm, names


def export_onnx(
    loaded: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 20,
    merge_impl: str = "plugin",
    debug_outputs: bool = False,
    force: bool = False,
    metadata: dict[str, str] | None = None,
    traced: ir.Model | None = None,
) -> ExportedModel:
    """Export ``loaded`` (a :class:`qm_export.models.LoadedModel` built with
    ``debug_outputs=True``) to ``path``.

    Args:
        loaded: the model and its inputs (``export_module``, ``example_inputs``,
            ``input_names``, ``output_names``, ``dynamic_shapes``).
        path: the ``.onnx`` file to write (atomically; existing files need ``force``).
        opset: default-domain opset.
        merge_impl: ``"plugin"`` (qm nodes + local functions) or ``"inline"`` (standard ops).
        debug_outputs: keep every merge layer's ``assign``/``seeds`` as outputs.
        metadata: extra ``metadata_props`` (``qm_export.*`` keys are added here too).
        traced: a model from :func:`trace_to_ir` of the same ``loaded`` and ``opset`` to reuse
            (copied, not changed), e.g. to write both merge impls from one trace.

    Raises:
        OutputPathError: the path exists (without ``force``) or cannot be written.
        ValueError: bad ``merge_impl``/``opset``.
    """
    if merge_impl not in MERGE_IMPLS:
        raise ValueError(f"merge_impl must be one of {MERGE_IMPLS}, got {merge_impl!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 23:
        raise ValueError(f"opset must be an int in [18, 23], got {opset!r}")
    out = check_output_path(path, force=force, suffix=".onnx")
    start = time.perf_counter()
    model = trace_to_ir(loaded, opset) if traced is None else ir.from_proto(ir.to_proto(traced))
    rewrite_bool_where(model)
    tag_merge_nodes(model)
    _attach_functions(model)
    if merge_impl == "inline":
        _inline(model)
    meta = {"qm_export.version": __version__, "qm_export.merge_impl": merge_impl}
    meta.update(metadata or {})
    model.metadata_props.update(meta)
    external = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    debug_names = [v.name for v in model.graph.outputs if is_debug_output(v.name or "")]

    tmpdir = tempfile.TemporaryDirectory(prefix="qm-export-debug-")
    try:
        debug_path = Path(tmpdir.name) / out.name
        _save(model, debug_path, external)
        if not debug_outputs:
            recipe = _strip_debug_outputs(model)
            if recipe is not None:
                from .debug_twin import TWIN_KEY

                model.metadata_props[TWIN_KEY] = recipe
        nodes, fn_nodes, qm_nodes, functions = _count(model)
        with tempfile.TemporaryDirectory(prefix=".qm-export-", dir=out.parent) as staging:
            staged = Path(staging) / out.name
            _save(model, staged, external)
            _check(staged, opset)
            files = [staged] + ([staged.with_name(staged.name + ".data")] if external else [])
            replace_atomically(files, out.parent)
    except BaseException:
        tmpdir.cleanup()
        raise
    file_bytes = out.stat().st_size
    if external:
        file_bytes += out.with_name(out.name + ".data").stat().st_size
    if debug_outputs:
        tmpdir.cleanup()
        tmpdir_keep = None
        debug_path = out
    else:
        tmpdir_keep = tmpdir
    return ExportedModel(
        path=out,
        debug_path=debug_path,
        merge_impl=merge_impl,
        opset=opset,
        nodes=nodes,
        function_nodes=fn_nodes,
        qm_nodes=qm_nodes,
        functions=functions,
        input_names=[v.name for v in model.graph.inputs],
        output_names=[v.name for v in model.graph.outputs],
        debug_output_names=debug_names,
        external_data=external,
        file_bytes=file_bytes,
        seconds=time.perf_counter() - start,
        metadata=dict(meta),
        _tmpdir=tmpdir_keep,
    )


def metadata_json(value: Any) -> str:
    """Compact JSON for a ``metadata_props`` value."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


__all__ += ["metadata_json", "trace_to_ir", "OutputPathError"]

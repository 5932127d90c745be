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
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from .. import __version__
from .files import OutputPathError, StagedModel, check_output_path
from .merge_nodes import QM_PREFIX, qm_node_name, tag_merge_nodes
from .rewrites import rewrite_bool_where

__all__ = [
    "MERGE_IMPLS",
    "DEBUG_PREFIX",
    "EXTERNAL_DATA_THRESHOLD",
    "ExportCheckError",
    "ExportedModel",
    "export_onnx",
    "name_dynamic_axes",
    "is_debug_output",
]

MERGE_IMPLS = ("plugin", "inline")
DEBUG_PREFIX = "merge"
#: Above this many bytes of weights the file is written with external data (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

log = logging.getLogger(__name__)
_QM_CALL_KEY = "qm_export.qm_call"
#: Dim names of the model loaders mapped to the names the exported axes get.
AXIS_NAME_ALIASES = {"seq_len": "sequence", "seq": "sequence", "seq_length": "sequence", "batch_size": "batch"}


class ExportCheckError(RuntimeError):
    """The exported model fails ``onnx.checker`` (a failure of the export, not of the input)."""


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
    #: ``{symbol as traced: name}`` of the dynamic axes renamed (``s43`` -> ``batch``).
    axis_names: dict[str, str] = field(default_factory=dict)
    _tmpdir: tempfile.TemporaryDirectory | None = None  # type: ignore[type-arg]
    #: with ``staged=True``: the files under a temporary name in the output folder.
    _staged: StagedModel | None = None

    @property
    def staged(self) -> bool:
        """True while the saved model sits under its temporary name (see :meth:`commit`)."""
        return self._staged is not None

    @property
    def target(self) -> Path:
        """Where the model goes (``path`` once committed)."""
        return self._staged.target if self._staged is not None else self.path

    def commit(self, *, force: bool = False) -> Path:
        """Move a staged model (and its external data) into place; returns the final path."""
        if self._staged is None:
            return self.path
        final = self._staged.commit(force=force)
        if self.debug_path == self.path:
            self.debug_path = final
        self.path, self._staged = final, None
        return final

    def keep_as(self, path: str | os.PathLike[str]) -> Path:
        """Keep a staged model under another name (``OUT.failed.onnx``); returns it."""
        if self._staged is None:
            raise RuntimeError("the model is not staged")
        kept = self._staged.keep_as(path)
        if self.debug_path == self.path:
            self.debug_path = kept
        self.path, self._staged = kept, None
        return kept

    def discard(self) -> None:
        """Remove a staged model (nothing is left in the output folder)."""
        if self._staged is not None:
            self._staged.discard()
            self._staged = None

    def cleanup(self) -> None:
        """Remove the temporary debug model (if any); a staged model stays staged."""
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.target),
            "merge_impl": self.merge_impl,
            "opset": self.opset,
            "nodes": self.nodes,
            "function_nodes": self.function_nodes,
            "qm_nodes": self.qm_nodes,
            "functions": self.functions,
            "inputs": self.input_names,
            "outputs": self.output_names,
            "dynamic_axes": sorted(set(self.axis_names.values())),
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
        raise ExportCheckError(
            f"the exported model fails onnx.checker.check_model(full_check=True){hint}: {err}") from None


def _declared_axis_names(loaded: Any) -> dict[tuple[str, int], str]:
    """``{(input name, axis): name}`` from the Dims the loaded model declares
    (``loaded.dynamic_shapes``: one ``{axis: torch.export.Dim}`` per input, by position or by
    name), names normalised by :data:`AXIS_NAME_ALIASES` (``seq_len`` -> ``sequence``)."""
    spec = getattr(loaded, "dynamic_shapes", None)
    names = [str(n) for n in getattr(loaded, "input_names", ())]
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, (list, tuple)):
        items = list(zip(names, spec))
    else:
        return {}
    out: dict[tuple[str, int], str] = {}
    for name, axes in items:
        if isinstance(axes, (list, tuple)):
            axes = dict(enumerate(axes))
        if not isinstance(axes, dict):
            continue
        for axis, dim in axes.items():
            label = getattr(dim, "__name__", None)
            if isinstance(label, str) and label and isinstance(axis, int):
                out[(name, axis)] = AXIS_NAME_ALIASES.get(label, label)
    return out


def _values(model: ir.Model) -> Iterator[ir.Value]:
    """Every value of the model: graph inputs, initializers, node outputs (subgraphs and
    model-local functions included)."""
    graphs: list[Any] = [model.graph, *model.functions.values()]
    for graph in graphs:
        yield from graph.inputs
        yield from getattr(graph, "initializers", {}).values()
        for node in ir.traversal.RecursiveGraphIterator(graph):
            yield from node.outputs
        yield from graph.outputs


def name_dynamic_axes(model: ir.Model, loaded: Any) -> dict[str, str]:
    """Rename the exporter's symbolic dims (``s43``) after the axes the model declares
    (``batch``, ``sequence``), in every input, output and intermediate shape, also inside
    derived expressions (``Min(s53, ...)`` -> ``Min(sequence, ...)``); returns the mapping.

    A symbol is renamed only when every declared axis it stands for has the same name, and
    the name is not already a different symbol of the graph."""
    declared = _declared_axis_names(loaded)
    wanted: dict[str, set[str]] = {}
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, ir.SymbolicDim) and dim.value and (value.name, axis) in declared:
                wanted.setdefault(dim.value, set()).add(declared[(value.name, axis)])
    existing = {d.value for v in _values(model) if v.shape is not None
                for d in v.shape if isinstance(d, ir.SymbolicDim) and d.value}
    mapping: dict[str, str] = {}
    for symbol, labels in wanted.items():
        if len(labels) != 1:
            continue
        label = next(iter(labels))
        if label in mapping.values() or (label in existing and label != symbol):
            continue
        mapping[symbol] = label
    mapping = {k: v for k, v in mapping.items() if k != v}
    if not mapping:
        return {}
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True)))
                         + r")(?![A-Za-z0-9_])")
    seen: set[int] = set()
    for value in _values(model):
        if id(value) in seen or value.shape is None:
            continue
        seen.add(id(value))
        dims = list(value.shape)
        new = [ir.SymbolicDim(pattern.sub(lambda m: mapping[m.group(1)], d.value))
               if isinstance(d, ir.SymbolicDim) and d.value else d for d in dims]
        if any(a is not b for a, b in zip(dims, new)):
            value.shape = ir.Shape(new)
    return mapping


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
    staged: bool = False,
    progress: Callable[[str], None] | None = None,
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
        staged: leave the checked model under a temporary name in the output folder
            (``ExportedModel.path``); :meth:`ExportedModel.commit` moves it into place,
            :meth:`~ExportedModel.discard` removes it. Otherwise it is moved into place here.
        progress: called with the name of each stage (tracing, saving, checking).

    The dynamic axes get the names the model declares (``batch``, ``sequence``; see
    :func:`name_dynamic_axes`).

    Raises:
        OutputPathError: the path exists (without ``force``) or cannot be written.
        ValueError: bad ``merge_impl``/``opset``.
        ExportCheckError: the model fails ``onnx.checker`` (nothing is left behind).
    """
    if merge_impl not in MERGE_IMPLS:
        raise ValueError(f"merge_impl must be one of {MERGE_IMPLS}, got {merge_impl!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 23:
        raise ValueError(f"opset must be an int in [18, 23], got {opset!r}")
    say = progress or (lambda _msg: None)
    out = check_output_path(path, force=force, suffix=".onnx")
    start = time.perf_counter()
    if traced is None:
        say(f"exporting: tracing with torch.export and translating to ONNX (opset {opset})")
        model = trace_to_ir(loaded, opset)
    else:
        model = ir.from_proto(ir.to_proto(traced))
    say("exporting: rewriting the merge nodes" + (" (inline)" if merge_impl == "inline" else ""))
    axis_names = name_dynamic_axes(model, loaded)
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
    stage: StagedModel | None = None
    try:
        debug_path = Path(tmpdir.name) / out.name
        say("saving the debug model (merge outputs kept, for the parity check)")
        _save(model, debug_path, external)
        if not debug_outputs:
            recipe = _strip_debug_outputs(model)
            if recipe is not None:
                from .debug_twin import TWIN_KEY

                model.metadata_props[TWIN_KEY] = recipe
        nodes, fn_nodes, qm_nodes, functions = _count(model)
        stage = StagedModel(out)
        say(f"saving {out.name}" + (" with external data" if external else ""))
        _save(model, stage.path, external)
        say("checking the model (onnx.checker, full check)")
        _check(stage.path, opset)
        file_bytes = sum(f.stat().st_size for f in stage.files())
        if not staged:
            stage.commit(force=force)
            stage = None
    except BaseException:
        tmpdir.cleanup()
        if stage is not None:
            stage.discard()
        raise
    saved = stage.path if stage is not None else out
    if debug_outputs:
        tmpdir.cleanup()
        tmpdir_keep = None
        debug_path = saved
    else:
        tmpdir_keep = tmpdir
    return ExportedModel(
        path=saved,
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
        axis_names=axis_names,
        _tmpdir=tmpdir_keep,
        _staged=stage,
    )


def metadata_json(value: Any) -> str:
    """Compact JSON for a ``metadata_props`` value."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


__all__ += ["metadata_json", "trace_to_ir", "OutputPathError", "AXIS_NAME_ALIASES"]

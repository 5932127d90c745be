"""``convert`` as a library function: load, export, report, verify, and only then move into place.

The model is written under a temporary name in the output folder (see
:class:`~qm_export.export.files.StagedModel`), checked against torch, and moved onto OUT only
once it passed (or when no check was asked for). A failed check, an exception or Ctrl-C
removes it, unless ``keep_failed``: then it stays as ``OUT.failed.onnx``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import OutputPathError, check_output_path, failed_name
from .onnx_export import ExportedModel, export_onnx, metadata_json
from .parity import near_tie_for, not_compared_note
from .provenance import provenance_of
from .verify import VerifyReport, verify_export

__all__ = ["ConvertOptions", "ConvertReport", "run_convert", "load_for_convert", "declared_shapes", "TINY_REFERENCE_LIMIT", "NOT_VERIFIED"]

#: Models with at most this many parameters also run through the ONNX reference evaluator.
TINY_REFERENCE_LIMIT = 2_000_000
#: ONNX Conv (and most ops) accept bfloat16 from opset 22 on.
BF16_MIN_OPSET = 22
#: Why a model written with ``verify=False`` was not checked (``--json``'s ``parity_skipped``).
NOT_VERIFIED = "--no-verify: nothing was checked (no parity run against torch)"


@dataclass
class ConvertOptions:
    """Everything ``qm-export convert`` takes (see its ``--help``)."""

    source: str
    output: Path
    schedule: Any = None
    batch: int | None = None
    seq_len: int | None = None
    dynamic_seq: bool = True
    opset: int | None = None
    precision: str | None = None
    merge_impl: str = "plugin"
    debug_outputs: bool = False
    no_merge: bool = False
    force: bool = False
    verify: bool = True
    use_reference: bool | None = None
    seed: int = 0
    prior: Path | None = None
    prior_weight: float | None = None
    #: ``"quickmerge"`` or ``"tome"`` (the ToMe baseline at the same layers and token counts).
    method: str = "quickmerge"
    #: keep a model that failed its check (or was interrupted) as ``OUT.failed.onnx``.
    keep_failed: bool = False


@dataclass
class ConvertReport:
    """What ``convert`` did and measured."""

    source: str
    family: str
    precision: str
    export: dict[str, Any]
    merge_layers: list[int]
    tokens_per_layer: list[int]
    schedule: str
    verify: VerifyReport | None = None
    verify_skipped: str | None = None
    prior: dict[str, Any] | None = None
    shapes_checked: list[dict[str, list[int]]] = field(default_factory=list)
    method: str = "quickmerge"
    #: the file written (None when nothing was moved into place); kept_failed: where a model
    #: that failed its check was kept (``--keep-failed``).
    output: str | None = None
    kept_failed: str | None = None
    #: a causal LM written as a generation folder: its layout and the generation parity
    #: (:class:`~qm_export.generation.parity.GenerationParity` as JSON).
    layout: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None

    @property
    def verified(self) -> bool:
        """The parity check ran and passed."""
        return self.verify is not None and self.verify.ok

    @property
    def passed(self) -> bool:
        """Nothing failed: verified, or not asked to be (``verify_skipped`` says why); a
        generation folder's generation parity passed too."""
        checked = self.verified or (self.verify is None and self.verify_skipped is not None)
        return checked and (self.generation is None or bool(self.generation.get("ok")))

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verified": self.verified,
            "output": self.output,
            "kept_failed": self.kept_failed,
            "source": self.source,
            "family": self.family,
            "precision": self.precision,
            "method": self.method,
            "selection_compared": self.method == "quickmerge" and bool(self.merge_layers),
            "schedule": self.schedule,
            "merge_layers": self.merge_layers,
            "tokens_per_layer": self.tokens_per_layer,
            "export": self.export,
            "shapes_checked": self.shapes_checked,
            "parity": None if self.verify is None else self.verify.to_json(),
            "parity_skipped": self.verify_skipped,
            "prior": self.prior,
            **({"layout": self.layout, "generation": self.generation} if self.layout is not None else {}),
        }


def _static_seq(dynamic_shapes: Any) -> Any:
    """Keep only the batch axis (0) dynamic."""
    if isinstance(dynamic_shapes, dict):
        return {k: _static_seq(v) for k, v in dynamic_shapes.items()}
    if isinstance(dynamic_shapes, (list, tuple)):
        return type(dynamic_shapes)(_static_seq(v) for v in dynamic_shapes)
    return dynamic_shapes


def _has_sequence_axis(dynamic_shapes: Any) -> bool:
    """Whether any input has a dynamic axis besides the batch (axis 0)."""
    specs = dynamic_shapes.values() if isinstance(dynamic_shapes, dict) else (dynamic_shapes or ())
    for spec in specs:
        axes = spec.keys() if isinstance(spec, dict) else range(len(spec or ()))
        if any(axis != 0 and (not isinstance(spec, (list, tuple)) or spec[axis] is not None) for axis in axes):
            return True
    return False


def declared_shapes(loaded: Any) -> list[tuple[int | None, int | None]]:
    """``(batch, seq_len)`` pairs to verify: the example and the build profile's min/opt/max."""
    return list(getattr(loaded, "declared_shapes", ((None, None),)))


def _profile_metadata(loaded: Any) -> dict[str, str]:
    recipe = getattr(loaded, "recipe", None)
    shapes = getattr(loaded, "build_shapes", None) or {}
    meta = {}
    if shapes:
        meta["qm_export.profile"] = metadata_json(
            {name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for name, p in shapes.items()})
    if recipe is not None:
        meta["qm_export.recipe"] = str(getattr(recipe, "name", ""))
    return meta


def _print_export(console: Any, report: ConvertReport, exported: ExportedModel) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"exported {escape(exported.target.name)}", show_header=False, box=box.SIMPLE,
                  title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column()
    table.add_row("source", f"{escape(report.source)} ({report.family}, {report.precision})")
    merges = bool(report.merge_layers) and report.method != "none"
    if merges:
        table.add_row("method", {"tome": "ToMe (bipartite soft matching, same token counts)"}.get(report.method,
                                                                                                  report.method))
        table.add_row("merge impl", exported.merge_impl)
    else:
        table.add_row("method", "no merge (the unmerged baseline)")
    table.add_row("nodes", f"{exported.nodes} in the graph, {exported.function_nodes} in {len(exported.functions)} local functions")
    if merges:
        table.add_row("qm nodes", ", ".join(f"{k} x{v}" for k, v in sorted(exported.qm_nodes.items())) or "none")
        table.add_row("merge layers", ", ".join(map(str, report.merge_layers)))
    table.add_row("tokens per layer", " -> ".join(map(str, report.tokens_per_layer)))
    axes = sorted(set(exported.axis_names.values()))
    if axes:
        table.add_row("dynamic axes", ", ".join(axes))
    table.add_row("file size", f"{exported.file_bytes / 2**20:.2f} MiB" + (" (external data)" if exported.external_data else ""))
    table.add_row("export time", f"{exported.seconds:.1f} s")
    console.print(table)


def verify_table(verify: VerifyReport) -> Any:
    """The parity table (a rich ``Table``): one row per runtime and input shape, with the
    output furthest from its tolerance (its max |diff| and name). Readable at 80 columns:
    runtime, shape and output names never wrap."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    tols = {(o.atol, o.rtol) for r in verify.results for o in r.outputs}
    tol = ""
    if len(tols) == 1:
        atol, rtol = next(iter(tols))
        tol = f", tol {atol:.0e}" + (f" + {rtol:.0e}·|t|" if rtol else "")
    table = Table(title=f"parity vs torch eval (near-tie δ {verify.near_tie:g}{tol})", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    for col, justify in (("runtime", "left"), ("input", "left"), ("seed\nflips", "right"), ("assign\nflips", "right"),
                         ("near-\nties", "right"), ("bugs", "right"), ("max\n|diff|", "right"), ("output", "left"),
                         ("ok", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in verify.results:
        seeds = sum(layer.seed_flip_rows for layer in r.layers)
        assigns = sum(layer.assign_flips for layer in r.layers)
        near = sum(layer.seed_near_ties + layer.assign_near_ties for layer in r.layers)
        compared = [o for o in r.outputs if o.values_compared]
        worst = max(compared, key=lambda o: o.max_abs / max(o.atol, 1e-12), default=None)
        if r.outputs and worst is None:  # every row left out: the pass rests on selection alone (a note says why)
            diff, output = "-", "[yellow]not compared[/]"
        else:
            diff, output = (f"{worst.max_abs:.1e}", escape(worst.name)) if worst else ("-", "-")
        table.add_row(
            escape(r.backend), r.input_label,
            str(seeds), str(assigns), str(near), f"[red]{r.bugs}[/]" if r.bugs else "0",
            diff, output,
            "[green]yes[/]" if r.ok else "[red]NO[/]",
        )
    return table


def _print_verify(console: Any, verify: VerifyReport) -> None:
    from rich.markup import escape

    console.print(verify_table(verify))
    skipped = verify.not_compared()
    if skipped:
        console.print(f"[yellow]note:[/] {escape(not_compared_note(skipped))}")
    if verify.saved_matches_debug is not None:
        same = "yes" if verify.saved_matches_debug else "[red]NO[/]"
        console.print(f"the saved model gives the verified model's outputs bit for bit: {same}")


def load_for_convert(options: ConvertOptions) -> Any:
    """Load ``options.source`` as ``convert`` exports it (debug outputs on; ``--static-seq``
    applied)."""
    from ..models import load_source

    loaded = load_source(
        options.source, schedule=options.schedule, no_merge=options.no_merge,
        precision=options.precision, batch=options.batch, seq_len=options.seq_len,
        debug_outputs=True, seed=options.seed, method=options.method,
        **({"prior": options.prior, "prior_weight": options.prior_weight} if options.prior else {}),
    )
    if not options.dynamic_seq:
        if not _has_sequence_axis(loaded.dynamic_shapes):
            raise ValueError(f"--static-seq: {options.source} ({loaded.family}) has no sequence axis to fix: its "
                             "token count is set by its input size, and only the batch axis is dynamic")
        loaded.dynamic_shapes = _static_seq(loaded.dynamic_shapes)
    return loaded


def run_convert(options: ConvertOptions, console: Any = None,
                progress: Callable[[str], None] | None = None, loaded: Any = None) -> ConvertReport:
    """Load ``options.source``, export it under a temporary name in the output folder, print
    what was done, verify parity, and move the model into place only once verified (or at once
    with ``verify=False``, saying that nothing was checked).

    A failed check returns the report with ``output`` None (the model removed, or kept as
    ``OUT.failed.onnx`` with ``keep_failed``); an exception or ``KeyboardInterrupt`` removes
    (or keeps) it likewise before propagating. ``progress`` is called with each stage
    (loading, exporting, saving, checking, parity per runtime and shape). ``loaded``: the
    model already loaded by :func:`load_for_convert` (or a view of it), not loaded again.

    Raises:
        OutputPathError: OUT (or, with ``keep_failed``, ``OUT.failed.onnx``) exists without
            ``force``, or its folder is missing or not writable.
        ValueError, SourceError: bad source or options (before anything is written).
        ExportCheckError: the exported model fails ``onnx.checker``.
        VerifyError: a runtime cannot load or run the exported model.
    """
    from rich.console import Console
    from rich.markup import escape

    from ..backends.onnxruntime import OrtRunner
    from ..backends.reference import ReferenceRunner

    console = console or Console(stderr=True)
    say = progress or (lambda _msg: None)
    output = check_output_path(options.output, force=options.force, suffix=".onnx", option="-o/--output")
    keep_path = failed_name(output) if options.keep_failed else None
    if keep_path is not None and keep_path.exists() and not options.force:
        raise OutputPathError(f"--keep-failed: {str(keep_path)!r} exists; pass --force to overwrite it")
    if loaded is None:
        say(f"loading {options.source}")
        loaded = load_for_convert(options)
    precision = loaded.precision
    opset = options.opset
    if opset is None:
        defaults = getattr(loaded, "export_defaults", None)
        opset = getattr(defaults, "opset", 20)
        if precision == "bf16":
            opset = max(opset, BF16_MIN_OPSET)
    metadata = {
        "qm_export.source": options.source,
        "qm_export.family": loaded.family,
        "qm_export.precision": precision,
        "qm_export.schedule": "none" if options.no_merge else loaded.schedule.describe(),
        "qm_export.method": "none" if options.no_merge else options.method,
        "qm_export.merge_layers": metadata_json(list(loaded.merge_layers)),
        "qm_export.tolerances": metadata_json({k: vars(v) for k, v in loaded.tolerances.items()}),
        **_profile_metadata(loaded),
        **provenance_of(options, loaded).to_metadata(),
    }
    exported = export_onnx(
        loaded, output, opset=opset, merge_impl=options.merge_impl,
        debug_outputs=options.debug_outputs, force=options.force, metadata=metadata, staged=True,
        progress=say,
    )
    report: ConvertReport | None = None
    try:
        report = ConvertReport(
            source=options.source, family=loaded.family, precision=precision, export=exported.summary(),
            merge_layers=list(loaded.merge_layers),
            tokens_per_layer=list(loaded.tokens_per_layer(*loaded.example_inputs)),
            schedule=metadata["qm_export.schedule"], method="none" if options.no_merge else options.method,
        )
        if options.no_merge:  # no merge layer: there is no merge implementation to report
            report.export["merge_impl"] = None
        if options.prior is not None:
            report.prior = {"path": str(options.prior),
                            "weight": options.prior_weight if options.prior_weight is not None else 0.3}
        _print_export(console, report, exported)
        if not options.verify:
            report.verify_skipped = NOT_VERIFIED
        else:
            if precision == "bf16":
                console.print("bf16: ONNX Runtime's CPU provider has no bfloat16 kernels; parity runs the model's "
                              "float32 upcast twin (same graph and bf16 weights, float32 arithmetic) with bf16's "
                              "near-tie gap and tolerance")
            tol = loaded.tolerance
            use_ref = options.use_reference
            if use_ref is None:
                use_ref = sum(p.numel() for p in loaded.model.parameters()) <= TINY_REFERENCE_LIMIT
            runners: list[Any] = [OrtRunner] + ([ReferenceRunner] if use_ref else [])
            input_sets = [loaded.sample_inputs(batch=b, seq_len=s, seed=options.seed + i)
                          for i, (b, s) in enumerate(declared_shapes(loaded))]
            report.shapes_checked = [{n: list(t.shape) for n, t in zip(loaded.input_names, inp)} for inp in input_sets]
            say("checking parity against torch")
            report.verify = verify_export(
                loaded, exported, input_sets, runners,
                atol=float(tol.max_abs), rtol=float(tol.max_rel or 0.0), near_tie=near_tie_for(precision),
                upcast=precision == "bf16",
                progress=lambda msg: say(f"checking parity: {msg}"),
            )
            _print_verify(console, report.verify)
            if options.method == "tome" and not options.no_merge:
                console.print("ToMe has no seeds: token selection is not compared, only the outputs' values "
                              "(the flip columns do not apply)")
        if report.passed:
            say(f"moving {output.name} into place")
            report.output = str(exported.commit(force=options.force))
            if not options.verify:
                console.print(f"[yellow]note:[/] {NOT_VERIFIED}: {escape(output.name)} was written unchecked",
                              soft_wrap=True)
        else:
            report.kept_failed = _settle_failed(exported, keep_path, console)
    except BaseException:
        if exported.staged:
            kept = _settle_failed(exported, keep_path, console)
            if report is not None:
                report.kept_failed = kept
        raise
    finally:
        exported.cleanup()
        exported.discard()  # a no-op once committed or kept
    return report


def _settle_failed(exported: ExportedModel, keep_path: Path | None, console: Any) -> str | None:
    """A staged model that must not take its final name: kept as ``keep_path`` (and said
    where), else removed. Returns the kept path."""
    from rich.markup import escape

    if keep_path is None:
        exported.discard()
        return None
    try:
        kept = exported.keep_as(keep_path)
    except OSError as err:
        exported.discard()
        console.print(f"[red]could not keep the unverified model as {escape(str(keep_path))}: {escape(str(err))}; "
                      "removed it[/]", soft_wrap=True)
        return None
    console.print(f"[yellow]kept the unverified model as {escape(str(kept))}[/] (--keep-failed)", soft_wrap=True)
    return str(kept)

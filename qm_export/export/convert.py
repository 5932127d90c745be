"""``convert`` as a library function: load, export, report, verify."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import check_output_path
from .onnx_export import ExportedModel, export_onnx, metadata_json
from .parity import near_tie_for
from .provenance import provenance_of
from .verify import VerifyReport, verify_export

__all__ = ["ConvertOptions", "ConvertReport", "run_convert", "declared_shapes", "TINY_REFERENCE_LIMIT"]

#: Models with at most this many parameters also run through the ONNX reference evaluator.
TINY_REFERENCE_LIMIT = 2_000_000
#: ONNX Conv (and most ops) accept bfloat16 from opset 22 on.
BF16_MIN_OPSET = 22


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

    def to_json(self) -> dict[str, Any]:
        return {
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
        }


def _static_seq(dynamic_shapes: Any) -> Any:
    """Keep only the batch axis (0) dynamic."""
    if isinstance(dynamic_shapes, dict):
        return {k: _static_seq(v) for k, v in dynamic_shapes.items()}
    if isinstance(dynamic_shapes, (list, tuple)):
        return type(dynamic_shapes)(_static_seq(v) for v in dynamic_shapes)
    return dynamic_shapes


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
    from rich.table import Table

    table = Table(title=f"exported {exported.path.name}", show_header=False)
    table.add_row("source", f"{report.source} ({report.family}, {report.precision})")
    table.add_row("method", {"tome": "ToMe (bipartite soft matching, same token counts)"}.get(report.method, report.method))
    table.add_row("merge impl", exported.merge_impl)
    table.add_row("nodes", f"{exported.nodes} in the graph, {exported.function_nodes} in {len(exported.functions)} local functions")
    table.add_row("qm nodes", ", ".join(f"{k} x{v}" for k, v in sorted(exported.qm_nodes.items())) or "none")
    table.add_row("merge layers", ", ".join(map(str, report.merge_layers)) or "none")
    table.add_row("tokens per layer", " -> ".join(map(str, report.tokens_per_layer)))
    table.add_row("file size", f"{exported.file_bytes / 2**20:.2f} MiB" + (" (external data)" if exported.external_data else ""))
    table.add_row("export time", f"{exported.seconds:.1f} s")
    console.print(table)


def _print_verify(console: Any, verify: VerifyReport) -> None:
    from rich.table import Table

    table = Table(title="parity vs torch eval")
    for col in ("runtime", "input shape", "seed flips\n(near-tie)", "assign flips\n(near-tie)", "bugs",
                "max |diff|", "tol", "ok"):
        table.add_column(col, overflow="fold")
    for r in verify.results:
        seeds = sum(layer.seed_flip_rows for layer in r.layers)
        seed_nt = sum(layer.seed_near_ties for layer in r.layers)
        assigns = sum(layer.assign_flips for layer in r.layers)
        assign_nt = sum(layer.assign_near_ties for layer in r.layers)
        worst = max(r.outputs, key=lambda o: o.max_abs / max(o.atol, 1e-12), default=None)
        table.add_row(
            r.backend,
            "x".join(map(str, next(iter(r.inputs.values())))),
            f"{seeds} ({seed_nt})", f"{assigns} ({assign_nt})", str(r.bugs),
            f"{worst.max_abs:.1e} {worst.name}" if worst else "-",
            f"{worst.atol:.0e}" if worst else "-",
            "[green]yes[/]" if r.ok else "[red]NO[/]",
        )
    console.print(table)
    if verify.saved_matches_debug is not None:
        console.print(f"saved model gives the verified model's outputs bit for bit: {verify.saved_matches_debug}")


def run_convert(options: ConvertOptions, console: Any = None) -> ConvertReport:
    """Load ``options.source``, export it, print what was done, and verify parity."""
    from rich.console import Console

    from ..backends.onnxruntime import OrtRunner
    from ..backends.reference import ReferenceRunner
    from ..models import load_source

    console = console or Console(stderr=True)
    check_output_path(options.output, force=options.force, suffix=".onnx")
    with console.status(f"loading {options.source}"):
        loaded = load_source(
            options.source, schedule=options.schedule, no_merge=options.no_merge,
            precision=options.precision, batch=options.batch, seq_len=options.seq_len,
            debug_outputs=True, seed=options.seed, method=options.method,
            **({"prior": options.prior, "prior_weight": options.prior_weight} if options.prior else {}),
        )
        if not options.dynamic_seq:
            loaded.dynamic_shapes = _static_seq(loaded.dynamic_shapes)
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
    with console.status(f"exporting to ONNX (opset {opset}, {options.merge_impl})"):
        exported = export_onnx(
            loaded, options.output, opset=opset, merge_impl=options.merge_impl,
            debug_outputs=options.debug_outputs, force=options.force, metadata=metadata,
        )
    report = ConvertReport(
        source=options.source, family=loaded.family, precision=precision, export=exported.summary(),
        merge_layers=list(loaded.merge_layers),
        tokens_per_layer=list(loaded.tokens_per_layer(*loaded.example_inputs)),
        schedule=metadata["qm_export.schedule"], method=options.method,
    )
    if options.prior is not None:
        report.prior = {"path": str(options.prior), "weight": options.prior_weight if options.prior_weight is not None else 0.3}
    _print_export(console, report, exported)
    if options.verify and precision == "bf16":
        console.print("bf16: ONNX Runtime's CPU provider has no bfloat16 kernels; parity runs the model's float32 "
                      "upcast twin (same graph and bf16 weights, float32 arithmetic) with bf16's near-tie gap and "
                      "tolerance")
    try:
        if options.verify and report.verify_skipped is None:
            tol = loaded.tolerance
            use_ref = options.use_reference
            if use_ref is None:
                use_ref = sum(p.numel() for p in loaded.model.parameters()) <= TINY_REFERENCE_LIMIT
            runners: list[Any] = [OrtRunner] + ([ReferenceRunner] if use_ref else [])
            input_sets = [loaded.sample_inputs(batch=b, seq_len=s, seed=options.seed + i)
                          for i, (b, s) in enumerate(declared_shapes(loaded))]
            report.shapes_checked = [{n: list(t.shape) for n, t in zip(loaded.input_names, inp)} for inp in input_sets]
            with console.status("checking parity (torch vs ONNX Runtime)") as status:
                report.verify = verify_export(
                    loaded, exported, input_sets, runners,
                    atol=float(tol.max_abs), rtol=float(tol.max_rel or 0.0), near_tie=near_tie_for(precision),
                    upcast=precision == "bf16",
                    progress=lambda msg: status.update(f"checking parity: {msg}"),
                )
            _print_verify(console, report.verify)
            if options.method == "tome" and not options.no_merge:
                console.print("ToMe has no seeds: token selection is not compared, only the outputs' values "
                              "(the seed/assign flip columns do not apply)")
    finally:
        exported.cleanup()
    return report

"""``qm-export convert SOURCE -o OUT.onnx``: export a model with QuickMerge++ and verify it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import console, fail_on

PRECISIONS = ("fp32", "fp16", "bf16")


@click.command()
@click.argument("source")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="ONNX file to write.")
@click.option("--merge", "merge_spec", metavar="SCHEDULE",
              help="Merge schedule overriding the recipe: '1:0.5,4:0.7', a per-layer list '[1,0.5]', or one ratio '0.5' (layer 0).")
@click.option("--batch", type=click.IntRange(min=1), help="Batch of the traced example input (the batch axis is always dynamic).")
@click.option("--seq-len", type=click.IntRange(min=2), help="Sequence length of the traced example (text families).")
@click.option("--static-seq", is_flag=True, help="Fix the sequence length instead of making it a dynamic axis.")
@click.option("--opset", type=click.IntRange(18, 23), default=None,
              help="Default-domain opset [default: the recipe's (20); 22 for bf16, the first with bfloat16 Conv].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Cast the model before export [default: the recipe's, else fp32].")
@click.option("--merge-impl", type=click.Choice(["plugin", "inline"]), default="plugin", show_default=True,
              help="plugin: qm nodes with local functions (TensorRT plugins); inline: standard ops only.")
@click.option("--debug-outputs", is_flag=True, help="Add every merge layer's assign/seeds as graph outputs.")
@click.option("--no-merge", is_flag=True, help="Export the same model without merge layers (the baseline).")
@click.option("--method", type=click.Choice(["quickmerge", "tome"]), default="quickmerge", show_default=True,
              help="quickmerge: QuickMerge++ (the spec). tome: the ToMe baseline (bipartite soft matching on the "
                   "layer's keys) in the same layers, keeping the same token counts (several bipartite passes when a "
                   "layer keeps under half); global-mode families only (not causal-lm), no prior, no debug outputs; "
                   "parity compares output values only (ToMe has no seeds).")
@click.option("--prior", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A prior fitted by 'qm-export fit-prior' (safetensors) for the merge layer it names.")
@click.option("--prior-weight", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Weight of the prior's surprise in saliency [default: 0.3 with --prior].")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against torch.")
@click.option("--reference/--no-reference", "use_reference", default=None,
              help="Also run the ONNX reference evaluator [default: on for tiny recipes].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights (recipes) and inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report on stdout.")
def convert(source: str, output: Path, merge_spec: str | None, batch: int | None, seq_len: int | None,
            static_seq: bool, opset: int | None, precision: str | None, merge_impl: str, debug_outputs: bool,
            no_merge: bool, method: str, prior: Path | None, prior_weight: float | None, force: bool, no_verify: bool,
            use_reference: bool | None, seed: int, as_json: bool) -> None:
    """Export SOURCE (a recipe name or .toml, or a local Hugging Face model folder) to ONNX.

    The export uses the spec's eval semantics (deterministic selection, no random ops, no
    data-dependent shapes; K computed in-graph). Unless --no-verify, torch and ONNX Runtime are
    run on seeded inputs of every declared shape and must select the same tokens (near-ties
    reported) and agree within the recipe's tolerance. With --method tome the same layers merge
    to the same token counts with ToMe instead, and only the values are compared.
    """
    from ..export.convert import ConvertOptions, run_convert

    if no_merge and merge_spec:
        raise click.UsageError("--no-merge and --merge exclude each other")
    if no_merge and prior:
        raise click.UsageError("--no-merge and --prior exclude each other")
    if prior_weight is not None and prior is None:
        raise click.UsageError("--prior-weight needs --prior")
    if method == "tome":
        conflicts = {
            "--no-merge": (no_merge, "ToMe needs merge layers"),
            "--prior": (prior is not None, "ToMe takes no prior"),
            "--debug-outputs": (debug_outputs, "ToMe has no seeds, so its model has no debug merge outputs"),
        }
        for flag, (given, why) in conflicts.items():
            if given:
                raise click.UsageError(f"--method tome and {flag} exclude each other: {why}")
    options = ConvertOptions(
        source=source, output=output, schedule=merge_spec, batch=batch, seq_len=seq_len,
        dynamic_seq=not static_seq, opset=opset, precision=precision, merge_impl=merge_impl,
        debug_outputs=debug_outputs, no_merge=no_merge, force=force, verify=not no_verify,
        use_reference=use_reference, seed=seed, prior=prior, prior_weight=prior_weight, method=method,
    )
    err = console(stderr=True)
    with fail_on():
        report = run_convert(options, console=err)
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    if report.verify is not None and not report.verify.ok:
        raise click.ClickException("parity check failed (see the report above)")

"""``qm-export convert SOURCE -o OUT.onnx``: export a model with QuickMerge++ and verify it."""

from __future__ import annotations

from pathlib import Path

import click

from .common import MERGE_HELP, CommandFailed, console, emit_json, fail_on, merge_spec_option, status, verdict

PRECISIONS = ("fp32", "fp16", "bf16")


@click.command()
@click.argument("source")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="ONNX file to write (OUT.onnx); for a causal LM, a folder name (no .onnx) writes the generation "
                   "folder: prefill.onnx, decode.onnx, generation.json (and the tokenizer).")
@click.option("--merge", "merge_spec", metavar="SCHEDULE", callback=merge_spec_option,
              help="Merge schedule overriding the recipe's: " + MERGE_HELP + " Also a per-layer list '[1,0.5]' "
                   "(1 = no merge in that layer) or one ratio '0.5' (layer 0).")
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
@click.option("--no-verify", is_flag=True,
              help="Skip the parity check against torch: OUTPUT is written unchecked, and the report says so.")
@click.option("--keep-failed", is_flag=True,
              help="Keep a model that failed its parity check (or was interrupted while checked) as "
                   "OUTPUT.failed.onnx instead of removing it.")
@click.option("--reference/--no-reference", "use_reference", default=None,
              help="Also run the ONNX reference evaluator [default: on for tiny recipes].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights (recipes) and inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report on stdout.")
def convert(source: str, output: Path, merge_spec: str | None, batch: int | None, seq_len: int | None,
            static_seq: bool, opset: int | None, precision: str | None, merge_impl: str, debug_outputs: bool,
            no_merge: bool, method: str, prior: Path | None, prior_weight: float | None, force: bool, no_verify: bool,
            keep_failed: bool, use_reference: bool | None, seed: int, as_json: bool) -> None:
    """Export SOURCE (a recipe name or .toml, or a local Hugging Face model folder) to ONNX.

    The export uses the spec's eval semantics (deterministic selection, no random ops, no
    data-dependent shapes; K computed in-graph). Unless --no-verify, torch and ONNX Runtime are
    run on seeded inputs of every declared shape and must select the same tokens (near-ties
    reported) and agree within the recipe's tolerance. With --method tome the same layers merge
    to the same token counts with ToMe instead, and only the values are compared.

    The model is written under a temporary name in OUTPUT's folder and moved onto OUTPUT only
    once verified: a failed check or Ctrl-C leaves nothing (see --keep-failed). Exit codes: 0
    passed (or written unchecked with --no-verify), 1 parity or a runtime failed, 2 bad input,
    130 interrupted.
    """
    from ..export.convert import ConvertOptions, run_convert
    from ..export.files import check_output_path

    if no_merge and merge_spec:
        raise click.UsageError("--no-merge and --merge exclude each other")
    if no_merge and prior:
        raise click.UsageError("--no-merge and --prior exclude each other")
    if prior_weight is not None and prior is None:
        raise click.UsageError("--prior-weight needs --prior")
    if no_verify and use_reference:
        raise click.UsageError("--reference runs the ONNX reference evaluator in the parity check; with --no-verify "
                               "nothing is checked")
    if no_merge and debug_outputs:
        raise click.UsageError("--debug-outputs keeps each merge layer's seeds and assignment as outputs; with "
                               "--no-merge there is no merge layer")
    ctx = click.get_current_context()
    if no_merge and ctx.get_parameter_source("merge_impl") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--merge-impl chooses how the merge ops are written; with --no-merge there are none")
    if keep_failed and no_verify:
        raise click.UsageError("--keep-failed keeps a model that failed its parity check; with --no-verify nothing "
                               "is checked")
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
        keep_failed=keep_failed,
    )
    from ..generation.convert import check_output_folder, run_generation_convert, wants_folder

    err = console(stderr=True)
    folder = wants_folder(output)
    with fail_on():
        if folder:  # before any progress line
            check_output_folder(output, force=force)
        else:
            check_output_path(output, force=force, suffix=".onnx", option="-o/--output")
        with status(err, f"loading {source}") as say:
            report = (run_generation_convert if folder else run_convert)(options, console=err, progress=say)
    if not report.passed:
        raise CommandFailed(_failure(report, output), report=report.to_json())
    if as_json:
        emit_json(report.to_json())
    checked = report.verify
    if checked is None:
        verdict(err, "DONE", f"wrote {output}; not verified (--no-verify)")
        return
    runtimes = sorted({r.backend for r in checked.results})
    skipped = checked.not_compared()
    values = f" (values not compared for {', '.join(skipped)}: near-tie in every row)" if skipped else ""
    gen = report.generation
    if gen is not None:
        from ..generation.render import generation_phrase

        values += "; " + generation_phrase(gen)
    verdict(err, "PASSED", f"wrote {output}: {' and '.join(runtimes)} match torch on {len(report.shapes_checked)} "
                           f"input set(s){values}")


def _failure(report, output: Path) -> str:  # -> the one-line reason of a failed check
    bad = [r for r in report.verify.results if not r.ok] if report.verify is not None else []
    gen = report.generation
    if not bad and gen is not None and not gen["ok"]:
        what = (f"{gen['bugs']} token(s) differ outside a near-tie" if gen["bugs"]
                else f"logits beyond tolerance (max |diff| {gen['max_abs']:.2e})")
        where = f"kept as {report.kept_failed}" if report.kept_failed else "not written (--keep-failed keeps it)"
        return f"generation check failed: {gen['backend']} over {gen['steps']} steps, {what}; {output.name} {where}"
    if bad:
        first = bad[0]
        shape = "x".join(map(str, next(iter(first.inputs.values()), [])))
        what = f"{first.bugs} selection bug(s)" if first.bugs else "outputs beyond tolerance"
        more = f" (and {len(bad) - 1} more runtime/shape pair(s))" if len(bad) > 1 else ""
        why = f"parity check failed: {first.backend} at {shape}, {what}{more}"
    elif report.verify is not None and report.verify.saved_matches_debug is False:
        why = "parity check failed: the saved model's outputs differ from the verified debug model's"
    else:
        why = "parity check failed"
    where = (f"kept as {report.kept_failed}" if report.kept_failed
             else "not written (--keep-failed keeps it as " + output.with_name(f"{output.stem}.failed.onnx").name + ")")
    return f"{why}; {output.name} {where}"

"""``qm-export validate MODEL``: every backend's outputs and selection against torch."""

from __future__ import annotations

from pathlib import Path

import click

from .common import CommandFailed, console, emit_json, fail_on, status


def _backends(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    from ..backends import parse_backends

    try:
        return parse_backends(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--source", metavar="SOURCE",
              help="Recipe or Hugging Face folder to rebuild the torch reference from [default: the one recorded in MODEL's metadata].")
@click.option("--backends", callback=_backends, metavar="LIST",
              help="Comma-separated: ort, onnx-ref, ort-cuda, trt [default: every one present; onnx-ref only up to 2M weights]. "
                   "Missing packages or devices are reported as skipped.")
@click.option("--inputs", "inputs", type=click.Path(path_type=Path, dir_okay=False),
              help="Inputs: an .npz with one array per input name, or Polygraphy's --save-inputs JSON [default: the source's seeded inputs at every declared shape].")
@click.option("--batch", type=click.IntRange(min=1), help="One input set of this batch size instead of the declared shapes.")
@click.option("--seq-len", type=click.IntRange(min=2), help="Sequence length of that input set (text models).")
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance [default: the recipe's for the model's precision].")
@click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance [default: the recipe's, else 0].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads of the CPU runtimes.")
@click.option("--save-outputs", type=click.Path(path_type=Path, dir_okay=False),
              help="Write every backend's outputs as Polygraphy RunResults JSON (polygraphy run --load-outputs reads it).")
@click.option("--save-inputs", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the input sets in Polygraphy's --load-inputs JSON format.")
@click.option("--load-outputs", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Also compare outputs saved by polygraphy run --save-outputs (one runner per backend; use the same --inputs).")
@click.option("--new-tokens", type=click.IntRange(min=1),
              help="A generation folder: greedy steps to check [default: 32, fewer when the prompt leaves less context].")
@click.option("--force", is_flag=True, help="Overwrite --save-outputs/--save-inputs files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def validate(model: Path, source: str | None, backends: list[str] | None, inputs: Path | None, batch: int | None,
             seq_len: int | None, atol: float | None, rtol: float | None, seed: int, threads: int | None,
             save_outputs: Path | None, save_inputs: Path | None, load_outputs: Path | None, new_tokens: int | None,
             force: bool, as_json: bool) -> None:
    """Check MODEL (an .onnx file, a TensorRT engine, or a causal LM's generation folder) against
    its torch source, on every backend.

    Per output: max abs / max rel error and cosine against torch, within the precision's
    tolerance. Per merge layer: seed and assignment flips, each a near-tie (gap at most δ of
    the precision: 1e-4 fp32, 5e-3 fp16, 4e-2 bf16), a consequence of an earlier flip, or a bug.
    A model saved without merge debug outputs is run as its debug twin. Without a source the
    first backend is the reference and selection must agree exactly. A generation folder: its
    prefill as above, then greedy generation over both graphs, teacher-forced on torch's
    tokens, equal at every step (near-ties counted) with logits within tolerance. Exits 0 only when
    everything passed, 1 when something differs or failed to run, 2 for bad input, 130 when
    interrupted.
    """
    from ..export.files import check_output_path
    from ..validate.report import render_report
    from ..validate.run import ValidateOptions, validate_model

    if seq_len is not None and inputs is not None:
        raise click.UsageError("--inputs gives the inputs; do not also pass --seq-len")
    if batch is not None and inputs is not None:
        raise click.UsageError("--inputs gives the inputs; do not also pass --batch")
    options = ValidateOptions(
        model=model, source=source, backends=backends, inputs=inputs, batch=batch, seq_len=seq_len, atol=atol,
        rtol=rtol, seed=seed, threads=threads, save_outputs=save_outputs, save_inputs=save_inputs,
        load_outputs=load_outputs, force=force, new_tokens=new_tokens,
    )
    err = console(stderr=True)
    with fail_on():
        for path, option in ((save_outputs, "--save-outputs"), (save_inputs, "--save-inputs")):
            if path is not None:  # named here, before anything runs (validate_model checks again)
                check_output_path(path, force=force, suffix=".json", option=option)
        with status(err, "validating") as say:
            report = validate_model(options, progress=lambda msg: say(f"validating: {msg}"))
    render_report(report, err)  # ends with the verdict line
    if not report.passed:
        raise CommandFailed(report.verdict().removeprefix("FAILED: "), report=report.to_json(), shown=True)
    if as_json:
        emit_json(report.to_json())

"""``qm-export run [SOURCE]``: convert, check, validate and profile in one command."""

from __future__ import annotations

from pathlib import Path

import click

from .common import MERGE_HELP, CommandFailed, console, emit_json, fail_on, merge_spec_option, status


def _batches(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of batch sizes", ctx=ctx, param=param) from None
    if not out or any(b < 1 for b in out):
        raise click.BadParameter(f"{value!r}: batch sizes must be integers >= 1", ctx=ctx, param=param)
    return out


@click.command()
@click.argument("source", required=False)
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("qm-export-run"),
              show_default=True, help="Folder for the models and reports (refused if not empty, unless --force).")
@click.option("--force", is_flag=True, help="Replace the output folder.")
@click.option("--merge", "schedule", metavar="SCHEDULE", callback=merge_spec_option,
              help="Merge schedule overriding the recipe's: " + MERGE_HELP)
@click.option("--batch", "batches", callback=_batches, default="1,4", show_default=True, metavar="LIST",
              help="Batch sizes to profile.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CPU runtime threads.")
@click.option("--runs", type=click.IntRange(min=1), default=15, show_default=True, help="Timed runs per model and batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights (recipes) and inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout too.")
def run(source: str | None, out_dir: Path, force: bool, schedule: str | None, batches: tuple[int, ...], threads: int,
        runs: int, seed: int, as_json: bool) -> None:
    """The main job in one command, on SOURCE (a recipe or Hugging Face folder) [default: vit-small].

    Converts SOURCE merged and unmerged, runs the TensorRT pre-flight on both, builds both
    engines when TensorRT is installed, validates both on every backend present, profiles
    merged against unmerged (interleaved), and writes merged.onnx, baseline.onnx,
    report.json and report.png into the output folder (assembled in a hidden sibling and moved
    into place at the end; the folder's parent must exist). Exit codes: 0 passed, 1 parity or
    the pre-flight failed, 2 bad input, 130 interrupted (nothing left behind).
    """
    from ..pipeline.run import DEFAULT_SOURCE, RunOptions, render_run, run_pipeline

    options = RunOptions(source=source or DEFAULT_SOURCE, out_dir=out_dir, force=force, schedule=schedule,
                         batches=batches, threads=threads, runs=runs, seed=seed)
    err = console(stderr=True)
    with fail_on(), status(err, "starting") as say:
        report = run_pipeline(options, progress=say)
    render_run(report, err)  # ends with the verdict line
    if not report.passed:
        raise CommandFailed(report.verdict().removeprefix("FAILED: "), report=report.to_json(), shown=True)
    if as_json:
        emit_json(report.to_json())

"""``qm-export fit-prior``: fit the autoregressive prior for a model's merge layer."""

from __future__ import annotations

from pathlib import Path

import click

from .common import console, emit_json, fail_on, merge_spec_option, status, verdict


@click.command("fit-prior")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Prior file (.safetensors). Default: next to the model folder / recipe.")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Merge layer to fit for. Default: the schedule's first merge layer.")
@click.option("--schedule", default=None, callback=merge_spec_option,
              help="Merge schedule applied while capturing, e.g. '2:0.5'. Default: {LAYER: 0.5}, "
                   "or one merge keeping half the tokens in layer num_layers // 3.")
@click.option("--steps", type=click.IntRange(min=1), default=300, help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, help="Sequences per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, help="Adam learning rate.")
@click.option("--samples", type=click.IntRange(min=2), default=128, help="Sample inputs (text chunks or images).")
@click.option("--seed", type=int, default=0, help="Seed of the samples, the initialisation and the batches.")
@click.option("--force", is_flag=True, help="Overwrite an existing prior file.")
@click.option("--json", "as_json", is_flag=True, help="Print what was fitted and written as JSON on stdout.")
def fit_prior(
    source: str, output: Path | None, layer: int | None, schedule: str | None, steps: int,
    batch_size: int, lr: float, samples: int, seed: int, force: bool, as_json: bool,
) -> None:
    """Fit the QuickMerge++ prior of SOURCE (a Hugging Face model folder or a recipe name).

    Trains the compact causal transformer (width 128, 2 layers, 4 heads) on the hidden states
    the merge layer sees for built-in samples (Python's pydoc text, or scikit-learn digits for
    vision models), with the symmetric next-embedding loss, and saves it as safetensors
    (atomically, with the user's umask; the output folder must exist). Exit codes: 0 written,
    1 a package missing, 2 bad input, 130 interrupted (nothing written).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..export.files import check_output_path
    from ..priors.io import save_prior
    from ..priors.job import open_prior_source, run_fit

    err = console(stderr=True)
    with fail_on():
        if output is not None:  # before anything is loaded
            check_output_path(output, force=force, suffix=".safetensors", option="-o/--output")
        with status(err, f"loading {source} and preparing {samples} samples"):
            src = open_prior_source(source, layer=layer, schedule=schedule, samples=samples, seed=seed,
                                    batch_size=batch_size)
        target = output or src.default_output
        check_output_path(target, force=force, suffix=".safetensors", option="-o/--output" if output else None)
        columns = (TextColumn("[bold]fit-prior[/] layer {task.fields[layer]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("fit", total=steps, layer=src.layer, loss=float("nan"))
            result, meta = run_fit(
                src, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                callback=lambda step, loss: bar.update(task, completed=step + 1, loss=loss),
            )
        save_prior(result.prior, target, metadata=meta, force=force)
    err.print(
        f"held-out loss {result.val_loss_start:.4f} -> {result.val_loss_end:.4f} "
        f"({result.sequences} sequences, layer {src.layer}, schedule {src.schedule or '-'})"
    )
    if as_json:
        emit_json({"passed": True, "output": str(target), **meta})
    verdict(err, "DONE", f"prior for layer {src.layer} written to {target}")

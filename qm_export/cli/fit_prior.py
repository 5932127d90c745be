"""``qm-export fit-prior``: fit the autoregressive prior for a model's merge layer."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("fit-prior")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Prior file (.safetensors). Default: next to the model folder / recipe.")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Merge layer to fit for. Default: the schedule's first merge layer.")
@click.option("--schedule", default=None,
              help="Merge schedule applied while capturing, e.g. '2:0.5'. Default: {LAYER: 0.5}, "
                   "or one merge keeping half the tokens in layer num_layers // 3.")
@click.option("--steps", type=click.IntRange(min=1), default=300, help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, help="Sequences per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, help="Adam learning rate.")
@click.option("--samples", type=click.IntRange(min=2), default=128, help="Sample inputs (text chunks or images).")
@click.option("--seed", type=int, default=0, help="Seed of the samples, the initialisation and the batches.")
@click.option("--force", is_flag=True, help="Overwrite an existing prior file.")
def fit_prior(
    source: str, output: Path | None, layer: int | None, schedule: str | None, steps: int,
    batch_size: int, lr: float, samples: int, seed: int, force: bool,
) -> None:
    """Fit the QuickMerge++ prior of SOURCE (a Hugging Face model folder or a recipe name).

    Trains the compact causal transformer (width 128, 2 layers, 4 heads) on the hidden states
    the merge layer sees for built-in samples (Python's pydoc text, or scikit-learn digits for
    vision models), with the symmetric next-embedding loss, and saves it as safetensors.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..priors.io import save_prior
    from ..priors.job import open_prior_source, run_fit

    err = Console(stderr=True)
    if output is not None and output.suffix != ".safetensors":
        raise click.BadParameter(f"{output} must end in .safetensors", param_hint="--output")
    if output is not None and output.exists() and not force:
        raise click.UsageError(f"{output} already exists; pass --force to overwrite it")
    try:
        with err.status(f"loading {source} and preparing {samples} samples"):
            src = open_prior_source(source, layer=layer, schedule=schedule, samples=samples, seed=seed, batch_size=batch_size)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    target = output or src.default_output
    if target.exists() and not force:
        raise click.UsageError(f"{target} already exists; pass --force to overwrite it (or -o elsewhere)")
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
    click.echo(str(target))

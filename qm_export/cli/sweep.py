"""``qm-export sweep SOURCE --keep-ratios LIST``: quality against latency over keep ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import console, fail_on


def _ratios(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    from ..pipeline.sweep import parse_ratios

    try:
        return parse_ratios(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--keep-ratios: "), ctx=ctx, param=param) from None


@click.command()
@click.argument("source")
@click.option("--keep-ratios", callback=_ratios, default="1,0.75,0.5,0.33", show_default=True, metavar="LIST",
              help="Keep ratios to sweep; 1 is the unmerged model.")
@click.option("--compare", type=click.Choice(["tome"]), multiple=True,
              help="Also export the ToMe baseline (bipartite soft matching) at the same layer and token counts.")
@click.option("--layer", type=click.IntRange(min=0), help="The layer that merges [default: the source's first merge layer].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch of the timed runs.")
@click.option("--quality-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Rows the quality (cosine) is averaged over.")
@click.option("--seq-len", type=click.IntRange(min=4), help="Sequence length (text models).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs per model (interleaved).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights (recipes) and inputs.")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Keep the exported models in this (existing) folder [default: a temporary one].")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="Write quality vs latency as a PNG.")
@click.option("--force", is_flag=True, help="Overwrite --plot and models in --out-dir.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON on stdout.")
def sweep(source: str, keep_ratios: list[float], compare: tuple[str, ...], layer: int | None, batch: int,
          quality_batch: int, seq_len: int | None, threads: int, runs: int, warmup: int, seed: int,
          out_dir: Path | None, plot: Path | None, force: bool, as_json: bool) -> None:
    """Merge SOURCE in one layer at each keep ratio; export each to ONNX; measure quality and speed.

    Quality is the cosine of the model's output to the unmerged model's (per row, on the
    source's inputs: a Hugging Face text model's tokenizer over built-in text, a recipe's
    seeded inputs); latency is ONNX Runtime on this machine, every model timed interleaved
    in one run. With --compare tome the ToMe baseline is exported at the same token counts.
    """
    from ..export.files import check_output_path
    from ..pipeline.sweep import SweepOptions, plot_sweep, render_sweep, run_sweep

    err = console(stderr=True)
    with fail_on():
        if plot is not None:
            check_output_path(plot, force=force, suffix=".png")
        if out_dir is not None and not force:
            taken = [p.name for p in out_dir.glob("*.onnx")]
            if taken:
                raise click.UsageError(f"--out-dir {str(out_dir)!r} already holds {taken[:3]}; pass --force to overwrite")
        options = SweepOptions(source=source, keep_ratios=keep_ratios, compare=compare, layer=layer, batch=batch,
                               quality_batch=quality_batch, seq_len=seq_len, threads=threads, runs=runs,
                               warmup=warmup, seed=seed, out_dir=out_dir)
        with err.status("sweeping") as status:
            report = run_sweep(options, progress=lambda msg: status.update(msg))
        render_sweep(report, err)
        if plot is not None:
            plot_sweep(report, plot)
            err.print(f"plot: {plot}")
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    err.print(f"[bold green]DONE[/]: {len(report.rows)} models swept")

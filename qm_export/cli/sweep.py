"""``qm-export sweep SOURCE --keep-ratios LIST``: quality against latency over keep ratios."""

from __future__ import annotations

from pathlib import Path

import click

from .common import InputError, console, emit_json, fail_on, status, verdict


def _ratios(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    from ..pipeline.sweep import parse_ratios

    try:
        return parse_ratios(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--keep-ratios: "), ctx=ctx, param=param) from None


def _layers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    from ..models.schedule import EMBED, EMBED_KEY

    if value is None:
        return None
    layers = []
    for part in value.split(","):
        part = part.strip()
        if part == EMBED_KEY:
            layers.append(EMBED)
        elif part.isdigit():
            layers.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a layer: give indices >= 0 or '{EMBED_KEY}', e.g. 'embed,1'",
                                     ctx=ctx, param=param)
    if len(set(layers)) != len(layers):
        raise click.BadParameter(f"{value!r} names a layer twice", ctx=ctx, param=param)
    return layers


@click.command()
@click.argument("source")
@click.option("--keep-ratios", callback=_ratios, default="1,0.75,0.5,0.33", show_default=True, metavar="LIST",
              help="Keep ratios to sweep; 1 is the unmerged model.")
@click.option("--compare", type=click.Choice(["tome"]), multiple=True,
              help="Also export the ToMe baseline (bipartite soft matching) at the same layer and token counts.")
@click.option("--layer", "layers", callback=_layers, metavar="LIST",
              help="The layer that merges, or several (each swept on its own, side by side), e.g. 'embed,1': "
                   "'embed' merges the embeddings before layer 0 [default: the source's first merge layer].")
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
def sweep(source: str, keep_ratios: list[float], compare: tuple[str, ...], layers: list[int] | None, batch: int,
          quality_batch: int, seq_len: int | None, threads: int, runs: int, warmup: int, seed: int,
          out_dir: Path | None, plot: Path | None, force: bool, as_json: bool) -> None:
    """Merge SOURCE in one layer at each keep ratio; export each to ONNX; measure quality and speed.

    With several --layer values every layer is swept at every ratio, all in one run.

    Quality is the cosine of the model's output to the unmerged model's (per row, on the
    source's inputs: a Hugging Face text model's tokenizer over built-in text, a recipe's
    seeded inputs); latency is ONNX Runtime on this machine, every model timed interleaved
    in one run. With --compare tome the ToMe baseline is exported at the same token counts.
    Exit codes: 0 done, 1 a package missing or a runtime failed, 2 bad input, 130 interrupted.
    """
    from ..export.files import check_output_path
    from ..pipeline.sweep import SweepOptions, plot_sweep, render_sweep, run_sweep

    err = console(stderr=True)
    with fail_on():
        if plot is not None:
            check_output_path(plot, force=force, suffix=".png", option="--plot")
        if out_dir is not None and not force:
            taken = [p.name for p in out_dir.glob("*.onnx")]
            if taken:
                raise InputError(f"--out-dir {str(out_dir)!r} already holds {taken[:3]}; pass --force to overwrite")
        options = SweepOptions(source=source, keep_ratios=keep_ratios, compare=compare, layer=layers, batch=batch,
                               quality_batch=quality_batch, seq_len=seq_len, threads=threads, runs=runs,
                               warmup=warmup, seed=seed, out_dir=out_dir)
        with status(err, "sweeping") as say:
            report = run_sweep(options, progress=say)
        render_sweep(report, err)
        if plot is not None:
            plot_sweep(report, plot)
            err.print(f"plot: {plot}", soft_wrap=True)
    if as_json:
        emit_json({"passed": True, **report.to_json()})
    verdict(err, "DONE", f"{len(report.rows)} models swept")

"""CPU timing of QuickMerge++ (``quickmerge``) against ToMe (``bipartite_merge``) at equal output length.

For each ``(B, N, D)`` the class token is protected (``protect=1``), ToMe removes its maximum
``r = (N - 1) // 2`` and QuickMerge++ keeps ``K = N - 1 - r`` tokens, so both return
``N - r`` tokens. QuickMerge++ runs with self-similarity saliency (no host attention) and
with a softmaxed host attention ``(B, H, N, N)``; ToMe matches on ``x`` as its metric.
A second table times the 3-scale case the authors' reference code takes about 1.0 s for.

Run: ``python scripts/bench_merge.py [--threads 1] [--repeats 20] [--metric-dim 64] [--profile 15]
[--json out.json]``. Rich tables (and profiles) go to stderr, the markdown tables to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from qm_export.export.files import atomic_write_text
from qm_export.merge import bipartite_merge, quickmerge

SHAPES = [(8, 197, 768), (4, 1024, 768), (1, 4096, 1024)]
AUTHORS = {"shape": (2, 512, 384), "scales": 3, "keep": 170, "reference_s": 1.0}


def median_time(fn: Callable[[], object], repeats: int, warmup: int, budget_s: float) -> dict:
    """Median wall and process-CPU time of ``fn`` (seconds) over up to ``repeats`` runs.

    Stops early after ``budget_s`` seconds once 5 runs are in. With one torch thread the CPU
    time is the steadier number on a shared machine (it leaves out time spent waiting for a core).
    """
    for _ in range(warmup):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(wall) < repeats and (len(wall) < 5 or time.perf_counter() - start < budget_s):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "runs": len(wall)}


def host_attention(batch: int, heads: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A softmaxed attention ``(B, H, N, N)``: logits of a random query/key product, scaled like a ViT."""
    q = torch.randn(batch, heads, n, 64, generator=gen)
    k = torch.randn(batch, heads, n, 64, generator=gen)
    return torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)


def bench_shape(batch: int, n: int, dim: int, metric_dim: int | None, repeats: int, warmup: int, budget_s: float) -> dict:
    """Time the three cases at one shape. ``metric_dim``: None matches on ``x``; else a
    ``(B, N, metric_dim)`` metric (ToMe's head-averaged keys) is given to both methods."""
    gen = torch.Generator().manual_seed(0)
    heads = 16 if dim >= 1024 else 12
    x = torch.randn(batch, n, dim, generator=gen)
    attn = host_attention(batch, heads, n, gen)
    metric = x if metric_dim is None else torch.randn(batch, n, metric_dim, generator=gen)
    qm_metric = None if metric_dim is None else metric
    r = (n - 1) // 2
    keep = n - 1 - r
    cases = {
        "tome": lambda: bipartite_merge(x, r, metric, class_token=True),
        "qm_self": lambda: quickmerge(x, keep=keep, protect=1, metric=qm_metric),
        "qm_attn": lambda: quickmerge(x, keep=keep, protect=1, attn=attn, metric=qm_metric),
    }
    row: dict = {"B": batch, "N": n, "D": dim, "H": heads, "metric_dim": metric_dim or dim, "r": r, "K": keep,
                 "out_tokens": n - r}
    with torch.inference_mode():
        assert cases["tome"]()[0].shape[1] == cases["qm_self"]()[0].shape[1] == n - r
        for name, fn in cases.items():
            row[name] = median_time(fn, repeats, warmup, budget_s)
    for name in ("qm_self", "qm_attn"):
        row[f"{name}_vs_tome_cpu"] = row[name]["cpu_s"] / row["tome"]["cpu_s"]
        row[f"{name}_vs_tome_wall"] = row[name]["wall_s"] / row["tome"]["wall_s"]
    return row


def bench_authors(repeats: int, warmup: int, budget_s: float) -> dict:
    batch, n, dim = AUTHORS["shape"]
    gen = torch.Generator().manual_seed(1)
    hidden = [torch.randn(batch, n, dim, generator=gen) for _ in range(AUTHORS["scales"])]
    fn = lambda: quickmerge(hidden[-1], keep=AUTHORS["keep"], scales=hidden)  # noqa: E731
    with torch.inference_mode():
        timing = median_time(fn, repeats, warmup, budget_s)
    return {"B": batch, "N": n, "D": dim, "scales": AUTHORS["scales"], "K": AUTHORS["keep"], "qm": timing,
            "reference_s": AUTHORS["reference_s"], "speedup_wall": AUTHORS["reference_s"] / timing["wall_s"]}


def profile_cases(batch: int, n: int, dim: int, rows: int, console: Console) -> None:
    """Print torch.profiler's top operators (self CPU time) of both quickmerge cases."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, dim, generator=gen)
    attn = host_attention(batch, 16 if dim >= 1024 else 12, n, gen)
    keep = n - 1 - (n - 1) // 2
    for name, kwargs in (("self-similarity", {}), ("host attention", {"attn": attn})):
        with torch.inference_mode():
            quickmerge(x, keep=keep, protect=1, **kwargs)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                quickmerge(x, keep=keep, protect=1, **kwargs)
        console.print(f"[bold]quickmerge, {name}, (B, N, D) = ({batch}, {n}, {dim})[/bold]")
        console.print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=28, max_shapes_column_width=50))


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def _cell(t: dict) -> str:
    return f"{_ms(t['cpu_s'])} ({_ms(t['wall_s'])})"


def markdown(rows: list[dict], authors: dict, meta: dict) -> str:
    lines = [
        f"torch {meta['torch']}, {meta['threads']} thread(s), {meta['cores']} cores, median of up to "
        f"{meta['repeats']} runs after {meta['warmup']} warm-up, `torch.inference_mode()`. "
        "Cells: median process CPU ms (median wall ms); ratios of CPU time (wall in brackets).",
        "",
        "| B, N, D | H | metric Dm | K (out tokens) | ToMe | QM++ self-sim | ratio | QM++ host attn | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['B']}, {r['N']}, {r['D']} | {r['H']} | {r['metric_dim']} | {r['K']} ({r['out_tokens']}) | "
            f"{_cell(r['tome'])} | {_cell(r['qm_self'])} | {r['qm_self_vs_tome_cpu']:.2f}x "
            f"({r['qm_self_vs_tome_wall']:.2f}x) | {_cell(r['qm_attn'])} | {r['qm_attn_vs_tome_cpu']:.2f}x "
            f"({r['qm_attn_vs_tome_wall']:.2f}x) |"
        )
    a = authors
    lines += [
        "",
        "| 3 scales (B, N, D) | K | QM++ | authors' reference | speed-up (wall) |",
        "| --- | --- | --- | --- | --- |",
        f"| {a['B']}, {a['N']}, {a['D']} | {a['K']} | {_cell(a['qm'])} | {a['reference_s']:.1f} s (issue figure) | "
        f"{a['speedup_wall']:.0f}x |",
    ]
    return "\n".join(lines)


def rich_tables(rows: list[dict], authors: dict, console: Console) -> None:
    table = Table(title="QuickMerge++ vs ToMe at equal output length: CPU ms (wall ms), ratios of CPU time")
    for col in ("B, N, D", "H", "Dm", "K", "ToMe", "QM++ self-sim", "ratio", "QM++ host attn", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['B']}, {r['N']}, {r['D']}", str(r["H"]), str(r["metric_dim"]), str(r["K"]),
                      _cell(r["tome"]), _cell(r["qm_self"]), f"{r['qm_self_vs_tome_cpu']:.2f}x",
                      _cell(r["qm_attn"]), f"{r['qm_attn_vs_tome_cpu']:.2f}x")
    console.print(table)
    t2 = Table(title="3 scales vs the authors' reference (1.0 s)")
    for col in ("B, N, D", "K", "QM++ CPU ms (wall ms)", "speed-up (wall)"):
        t2.add_column(col, justify="right")
    t2.add_row(f"{authors['B']}, {authors['N']}, {authors['D']}", str(authors["K"]), _cell(authors["qm"]),
               f"{authors['speedup_wall']:.0f}x")
    console.print(t2)


def write_json(path: Path, data: dict, force: bool) -> None:
    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; pass --force to overwrite it")
    atomic_write_text(path, json.dumps(data, indent=2))


@click.command(context_settings={"show_default": True})
@click.option("--threads", type=click.IntRange(min=1), default=1, help="torch.set_num_threads.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, help="Timed runs per case (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, help="Untimed runs per case.")
@click.option("--budget", type=click.FloatRange(min=0), default=20.0, help="Seconds per case after 5 runs.")
@click.option("--metric-dim", "metric_dims", type=click.IntRange(min=1), multiple=True,
              help="Also time with a (B, N, Dm) metric given to both (ToMe's head-averaged keys: 64). Repeatable.")
@click.option("--profile", "profile_rows", type=click.IntRange(min=0), default=0,
              help="Print this many top operators of torch.profiler per quickmerge case and shape.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON.")
@click.option("--force", is_flag=True, help="Overwrite --json if it exists.")
def main(threads: int, repeats: int, warmup: int, budget: float, metric_dims: tuple[int, ...], profile_rows: int,
         json_path: Path | None, force: bool) -> None:
    """Time quickmerge (self-similarity and host attention) against ToMe at equal output length."""
    if json_path is not None and json_path.exists() and not force:
        raise click.UsageError(f"{json_path} exists; pass --force to overwrite it")
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    rows = []
    with console.status("timing") as status:
        for shape in SHAPES:
            for metric_dim in (None, *metric_dims):
                status.update(f"timing (B, N, D) = {shape}, metric {metric_dim or 'x'}")
                rows.append(bench_shape(*shape, metric_dim, repeats=repeats, warmup=warmup, budget_s=budget))
        status.update("timing the 3-scale case")
        authors = bench_authors(repeats, warmup, budget)
    meta = {"torch": torch.__version__, "threads": threads, "repeats": repeats, "warmup": warmup,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    rich_tables(rows, authors, console)
    click.echo(markdown(rows, authors, meta))
    if profile_rows:
        for shape in SHAPES:
            profile_cases(*shape, profile_rows, console)
    if json_path is not None:
        write_json(json_path, {"meta": meta, "shapes": rows, "authors_case": authors}, force)


if __name__ == "__main__":
    main()

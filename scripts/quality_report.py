"""Reporting for ``bench_quality.py``: machine facts, JSON, the PNG plot, markdown, rich tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from qm_export.export.files import atomic_output, atomic_write_text

METHODS = ("quickmerge", "quickmerge+prior", "tome", "tome-hidden")
LABELS = {
    "quickmerge": "QuickMerge++",
    "quickmerge+prior": "QuickMerge++ + prior",
    "tome": "ToMe (keys)",
    "tome-hidden": "ToMe (hidden)",
}


def machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_json(results: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rows = sorted(results["test"], key=lambda r: r["reduction"])
    xs = [1.0] + [r["reduction"] for r in rows]
    for method, style in zip(METHODS, ("o-", "s--", "^-", "v:")):
        ax.plot(xs, [1.0] + [r[method]["cos_mean"] for r in rows], style, label=LABELS[method])
    for r in rows:
        ax.annotate(r["schedule"], (r["reduction"], r["quickmerge"]["cos_mean"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=7)
    ax.set_xlabel("token reduction (real tokens / tokens after the last merge)")
    ax.set_ylabel("mean cosine to the unmerged embedding")
    ax.set_title(f"all-MiniLM-L6-v2, pydoc text, test split ({results['splits']['test']['chunks']} chunks)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _test_table(results: dict) -> list[list[str]]:
    head = ["target", "schedule", "reduction", "work left", *(f"{LABELS[m]} cos (min)" for m in METHODS),
            *(f"{LABELS[m]} top-1" for m in METHODS)]
    rows = [head]
    for r in results["test"]:
        rows.append([f"{r['target']:g}x", f"`{r['schedule']}`", f"{r['reduction']:.2f}x", f"{r['work']:.2f}",
                     *(f"{r[m]['cos_mean']:.4f} ({r[m]['cos_min']:.3f})" for m in METHODS),
                     *(f"{r[m]['top1']:.3f}" for m in METHODS)])
    return rows


def _md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _verdicts(results: dict) -> list[str]:
    out = []
    for other in ("tome", "tome-hidden"):
        wins = [r["quickmerge"]["cos_mean"] >= r[other]["cos_mean"] for r in results["test"]]
        where = ", ".join(f"{r['target']:g}x" for r, w in zip(results["test"], wins) if not w)
        out.append(f"- QuickMerge++ (no prior) mean cosine >= {LABELS[other]} at every reduction: "
                   f"**{'yes' if all(wins) else 'no (not at ' + where + ')'}**.")
    two = [r for r in results["test"] if r["target"] == 2.0]
    if two:
        c = two[0]["quickmerge"]["cos_mean"]
        out.append(f"- Mean cosine at 2x: {c:.4f} (goal >= 0.97: **{'met' if c >= 0.97 else 'not met'}**).")
    helped = [r["quickmerge+prior"]["cos_mean"] - r["quickmerge"]["cos_mean"] for r in results["test"]]
    out.append("- The fitted prior changed the test mean cosine by " + ", ".join(f"{d:+.4f}" for d in helped) + " (per reduction).")
    return out


def _reading(results: dict) -> str:
    lines = []
    for target in sorted({r["target"] for r in results["schedule_sweep"]}):
        rows = [r for r in results["schedule_sweep"] if r["target"] == target]
        chosen = results["chosen_schedules"][str(target)]
        pick = next(r for r in rows if r["schedule"] == chosen)
        cheap = min(rows, key=lambda r: r["work"])
        lines.append(f"- {target:g}x: the rule picked `{chosen}` (work left {pick['work']:.2f}, dev cosine "
                     f"{pick['quickmerge']['cos_mean']:.4f}); the cheapest candidate, `{cheap['schedule']}` (work left "
                     f"{cheap['work']:.2f}), reached {cheap['quickmerge']['cos_mean']:.4f} (ToMe keys "
                     f"{cheap['tome']['cos_mean']:.4f}, hidden {cheap['tome-hidden']['cos_mean']:.4f}).")
    lines.append("- The selection rule only maximises the dev cosine, so it prefers late merges that save "
                 "less work; the dev table gives every candidate's work and cosine for other trade-offs.")
    measured = [r["quickmerge"].get("reduction_measured") for r in results["test"]]
    if all(m is not None for m in measured):
        lines.append("- Tokens left, counted from the merge layers' masks on test: reductions "
                     + ", ".join(f"{m:.2f}x" for m in measured) + " (the analytic counts above).")
    ab = results.get("per_row_keep_ablation")
    if ab:
        on = ab["per_row_keep_true"]
        lines.append(f"- Without `per_row_keep` (K from the padded tensor, spec §2 alone) `{ab['schedule']}` keeps "
                     f"more of each padded row: measured reduction {ab.get('reduction_measured', float('nan')):.2f}x instead "
                     f"of {on.get('reduction_measured', float('nan')):.2f}x on dev, with dev cosine {ab['cos_mean']:.4f} "
                     f"instead of {on['cos_mean']:.4f}: a cosine measured on padded batches without it overstates "
                     "quality at a nominal ratio.")
    return "\n".join(lines)


def write_markdown(results: dict, path: Path) -> None:
    m, s = results["machine"], results["splits"]
    opt = results["chosen_options"]
    refs = list(results["options_sweep"][0]["runs"])
    sweep = [["options", *(f"`{r}` dev cos (min)" for r in refs), "mean"]] + [
        [r["name"], *(f"{r['runs'][k]['cos_mean']:.4f} ({r['runs'][k]['cos_min']:.3f})" for k in refs), f"{r['cos_mean']:.4f}"]
        for r in results["options_sweep"]]
    sched = [["target", "schedule", "reduction", "work left", *(f"{LABELS[k]} dev cos" for k in ("quickmerge", "tome", "tome-hidden"))]] + [
        [f"{r['target']:g}x", f"`{r['schedule']}`", f"{r['reduction']:.2f}x", f"{r['work']:.2f}",
         *(f"{r[k]['cos_mean']:.4f}" for k in ("quickmerge", "tome", "tome-hidden"))] for r in results["schedule_sweep"]]
    priors = [["layer", "sequences", "steps x batch", "held-out loss before -> after", "seconds"]] + [
        [str(p["layer"]), str(p["sequences"]), f"{p['steps']} x {p['batch_size']}",
         f"{p['val_loss_start']:.4f} -> {p['val_loss_end']:.4f}", f"{p['seconds']:.0f}"] for p in results["priors"]]
    betas = [["target", "schedule", "prior weight", "dev cos (min)", "dev top-1"]] + [
        [f"{r['target']:g}x", f"`{r['schedule']}`", f"{r['prior_weight']:g}", f"{r['cos_mean']:.4f} ({r['cos_min']:.3f})", f"{r['top1']:.3f}"]
        for r in results["beta_sweep"]]
    text = f"""# Quality benchmark: QuickMerge++ vs ToMe inside all-MiniLM-L6-v2 (real weights)

Generated by `scripts/bench_quality.py`; every number below comes from this run:

```
{results['command']}
```

Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads, shared with other jobs),
Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; {m['date']};
{results['seconds_total']:.0f} s in total. Raw numbers: `benchmarks-quality.json`; plot: `benchmarks-quality.png`.

## Setup

- Model: {results['model']}, loaded offline from the package's folder, fp32, eval mode.
- Text: `pydoc_data.topics` (Python's documentation topics, sorted by name) cut into chunks of
  128-256 tokens (`[CLS]`/`[SEP]` included), batched by length with right padding. Topics are
  split by index: `i % 5 == 0` dev ({s['dev']['chunks']} chunks, mean {s['dev']['tokens_mean']:.0f} tokens),
  `== 1` prior training ({s['prior']['chunks']} chunks), the rest test ({s['test']['chunks']} chunks,
  mean {s['test']['tokens_mean']:.0f} tokens). No topic is in two splits.
- Embedding: the model card's pooling, the attention-mask-weighted mean of `last_hidden_state`;
  for merged models that is the unmerged dense output (`apply_quickmerge` returns `(B, N, D)`),
  which equals the size-weighted mean over merged tokens.
- Metrics against the unmerged model on the same chunks: mean (and minimum) cosine similarity of
  the embeddings; retrieval top-1 agreement: each chunk queries all other chunks of its split,
  the fraction whose nearest neighbour is the same with and without merging.
- Reduction: total real tokens / total tokens after the last merge (each row keeps its own
  `K_b`, `per_row_keep=True`; `[CLS]` is protected). "Work left": fraction of token-layer work
  still done (a merge layer counted by the mean of its attention and feed-forward token counts).
- ToMe: `bipartite_merge` on each row's real tokens, removing exactly the tokens QuickMerge++
  removes in that row and layer, proportional attention, `[CLS]` kept out of matching. "ToMe
  (keys)" matches on attention keys averaged over heads (as published); "ToMe (hidden)" on the
  hidden states (the metric QuickMerge++ ended up using), for a like-for-like comparison.
- Protocol: QuickMerge++ options are chosen on dev (mean cosine over `2:0.5` and
  `2:0.5774,3:0.5774`); then for each target the
  schedule with the best QuickMerge++ dev cosine among the candidates (merges in layers 1-3,
  each removing at most half so that ToMe can run it); then a prior is fitted
  (`qm_export.priors.fit`, the code behind `qm-export fit-prior`) on the prior split at the
  schedule's first merge layer, and its weight chosen on dev from {{0.1, 0.3}}. Test runs only
  the chosen settings. Chosen options: **{opt['name']}**.

## Test split (chosen settings)

{_md(_test_table(results))}

{chr(10).join(_verdicts(results))}

![cosine vs reduction](benchmarks-quality.png)

## Dev split: choices

QuickMerge++ options (every other setting at the spec's defaults: `tau` 0.5, `eps` 1e-5,
low-entropy tokens salient, host attention saliency):

{_md(sweep)}

Schedules:

{_md(sched)}

Priors (width 128, 2 layers, 4 heads; symmetric next-embedding loss on the merge layer's
post-attention states of the prior split):

{_md(priors)}

Prior weight:

{_md(betas)}

## Reading the results

{_reading(results)}

## Caveats

- Seconds in the JSON are wall-clock on a shared 2-core CPU: not a speed benchmark.
- One corpus (Python documentation); dev, prior and test topics differ but share its style.
- Merging is evaluated against the same model unmerged, not on a downstream task.
"""
    atomic_write_text(path, text)


def print_tables(results: dict, console) -> None:
    from rich.table import Table

    short = {"quickmerge": "QM++", "quickmerge+prior": "QM++ prior", "tome": "ToMe keys", "tome-hidden": "ToMe hidden"}
    table = Table(title="all-MiniLM-L6-v2, test split: mean cosine (top-1 agreement)")
    for h in ("target", "schedule", "reduction", "work left", *short.values()):
        table.add_column(h)
    for r in results["test"]:
        table.add_row(f"{r['target']:g}x", r["schedule"], f"{r['reduction']:.2f}x", f"{r['work']:.2f}",
                      *(f"{r[m]['cos_mean']:.4f} ({r[m]['top1']:.2f})" for m in short))
    console.print(table)
    for line in _verdicts(results):
        console.print(line.replace("**", ""))

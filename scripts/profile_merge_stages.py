"""Where ``quickmerge``'s CPU time goes, stage by stage (eval mode, no refinement, no prior).

Runs the stages of :func:`qm_export.merge.quickmerge` one by one (the same calls, in the same
order) and checks that the result equals ``quickmerge``'s, so the breakdown cannot drift from
the code. Medians of process CPU time; ToMe's total is shown for scale.

Run: ``python scripts/profile_merge_stages.py [--threads 1] [--repeats 9]``.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import click
import torch
from rich.console import Console
from rich.table import Table

from qm_export.merge import QuickMergeConfig, bipartite_merge, ops, quickmerge
from qm_export.merge.assign import assign_to_seeds
from qm_export.merge.ops import group_sum
from qm_export.merge.saliency import normalise, saliency
from qm_export.merge.select import masses, select_seeds
from qm_export.merge.validate import check_inputs

SHAPES = [(8, 197, 768), (4, 1024, 768), (1, 4096, 1024)]
STAGES = ["input checks", "saliency", "masses + seeds", "assignment", "group + merge", "outputs"]


def run_stages(x: torch.Tensor, attn: torch.Tensor | None, cfg: QuickMergeConfig, clock: dict) -> torch.Tensor:
    """quickmerge's eval pipeline with each stage's CPU time added to ``clock``."""
    t = time.process_time()

    def tick(stage: str) -> None:
        nonlocal t
        now = time.process_time()
        clock[stage].append(now - t)
        t = now

    inputs = check_inputs(x, cfg, attn=attn, scales=None, sizes=None, positions=None, metric=None, mask=None,
                          tracing=False)
    p, k = cfg.protect, cfg.keep
    real = inputs.mask[:, p:]
    tick("input checks")
    s, _ = saliency(real, p, attn=inputs.attn, scales=inputs.scales, attn_rows=inputs.attn_rows,
                    sim_temp=cfg.sim_temp, high_entropy_salient=cfg.high_entropy_salient)
    tick("saliency")
    m = masses(s, real, cfg.tau, cfg.eps)
    seeds, others = select_seeds(s, real, k, cfg.mode == "causal")
    tick("masses + seeds")
    g_hat = torch.where(real.unsqueeze(-1), normalise(inputs.metric[:, p:].float()), torch.zeros(()))
    assign = assign_to_seeds(g_hat, real, seeds, others, cfg.mode == "causal")
    tick("assignment")
    order, offsets = ops.group_index(assign, seeds)
    sizes = inputs.sizes[:, p:]
    merged = ops.merge(x[:, p:], torch.where(real, m * sizes, torch.zeros_like(m)), order, offsets)
    group_sum(sizes, real, order, offsets)
    tick("group + merge")
    out = torch.cat([x[:, :p], merged], 1)
    tick("outputs")
    return out


@click.command(context_settings={"show_default": True})
@click.option("--threads", type=click.IntRange(min=1), default=1, help="torch.set_num_threads.")
@click.option("--repeats", type=click.IntRange(min=1), default=9, help="Timed runs per case (median).")
def main(threads: int, repeats: int) -> None:
    """Per-stage CPU time of quickmerge (self-similarity and host attention) at the benchmark shapes."""
    torch.set_num_threads(threads)
    console = Console()
    table = Table(title=f"quickmerge stages: median process CPU ms ({threads} thread(s), {repeats} runs)")
    for col in ("B, N, D", "saliency from", *STAGES, "total", "ToMe total"):
        table.add_column(col, justify="right")
    for batch, n, dim in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, n, dim, generator=gen)
        q = torch.randn(batch, 16 if dim >= 1024 else 12, n, 64, generator=gen)
        host = torch.softmax(q @ q.transpose(-1, -2) / 8.0, -1)
        del q
        r = (n - 1) // 2
        cfg = QuickMergeConfig(keep=n - 1 - r, protect=1)
        with torch.inference_mode():
            tome = []
            for _ in range(repeats):
                c = time.process_time()
                bipartite_merge(x, r, x)
                tome.append(time.process_time() - c)
            for name, attn in (("self-sim", None), ("host attn", host)):
                clock: dict = defaultdict(list)
                out = run_stages(x, attn, cfg, defaultdict(list))
                assert torch.equal(out, quickmerge(x, cfg, attn=attn)[0]), "stage copy drifted from quickmerge"
                for _ in range(repeats):
                    run_stages(x, attn, cfg, clock)
                med = [statistics.median(clock[s]) * 1e3 for s in STAGES]
                table.add_row(f"{batch}, {n}, {dim}", name, *(f"{v:.1f}" for v in med), f"{sum(med):.1f}",
                              f"{statistics.median(tome) * 1e3:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()

"""``qm-export demo``: merge a built-in input and show what QuickMerge++ kept."""

from __future__ import annotations

import click


@click.command()
@click.option("--tokens", "-n", type=click.IntRange(min=2), default=197, help="Tokens N (incl. class token).")
@click.option("--dim", "-d", type=click.IntRange(min=1), default=64, help="Channels D.")
@click.option("--keep-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.5, help="Fraction of tokens kept.")
@click.option("--seed", type=int, default=0, help="Random seed of the built-in input.")
def demo(tokens: int, dim: int, keep_ratio: float, seed: int) -> None:
    """Merge a built-in clustered input with QuickMerge++ and ToMe, and compare."""
    import torch

    from ..merge import QuickMergeConfig, bipartite_merge, quickmerge, unmerge

    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=gen)
    labels = torch.randint(0, 8, (1, tokens), generator=gen)
    x = centres[labels] + 0.1 * torch.randn(1, tokens, dim, generator=gen)
    cfg = QuickMergeConfig(keep_ratio=keep_ratio, protect=1)
    merged, info = quickmerge(x, cfg)
    k = merged.shape[1] - 1
    tome, _ = bipartite_merge(x, tokens - 1 - k, x, class_token=True)
    qm_err = (unmerge(merged, info["assign"]) - x).norm(dim=-1).mean()
    click.echo(f"input: {tokens} tokens x {dim} channels (8 clusters), protect=1")
    click.echo(f"QuickMerge++ kept {merged.shape[1]} tokens; mean reconstruction error {qm_err:.4f}")
    click.echo(f"ToMe kept {tome.shape[1]} tokens")

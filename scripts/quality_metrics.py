"""Sentence-embedding quality of a (merged) encoder: pooling, agreement metrics, token counts.

Used by ``bench_quality.py``; kept apart so the numbers' definitions sit in one short file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qm_export.merge import QuickMergeConfig, resolve_keep
from qm_export.priors.samples import collate_chunks


def embed(model: torch.nn.Module, chunks: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Mean-pooled sentence embeddings ``(C, D)``, the model card's pooling.

    Pooling is the attention-mask-weighted mean of the model's dense ``last_hidden_state``
    (for a merged model: its outputs unmerged to every original token, which equals the
    size-weighted mean over merged tokens). Chunks are batched by length to limit padding;
    rows come back in input order.
    """
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
    out = torch.empty(len(chunks), model.config.hidden_size)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_chunks([chunks[i] for i in idx], pad_id)
            hidden = model(**batch).last_hidden_state.float()
            w = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = (hidden * w).sum(1) / w.sum(1)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``(C,)``."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def top1_neighbours(emb: torch.Tensor) -> torch.Tensor:
    """For every row as a query, the index of its most similar other row (cosine)."""
    e = torch.nn.functional.normalize(emb, dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))
    return sim.argmax(-1)


def retrieval_agreement(merged: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of queries whose top-1 neighbour is the same with and without merging."""
    return float((top1_neighbours(merged) == top1_neighbours(reference)).float().mean())


def token_counts(lengths: Sequence[int], schedule: dict[int, float], num_layers: int, protect: int = 1) -> dict[str, float]:
    """Token bookkeeping of a schedule over chunks of ``lengths`` real tokens (per-row keep).

    Returns ``reduction`` = total real tokens / total tokens after the last merge, and
    ``work`` = the fraction of token-layer work left, each layer counted by the mean of the
    tokens its attention and its feed-forward see (a merge sits between them).
    """
    before = after = work = 0.0
    for n in lengths:
        tokens = float(n)
        total = 0.0
        for layer in range(num_layers):
            if layer in schedule:
                kept = protect + resolve_keep(int(tokens) - protect, QuickMergeConfig(keep_ratio=schedule[layer]))
                total += (tokens + kept) / 2
                tokens = float(kept)
            else:
                total += tokens
        before += n
        after += tokens
        work += total / (num_layers * n)
    return {"reduction": before / after, "work": work / len(lengths)}

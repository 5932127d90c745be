"""One merge step on the token state of a patched model: QuickMerge++ or the ToMe baseline.

Both take the hidden states right after a layer's attention, ``(B, M, D)``, and the
:class:`TokenState`, and return the merged states and the new state (``source`` updated so
that dense outputs unmerge to every original token).

A *context* of ``n_ctx`` leading tokens (causal language models): only the context merges;
the tokens after it (a continuation) pass through unmerged, after the merged context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...merge import QuickMergeConfig, bipartite_merge, quickmerge
from ...merge.config import resolve_keep
from ...merge.quickmerge import MergeInfo
from ...merge.saliency import PriorFn
from ...merge.tome_export import ToMeInfo, tome_merge
from ...models.merging import TokenState

__all__ = ["quickmerge_step", "tome_step", "causal_tome_step"]


def quickmerge_step(
    hidden: torch.Tensor,
    state: TokenState,
    config: QuickMergeConfig,
    *,
    n_ctx: int | None,
    attn: Sequence[torch.Tensor] | None,
    scales: Sequence[torch.Tensor] | None,
    metric: torch.Tensor,
    prior: PriorFn | None,
    training: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, TokenState, MergeInfo, int | None]:
    """Merge ``hidden`` ``(B, M, D)`` (or its first ``n_ctx`` tokens) with :func:`quickmerge`.

    Returns:
        ``(merged (B, M', D), new_state, info, new_n_ctx)``; ``info`` describes the merged part.
    """
    if n_ctx is None:
        merged, info = quickmerge(
            hidden, config, attn=attn, scales=scales, sizes=state.sizes, positions=state.positions,
            metric=metric, mask=state.mask, prior=prior, training=training, generator=generator,
        )
        source = torch.gather(info["assign"], 1, state.source)
        return merged, TokenState(info["sizes"], info["positions"], info["mask"], source), info, None

    c = n_ctx
    merged_c, info = quickmerge(
        hidden[:, :c], config,
        attn=None if attn is None else [a[:, :, :c, :c] for a in attn],
        scales=None if scales is None else [s[:, :c] for s in scales],
        sizes=state.sizes[:, :c], positions=state.positions[:, :c], metric=metric[:, :c],
        mask=state.mask[:, :c], prior=prior, training=training, generator=generator,
    )
    merged, new_state = _append_tail(merged_c, TokenState(info["sizes"], info["positions"], info["mask"], info["assign"]),
                                     hidden, state, c)
    return merged, new_state, info, merged_c.shape[1]


def _append_tail(
    merged_c: torch.Tensor, merged_state: TokenState, hidden: torch.Tensor, state: TokenState, c: int
) -> tuple[torch.Tensor, TokenState]:
    """The merged context ``merged_c`` ``(B, M_c, D)`` followed by the unmerged tokens
    ``hidden[:, c:]``; ``merged_state.source`` is the context tokens' ``(B, c)`` assignment."""
    m_c = merged_c.shape[1]
    batch, m = hidden.shape[:2]
    tail = torch.arange(m - c, device=hidden.device).unsqueeze(0).expand(batch, m - c) + m_c
    assign = torch.cat([merged_state.source, tail], 1)
    new_state = TokenState(
        torch.cat([merged_state.sizes, state.sizes[:, c:]], 1),
        torch.cat([merged_state.positions, state.positions[:, c:]], 1),
        torch.cat([merged_state.mask, state.mask[:, c:]], 1),
        torch.gather(assign, 1, state.source),
    )
    return torch.cat([merged_c, hidden[:, c:]], 1), new_state


def causal_tome_step(
    hidden: torch.Tensor, state: TokenState, config: QuickMergeConfig, metric: torch.Tensor, *, n_ctx: int | None
) -> tuple[torch.Tensor, TokenState, ToMeInfo, int | None]:
    """The causal-safe ToMe baseline: ToMe's bipartite matching (several passes when needed,
    :func:`~qm_export.merge.tome_export.tome_merge`) with every merged token at its group's
    largest position, so no query sees a member later than itself; the ``mode`` of ``config``
    only gates tome_merge's order-blind check. With ``n_ctx`` only the first tokens merge.

    Returns:
        ``(merged, new_state, info of the merged part, new_n_ctx)``.
    """
    config = config.replace(mode="global")
    if n_ctx is None:
        merged, new_state, info = tome_merge(hidden, state, config, metric)
        return merged, new_state, info, None
    c = n_ctx
    batch = hidden.shape[0]
    ident = torch.arange(c, device=hidden.device).unsqueeze(0).expand(batch, c)
    sub = TokenState(state.sizes[:, :c], state.positions[:, :c], state.mask[:, :c], ident)
    merged_c, merged_state, info = tome_merge(hidden[:, :c], sub, config, metric[:, :c])
    merged, new_state = _append_tail(merged_c, merged_state, hidden, state, c)
    return merged, new_state, info, merged_c.shape[1]


def _row_keeps(state: TokenState, config: QuickMergeConfig) -> tuple[int, list[int]]:
    """``K`` of the tensor and ``K_b`` of every row (the real seeds QuickMerge++ would keep)."""
    p = config.protect
    n_merge = state.mask.shape[1] - p
    k = resolve_keep(n_merge, config)
    rows = []
    for n_real in state.mask[:, p:].sum(1).tolist():
        k_b = resolve_keep(int(n_real), config) if config.per_row_keep else min(k, int(n_real))
        rows.append(k_b)
    return k, rows


def tome_step(
    hidden: torch.Tensor, state: TokenState, config: QuickMergeConfig, metric: torch.Tensor
) -> tuple[torch.Tensor, TokenState]:
    """The ToMe baseline at the same reduction: row ``b`` loses exactly as many real tokens
    as QuickMerge++ would remove there (``n_b - K_b``), by :func:`bipartite_merge` on the row's
    real tokens (so padding never takes part). Eager only (a loop over rows; not exportable).

    Output: ``(B, P + K, D)`` like QuickMerge++; row ``b``'s ``P + K_b`` real tokens first (in
    ToMe's order: kept set-A tokens, class token first, then set-B tokens), then padding
    (zeros, size 0, mask False).
    """
    p = config.protect
    if p not in (0, 1):
        raise ValueError(f"the ToMe baseline supports protect 0 or 1 (a class token), got protect={p}")
    batch, m, dim = hidden.shape
    k, k_rows = _row_keeps(state, config)
    out_len = p + k
    out = hidden.new_zeros(batch, out_len, dim)
    sizes = torch.zeros(batch, out_len, dtype=torch.float32, device=hidden.device)
    positions = torch.zeros(batch, out_len, dtype=torch.long, device=hidden.device)
    mask = torch.zeros(batch, out_len, dtype=torch.bool, device=hidden.device)
    assign = torch.zeros(batch, m, dtype=torch.long, device=hidden.device)
    for b in range(batch):
        idx = state.mask[b].nonzero()[:, 0]
        n = idx.numel()
        r = (n - p) - k_rows[b]
        if r > (n - p) // 2:
            raise ValueError(
                f"the ToMe baseline removes at most half of the mergeable tokens per layer; "
                f"row {b} would remove {r} of {n - p} (keep_ratio={config.keep_ratio}, "
                f"keep={config.keep}); split the reduction over more layers"
            )
        x = hidden[b, idx].float()
        ident = torch.eye(n, dtype=torch.float32, device=hidden.device)
        merged, msize = bipartite_merge(
            torch.cat([x, ident], 1)[None], r, metric[b, idx].float()[None],
            state.sizes[b, idx].float()[None], class_token=p == 1,
        )
        groups = merged[0, :, dim:].argmax(0)  # group of every real token (its one-hot column)
        m_b = merged.shape[1]
        out[b, :m_b] = merged[0, :, :dim].to(hidden.dtype)
        sizes[b, :m_b] = msize[0]
        mask[b, :m_b] = True
        pos = torch.full((m_b,), torch.iinfo(torch.long).min, dtype=torch.long, device=hidden.device)
        positions[b, :m_b] = pos.scatter_reduce(0, groups, state.positions[b, idx].long(), "amax")
        row = torch.full((m,), m_b if m_b < out_len else 0, dtype=torch.long, device=hidden.device)
        assign[b] = row.scatter(0, idx, groups)
    source = torch.gather(assign, 1, state.source)
    return out, TokenState(sizes, positions, mask, source)

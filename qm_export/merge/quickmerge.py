"""``quickmerge`` and ``unmerge``: one QuickMerge++ layer on tensors (spec §2-§4).

The whole layer is a pipeline of small functions:
``saliency -> masses -> select_seeds -> assign_to_seeds [-> refine] -> group_index -> merge``.
It is vectorised over batch and tokens (no Python loop over ``B``, ``N`` or ``K``) and traces
to standard ONNX ops plus the three ``qm`` nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from . import ops
from .assign import assign_to_seeds, eligibility, refine
from .config import QuickMergeConfig, resolve_keep, resolve_keep_rows
from .indexing import batch_gather
from .saliency import PriorFn, normalise, saliency
from .recording import MergeRecord, add_record, recording_active
from .select import gumbel_noise, masses, row_keep_score, select_seeds
from .validate import check_inputs

__all__ = ["MergeInfo", "quickmerge", "unmerge"]


class MergeInfo(TypedDict):
    """What :func:`quickmerge` returns besides the merged tokens (``M = P + K``).

    - ``assign`` ``(B, N)`` int64: index in the merged sequence of every input token.
    - ``sizes`` ``(B, M)`` float32: original tokens each merged token stands for.
    - ``positions`` ``(B, M)`` int64: position id of each merged token (its seed's).
    - ``mask`` ``(B, M)`` bool: real merged tokens.
    - ``seeds`` ``(B, K)`` int64: the seeds' indices in ``x``, ascending.
    - ``saliency`` ``(B, N')`` float32 (``-1`` at padding); ``masses`` ``(B, N')`` float32.
    - ``entropy_range`` ``(B,)`` float32: smallest ``max H - min H`` over scales (near-ties).
    - ``keep``: ``K``.
    """

    assign: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    seeds: torch.Tensor
    saliency: torch.Tensor
    masses: torch.Tensor
    entropy_range: torch.Tensor
    keep: int


def quickmerge(
    x: torch.Tensor,
    config: QuickMergeConfig | None = None,
    *,
    attn: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scales: Sequence[torch.Tensor] | None = None,
    sizes: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    metric: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    prior: PriorFn | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> tuple[torch.Tensor, MergeInfo]:
    """Merge ``x`` ``(B, N, D)`` to ``(B, P + K, D)`` tokens with QuickMerge++.

    Args:
        x: ``(B, N, D)`` float tokens (fp32/fp16/bf16; selection runs in float32).
        config: a :class:`QuickMergeConfig`; ``**overrides`` replace its fields.
        attn: host attention probabilities ``(B, H, N, N)`` or a list of them (one per scale).
        scales: hidden states ``(B, N, D_l)`` per scale (used when ``attn`` is None).
        sizes: ``(B, N)`` tokens each input stands for (default 1).
        positions: ``(B, N)`` integer position ids (default ``0..N-1``).
        metric: ``(B, N, Dm)`` assignment features (default ``x``).
        mask: ``(B, N)`` bool, True for real tokens (default all real).
        prior: ``prior(Z, mask) -> (B, N', D)`` used when ``prior_weight > 0``.
        training: Gumbel-top-k seeds and Gumbel-softmax masses (spec §4).
        generator: random source for ``training``.

    Returns:
        ``(merged, info)``, see :class:`MergeInfo`.
    """
    cfg = QuickMergeConfig() if config is None else config
    if not isinstance(cfg, QuickMergeConfig):
        raise TypeError(f"config must be a QuickMergeConfig, got {type(cfg).__name__}: {cfg!r}")
    if overrides:
        cfg = cfg.replace(**overrides)
    if cfg.prior_weight > 0 and prior is None:
        raise ValueError(f"prior_weight={cfg.prior_weight} needs a prior (prior=None)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    tracing = ops.is_exporting()
    inputs = check_inputs(
        x, cfg, attn=attn, scales=scales, sizes=sizes, positions=positions,
        metric=metric, mask=mask, tracing=tracing,
    )
    p = cfg.protect
    causal = cfg.mode == "causal"
    n_merge = x.shape[1] - p
    k = resolve_keep(n_merge, cfg)
    real = inputs.mask[:, p:]

    s, entropy_range = saliency(
        real, p, attn=inputs.attn, scales=inputs.scales, attn_rows=inputs.attn_rows, sim_temp=cfg.sim_temp,
        high_entropy_salient=cfg.high_entropy_salient, prior=prior,
        prior_weight=cfg.prior_weight, tokens=x[:, p:],
    )
    noise = gumbel_noise(real.shape, x.device, generator) if training else None
    m = masses(s, real, cfg.tau, cfg.eps, noise)
    if noise is None:
        score = s
    else:
        score = torch.where(real, s / cfg.tau + noise, torch.tensor(float("-inf"), device=x.device))
    if cfg.per_row_keep:
        score = row_keep_score(score, real, resolve_keep_rows(real.sum(1), cfg), causal)
    seeds, others = select_seeds(score, real, k, causal)

    g = inputs.metric[:, p:].float()
    g_hat = torch.where(real.unsqueeze(-1), normalise(g), torch.zeros((), device=x.device))
    assign_local = assign_to_seeds(g_hat, real, seeds, others, causal)
    targets = None
    if cfg.refine_iters > 0:
        assign_local, targets = refine(assign_local, g_hat, m, real, seeds, causal, cfg.refine_iters)

    order, offsets = ops.group_index(assign_local, seeds)
    sizes_m = inputs.sizes[:, p:]
    weight = torch.where(real, m * sizes_m, torch.zeros_like(m))
    merged = ops.merge(x[:, p:], weight, order, offsets)
    out_sizes = ops.group_sum(sizes_m, real, order, offsets)

    batch = x.shape[0]
    protected_idx = torch.arange(p, device=x.device).unsqueeze(0).expand(batch, p)
    info: MergeInfo = {
        "assign": torch.cat([protected_idx, assign_local + p], 1),
        "sizes": torch.cat([inputs.sizes[:, :p], out_sizes], 1),
        "positions": torch.cat(
            [inputs.positions[:, :p], batch_gather(inputs.positions[:, p:], seeds)], 1
        ).long(),
        "mask": torch.cat([inputs.mask[:, :p], torch.gather(real, 1, seeds)], 1),
        "seeds": seeds + p,
        "saliency": s,
        "masses": m,
        "entropy_range": entropy_range,
        "keep": k,
    }
    if recording_active() and not tracing:
        _record(cfg, info, g_hat, real, seeds, targets, x[:, p:])
    return torch.cat([x[:, :p], merged], 1), info


def _record(
    cfg: QuickMergeConfig,
    info: MergeInfo,
    g_hat: torch.Tensor,
    real: torch.Tensor,
    seeds: torch.Tensor,
    targets: torch.Tensor | None,
    tokens: torch.Tensor,
) -> None:
    """Keep the numbers validation judges near-ties on (see :mod:`.recording`)."""
    with torch.no_grad():
        if targets is None:
            targets = batch_gather(g_hat, seeds)
        n = real.shape[1]
        idx = torch.arange(n, device=real.device).unsqueeze(0).expand(real.shape)
        eligible = eligibility(idx, real, seeds, torch.gather(real, 1, seeds), cfg.mode == "causal")
        add_record(
            MergeRecord(
                config=cfg,
                seeds=info["seeds"].detach(),
                assign=info["assign"].detach(),
                saliency=info["saliency"].detach(),
                entropy_range=info["entropy_range"].detach(),
                similarity=torch.matmul(g_hat, targets.transpose(1, 2)).detach(),
                eligible=eligible,
                real=real,
                tokens=tokens.detach(),
            )
        )


def unmerge(y: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Give every original position its merged token back: ``y[b, assign[b, i]]``.

    Args:
        y: ``(B, M, ...)`` merged tokens (any trailing shape; ``(B, M)`` works too).
        assign: ``(B, N)`` integer indices in ``[0, M)`` (``info["assign"]``).

    Returns:
        ``(B, N, ...)``.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not isinstance(assign, torch.Tensor):
        raise TypeError(f"assign must be a torch.Tensor, got {type(assign).__name__}")
    if assign.is_floating_point() or assign.dtype == torch.bool or assign.is_complex():
        raise TypeError(f"assign must be an integer tensor, got dtype {assign.dtype}")
    if y.dim() < 2:
        raise ValueError(f"y must have shape (B, M, ...), got {tuple(y.shape)}")
    if assign.dim() != 2 or assign.shape[0] != y.shape[0]:
        raise ValueError(f"assign must have shape (B, N) with B={y.shape[0]}, got {tuple(assign.shape)}")
    if not ops.is_exporting() and assign.numel() > 0:
        lo, hi = int(assign.min()), int(assign.max())
        if lo < 0 or hi >= y.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(f"assign holds index {bad} outside [0, M) with M={y.shape[1]}")
    if y.dim() == 3:
        return ops.unmerge(y, assign)
    return batch_gather(y, assign.long())

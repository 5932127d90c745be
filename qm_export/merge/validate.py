"""Input checks of spec §7: bad input raises, naming the argument and the value.

Type and rank checks always run; value checks (NaN, sizes, masks, positions) read tensor
data and are skipped while tracing for export, where the data is symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import QuickMergeConfig
from .saliency import attention_rows

__all__ = ["MergeInputs", "check_inputs"]


@dataclass
class MergeInputs:
    """The inputs of one merge after checking, with defaults filled in.

    ``mask`` ``(B, N)`` bool, ``sizes`` ``(B, N)`` float32, ``positions`` ``(B, N)`` int64,
    ``metric`` ``(B, N, Dm)``, ``attn`` a list of ``(B, H, N, N)`` or None, ``scales`` a list of
    ``(B, N, D_l)``; ``attn_rows`` the head-averaged mergeable query rows ``(B, N', N)`` float32
    of each ``attn``, computed by the value checks (None while tracing).
    """

    mask: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor
    metric: torch.Tensor
    attn: list[torch.Tensor] | None
    scales: list[torch.Tensor]
    attn_rows: list[torch.Tensor] | None = None


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return repr(t)


def _tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}: {_describe(t)}")
    return t


def _float_tensor(name: str, t: object) -> torch.Tensor:
    t = _tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _shape(name: str, t: torch.Tensor, rank: int, prefix: Sequence[int], what: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {what}, got {tuple(t.shape)}")
    if tuple(t.shape[: len(prefix)]) != tuple(prefix):
        raise ValueError(
            f"{name} must have shape {what} matching x, got {tuple(t.shape)} for "
            f"(B, N) = {tuple(prefix[:2])}"
        )


def _first_bad(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in bad.nonzero()[0].tolist())


def _nonfinite_real_rows(t: torch.Tensor, real_rows: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool: real rows of ``t`` ``(B, H, N, ...)`` holding a NaN or Inf (row = all ``H``).

    Fast path: a float32 sum per row is non-finite whenever the row holds a NaN or Inf, and it
    is one pass (``torch.isfinite`` on a large tensor costs several: 0.51 s vs 0.02 s on a
    ``(4, 12, 1024, 1024)`` attention, 1 thread). Only when a real row's sum is not finite (a
    huge finite row can overflow it too) does the exact element-wise test run, so the result
    is always exactly ``real & ~isfinite(row).all()`` on the float32 values the merge computes
    with (spec §2 "Precision"): a float64 value beyond float32's range counts as Inf.
    """
    sums = t.flatten(3).sum(-1, dtype=torch.float32)  # (B, H, N)
    suspect = real_rows & ~torch.isfinite(sums).all(1)
    if not bool(suspect.any()):
        return suspect
    return real_rows & ~torch.isfinite(t.float()).flatten(3).all(-1).all(1)


def _check_finite_rows(name: str, t: torch.Tensor, real_rows: torch.Tensor) -> None:
    """``t`` ``(B, N, ...)``: every real row must be finite."""
    bad = _nonfinite_real_rows(t.unsqueeze(1), real_rows)
    if bool(bad.any()):
        b, i = _first_bad(bad)
        raise ValueError(f"{name} has NaN or Inf (in float32) at real token (batch {b}, index {i})")


def check_inputs(
    x: torch.Tensor,
    config: QuickMergeConfig,
    *,
    attn: torch.Tensor | Sequence[torch.Tensor] | None,
    scales: Sequence[torch.Tensor] | None,
    sizes: torch.Tensor | None,
    positions: torch.Tensor | None,
    metric: torch.Tensor | None,
    mask: torch.Tensor | None,
    tracing: bool,
) -> MergeInputs:
    """Validate and complete the inputs of :func:`qm_export.merge.quickmerge` (spec §7)."""
    x = _float_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, D), got {tuple(x.shape)}")
    batch, n, dim = x.shape
    if not tracing:
        if n == 0 or dim == 0:
            raise ValueError(f"x must have N > 0 tokens and D > 0 channels, got {tuple(x.shape)}")
        if batch == 0:
            raise ValueError(f"x must have a batch of at least 1, got {tuple(x.shape)}")
        if config.protect >= n:
            raise ValueError(f"protect={config.protect} must be < N={n} (the number of tokens)")
        if config.keep is not None and config.keep > n - config.protect:
            raise ValueError(
                f"keep={config.keep} exceeds the number of mergeable tokens "
                f"N'={n - config.protect} (N={n}, protect={config.protect})"
            )
    bn = (batch, n)

    if mask is None:
        mask = torch.ones(bn, dtype=torch.bool, device=x.device)
    else:
        mask = _tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = real token), got dtype {mask.dtype}")
        if not tracing:
            _shape("mask", mask, 2, bn, "(B, N)")

    if sizes is None:
        sizes = torch.ones(bn, dtype=torch.float32, device=x.device)
    else:
        sizes = _float_tensor("sizes", sizes)
        if not tracing:
            _shape("sizes", sizes, 2, bn, "(B, N)")
        sizes = sizes.float()

    if positions is None:
        positions = torch.arange(n, device=x.device).unsqueeze(0).expand(batch, n)
    else:
        positions = _tensor("positions", positions)
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"positions must be an integer tensor, got dtype {positions.dtype}")
        if not tracing:
            _shape("positions", positions, 2, bn, "(B, N)")

    if metric is None:
        metric = x
    else:
        metric = _float_tensor("metric", metric)
        if not tracing:
            _shape("metric", metric, 3, bn, "(B, N, Dm)")
            if metric.shape[2] == 0:
                raise ValueError(f"metric must have Dm > 0 channels, got {tuple(metric.shape)}")

    attn_list: list[torch.Tensor] | None = None
    if attn is not None:
        attn_list = [attn] if isinstance(attn, torch.Tensor) else list(attn)
        if not attn_list:
            raise ValueError("attn must be a tensor or a non-empty list of tensors, got []")
        for i, a in enumerate(attn_list):
            a = _float_tensor(f"attn[{i}]", a)
            if not tracing:
                if a.dim() != 4 or tuple(a.shape[:1]) != (batch,) or tuple(a.shape[2:]) != (n, n):
                    raise ValueError(f"attn[{i}] must have shape (B, H, N, N) = ({batch}, H, {n}, {n}), got {tuple(a.shape)}")
                if a.shape[1] == 0:
                    raise ValueError(f"attn[{i}] must have at least one head, got {tuple(a.shape)}")
        scale_list: list[torch.Tensor] = []
    elif scales is not None:
        scale_list = list(scales) if not isinstance(scales, torch.Tensor) else [scales]
        if not scale_list:
            raise ValueError("scales must be a non-empty list of (B, N, D_l) tensors, got []")
        for i, s in enumerate(scale_list):
            s = _float_tensor(f"scales[{i}]", s)
            if not tracing:
                _shape(f"scales[{i}]", s, 3, bn, "(B, N, D_l)")
                if s.shape[2] == 0:
                    raise ValueError(f"scales[{i}] must have D_l > 0 channels, got {tuple(s.shape)}")
    else:
        scale_list = [x]

    attn_rows = None
    if not tracing:
        attn_rows = _check_values(x, config, mask, sizes, positions, metric, attn_list, scale_list)
    return MergeInputs(mask, sizes, positions, metric, attn_list, scale_list, attn_rows)


def _check_values(
    x: torch.Tensor,
    config: QuickMergeConfig,
    mask: torch.Tensor,
    sizes: torch.Tensor,
    positions: torch.Tensor,
    metric: torch.Tensor,
    attn: list[torch.Tensor] | None,
    scales: list[torch.Tensor],
) -> list[torch.Tensor] | None:
    """Value checks of spec §7; returns the ``attention_rows`` of each ``attn`` (or None)."""
    p = config.protect
    if p > 0 and not bool(mask[:, :p].all()):
        b, i = _first_bad(~mask[:, :p])
        raise ValueError(f"protected token (batch {b}, index {i}) is padding (mask False); protect={p}")
    no_real = ~mask[:, p:].any(1)
    if bool(no_real.any()):
        b = int(no_real.nonzero()[0, 0])
        raise ValueError(f"mask row {b} has no real mergeable token (protect={p})")
    _check_finite_rows("x", x, mask)
    if metric is not x:
        _check_finite_rows("metric", metric, mask)
    for i, s in enumerate(scales):
        if s is not x:
            _check_finite_rows(f"scales[{i}]", s, mask)
    attn_rows = None if attn is None else [_checked_attention_rows(i, a, mask, p) for i, a in enumerate(attn)]
    bad_sizes = mask & ~(sizes > 0)  # catches NaN too
    if bool(bad_sizes.any()):
        b, i = _first_bad(bad_sizes)
        raise ValueError(f"sizes must be > 0 at real tokens, got {float(sizes[b, i])!r} at (batch {b}, index {i})")
    bad_sizes = mask & ~torch.isfinite(sizes)
    if bool(bad_sizes.any()):
        b, i = _first_bad(bad_sizes)
        raise ValueError(f"sizes has Inf at real token (batch {b}, index {i})")
    if config.mode == "causal":
        _check_causal_positions(positions, mask)
    return attn_rows


def _checked_attention_rows(i: int, a: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """Check that real query rows of ``attn[i]`` are finite; return its ``attention_rows``.

    The head mean saliency reads anyway is non-finite wherever a head's row holds NaN/Inf, so
    it serves as the fast check of the mergeable queries (1/H of the attention to scan); only
    a suspect row (or an overflowing huge finite one) sends the check back to the attention.
    """
    rows = attention_rows(a, p)  # (B, N', N)
    real = mask[:, p:]
    bad = real & ~torch.isfinite(rows.sum(-1))
    if bool(bad.any()):
        bad = _nonfinite_real_rows(a[:, :, p:], real)
    bad = torch.cat([_nonfinite_real_rows(a[:, :, :p], mask[:, :p]), bad], 1)  # (B, N) query rows
    if bool(bad.any()):
        b, q = _first_bad(bad)
        raise ValueError(f"attn[{i}] has NaN or Inf in the real query row (batch {b}, index {q})")
    return rows


def _check_causal_positions(positions: torch.Tensor, mask: torch.Tensor) -> None:
    """Positions of real tokens must not decrease along the index (causal mode)."""
    pos = positions.long()
    low = torch.iinfo(torch.int64).min
    running = torch.where(mask, pos, torch.full_like(pos, low)).cummax(1).values
    prev = torch.cat([torch.full_like(running[:, :1], low), running[:, :-1]], 1)
    bad = mask & (pos < prev)
    if bool(bad.any()):
        b, i = _first_bad(bad)
        raise ValueError(
            f"positions of real tokens must not decrease in causal mode: position "
            f"{int(pos[b, i])} at (batch {b}, index {i}) follows {int(prev[b, i])}"
        )

"""ToMe baseline: bipartite soft matching with size-weighted averaging.

The peer every quality and speed figure is compared with (Bolya et al., "Token Merging: Your
ViT But Faster"). Tokens alternate into sets A (even indices) and B (odd); each A token's
best match in B is found by cosine similarity of ``metric``; the ``r`` A tokens with the most
similar matches are added into their B partners. Output order: the unmerged A tokens (class
token first), then the B tokens. Merging sums ``x * size`` and ``size``, then divides (no mean
reduction, so it exports).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import torch

from .config import QuickMergeConfig, ratio_fraction, resolve_keep

__all__ = ["bipartite_merge", "tome_passes"]


def bipartite_merge(
    x: torch.Tensor,
    r: int,
    metric: torch.Tensor,
    sizes: torch.Tensor | None = None,
    class_token: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``r`` tokens of ``x`` ``(B, N, D)`` by bipartite soft matching on ``metric``.

    Args:
        x: ``(B, N, D)`` float tokens.
        r: tokens to remove (capped at ``(N - class_token) // 2``; ``<= 0`` is a no-op).
        metric: ``(B, N, Dm)`` matching features (ToMe uses the attention keys).
        sizes: ``(B, N)`` or ``(B, N, 1)`` tokens each input stands for (default 1).
        class_token: keep token 0 out of the matching.

    Returns:
        ``(merged, sizes)``: ``(B, N - r, D)`` and the merged sizes in the shape ``sizes`` came in
        (``(B, N - r, 1)`` when ``sizes`` is None, as ToMe returns them).
    """
    _check(x, r, metric, sizes)
    batch, n, dim = x.shape
    squeeze = sizes is not None and sizes.dim() == 2
    size = torch.ones(batch, n, 1, dtype=x.dtype, device=x.device) if sizes is None else sizes
    if squeeze:
        size = size.unsqueeze(-1)
    r = min(int(r), (n - int(class_token)) // 2)
    if r <= 0:
        return x, (size.squeeze(-1) if squeeze else size)

    with torch.no_grad():
        feat = metric / metric.norm(dim=-1, keepdim=True)
        scores = feat[:, ::2] @ feat[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
        if class_token:
            scores[:, 0, :] = float("-inf")
        best, partner = scores.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)
        merged_a = ranked[:, :r]
        kept_a = ranked[:, r:]
        if class_token:
            kept_a = kept_a.sort(dim=-1).values
        target_b = partner.gather(1, merged_a)

    def combine(t: torch.Tensor) -> torch.Tensor:
        a, b = t[:, ::2], t[:, 1::2]
        c = t.shape[-1]
        kept = a.gather(1, kept_a.unsqueeze(-1).expand(-1, -1, c))
        moved = a.gather(1, merged_a.unsqueeze(-1).expand(-1, -1, c))
        b = b.scatter_add(1, target_b.unsqueeze(-1).expand(-1, -1, c), moved)
        return torch.cat([kept, b], dim=1)

    out = combine(x * size)
    out_size = combine(size)
    out = out / out_size
    return out, (out_size.squeeze(-1) if squeeze else out_size)


def _check(x: torch.Tensor, r: int, metric: torch.Tensor, sizes: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 3 or 0 in x.shape:
        raise ValueError(f"x must have shape (B, N, D) with no zero dimension, got {tuple(x.shape)}")
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r must be an int, got {r!r}")
    if not isinstance(metric, torch.Tensor) or not metric.is_floating_point():
        raise TypeError(f"metric must be a floating-point tensor, got {getattr(metric, 'dtype', type(metric).__name__)}")
    if metric.dim() != 3 or tuple(metric.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(f"metric must have shape (B, N, Dm) = ({x.shape[0]}, {x.shape[1]}, Dm), got {tuple(metric.shape)}")
    if sizes is not None:
        if not isinstance(sizes, torch.Tensor) or not sizes.is_floating_point():
            raise TypeError(f"sizes must be a floating-point tensor, got {getattr(sizes, 'dtype', type(sizes).__name__)}")
        if tuple(sizes.shape) not in {tuple(x.shape[:2]), (*x.shape[:2], 1)}:
            raise ValueError(f"sizes must have shape (B, N) or (B, N, 1), got {tuple(sizes.shape)}")


def _passes_for(n: int, k: int) -> int:
    """Passes that take ``n`` tokens to ``k`` (each ``n -> max(k, ceil(n / 2))``)."""
    count = 0
    while n > k:
        n = max(k, n - n // 2)
        count += 1
    return count


@functools.lru_cache(maxsize=256)
def _passes_for_ratio(a: int, b: int) -> int:
    """The most passes any ``N' >= 1`` needs at ``keep_ratio = a / b``.

    ``p`` passes leave ``max(K, ceil(N'/2^p))`` tokens. With ``p`` the first count for which
    ``1/2^p < a/b``, ``ceil(N'/2^p) <= K(N')`` holds for every ``N' >= n0`` (the bound below
    follows from ``ceil(n/2^p) <= (n + 2^p - 1)/2^p`` and ``K >= (a n + b//2 - b + 1)/b``), so
    large ``N'`` need at most ``p``. If ``1/2^(p-1) > a/b`` they need exactly ``p`` (``p - 1``
    passes leave about ``N'/2^(p-1) > K``). If ``a/b = 1/2^(p-1)`` (ratio 0.5, 0.25...) whether
    ``p - 1`` suffice repeats with period ``b``. Every ``N' < n0 + b`` is counted one by one.
    """
    if a >= b:
        return 0
    ratio = Fraction(a, b)
    p = 0
    while Fraction(1, 2**p) >= ratio:
        p += 1
    slack = Fraction(2**p - 1, 2**p) + Fraction(b - 1 - b // 2, b)
    n0 = int(slack / (ratio - Fraction(1, 2**p))) + 1
    most = p if Fraction(1, 2 ** (p - 1)) > ratio else 0
    for n in range(1, n0 + b + 1):
        k = min(n, max(1, (a * n + b // 2) // b))
        most = max(most, _passes_for(n, k))
    return most


def _upper_bound(n: Any) -> int | None:
    """The largest value a symbolic size may take (its ``torch.export.Dim`` range), if known."""
    try:
        node = n.node
        upper = node.shape_env.bound_sympy(node.expr).upper
        return int(upper) if upper.is_finite else None
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - other torch versions
        return None


def tome_passes(n_mergeable: int | torch.SymInt, config: QuickMergeConfig) -> int:
    """Number of bipartite passes a ToMe layer runs on ``N'`` mergeable tokens (static).

    A concrete ``N'``: exactly the passes it needs. A symbolic ``N'`` with ``keep_ratio``: the
    most any ``N'`` needs at that ratio (1 for ratios ``>= 0.5``, 2 down to ``0.25`` exclusive,
    3 at ``0.25``...). A symbolic ``N'`` with an absolute ``keep``: what the largest ``N'`` of
    its dynamic range needs (``ValueError`` when the range is unbounded).
    """
    if isinstance(n_mergeable, int):
        return _passes_for(n_mergeable, min(n_mergeable, resolve_keep(n_mergeable, config)))
    if config.keep is None:
        return _passes_for_ratio(*ratio_fraction(config.keep_ratio))
    upper = _upper_bound(n_mergeable)
    if upper is None:
        raise ValueError(
            f"ToMe with an absolute keep={config.keep} needs a bounded token count to fix its number of "
            "passes at trace time; give the dynamic length a maximum or use a keep_ratio"
        )
    return _passes_for(upper, min(upper, config.keep))

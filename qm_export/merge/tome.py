"""ToMe baseline: bipartite soft matching with size-weighted averaging.

The peer every quality and speed figure is compared with (Bolya et al., "Token Merging: Your
ViT But Faster"). Tokens alternate into sets A (even indices) and B (odd); each A token's
best match in B is found by cosine similarity of ``metric``; the ``r`` A tokens with the most
similar matches are added into their B partners. Output order: the unmerged A tokens (class
token first), then the B tokens. Merging sums ``x * size`` and ``size``, then divides (no mean
reduction, so it exports).
"""

from __future__ import annotations

import torch

__all__ = ["bipartite_merge"]


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

"""Fit the autoregressive prior (spec §5) to what a model's merge layer sees.

The training sequences are the hidden states a merge at ``layer`` receives — right after that
layer's attention, with the model's schedule applied up to it (earlier merges included) — on
sample inputs; padding and protected tokens are dropped. The prior is trained with the
symmetric next-embedding loss and, at inference, reads the same kind of sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..merge import AutoregressivePrior, symmetric_next_embedding_loss

__all__ = ["FitResult", "capture_merge_inputs", "train_prior", "pad_sequences"]


@dataclass
class FitResult:
    """A fitted prior and how its loss moved (symmetric next-embedding loss, mean per batch)."""

    prior: AutoregressivePrior
    train_loss_start: float
    train_loss_end: float
    val_loss_start: float
    val_loss_end: float
    sequences: int
    losses: list[float] = field(default_factory=list)


def capture_merge_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], layer: int) -> list[torch.Tensor]:
    """Hidden states at ``layer`` after its attention, one ``(n_i, D)`` float32 tensor per row.

    ``model`` must be patched (:func:`apply_quickmerge`); its schedule's merges before
    ``layer`` apply, the merge at ``layer`` (if any) comes after the capture. Only real,
    unprotected (and, for a causal context, context) tokens are kept.
    """
    from ..adapters.hf.patch import resolve_base
    from ..adapters.hf.runner import QuickMergePatch, recording

    base, family = resolve_base(model)
    patch = getattr(base, "quickmerge", None)
    if not isinstance(patch, QuickMergePatch):
        raise ValueError("capture_merge_inputs needs a model patched with apply_quickmerge()")
    n_layers = len(family.layers(base))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, {n_layers - 1}], got {layer}")
    p = patch.plan.protect
    with recording(patch, frozenset({layer})) as recorder, torch.no_grad():
        for batch in batches:
            model(**batch)
    sequences = []
    for _, hidden, mask, _, n_ctx in recorder.inputs:
        end = hidden.shape[1] if n_ctx is None else n_ctx
        for b in range(hidden.shape[0]):
            z = hidden[b, p:end][mask[b, p:end]].float().cpu()
            if z.shape[0] >= 2:
                sequences.append(z)
    if not sequences:
        raise ValueError(f"no sequence of at least 2 real tokens reached layer {layer}")
    return sequences


def pad_sequences(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(n_i, D)`` tensors into ``(B, N, D)`` zeros and a ``(B, N)`` bool mask."""
    n = max(s.shape[0] for s in sequences)
    z = torch.zeros(len(sequences), n, sequences[0].shape[1])
    mask = torch.zeros(len(sequences), n, dtype=torch.bool)
    for i, s in enumerate(sequences):
        z[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return z, mask


def _mean_loss(prior: nn.Module, sequences: Sequence[torch.Tensor], batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            z, mask = pad_sequences(sequences[i : i + batch_size])
            total += float(symmetric_next_embedding_loss(prior, z, mask)) * z.shape[0]
            count += z.shape[0]
    return total / max(count, 1)


def train_prior(
    sequences: Sequence[torch.Tensor],
    *,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
    val_fraction: float = 0.1,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train an :class:`AutoregressivePrior` on ``sequences`` (``(n_i, D)`` each).

    A seeded ``val_fraction`` of the sequences (at least one, when there are two or more) is
    held out to measure the loss before and after; ``callback(step, loss)`` runs after every
    optimiser step (progress bars).
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if not sequences:
        raise ValueError("no training sequences")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(sequences), generator=gen).tolist()
    n_val = max(1, int(len(sequences) * val_fraction)) if len(sequences) >= 2 else 0
    val = [sequences[i] for i in order[:n_val]] or list(sequences)
    train = [sequences[i] for i in order[n_val:]] or list(sequences)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = AutoregressivePrior(sequences[0].shape[1], width=width, layers=layers, heads=heads)
    prior.train()
    start_train, start_val = _mean_loss(prior, train, batch_size), _mean_loss(prior, val, batch_size)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        pick = torch.randint(0, len(train), (min(batch_size, len(train)),), generator=gen).tolist()
        z, mask = pad_sequences([train[i] for i in pick])
        loss = symmetric_next_embedding_loss(prior, z, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
    prior.eval()
    return FitResult(
        prior=prior, train_loss_start=start_train, train_loss_end=_mean_loss(prior, train, batch_size),
        val_loss_start=start_val, val_loss_end=_mean_loss(prior, val, batch_size), sequences=len(sequences), losses=losses,
    )

"""Generation parity: does a runtime generate what torch generates?

Torch generates greedily from the prompt (the reference sequence); the runtime is then
teacher-forced on torch's tokens, so that every step of both runs sees the same prefix and
their logits can be compared at every step. At each step the runtime's own greedy choice is
compared with torch's: if they agree at every step, the runtime's free-running greedy
generation is identical to torch's (by induction over the steps). A disagreement where
torch's two best logits are within the tie band (twice the value tolerance: each side may be
off by one tolerance) is a *near-tie*, counted and reported; any other is a bug.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .loop import GenerationBackend, Generated, Sampler, generate

__all__ = ["GenerationParity", "compare_generation", "tie_band"]


def tie_band(top: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Gap between the two best logits below which a flip is a near-tie: ``2 (atol + rtol |top|)``."""
    return 2.0 * (atol + rtol * np.abs(top))


@dataclass
class GenerationParity:
    """One runtime's generation against torch's.

    Attributes:
        backend: the runtime; steps: new tokens per row; rows: batch rows.
        identical: every row's greedy tokens equal torch's at every step.
        near_ties, bugs: steps (over all rows) where the runtime's choice differs from torch's
            at / outside a near-tie; first_divergence: per row, the first such step or None.
        max_abs, max_rel: the largest logit difference over every step (same prefix).
        atol, rtol: the value tolerance; values_ok: every logit within it.
    """

    backend: str
    steps: int
    rows: int
    identical: bool
    near_ties: int
    bugs: int
    first_divergence: list[int | None]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    values_ok: bool
    tokens: list[list[int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bugs == 0 and self.values_ok

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def compare_generated(backend: str, ref: Generated, got: Generated, atol: float, rtol: float) -> GenerationParity:
    """Compare a teacher-forced run ``got`` with the reference ``ref`` (both ``keep_logits``)."""
    assert ref.logits is not None and got.logits is not None
    rows, steps = ref.tokens.shape
    differ = got.tokens != ref.tokens
    ordered = np.sort(ref.logits, axis=-1)
    gap = ordered[..., -1] - ordered[..., -2]
    tie = gap <= tie_band(ordered[..., -1], atol, rtol)
    near, bugs = int((differ & tie).sum()), int((differ & ~tie).sum())
    first = [int(np.argmax(r)) if r.any() else None for r in differ]
    diff = np.abs(got.logits.astype(np.float64) - ref.logits)
    scale = np.abs(ref.logits)
    rel = diff / np.maximum(scale, 1e-12)
    values_ok = bool((diff <= atol + rtol * scale).all())
    return GenerationParity(
        backend=backend, steps=steps, rows=rows, identical=not differ.any(), near_ties=near, bugs=bugs,
        first_divergence=first, max_abs=float(diff.max()), max_rel=float(rel.max()), atol=atol, rtol=rtol,
        values_ok=values_ok, tokens=ref.tokens.tolist(),
    )


def compare_generation(reference: GenerationBackend, runtime: GenerationBackend, input_ids: np.ndarray,
                       attention_mask: np.ndarray | None, *, steps: int, atol: float, rtol: float = 0.0,
                       on_step: Any = None) -> GenerationParity:
    """Greedy-generate ``steps`` tokens with ``reference`` (torch), teacher-force ``runtime`` on
    them, and compare choices and logits at every step (see the module docstring)."""
    ref = generate(reference, input_ids, attention_mask, new_tokens=steps, sampler=Sampler(), keep_logits=True,
                   on_step=on_step)
    got = generate(runtime, input_ids, attention_mask, new_tokens=steps, sampler=Sampler(), keep_logits=True,
                   forced=ref.tokens, on_step=on_step)
    return compare_generated(runtime.name, ref, got, atol, rtol)

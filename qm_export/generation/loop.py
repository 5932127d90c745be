"""The generation loop shared by every backend: prefill the prompt, then decode one token per
step, choosing each token with the same :class:`Sampler` (greedy, or seeded sampling drawn
from numpy so that every backend draws the same numbers).

A backend (torch, ONNX Runtime, TensorRT) provides :class:`GenerationBackend`: ``prefill``
and ``decode`` returning the next-token logits as numpy ``(B, vocab)`` float32 and an opaque
cache it keeps where it likes (torch tensors, ONNX Runtime ``OrtValue`` s, device buffers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .contract import CacheSpec

__all__ = ["GenerationBackend", "Sampler", "Generated", "generate", "check_prompt", "check_new_tokens"]


class GenerationBackend(Protocol):
    """One runtime's prefill and decode (see the module docstring)."""

    name: str
    spec: CacheSpec

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, Any]: ...

    def decode(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]: ...

    def cache_bytes(self, cache: Any) -> int: ...


@dataclass(frozen=True)
class Sampler:
    """How each token is chosen from ``(B, vocab)`` logits.

    ``temperature == 0``: greedy (argmax; ties to the lower id). Otherwise sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest (0 = all), with a
    numpy generator seeded by ``seed`` (one uniform per row and step, the same on every backend).
    """

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(B, vocab)`` -> ``(B,)`` int64."""
        if self.greedy:
            return logits.argmax(-1).astype(np.int64)
        z = logits.astype(np.float64) / self.temperature
        if self.top_k:
            k = min(self.top_k, z.shape[-1])
            cut = np.partition(z, -k, axis=-1)[:, -k][:, None]
            z = np.where(z >= cut, z, -np.inf)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        u = rng.random(z.shape[0])[:, None]
        return np.minimum((p.cumsum(-1) < u).sum(-1), z.shape[-1] - 1).astype(np.int64)


@dataclass
class Generated:
    """What :func:`generate` produced.

    Attributes:
        tokens: ``(B, N)`` int64 new tokens.
        logits: ``(B, N, vocab)`` float32: ``logits[:, t]`` are the logits token ``t`` was
            chosen from (the prefill's for ``t = 0``); None unless ``keep_logits``.
        prefill_s: prefill wall time (seconds); step_s: each decode step's wall time.
        kv_cache_bytes: bytes of the cache after the prefill (keys, values, positions, sizes).
        prompt_tokens: ``(B,)`` real prompt tokens per row.
    """

    tokens: np.ndarray
    logits: np.ndarray | None
    prefill_s: float
    step_s: list[float] = field(default_factory=list)
    kv_cache_bytes: int = 0
    prompt_tokens: np.ndarray | None = None


def check_new_tokens(new_tokens: int) -> int:
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, (int, np.integer)) or new_tokens < 1:
        raise ValueError(f"new_tokens must be an int >= 1, got {new_tokens!r}")
    return int(new_tokens)


def check_prompt(spec: CacheSpec, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                 new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prompt ``(B, N)`` against the model; returns int64 ids and mask.

    Raises:
        ValueError: not 2-D integers, ids outside the vocabulary, a mask of another shape or
            with values other than 0/1, an empty row, or prompt + ``new_tokens`` beyond the
            model's context (``max_positions``).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integer ids of shape (batch, tokens), got {ids.shape} {ids.dtype}")
    if ids.min() < 0 or ids.max() >= spec.vocab_size:
        raise ValueError(f"input_ids must be in [0, {spec.vocab_size}) (the vocabulary), got {int(ids.min())}..{int(ids.max())}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
        raise ValueError(f"attention_mask must be 0/1 of shape {ids.shape}, got {mask.shape}")
    real = mask.sum(1)
    if real.min() < 1:
        raise ValueError(f"attention_mask: row {int(real.argmin())} has no real token")
    longest = int(real.max()) + check_new_tokens(new_tokens)
    if longest > spec.max_positions:
        raise ValueError(
            f"the prompt ({int(real.max())} tokens) plus new_tokens={new_tokens} needs {longest} positions; the "
            f"model's context is max_positions={spec.max_positions}")
    return ids.astype(np.int64), mask.astype(np.int64)


def generate(backend: GenerationBackend, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *,
             new_tokens: int, sampler: Sampler = Sampler(), keep_logits: bool = False,
             forced: np.ndarray | None = None, on_step: Any = None) -> Generated:
    """Generate ``new_tokens`` tokens per row after the prompt (no early stop at EOS: every
    row gets ``new_tokens``; cut at EOS when printing).

    ``forced`` ``(B, N)``: feed these tokens instead of the chosen ones (teacher forcing; the
    chosen ones are still returned), used to compare two backends' logits on one sequence.
    ``on_step(t)`` is called after each token (progress).
    """
    ids, mask = check_prompt(backend.spec, input_ids, attention_mask, new_tokens)
    rng = sampler.rng()
    t0 = time.perf_counter()
    logits, cache = backend.prefill(ids, mask)
    prefill_s = time.perf_counter() - t0
    cache_bytes = backend.cache_bytes(cache)
    position = mask.sum(1, keepdims=True).astype(np.int64)
    tokens = np.zeros((ids.shape[0], new_tokens), np.int64)
    kept = np.zeros((ids.shape[0], new_tokens, logits.shape[-1]), np.float32) if keep_logits else None
    steps: list[float] = []
    for t in range(new_tokens):
        tokens[:, t] = sampler.choose(logits, rng)
        if kept is not None:
            kept[:, t] = logits
        if on_step is not None:
            on_step(t)
        if t == new_tokens - 1:
            break
        feed = tokens[:, t:t + 1] if forced is None else forced[:, t:t + 1].astype(np.int64)
        t1 = time.perf_counter()
        logits, cache = backend.decode(feed, position, cache)
        steps.append(time.perf_counter() - t1)
        position = position + 1
    return Generated(tokens, kept, prefill_s, steps, cache_bytes, mask.sum(1))

"""QuickMerge++ configuration and the integer rule that turns ``keep_ratio`` into ``K``.

Spec §2 ("K") and §7 (bad input). Every backend computes ``K`` with the same integer
arithmetic, so ``K`` agrees also when ``N`` is only known at run time (a symbolic int under
export).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch

__all__ = ["QuickMergeConfig", "ratio_fraction", "resolve_keep", "resolve_keep_rows", "MODES"]

MODES = ("global", "causal")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class QuickMergeConfig:
    """Settings of one QuickMerge++ layer (spec §2-§4).

    Attributes:
        keep: number of merged tokens ``K`` (wins over ``keep_ratio`` when given).
        keep_ratio: fraction of the ``N' = N - protect`` mergeable tokens to keep, in ``(0, 1]``.
        protect: leading tokens never merged (e.g. 1 for a class token).
        mode: ``"global"`` or ``"causal"`` (tokens only join seeds at the same or a later index).
        high_entropy_salient: if True, high-entropy attention rows are the salient ones.
        tau: temperature of the mass softmax (``> 0``).
        eps: mass floor added to every real token (``> 0``).
        sim_temp: temperature of the self-similarity softmax used without host attention.
        refine_iters: centroid refinement rounds after the seed assignment (``>= 0``).
        prior_weight: weight ``beta`` of the autoregressive prior's surprise in ``[0, 1]``.
        per_row_keep: if True, each row keeps ``K_b`` real seeds computed from its own number
            of real mergeable tokens (same integer rule); the tensor still has ``K`` slots and
            the ``K - K_b`` extra ones go to padding seeds. A padded row then merges exactly as
            it would alone (extension beyond spec §3, for padded batches).
    """

    keep: int | None = None
    keep_ratio: float = 0.5
    protect: int = 0
    mode: Literal["global", "causal"] = "global"
    high_entropy_salient: bool = False
    tau: float = 0.5
    eps: float = 1e-5
    sim_temp: float = 0.1
    refine_iters: int = 0
    prior_weight: float = 0.0
    per_row_keep: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **overrides: Any) -> "QuickMergeConfig":
        """Return a copy with ``overrides`` applied (unknown names raise ``TypeError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"unknown QuickMerge option(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {sorted(names)}"
            )
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        """Check every field's type and range (spec §7); raise ``TypeError``/``ValueError``."""
        if self.keep is not None:
            if not _is_int(self.keep):
                raise TypeError(f"keep must be an int or None, got {self.keep!r}")
            if self.keep < 1:
                raise ValueError(f"keep must be >= 1, got {self.keep!r}")
        if not _is_real(self.keep_ratio):
            raise TypeError(f"keep_ratio must be a float, got {self.keep_ratio!r}")
        if not (0.0 < float(self.keep_ratio) <= 1.0) or math.isnan(float(self.keep_ratio)):
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not _is_int(self.protect):
            raise TypeError(f"protect must be an int, got {self.protect!r}")
        if self.protect < 0:
            raise ValueError(f"protect must be >= 0, got {self.protect!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.high_entropy_salient, bool):
            raise TypeError(
                f"high_entropy_salient must be a bool, got {self.high_entropy_salient!r}"
            )
        for name in ("tau", "eps", "sim_temp"):
            value = getattr(self, name)
            if not _is_real(value):
                raise TypeError(f"{name} must be a float, got {value!r}")
            if not float(value) > 0.0 or math.isinf(float(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not _is_int(self.refine_iters):
            raise TypeError(f"refine_iters must be an int, got {self.refine_iters!r}")
        if self.refine_iters < 0:
            raise ValueError(f"refine_iters must be >= 0, got {self.refine_iters!r}")
        if not isinstance(self.per_row_keep, bool):
            raise TypeError(f"per_row_keep must be a bool, got {self.per_row_keep!r}")
        if not _is_real(self.prior_weight):
            raise TypeError(f"prior_weight must be a float, got {self.prior_weight!r}")
        if not (0.0 <= float(self.prior_weight) <= 1.0):
            raise ValueError(f"prior_weight must be in [0, 1], got {self.prior_weight!r}")


def ratio_fraction(keep_ratio: float) -> tuple[int, int]:
    """``keep_ratio`` as the nearest fraction ``a/b`` with ``b <= 1000`` (spec §2)."""
    frac = Fraction(float(keep_ratio)).limit_denominator(1000)
    return frac.numerator, frac.denominator


def resolve_keep(n_mergeable: int | torch.SymInt, config: QuickMergeConfig) -> int | torch.SymInt:
    """Number of merged tokens ``K`` for ``N'`` mergeable tokens.

    ``keep`` wins when set; otherwise ``K = min(N', max(1, (a*N' + b//2) // b))`` with
    ``a/b = ratio_fraction(keep_ratio)``. Works on a symbolic ``N'`` under export (no Python
    ``min``/``max`` on it, which would specialise the shape).
    """
    if config.keep is not None:
        return config.keep
    a, b = ratio_fraction(config.keep_ratio)
    k = (n_mergeable * a + b // 2) // b
    if isinstance(n_mergeable, int):
        return min(n_mergeable, max(1, k))
    # a <= b, so k <= N' already; only the lower bound can bind.
    return torch.sym_max(1, k)


def resolve_keep_rows(n_real: torch.Tensor, config: QuickMergeConfig) -> torch.Tensor:
    """Per-row ``K_b`` for rows with ``n_real`` ``(B,)`` real mergeable tokens (``per_row_keep``).

    The same integer rule as :func:`resolve_keep` applied to each row's count, in tensor
    arithmetic (exports with a symbolic batch); ``keep`` is capped at the row's count.
    Returns ``(B,)`` int64, each in ``[1, n_real]`` for rows with at least one real token.
    """
    n = n_real.long()
    if config.keep is not None:
        return torch.clamp(n, max=config.keep).clamp_min(1)
    a, b = ratio_fraction(config.keep_ratio)
    k = torch.div(n * a + b // 2, b, rounding_mode="floor")
    return torch.minimum(n, k.clamp_min(1))

"""Input checks shared by the kernel launchers and the custom ops: clear errors naming the argument."""

from __future__ import annotations

import torch

__all__ = ["FLOAT_DTYPES", "INDEX_DTYPES", "check_k", "check_range", "check_shape", "check_tensor"]

#: Dtypes of ``x`` / ``y`` the kernels take (the output has the same dtype).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Index dtypes accepted (int64 is converted to the kernels' int32).
INDEX_DTYPES = (torch.int32, torch.int64)
INT32_MAX = 2**31 - 1


def check_tensor(
    name: str, t: object, rank: int, dtypes: tuple[torch.dtype, ...], *, contiguous: bool = True
) -> None:
    """Type, dtype, rank, contiguity (when asked) and int32-indexable size of one tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")
    if t.numel() > INT32_MAX:
        raise ValueError(f"{name} has {t.numel()} elements; the kernels index with int32 (max {INT32_MAX})")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} ({meaning}), got {tuple(t.shape)}")


def check_range(name: str, t: torch.Tensor, high: int) -> None:
    if t.numel() and (bool((t < 0).any()) or bool((t >= high).any())):
        lo, hi = int(t.min()), int(t.max())
        raise ValueError(f"{name} values must lie in [0, {high}), got min {lo} max {hi}")


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k

"""The PTX the AOT plugins embed: which PTX ISA version, which ``.target`` (pure functions).

A driver loads PTX only up to the ISA version of its CUDA release (older drivers fail with
``CUDA_ERROR_UNSUPPORTED_PTX_VERSION``), and Triton stamps the version of the ``ptxas`` it
ships (3.8: ``8.8`` for cc < 100, ``9.3`` for cc >= 100). :func:`capped_ptx_version` picks the
smaller of the two, never below what the architecture needs. Triton also emits the
arch-specific ``.target sm_90a`` (``sm_100a``, ``sm_120a``), which ``ptxas --gpu-name=sm_90``
refuses; the qm kernels use no arch-specific instruction, so :func:`plain_target` rewrites the
directive to the plain architecture.

PTX ISA versions are integers ``10 * major + minor`` (``84`` is PTX 8.4), as Triton's
``ptx_version`` option takes them.
"""

from __future__ import annotations

import re

__all__ = [
    "cuda_ptx_version",
    "driver_ptx_version",
    "min_ptx_version",
    "capped_ptx_version",
    "ptx_version_text",
    "plain_target",
    "ptx_directives",
]

#: The lowest PTX ISA version that can target a compute capability, for the arch-specific
#: ``sm_XXa`` Triton compiles for from cc 90 on (PTX ISA notes: sm_90a needs 8.0, sm_100a
#: 8.6, sm_120a 8.7; sm_75 6.3, sm_80 7.0, sm_86 7.1, sm_87 7.4, sm_89 7.8).
_ARCH_MIN_PTX = {75: 63, 80: 70, 86: 71, 87: 74, 89: 78, 90: 80, 100: 86, 101: 86, 103: 88, 110: 90, 120: 87, 121: 88}

_TARGET_RE = re.compile(r"^(\s*\.target\s+sm_\d+)a\b", re.MULTILINE)


def cuda_ptx_version(major: int, minor: int) -> int:
    """The highest PTX ISA version of CUDA ``major.minor`` (12.4 -> 84, 12.9 -> 88, 13.0 -> 90).

    The table of Triton's ``ptx_get_version``: CUDA 10.x -> 6.3 + x, 11.x -> 7.x, 12.0-12.5 ->
    8.x, 12.6+ -> 8.(x - 1) (CUDA 12.6 shipped PTX 8.5), 13+ -> 9.0 + 1.0 per major + x.

    Raises:
        ValueError: CUDA older than 10.0 (Triton supports none).
    """
    if major >= 13:
        return 90 + 10 * (major - 13) + minor
    if major == 12:
        return 80 + minor - (1 if minor >= 6 else 0)
    if major == 11:
        return 70 + minor
    if major == 10:
        return 63 + minor
    raise ValueError(f"CUDA {major}.{minor} is older than 10.0; Triton needs CUDA 10.0 or newer")


def driver_ptx_version(driver_version: int) -> int:
    """The highest PTX ISA version a driver loads, from ``cuDriverGetVersion`` (``12040`` = 12.4)."""
    if not isinstance(driver_version, int) or driver_version <= 0:
        raise ValueError(f"driver_version must be a positive int like 12040 (CUDA 12.4), got {driver_version!r}")
    return cuda_ptx_version(driver_version // 1000, (driver_version % 1000) // 10)


def min_ptx_version(cc: int) -> int:
    """The lowest PTX ISA version that targets compute capability ``cc`` (``90`` = sm_90).

    Raises:
        ValueError: a compute capability this table does not know.
    """
    if cc not in _ARCH_MIN_PTX:
        raise ValueError(f"compute capability {cc} is not one of {', '.join(map(str, sorted(_ARCH_MIN_PTX)))}")
    return _ARCH_MIN_PTX[cc]


def capped_ptx_version(triton_default: int, driver_max: int | None, cc: int) -> int:
    """The PTX ISA version to compile for: ``min(triton_default, driver_max)``, never below
    :func:`min_ptx_version` of ``cc``; ``driver_max`` ``None`` (unknown) keeps Triton's."""
    wanted = triton_default if driver_max is None else min(triton_default, driver_max)
    return max(wanted, min_ptx_version(cc))


def ptx_version_text(version: int) -> str:
    """``84`` -> ``"8.4"`` (the form of the PTX ``.version`` directive)."""
    return f"{version // 10}.{version % 10}"


def plain_target(ptx: str) -> str:
    """``ptx`` with ``.target sm_XXa`` rewritten to ``.target sm_XX`` (other lines untouched)."""
    return _TARGET_RE.sub(r"\1", ptx)


def ptx_directives(ptx: str) -> tuple[str | None, str | None]:
    """``(version, target)`` of a PTX text, e.g. ``("8.4", "sm_90")``; ``None`` where absent."""
    version = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.MULTILINE)
    target = re.search(r"^\s*\.target\s+(\w+)", ptx, re.MULTILINE)
    return (version.group(1) if version else None, target.group(1) if target else None)

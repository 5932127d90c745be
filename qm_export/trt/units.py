"""Byte sizes as people write them: ``4GiB``, ``512MiB``, ``1.5GB``, ``1048576``."""

from __future__ import annotations

import re

__all__ = ["parse_bytes", "format_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Parse a size into bytes: ``4GiB`` = 4·2³⁰, ``4GB`` = 4·10⁹, ``4G`` = 4·2³⁰, plain ints are bytes.

    Raises ``ValueError`` naming the value when it is not a positive size with a known unit.
    """
    match = _SIZE_RE.match(str(text))
    if match is None:
        raise ValueError(f"size {text!r} is not a number with an optional unit (for example 4GiB or 512MiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"size {text!r} has unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    value = int(float(number) * factor)
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value


def format_bytes(n: int) -> str:
    """``4294967296`` -> ``'4.00 GiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"  # pragma: no cover

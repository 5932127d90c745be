"""``--timing-cache``: load it into the builder config, and get it back after the build.

TensorRT's ``IBuilderConfig.set_timing_cache`` returns False when the cache was made on
another device or TensorRT version; the config then holds no cache, ``get_timing_cache()``
returns None, and ``.serialize()`` would raise after the engine exists. Here a refused
cache is reported (a note) and replaced by a fresh one, and reading the cache back never
raises: the engine and its sidecar are never lost to the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["attach_timing_cache", "timing_cache_bytes"]


def attach_timing_cache(config: Any, path: Path | None) -> list[str]:
    """Give ``config`` a timing cache: ``path``'s bytes when it is a file, else an empty one.

    Returns:
        notes for the user and the sidecar (empty when the cache was accepted).
    """
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        return []
    if not data:
        return ["TensorRT refused an empty timing cache; the build runs without one"]
    notes = [
        f"TensorRT refused the timing cache {str(path)!r} (made on another device or TensorRT version); "
        "the build starts a fresh cache, saved over it"
    ]
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        notes.append("TensorRT refused a fresh timing cache too; the build runs without one")
    return notes


def timing_cache_bytes(config: Any) -> tuple[bytes | None, str | None]:
    """``(serialized cache, None)``, or ``(None, why not)`` when the config has no cache or it
    cannot be serialized. Never raises for either."""
    cache = config.get_timing_cache()
    if cache is None:
        return None, "TensorRT holds no timing cache after the build; the cache file is not written"
    try:
        return memoryview(cache.serialize()).tobytes(), None
    except Exception as exc:  # noqa: BLE001 - TensorRT raises its own RuntimeError subclasses
        return None, f"TensorRT could not serialize the timing cache ({' '.join(str(exc).split())}); not written"

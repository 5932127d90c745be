"""``profile``: latency, throughput, memory and per-operator time of exported models,
merged against their unmerged baseline.

| module | what |
| --- | --- |
| :mod:`.stats` | ``latency_stats``, ``throughput``, ``speedup``, ``reduction``: pure maths |
| :mod:`.timing` | ``time_interleaved``: models timed run by run, order alternating |
| :mod:`.ort_session` | the profiler's ONNX Runtime session settings (``OrtSettings``) |
| :mod:`.memory`, :mod:`.memory_child` | peak and activation memory in a fresh process per model |
| :mod:`.breakdown` | time per operator, the merge's and the selection's share |
| :mod:`.report` | ``Measurement``, ``ProfileReport`` (``to_json``: the ``--json`` schema) |
| :mod:`.core` | ``profile_models``: the whole run, for ``qm-export profile`` and ``run`` |
| :mod:`.render`, :mod:`.plot` | rich tables, the latency/memory plot |

Importing this package is light (no torch, no ONNX Runtime); the names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "profile_models": "core", "ProfileInputError": "core", "PROFILE_BACKENDS": "core", "DEFAULT_THREADS": "core",
    "ProfileReport": "report", "Measurement": "report", "ModelInfo": "report", "SCHEMA": "report",
    "latency_stats": "stats", "throughput": "stats", "speedup": "stats", "reduction": "stats",
    "time_interleaved": "timing", "OrtSettings": "ort_session", "Breakdown": "breakdown", "aggregate": "breakdown",
    "render_report": "render", "plot_report": "plot",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

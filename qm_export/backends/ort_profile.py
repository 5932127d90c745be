"""ONNX Runtime's own profiler, read back: which node ran where, and for how long.

``SessionOptions.enable_profiling`` makes ORT write a Chrome-trace JSON with one ``Node``
event per kernel run (``<node name>_kernel_time``, ``args.op_name``, ``args.provider``,
``dur`` in microseconds). Two users: ``profile`` (time per operator, the merge's share) and
``ort-cuda`` (which nodes fell back from CUDA to the CPU provider).

ORT inlines model-local functions before placing nodes: a node of the qm function
``TokenMerge`` runs as ``_inlfunc_TokenMerge_<n>`` (nested calls add their own infix).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NodeEvent", "read_profile", "node_totals", "INLINED_FUNCTION_PREFIX"]

#: How ORT names the nodes of an inlined model-local function: ``_inlfunc_<function>_...``.
INLINED_FUNCTION_PREFIX = "_inlfunc_"


@dataclass(frozen=True)
class NodeEvent:
    """One kernel run: ``name`` (the ONNX node, or ORT's name for a fused/inlined one),
    ``op_type``, ``provider`` (e.g. ``CPUExecutionProvider``) and ``dur_us`` (microseconds)."""

    name: str
    op_type: str
    provider: str
    dur_us: float


def read_profile(path: str | os.PathLike[str]) -> list[NodeEvent]:
    """Every node kernel event of an ORT profile file, in file order.

    Raises:
        ValueError: the file is not an ORT profile (not a JSON list of trace events).
    """
    try:
        events: Any = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable ONNX Runtime profile: {err}") from None
    if not isinstance(events, list):
        raise ValueError(f"{str(path)!r} is not an ONNX Runtime profile (expected a JSON list of events)")
    out = []
    suffix = "_kernel_time"
    for ev in events:
        if not isinstance(ev, dict) or ev.get("cat") != "Node":
            continue
        name = str(ev.get("name", ""))
        if not name.endswith(suffix):
            continue
        args = ev.get("args") or {}
        out.append(NodeEvent(name[: -len(suffix)], str(args.get("op_name", "?")),
                             str(args.get("provider", "?")), float(ev.get("dur", 0.0))))
    return out


def node_totals(events: Iterable[NodeEvent]) -> dict[str, NodeEvent]:
    """Events summed per node name (``dur_us`` is the total over every run)."""
    totals: dict[str, NodeEvent] = {}
    for ev in events:
        prev = totals.get(ev.name)
        totals[ev.name] = ev if prev is None else NodeEvent(ev.name, ev.op_type, ev.provider, prev.dur_us + ev.dur_us)
    return totals

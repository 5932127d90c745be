"""Host memory of an ONNX Runtime session, measured in a fresh child process per model.

A fresh process is the only clean way to read a model's peak: in the profiler's own process
the torch source, the other model's session and Python's allocator history would all count.
The child runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so that resident
memory tracks live memory (see :func:`measure_memory`).
:func:`measure_memory` writes the inputs to a temporary ``.npz`` and runs
``python -m qm_export.profile.memory_child``, which (Linux ``/proc/self/status``):

1. imports numpy and ONNX Runtime and loads the inputs, then reads ``VmRSS`` (*before*);
2. creates the session (the profiler's :class:`~.ort_session.OrtSettings`), reads
   ``VmRSS``/``VmHWM`` (*session*);
3. resets the high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads
   ``VmRSS`` (*at reset*), runs the warm-up (at least one run) and reads ``VmHWM``;
4. resets the mark again (*at reset 2*), runs the timed runs and reads ``VmHWM`` (*end*);
   prints one JSON object.

:func:`memory_figures` turns those readings into the report's numbers (MiB = 2**20 bytes):

- ``peak_memory_mb``: highest ``VmHWM`` of the child minus its ``VmRSS`` *before* the
  session: everything the session and its runs added at their peak (weights as ORT holds
  them, pre-packed copies, the arena, transient buffers of session creation).
- ``activation_memory_mb``, method ``"clear_refs"`` (preferred): the highest ``VmHWM`` of
  the runs (warm-up and timed) minus ``VmRSS`` at the first reset, right after the session
  was created: what running the model adds to the loaded session. The first run counts:
  ORT's arena and glibc keep a run's buffers after it (freed blocks under glibc's 32 MiB
  mmap threshold stay resident), so a mark reset only *after* a warm-up run reads ~0 at
  small batches. That steady-state figure is reported too, as ``activation_steady_mb``
  (timed runs' ``VmHWM`` minus ``VmRSS`` at the second reset): the memory a warmed-up run
  still takes and gives back (large blocks that glibc maps and unmaps every run).
  Method ``"peak-minus-weights"`` (the issue's definition; used when ``clear_refs`` is not
  available): ``peak_memory_mb`` minus the initializers' bytes. On ORT's CPU provider it
  overstates activations, because ORT pre-packs MatMul weights (a second copy in MLAS's
  layout) and session creation has transients: both land in the peak, not in the weights.
  Both numbers are reported; ``activation_method`` says which one ``activation_memory_mb`` is.

ONNX Runtime's own memory accounting (Python API, ORT 1.32): ``SessionOptions`` has switches
(``enable_cpu_mem_arena``, ``enable_mem_pattern``, ``enable_mem_reuse``) and ``OrtArenaCfg``
configures an arena, but there is no call that returns allocator or arena statistics (the C
API's ``KernelInfo``/``Allocator::GetStats`` is not bound in Python), and the memory-pattern
dump needs an ORT built with ``onnxruntime_ENABLE_MEMORY_PROFILE``. What release builds do
give is per-node arena figures inside the profiler's trace (``args.mem_in_use_peak``,
``mem_arena_held``, ``activation_size``, ``output_size``): :func:`.breakdown.arena_stats`
reads them from the per-operator profiling session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .ort_session import OrtSettings

__all__ = ["MIB", "MMAP_THRESHOLD", "parse_status", "memory_figures", "measure_memory", "MemoryChildError"]

MIB = float(2**20)
#: glibc ``MALLOC_MMAP_THRESHOLD_`` of the memory child (bytes): its default minimum, fixed.
MMAP_THRESHOLD = 128 * 1024


class MemoryChildError(RuntimeError):
    """The memory child failed; the message ends with its stderr's last lines."""


def parse_status(text: str) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (bytes) from the text of ``/proc/<pid>/status``.

    Raises:
        ValueError: either field is missing.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, _, unit = value.strip().partition(" ")
            scale = {"kB": 1024, "mB": 2**20, "": 1}.get(unit.strip(), 1024)
            out[key] = int(number) * scale
    if set(out) != {"VmRSS", "VmHWM"}:
        raise ValueError("/proc status without VmRSS and VmHWM")
    return out


def memory_figures(raw: Mapping[str, Any], weight_bytes: int) -> dict[str, Any]:
    """The report's memory numbers (MiB) from the child's readings (bytes).

    ``raw`` holds ``rss_before``, ``rss_session``, ``hwm_session``, ``rss_reset``,
    ``hwm_warmup``, ``rss_reset2``, ``hwm_end`` and ``clear_refs`` (bool: the resets worked).
    """
    before = raw["rss_before"]
    # without resets every mark is cumulative; with them, the max of the three is the peak
    peak_hwm = max(raw["hwm_session"], raw["hwm_warmup"], raw["hwm_end"])
    minus_weights = (peak_hwm - before - weight_bytes) / MIB
    direct: float | None = None
    steady: float | None = None
    if raw.get("clear_refs"):
        direct = (max(raw["hwm_warmup"], raw["hwm_end"]) - raw["rss_reset"]) / MIB
        steady = (raw["hwm_end"] - raw["rss_reset2"]) / MIB
    peak = (peak_hwm - before) / MIB
    return {
        "peak_memory_mb": peak,
        "activation_memory_mb": direct if direct is not None else minus_weights,
        "activation_method": "clear_refs" if direct is not None else "peak-minus-weights",
        "activation_clear_refs_mb": direct,
        "activation_steady_mb": steady,
        "activation_peak_minus_weights_mb": minus_weights,
        "session_memory_mb": (raw["rss_session"] - before) / MIB,
        "weights_mb": weight_bytes / MIB,
    }


def measure_memory(model: str | os.PathLike[str], feeds: Mapping[str, np.ndarray], settings: OrtSettings, *,
                   warmup: int, runs: int, weight_bytes: int, timeout: float = 900.0,
                   mmap_threshold: int | None = MMAP_THRESHOLD) -> dict[str, Any]:
    """Run the memory child on ``model`` with ``feeds``; :func:`memory_figures` of its readings,
    plus ``runs``/``warmup`` as the child ran them and ``malloc_mmap_threshold``.

    ``mmap_threshold`` is set as glibc's ``MALLOC_MMAP_THRESHOLD_`` in the child (None: the
    inherited environment): every block from that size up is mapped when allocated and
    unmapped when freed, and a fixed threshold also turns off glibc's adaptive threshold
    and heap trimming, so resident memory tracks live memory. Without it, what session
    creation freed stays resident in the heap in a run-to-run varying amount (ViT-B/16: the
    loaded session measured 373-561 MiB for one file) and later runs reuse it unseen (the
    activation read 25.6 instead of 39.7 MiB). The child is never timed.

    Raises:
        MemoryChildError: the child failed or printed no readings.
    """
    with tempfile.TemporaryDirectory(prefix="qm-profile-mem-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **{k: np.ascontiguousarray(v) for k, v in feeds.items()})
        cmd = [sys.executable, "-m", "qm_export.profile.memory_child", os.fspath(model), os.fspath(npz),
               json.dumps(settings.to_json()), str(max(1, warmup)), str(max(1, runs))]
        env = dict(os.environ)
        if mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(int(mmap_threshold))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise MemoryChildError(f"the memory child ran past {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise MemoryChildError(f"the memory child failed (exit {proc.returncode}): {tail}")
    raw = json.loads(lines[-1])
    out = memory_figures(raw, weight_bytes)
    out.update(runs=raw["runs"], warmup=raw["warmup"], malloc_mmap_threshold=env.get("MALLOC_MMAP_THRESHOLD_"))
    return out

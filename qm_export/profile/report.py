"""What ``profile`` measured: one :class:`Measurement` per model, backend and input shape,
gathered in a :class:`ProfileReport` whose :meth:`~ProfileReport.to_json` is the ``--json``
document (schema in :data:`SCHEMA` and ``docs/profile.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .breakdown import Breakdown
from .stats import paired_speedup, reduction, speedup

__all__ = ["ModelInfo", "Measurement", "ProfileReport", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

#: The ``--json`` document, key by key (also in ``qm-export profile --help`` and docs/profile.md).
SCHEMA = """\
{"schema": 1, "tool": "qm-export profile", "date": ISO-8601 UTC,
 "machine": {"cpus", "loadavg_start", "platform", "processor", "python", "onnxruntime"},
 "settings": {"backends", "batches", "seq_lens", "threads", "runs", "warmup", "duration_s",
              "memory_runs", "profile_runs", "seed", "ort_session": {...}},
 "models": [{"path", "label", "role": "model"|"baseline", "weights_mb", "inputs"}],
 "results": [  # one per model x backend x shape
   {"model", "label", "role", "backend", "batch", "seq_len", "input_shape",
    "status": "ok"|"skipped"|"failed", "why",
    "runs", "warmup", "threads",
    "latency_ms": {"min", "mean", "p50", "p90", "p95", "p99", "max"},
    "throughput": items/s, "times_ms": every timed run, in order,
    "other_cpu_load": share of all CPUs other processes used while timing (0..1),
    "peak_memory_mb", "activation_memory_mb", "activation_method",
    "memory": {... every memory figure, see docs/profile.md},
    "merge_share", "selection_share", "breakdown": {...},
    "baseline": label or null,
    "speedup": {"min", "mean", "p50", "p90", "p95", "p99", "max", "throughput", "paired_p50"} or null,
    "memory_reduction": {"peak_memory", "activation_memory", "arena_activation"} or null}]}
speedup: baseline / merged per latency key, merged / baseline for throughput (> 1: faster);
paired_p50: the median over iterations of baseline run / merged run of the same iteration.
memory_reduction: 1 - merged / baseline (0.63: 63 % less). MiB = 2**20 bytes."""


@dataclass
class ModelInfo:
    """One profiled file: ``label`` names it in tables, ``role`` is ``"model"`` or
    ``"baseline"``, ``inputs`` says where its inputs came from."""

    path: Path
    label: str
    role: str
    weight_bytes: int
    inputs: str

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "label": self.label, "role": self.role,
                "weights_mb": self.weight_bytes / 2**20, "inputs": self.inputs}


@dataclass
class Measurement:
    """One model on one backend at one input shape."""

    model: ModelInfo
    backend: str
    batch: int
    seq_len: int | None
    input_shape: str
    status: str = "ok"
    why: str | None = None
    runs: int = 0
    warmup: int = 0
    threads: int | None = None
    latency_ms: dict[str, float] | None = None
    throughput: float | None = None
    times_s: list[float] | None = None
    other_cpu_load: float | None = None
    memory: dict[str, Any] | None = None
    breakdown: Breakdown | None = None
    baseline: "Measurement | None" = None

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.backend, self.batch, self.seq_len)

    def mem(self, name: str) -> float | None:
        return (self.memory or {}).get(name)

    def speedup(self) -> dict[str, float] | None:
        b = self.baseline
        if b is None or self.latency_ms is None or b.latency_ms is None:
            return None
        out = speedup(b.latency_ms, self.latency_ms, b.throughput, self.throughput)
        paired = paired_speedup(b.times_s or [], self.times_s or [])
        if paired is not None:
            out["paired_p50"] = paired
        return out

    def memory_reduction(self) -> dict[str, float | None] | None:
        b = self.baseline
        if b is None or self.status != "ok" or b.status != "ok":
            return None
        arena = [(m.breakdown.memory or {}).get("arena_activation_mb") if m.breakdown else None for m in (b, self)]
        return {"peak_memory": reduction(b.mem("peak_memory_mb"), self.mem("peak_memory_mb")),
                "activation_memory": reduction(b.mem("activation_memory_mb"), self.mem("activation_memory_mb")),
                "arena_activation": reduction(arena[0], arena[1])}

    def to_json(self) -> dict[str, Any]:
        bd = self.breakdown
        return {
            "model": str(self.model.path), "label": self.model.label, "role": self.model.role,
            "backend": self.backend, "batch": self.batch, "seq_len": self.seq_len, "input_shape": self.input_shape,
            "status": self.status, "why": self.why, "runs": self.runs, "warmup": self.warmup, "threads": self.threads,
            "latency_ms": self.latency_ms, "throughput": self.throughput,
            "times_ms": [t * 1e3 for t in self.times_s] if self.times_s is not None else None,
            "other_cpu_load": self.other_cpu_load,
            "peak_memory_mb": self.mem("peak_memory_mb"), "activation_memory_mb": self.mem("activation_memory_mb"),
            "activation_method": self.mem("activation_method"), "memory": self.memory,
            "merge_share": bd.merge_share if bd else None, "selection_share": bd.selection_share if bd else None,
            "breakdown": bd.to_json() if bd else None,
            "baseline": self.baseline.model.label if self.baseline else None,
            "speedup": self.speedup(), "memory_reduction": self.memory_reduction(),
        }


@dataclass
class ProfileReport:
    """Everything one ``profile`` run measured, in measuring order.

    Attributes:
        models: the profiled files (the baseline last).
        results: one :class:`Measurement` per model, backend and shape.
        settings, machine: what :meth:`to_json` records about the run.
        notes: sentences worth showing the user (inputs made from the graph, ...).
        date: when the run started (ISO 8601, UTC).
    """

    models: list[ModelInfo]
    results: list[Measurement] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    date: str = ""

    @property
    def baseline(self) -> ModelInfo | None:
        return next((m for m in self.models if m.role == "baseline"), None)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "tool": "qm-export profile", "date": self.date,
                "machine": self.machine, "settings": self.settings,
                "models": [m.to_json() for m in self.models], "notes": list(self.notes),
                "results": [r.to_json() for r in self.results]}

"""The JSON sidecar written next to every engine (``model.engine.json``).

It records what the engine is (TensorRT/CUDA/GPU, precision, shapes, plugins) and where it
came from (the ONNX's SHA-256, the qm-export version, when and how long the build took), so
an engine file can be matched to its ONNX and rebuilt the same way.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping

from .precision import PrecisionPlan
from .profiles import Profile

__all__ = ["SIDECAR_SCHEMA", "make_sidecar", "cuda_environment"]

SIDECAR_SCHEMA = "qm-export.engine/1"


def make_sidecar(
    *,
    onnx_path: Path,
    onnx_sha256: str,
    engine_path: Path,
    engine_sha256: str,
    engine_bytes: int,
    trt_version: str,
    plan: PrecisionPlan,
    network_flags: list[str],
    profile: Profile,
    plugins: list[str],
    workspace_bytes: int | None,
    timing_cache: Path | None,
    build_seconds: float,
    environment: Mapping[str, Any],
    device_memory_bytes: int | None = None,
    io_tensors: list[dict[str, Any]] | None = None,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The sidecar document (plain JSON types only)."""
    from qm_export import __version__

    created = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    return {
        "schema": SIDECAR_SCHEMA,
        "qm_export_version": __version__,
        "created_utc": created,
        "build_seconds": round(float(build_seconds), 3),
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256},
        "engine": {"path": str(engine_path), "sha256": engine_sha256, "bytes": int(engine_bytes)},
        "tensorrt": {
            "version": trt_version,
            "strongly_typed": plan.strongly_typed,
            "network_flags": list(network_flags),
            "builder_flags": list(plan.builder_flags),
            "cleared_builder_flags": list(plan.clear_flags),
        },
        "cuda": dict(environment.get("cuda", {})),
        "gpu": dict(environment.get("gpu", {})),
        "precision": plan.precision,
        "profile": profile.as_dict(),
        "plugins": {"used": list(plugins), "aot": "PREFER_AOT_PYTHON_PLUGINS" in network_flags},
        "workspace_bytes": workspace_bytes,
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "device_memory_bytes": device_memory_bytes,
        "io_tensors": list(io_tensors or []),
        "notes": list(plan.notes) + list(profile.notes),
    }


def cuda_environment() -> dict[str, Any]:
    """CUDA runtime and GPU facts from torch (``None`` values where no CUDA GPU is visible)."""
    cuda: dict[str, Any] = {"runtime_version": None}
    gpu: dict[str, Any] = {"name": None, "compute_capability": None, "count": 0}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return {"cuda": cuda, "gpu": gpu}
    cuda["runtime_version"] = torch.version.cuda
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}",
            "count": torch.cuda.device_count(),
        }
    return {"cuda": cuda, "gpu": gpu}

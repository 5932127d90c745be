"""End-to-end ``qm-export build`` with TensorRT: a tiny ONNX with the three qm nodes is
built with the plugins, run, and compared to ONNX Runtime. Skips (with the reason) where
TensorRT, a CUDA GPU or the plugin package is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trt_onnx_graphs import export_like_model


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'qm-export[trt]')"
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"TensorRT does not load here: {exc}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import qm_export_plugins
    except ImportError:
        return "qm_export_plugins is not importable"
    if not hasattr(qm_export_plugins, "register_plugins"):
        return "qm_export_plugins has no register_plugins() on this branch"
    return None


REASON = _skip_reason()
pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SHAPES = ("x:1x4x8,2x64x8,4x256x8",)


def _ort(model_path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _trt(engine_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(engine_path.read_bytes())) as runner:
        return {k: np.asarray(v) for k, v in runner.infer({"x": x}).items()}


@pytest.mark.parametrize("batch,n", [(1, 4), (2, 64), (3, 197), (4, 256)])
def test_engine_matches_onnxruntime(tmp_path: Path, batch: int, n: int) -> None:
    from qm_export.trt import BuildRequest, build_engine

    model_path, engine_path = tmp_path / "m.onnx", tmp_path / "m.engine"
    onnx.save(export_like_model(), model_path)
    result = build_engine(BuildRequest(model_path, engine_path, shapes=SHAPES, precision="fp32"))
    x = np.random.default_rng(batch * 1000 + n).standard_normal((batch, n, 8)).astype(np.float32)
    want_out, want_merged = _ort(model_path, x)
    got = _trt(engine_path, x)
    np.testing.assert_allclose(got["merged"], want_merged, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["out"], want_out, rtol=1e-5, atol=1e-5)
    assert result.sidecar["plugins"]["used"] == ["qm::TokenGroupIndex", "qm::TokenMerge", "qm::TokenUnmerge"]
    assert result.sidecar["plugins"]["plugin_layers"] == 3  # the plugins ran, not the inlined functions
    kernels = result.sidecar["plugins"]["kernels"]  # what the AOT PTX was compiled for (issue 11)
    assert kernels["target"].startswith("sm_") and not kernels["target"].endswith("a")
    assert float(kernels["ptx_version"]) <= float(kernels["triton_ptx_version"])
    assert result.sidecar["cuda"]["driver_version"] == kernels["driver_cuda"]


def test_sidecar_timing_cache_and_force(tmp_path: Path) -> None:
    from qm_export.trt import BuildRequest, build_engine
    from qm_export.trt.files import sha256_file

    model_path, engine_path, cache = tmp_path / "m.onnx", tmp_path / "m.engine", tmp_path / "m.timing.cache"
    onnx.save(export_like_model(), model_path)
    request = BuildRequest(model_path, engine_path, shapes=SHAPES, workspace_bytes=1 << 30, timing_cache=cache)
    build_engine(request)
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["onnx"]["sha256"] == sha256_file(model_path)
    assert side["engine"]["sha256"] == sha256_file(engine_path)
    assert side["precision"] == "fp32" and side["tensorrt"]["strongly_typed"] is True
    assert "PREFER_AOT_PYTHON_PLUGINS" in side["tensorrt"]["network_flags"]
    assert side["profile"]["inputs"]["x"]["max"] == [4, 256, 8] and side["gpu"]["name"]
    assert side["workspace_bytes"] == 1 << 30 and cache.stat().st_size > 0
    with pytest.raises(FileExistsError):
        build_engine(request)
    build_engine(BuildRequest(model_path, engine_path, shapes=SHAPES, timing_cache=cache, force=True))


def test_cli_build(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from qm_export.cli import main

    model_path = tmp_path / "m.onnx"
    onnx.save(export_like_model(n=32, batch=2), model_path)
    result = CliRunner().invoke(main, ["build", str(model_path), "--workspace", "1GiB"])
    assert result.exit_code == 0, result.output
    assert "profile from static" in result.output and (tmp_path / "m.engine").is_file()

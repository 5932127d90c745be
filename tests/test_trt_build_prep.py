"""``qm-export build`` without TensorRT: output files (atomic, --force), the request checks,
the sidecar contents, sizes, and the missing-TensorRT message."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import onnx
import pytest

from qm_export.trt.files import atomic_write_bytes, check_writable, sha256_file, sidecar_path
from qm_export.trt.precision import plan_precision
from qm_export.trt.prepare import BuildRequest, TensorRTUnavailable, prepare_build, required_network_flags
from qm_export.trt.profiles import Profile, ShapeRange
from qm_export.trt.sidecar import SIDECAR_SCHEMA, make_sidecar
from qm_export.trt.units import format_bytes, parse_bytes
from qm_export.trt.versions import parse_trt_version

from trt_onnx_graphs import export_like_model


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(export_like_model(), path)
    return path


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_check_writable(tmp_path: Path) -> None:
    existing = tmp_path / "e.engine"
    existing.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="e.engine.*--force"):
        check_writable([existing], force=False)
    check_writable([existing], force=True)
    with pytest.raises(FileNotFoundError, match="folder"):
        check_writable([tmp_path / "missing" / "e.engine"], force=True)
    with pytest.raises(IsADirectoryError):
        check_writable([tmp_path], force=True)


def test_sha256_and_sidecar_path(tmp_path: Path) -> None:
    f = tmp_path / "m.engine"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert sidecar_path(f) == tmp_path / "m.engine.json"


@pytest.mark.parametrize(
    "text,expected",
    [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1024", 1024), ("2g", 2 * 2**30)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text,match", [("4XB", "unknown unit 'XB'"), ("lots", "not a number"), ("0MiB", "positive")])
def test_parse_bytes_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.00 MiB"
    assert format_bytes(5 * 2**30) == "5.00 GiB"


def test_prepare_build(onnx_file: Path) -> None:
    request = BuildRequest(onnx_file, onnx_file.with_suffix(".engine"), shapes=("x:1x4x8,2x16x8,4x64x8",))
    prepared = prepare_build(request)
    assert prepared.plugins == ["qm::TokenGroupIndex", "qm::TokenMerge", "qm::TokenUnmerge"]
    assert prepared.onnx_precision == "fp32"
    assert prepared.onnx_sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert prepared.profile.shapes["x"] == ShapeRange((1, 4, 8), (2, 16, 8), (4, 64, 8))
    assert prepared.sidecar_path == onnx_file.with_suffix(".engine.json")


def test_prepare_refuses_existing_outputs(onnx_file: Path) -> None:
    engine = onnx_file.with_suffix(".engine")
    shapes = ("x:1x4x8,2x16x8,4x64x8",)
    sidecar_path(engine).write_text("{}")  # the sidecar alone is enough to refuse
    with pytest.raises(FileExistsError, match="m.engine.json"):
        prepare_build(BuildRequest(onnx_file, engine, shapes=shapes))
    prepare_build(BuildRequest(onnx_file, engine, shapes=shapes, force=True))
    with pytest.raises(ValueError, match="is the input ONNX file"):
        prepare_build(BuildRequest(onnx_file, onnx_file, shapes=shapes, force=True))


def test_prepare_errors_before_tensorrt(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        prepare_build(BuildRequest(tmp_path / "nope.onnx", tmp_path / "e.engine"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(ValueError, match="not an ONNX model"):
        prepare_build(BuildRequest(garbage, tmp_path / "e.engine"))
    with pytest.raises(ValueError, match="dynamic shape"):
        prepare_build(BuildRequest(onnx_file, tmp_path / "e.engine"))
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        prepare_build(BuildRequest(onnx_file, tmp_path / "e.engine", precision="fp8"))


def test_network_flags_only_request_aot_with_plugins() -> None:
    flags = ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")
    assert required_network_flags(flags, uses_plugins=True) == list(flags)
    assert required_network_flags(flags, uses_plugins=False) == ["STRONGLY_TYPED"]


def test_sidecar_contents(tmp_path: Path) -> None:
    import datetime as dt

    from qm_export import __version__

    plan = plan_precision(parse_trt_version("10.13.3.9"), "fp16", "fp32")
    profile = Profile({"x": ShapeRange((1, 4, 8), (2, 16, 8), (4, 64, 8))}, source="shapes")
    doc = make_sidecar(
        onnx_path=tmp_path / "m.onnx",
        onnx_sha256="ab" * 32,
        engine_path=tmp_path / "m.engine",
        engine_sha256="cd" * 32,
        engine_bytes=1234,
        trt_version="10.13.3.9",
        plan=plan,
        network_flags=["PREFER_AOT_PYTHON_PLUGINS"],
        profile=profile,
        plugins=["qm::TokenMerge"],
        workspace_bytes=2**30,
        timing_cache=None,
        build_seconds=12.3456,
        environment={"cuda": {"runtime_version": "12.8"}, "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}},
        device_memory_bytes=4096,
        io_tensors=[{"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, -1, 8]}],
        now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    )
    assert json.loads(json.dumps(doc)) == doc  # plain JSON
    assert doc["schema"] == SIDECAR_SCHEMA and doc["qm_export_version"] == __version__
    assert doc["created_utc"] == "2026-01-02T03:04:05+00:00" and doc["build_seconds"] == 12.346
    assert doc["onnx"]["sha256"] == "ab" * 32 and doc["engine"]["bytes"] == 1234
    assert doc["tensorrt"] == {
        "version": "10.13.3.9",
        "strongly_typed": False,
        "network_flags": ["PREFER_AOT_PYTHON_PLUGINS"],
        "builder_flags": ["FP16"],
        "cleared_builder_flags": ["TF32"],
    }
    assert doc["gpu"]["name"] == "NVIDIA H200" and doc["cuda"]["runtime_version"] == "12.8"
    assert doc["precision"] == "fp16"
    assert doc["profile"] == {
        "source": "shapes",
        "inputs": {"x": {"min": [1, 4, 8], "opt": [2, 16, 8], "max": [4, 64, 8]}},
    }
    assert doc["plugins"] == {"used": ["qm::TokenMerge"], "aot": True}
    assert doc["workspace_bytes"] == 2**30 and doc["device_memory_bytes"] == 4096
    assert any("deprecated" in n for n in doc["notes"])


def test_missing_tensorrt_message(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    from qm_export.trt.builder import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed
    request = BuildRequest(onnx_file, onnx_file.with_suffix(".engine"), shapes=("x:1x4x8,2x16x8,4x64x8",))
    with pytest.raises(
        TensorRTUnavailable, match=r"pip install 'qm-export\[trt\]'.*tensorrt>=10.9.*GPU|GPU.*pip install"
    ):
        build_engine(request)
    assert not onnx_file.with_suffix(".engine").exists()
    assert not os.path.exists(sidecar_path(onnx_file.with_suffix(".engine")))

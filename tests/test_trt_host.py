"""``qm-export build``'s guards (issue 11, findings 2, 4, 5, 6): the CUDA device check, TensorRT
10.14 refused for qm models, the timing cache that TensorRT refuses, and one-line errors
for plugin registration and ``trt.Builder``. TensorRT's objects are stood in for by small
classes with the same methods; what is tested is qm-export's handling of their answers."""

from __future__ import annotations

import ctypes
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from qm_export.cli import main
from qm_export.trt.host import check_cuda_device, create_builder, one_line
from qm_export.trt.prepare import BuildError
from qm_export.trt.timing_cache import attach_timing_cache, timing_cache_bytes

from trt_onnx_graphs import export_like_model

ROOT = Path(__file__).resolve().parents[1]


def _has_libcuda() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


# --- finding 6: one-line errors ------------------------------------------------------------


def test_builder_nullptr_is_one_line_naming_the_driver() -> None:
    def nullptr(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt = SimpleNamespace(__version__="10.13.3.9", Builder=nullptr)
    with pytest.raises(BuildError) as err:
        create_builder(trt, logger=object())
    text = str(err.value)
    assert "\n" not in text and "factory function returned nullptr" in text and "driver is likely too old" in text


def test_a_working_builder_is_returned() -> None:
    trt = SimpleNamespace(__version__="10.13", Builder=lambda logger: ("builder", logger))
    assert create_builder(trt, "log") == ("builder", "log")


def test_plugin_dependency_error_becomes_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import qm_export_plugins
    from qm_export.trt.builder import register_qm_plugins

    def missing(**kwargs):
        raise qm_export_plugins.PluginDependencyError("needs triton;\n  install it with: pip install 'qm-export[trt]'")

    monkeypatch.setattr(qm_export_plugins, "register_plugins", missing)
    with pytest.raises(BuildError, match=r"cannot be registered: needs triton; install it with") as err:
        register_qm_plugins()
    assert "\n" not in str(err.value)


def test_a_refused_plugin_definition_becomes_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import qm_export_plugins
    from qm_export.trt.builder import register_qm_plugins

    def refused(**kwargs):
        raise ValueError("Plugin 'qm::TokenMerge' has both AOT and JIT implementations.\nSet a flag")

    monkeypatch.setattr(qm_export_plugins, "register_plugins", refused)
    with pytest.raises(BuildError, match="refused the qm plugin definitions: Plugin 'qm::TokenMerge'") as err:
        register_qm_plugins()
    assert "\n" not in str(err.value)


def test_one_line() -> None:
    assert one_line("a\n  b\tc ") == "a b c"


# --- finding 2: a CUDA device, asked of the driver -------------------------------------------


@pytest.mark.skipif(_has_libcuda(), reason="this machine has an NVIDIA driver")
def test_no_driver_fails_before_anything_is_built() -> None:
    with pytest.raises(BuildError, match=r"needs a CUDA GPU: no NVIDIA driver: libcuda\.so\.1 cannot be loaded"):
        check_cuda_device()


def _build_qm_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trt_version: str):
    """``qm-export build`` of the export-like graph (three qm nodes) with a ``tensorrt`` module
    that has only ``__version__``: what runs is everything before TensorRT is called."""
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=trt_version))
    model = tmp_path / "m.onnx"
    onnx.save(export_like_model(n=16, batch=2), model)
    return CliRunner().invoke(main, ["build", str(model), "-o", str(tmp_path / "m.engine")])


@pytest.mark.skipif(_has_libcuda(), reason="this machine has an NVIDIA driver")
def test_build_cli_without_a_gpu_names_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _build_qm_model(tmp_path, monkeypatch, "10.13.3.9")
    assert result.exit_code == 1, result.output
    assert "FAILED: qm-export build needs a CUDA GPU: no NVIDIA driver: libcuda.so.1" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.engine").exists()


# --- finding 4: TensorRT 10.14 ---------------------------------------------------------------


def test_build_refuses_trt_10_14_for_a_qm_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _build_qm_model(tmp_path, monkeypatch, "10.14.1.48.post1")
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "TensorRT 10.14.1.48: TensorRT 10.14 has a known bug that breaks Python plugins" in out
    assert "10.15+ works" in out and "Traceback" not in out


def test_the_trt_extra_excludes_10_14() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    (req,) = [Requirement(r) for r in extras if Requirement(r).name == "tensorrt"]
    allowed = {v: req.specifier.contains(v) for v in ("10.8.0", "10.9.0.34", "10.13.3.9", "10.14.1.48", "10.15.1")}
    assert allowed == {"10.8.0": False, "10.9.0.34": True, "10.13.3.9": True, "10.14.1.48": False, "10.15.1": True}


# --- finding 5: the timing cache ---------------------------------------------------------------


class _Config:
    """An ``IBuilderConfig``'s timing-cache methods: ``accept`` says which caches
    ``set_timing_cache`` takes (TensorRT returns False for one made on another device)."""

    def __init__(self, accept=lambda data: True, serialize_error: Exception | None = None) -> None:
        self.accept, self.serialize_error, self.cache = accept, serialize_error, None

    def create_timing_cache(self, data: bytes):
        return SimpleNamespace(data=data, serialize=self._serialize)

    def _serialize(self):
        if self.serialize_error:
            raise self.serialize_error
        return b"cache:" + self.cache.data

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        ok = self.accept(cache.data)
        self.cache = cache if ok else None
        return ok

    def get_timing_cache(self):
        return self.cache


def test_an_accepted_cache_is_used_without_notes(tmp_path: Path) -> None:
    path = tmp_path / "t.cache"
    path.write_bytes(b"here")
    config = _Config()
    assert attach_timing_cache(config, path) == []
    assert config.cache.data == b"here"
    assert timing_cache_bytes(config) == (b"cache:here", None)


def test_a_cache_from_another_device_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "t.cache"
    path.write_bytes(b"other device")
    config = _Config(accept=lambda data: data != b"other device")
    (note,) = attach_timing_cache(config, path)
    assert "refused the timing cache" in note and "fresh cache" in note
    assert config.cache is not None and config.cache.data == b""
    assert timing_cache_bytes(config) == (b"cache:", None)


def test_no_cache_after_the_build_is_a_note_not_an_exception(tmp_path: Path) -> None:
    config = _Config(accept=lambda data: False)
    notes = attach_timing_cache(config, tmp_path / "absent.cache")
    assert notes and "without one" in notes[-1]
    data, note = timing_cache_bytes(config)
    assert data is None and "holds no timing cache" in note
    broken = _Config(serialize_error=RuntimeError("serialize\nfailed"))
    attach_timing_cache(broken, None)
    data, note = timing_cache_bytes(broken)
    assert data is None and "serialize failed" in note

"""``qm-export check`` and ``qm-export build`` through click's CliRunner: (args, exit code,
expected text) tables. ``build`` is exercised up to the point where TensorRT is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from qm_export.cli import main

from trt_onnx_graphs import export_like_model, single_op_model


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    clean = tmp_path / "clean.onnx"
    onnx.save(export_like_model(), clean)
    big_k = tmp_path / "bigk.onnx"
    node = h.make_node("TopK", ["s", "K"], ["v", "i"], axis=1, name="select")
    onnx.save(
        single_op_model(
            node,
            [("s", TP.FLOAT, [1, 5000])],
            [("v", TP.FLOAT, None), ("i", TP.INT64, None)],
            [numpy_helper.from_array(np.array([4000], np.int64), "K")],
        ),
        big_k,
    )
    static = tmp_path / "static.onnx"
    onnx.save(export_like_model(n=16, batch=2), static)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe this is not an onnx file" * 3)
    return {"clean": clean, "bigk": big_k, "static": static, "garbage": garbage, "dir": tmp_path}


CHECK_CASES = [
    (["{clean}"], 0, ["no errors", "plugin-summary", "TensorRT 10.13"]),
    (["{clean}", "--trt-version", "10.6"], 0, ["plugin-inlined", "TensorRT 10.6", "warning"]),
    (["{clean}", "--trt-version", "11.4.0.106"], 0, ["no errors", "TensorRT 11.4.0.106"]),
    (["{clean}", "--trt-version", "10.14"], 1, ["plugin-broken-trt", "FAILED: 3 error(s)"]),
    (["{bigk}"], 1, ["topk-k-limit", "K=4000", "1 error(s)"]),
    (["{dir}/missing.onnx"], 2, ["does not exist"]),
    (["{garbage}"], 2, ["not an ONNX model"]),
    (["{clean}", "--trt-version", "ten"], 2, ["Invalid value for '--trt-version'", "X.Y"]),
    (["{clean}", "--trt-version", "9.0"], 2, ["10.x and 11.x only"]),
    (["{clean}", "--trt-version", "12.0"], 2, ["10.x and 11.x only"]),
]


@pytest.mark.parametrize("args,code,texts", CHECK_CASES)
def test_check_cli(files: dict[str, Path], args: list[str], code: int, texts: list[str]) -> None:
    result = CliRunner().invoke(main, ["check", *(a.format(**files) for a in args)])
    assert result.exit_code == code, result.output
    for text in texts:
        assert text in result.output


@pytest.mark.parametrize("name,code", [("clean", 0), ("bigk", 1)])
def test_check_cli_json(files: dict[str, Path], name: str, code: int) -> None:
    result = CliRunner().invoke(main, ["check", str(files[name]), "--json", "--trt-version", "10.9"])
    assert result.exit_code == code
    doc = json.loads(result.stdout)
    assert doc["schema"] == "qm-export.trt-check/1" and doc["trt_version"] == "10.9"
    assert doc["ok"] is (code == 0)
    assert doc["summary"]["error"] == sum(f["severity"] == "error" for f in doc["findings"])


BUILD_CASES = [
    # Everything here fails before TensorRT would be needed, with the argument named.
    (["{dir}/missing.onnx"], 2, ["does not exist"]),
    (["{garbage}"], 2, ["not an ONNX model"]),
    (["{clean}"], 2, ["input 'x' has dynamic shape", "--shapes x:MIN,OPT,MAX"]),
    (["{clean}", "--shapes", "x:1x4x8,2x16x8"], 2, ["one shape or three"]),
    (["{clean}", "--shapes", "y:1x4x8,2x16x8,4x64x8"], 2, ["'y' that the model does not have"]),
    (["{clean}", "--shapes", "x:1x4x9,2x16x9,4x64x9"], 2, ["where the model's dim is static 8"]),
    (["{clean}", "--shapes", "x:4x4x8,2x16x8,4x64x8"], 2, ["min <= opt <= max at axis 0"]),
    (["{static}", "--workspace", "4XB"], 2, ["Invalid value for '--workspace'", "unknown unit"]),
    (["{static}", "--precision", "int8"], 2, ["Invalid value for '--precision'"]),
    (["{static}", "--recipe", "{dir}/none.toml"], 2, ["recipe"]),
    (["{static}", "-o", "{dir}/nowhere/m.engine"], 2, ["folder", "nowhere", "does not exist"]),
]


@pytest.mark.parametrize("args,code,texts", BUILD_CASES)
def test_build_cli_argument_errors(files: dict[str, Path], args: list[str], code: int, texts: list[str]) -> None:
    result = CliRunner().invoke(main, ["build", *(a.format(**files) for a in args)])
    assert result.exit_code == code, result.output
    for text in texts:
        assert text in result.output
    assert "Traceback" not in result.output


def test_build_cli_refuses_to_overwrite(files: dict[str, Path]) -> None:
    engine = files["dir"] / "static.engine"
    engine.write_bytes(b"old engine")
    result = CliRunner().invoke(main, ["build", str(files["static"])])
    assert result.exit_code == 2 and "--force" in result.output
    assert engine.read_bytes() == b"old engine"


def test_build_cli_without_tensorrt(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed
    engine = files["dir"] / "out.engine"
    result = CliRunner().invoke(main, ["build", str(files["static"]), "-o", str(engine), "--force"])
    assert result.exit_code == 1
    assert "pip install 'qm-export[trt]'" in result.output and "tensorrt>=10.9" in result.output
    assert "CUDA GPU" in result.output and "Traceback" not in result.output
    assert not engine.exists() and not Path(str(engine) + ".json").exists()


def test_cli_imports_no_tensorrt_or_triton() -> None:
    code = (
        "import sys, qm_export.cli, qm_export.trt, qm_export.trt.check.checker, qm_export.cli.build;"
        "from click.testing import CliRunner; CliRunner().invoke(qm_export.cli.main, ['--help']);"
        "bad = [m for m in ('tensorrt', 'triton', 'qm_export_plugins') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

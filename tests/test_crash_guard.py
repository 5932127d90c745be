"""A malformed model that crashes native code does not take the command down (issue 14,
section 4): shape inference (``check``) and ONNX Runtime's session creation (``validate``) run
first in a forked child, and a crash there is a finding."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.export.crash_guard import first_in_child
from untrusted_models import matmul_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the guard forks")


def _segfault(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)


def test_first_in_child_tells_a_crash_a_hang_and_an_error_apart() -> None:
    assert first_in_child(_segfault, "X") == "X crashed (SIGSEGV)"
    assert first_in_child(lambda: os.abort(), "X") == "X crashed (SIGABRT)"
    assert first_in_child(lambda: time.sleep(30), "X", timeout=0.5) == "X did not finish in 0.5 s"
    assert first_in_child(lambda: 1 / 0, "X") is None  # an error is the caller's to report, not a crash
    assert first_in_child(lambda: None, "X") is None


def test_check_reports_a_crash_of_shape_inference_as_a_finding(tmp_path: Path, monkeypatch) -> None:
    import json

    from qm_export.trt.check import checker

    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_model().SerializeToString())
    monkeypatch.setattr(checker, "infer_types", _segfault)  # would kill this process if run here
    res = CliRunner().invoke(main, ["check", str(path), "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    crash = [f for f in doc["findings"] if f["rule"] == "runtime-crash"]
    assert len(crash) == 1 and "ONNX shape inference crashed (SIGSEGV)" in crash[0]["message"]
    assert res.stderr.strip().splitlines()[-1].startswith("FAILED: 1 error(s)")


def test_validate_reports_a_crash_of_onnx_runtime_as_a_failed_backend(tmp_path: Path, monkeypatch) -> None:
    import onnxruntime

    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_model().SerializeToString())
    monkeypatch.setattr(onnxruntime, "InferenceSession", _segfault)  # would kill this process if run here
    res = CliRunner().invoke(main, ["validate", str(path), "--backends", "ort,onnx-ref", "--json"])
    assert res.exit_code == 1, res.output
    import json

    doc = json.loads(res.stdout)
    assert doc["backends"]["ort"]["status"] == "failed"
    assert "ONNX Runtime crashed (SIGSEGV) in a child process" in doc["backends"]["ort"]["why"]
    assert doc["backends"]["onnx-ref"]["status"] == "ran"
    assert res.stderr.strip().splitlines()[-1].startswith("FAILED: ")
    assert sys.modules["onnxruntime"] is onnxruntime


def test_a_name_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """protobuf hands a proto2 string with invalid UTF-8 back as bytes (found by fuzzing:
    check's table and its type listing crashed on it)."""
    data = matmul_model().SerializeToString()
    assert data.count(b"MatMul") == 1
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"MatMul", b"M\xe1tMul"))
    for command in ("check", "validate"):
        res = CliRunner().invoke(main, [command, str(path)])
        assert res.exit_code == 2, res.output
        assert "graph.node[0].op_type is not UTF-8 text" in res.stderr.strip().splitlines()[-1]


def test_check_survives_a_constant_of_an_unknown_type(tmp_path: Path) -> None:
    """A retyped initializer (data type 29 has no numpy type) made check's constant folding
    raise KeyError (found by fuzzing); it is simply not a constant."""
    model = matmul_model()
    model.graph.initializer[0].data_type = 29
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    res = CliRunner().invoke(main, ["check", str(path)])
    assert res.exit_code in (0, 1) and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert res.stderr.strip().splitlines()[-1].startswith(("PASSED: ", "FAILED: "))

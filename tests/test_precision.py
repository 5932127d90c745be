"""Reduced precision is validated, never skipped: the near-tie gap per precision (spec §3) and
bf16 through its float32 upcast twin where ONNX Runtime has no bfloat16 kernels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console

from qm_export.export.convert import ConvertOptions, run_convert
from qm_export.export.parity import near_tie_for
from qm_export.export.upcast import has_bf16, upcast_bf16
from qm_export.validate.run import ValidateOptions, validate_model


def _convert(tmp: Path, precision: str, verify: bool = True):
    out = tmp / f"vit-{precision}.onnx"
    report = run_convert(ConvertOptions(source="vit-tiny", output=out, precision=precision, verify=verify, force=True),
                         console=Console(file=io.StringIO()))
    return out, report


@pytest.fixture(scope="module")
def bf16(tmp_path_factory) -> tuple[Path, object]:
    return _convert(tmp_path_factory.mktemp("bf16"), "bf16")


def test_near_tie_gap_per_precision() -> None:
    assert (near_tie_for("fp32"), near_tie_for("fp16"), near_tie_for("bf16")) == (1e-4, 5e-3, 4e-2)
    assert near_tie_for(None) == 1e-4
    with pytest.raises(ValueError, match="int8"):
        near_tie_for("int8")


def _elem_types(model: onnx.ModelProto) -> set[int]:
    types = {t.data_type for t in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        types.add(vi.type.tensor_type.elem_type)
    for nodes in [model.graph.node] + [f.node for f in model.functions]:
        for n in nodes:
            for a in n.attribute:
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT:
                    types.add(a.i)
                if a.type == onnx.AttributeProto.TENSOR:
                    types.add(a.t.data_type)
    return types


def test_upcast_twin_has_no_bfloat16_left_and_keeps_the_weights(bf16) -> None:
    path, _ = bf16
    model = onnx.load(str(path))
    assert has_bf16(model) and onnx.TensorProto.BFLOAT16 in _elem_types(model)
    twin = upcast_bf16(model)
    assert onnx.TensorProto.BFLOAT16 not in _elem_types(twin)
    assert not has_bf16(twin) and has_bf16(model)  # the original is left as it was
    onnx.checker.check_model(twin, full_check=True)
    before = {t.name: onnx.numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in twin.graph.initializer}
    assert set(before) == set(after)
    for name, arr in after.items():
        assert arr.dtype != np.uint16
        np.testing.assert_array_equal(arr.astype(np.float32), before[name])  # bf16 -> fp32 is exact


def test_bf16_convert_checks_parity_through_the_upcast_twin(bf16) -> None:
    _, report = bf16
    assert report.verify is not None and report.verify_skipped is None
    assert report.verify.near_tie == 4e-2
    assert report.verify.ok, report.verify.to_json()
    assert {r.backend for r in report.verify.results} == {"ort", "onnx-ref"}
    assert all(r.layers for r in report.verify.results), "selection was not compared"
    assert report.verify.saved_matches_debug is True


def test_bf16_validate_runs_the_upcast_twin(bf16) -> None:
    path, _ = bf16
    report = validate_model(ValidateOptions(model=path, backends=["ort"]))
    assert report.passed, report.verdict()
    assert report.near_tie == 4e-2 and report.precision == "bf16"
    assert any("upcast" in n for n in report.notes)
    assert report.twin_matches_model is True


def test_fp16_convert_and_validate_use_fp16_gap(tmp_path: Path) -> None:
    path, report = _convert(tmp_path, "fp16")
    assert report.verify.ok and report.verify.near_tie == 5e-3
    v = validate_model(ValidateOptions(model=path, backends=["ort"]))
    assert v.passed and v.near_tie == 5e-3 and v.precision == "fp16"

"""Precision: reading the ONNX's float type, and the typing mode and flags per TensorRT
version and request."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from qm_export.trt.precision import onnx_precision, plan_precision
from qm_export.trt.versions import parse_trt_version

from trt_onnx_graphs import export_like_model, make_model

V10, V11 = parse_trt_version("10.13.3.9"), parse_trt_version("11.4.0.106")


def _model(input_types: list[int], init_types: list[tuple[int, int]] = ()):
    inputs = [(f"i{k}", t, [2]) for k, t in enumerate(input_types)]
    inits = [
        numpy_helper.from_array(np.zeros(n, dtype={TP.FLOAT: np.float32, TP.FLOAT16: np.float16}[t]), f"w{k}")
        for k, (t, n) in enumerate(init_types)
    ]
    nodes = [h.make_node("Identity", [name], [f"o{k}"]) for k, (name, _, _) in enumerate(inputs)]
    outputs = [(f"o{k}", t, [2]) for k, (_, t, _) in enumerate(inputs)]
    return make_model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize(
    "input_types,init_types,expected",
    [
        ([TP.FLOAT], [], "fp32"),
        ([TP.FLOAT16, TP.INT64], [(TP.FLOAT, 10)], "fp16"),  # inputs decide
        ([TP.BFLOAT16], [], "bf16"),
        ([TP.INT64], [(TP.FLOAT16, 100), (TP.FLOAT, 3)], "fp16"),  # else most initializer elements
        ([TP.INT64], [], None),
    ],
)
def test_onnx_precision(input_types, init_types, expected) -> None:
    assert onnx_precision(_model(input_types, init_types)) == expected


def test_onnx_precision_mixed_inputs() -> None:
    with pytest.raises(ValueError, match=r"mix precisions \['fp16', 'fp32'\]"):
        onnx_precision(_model([TP.FLOAT, TP.FLOAT16]))


def test_export_like_model_is_fp32() -> None:
    assert onnx_precision(export_like_model()) == "fp32"


@pytest.mark.parametrize("version", [V10, V11])
def test_same_precision_builds_strongly_typed(version) -> None:
    plan = plan_precision(version, "fp16", "fp16")
    assert plan.strongly_typed and plan.builder_flags == ()
    assert plan.clear_flags == ("TF32",)
    assert "PREFER_AOT_PYTHON_PLUGINS" in plan.network_flags
    # 10.x sets STRONGLY_TYPED; 11 ignores (and deprecates) it, so it is not set there.
    assert ("STRONGLY_TYPED" in plan.network_flags) is (version.major == 10)


def test_default_precision_is_the_onnx_one() -> None:
    assert plan_precision(V11, None, "bf16").precision == "bf16"
    assert plan_precision(V10, None, None).precision == "fp32"


@pytest.mark.parametrize("target", ["fp16", "bf16"])
def test_trt10_lowers_fp32_onnx_weakly(target: str) -> None:
    plan = plan_precision(V10, target, "fp32")
    assert not plan.strongly_typed
    assert plan.builder_flags == (target.upper(),)
    assert "STRONGLY_TYPED" not in plan.network_flags
    assert any("deprecated" in n for n in plan.notes)


@pytest.mark.parametrize("target", ["fp16", "bf16"])
def test_trt11_refuses_fp32_onnx_at_lower_precision(target: str) -> None:
    with pytest.raises(ValueError, match=f"strongly typed only: the ONNX is fp32 but --precision is {target}"):
        plan_precision(V11, target, "fp32")


@pytest.mark.parametrize("version", [V10, V11])
def test_no_raising_precision(version) -> None:
    with pytest.raises(ValueError, match="fp16 but --precision is fp32"):
        plan_precision(version, "fp32", "fp16")


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="'int8' is not one of fp32, fp16, bf16"):
        plan_precision(V10, "int8", "fp32")

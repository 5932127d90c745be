"""Our ``register_plugins()`` driven through TensorRT's REAL Python plugin layer
(``tensorrt_bindings/plugin/*.py`` of the 10.9, 10.13, 10.16 and 11.4 wheels) on a stand-in
for the compiled module (``tests/trt_plugin_layer.py`` says exactly what it fakes), in the
order TensorRT calls it during parse and AOT build: for every op, every type combination, the
export-like graph's shapes and the vit-tiny export's real ones. What comes back (kernel name,
PTX entry parameters, grid, block, shared memory, scalar arguments) is checked against the
integer formulas of ``qm_export_plugins.specs``.

The layers are fetched by ``scripts/fetch_trt_bindings.py`` into a cache outside git; where
they are absent (offline), each version skips with that reason."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from qm_export_plugins import specs

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("trt_plugin_layer.py")
_spec = importlib.util.spec_from_file_location("fetch_trt_bindings", ROOT / "scripts" / "fetch_trt_bindings.py")
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="AOT compilation needs triton")

#: The export-like graph of ``trt_onnx_graphs`` at B=4, N=197, K=66, D=768 (batch symbolic).
EXPORT_LIKE = [
    {"op": "TokenGroupIndex", "shapes": [["B", 197], ["B", 66]], "dims": {"B": 4}},
    {"op": "TokenMerge", "shapes": [["B", 197, 768], ["B", 197], ["B", 197], ["B", 67]], "dims": {"B": 4}},
    {"op": "TokenUnmerge", "shapes": [["B", 66, 768], ["B", 197]], "dims": {"B": 4}},
]
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16",
                onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64"}


def vit_tiny_cases(batch: int = 3) -> list[dict]:
    """Each qm node of the vit-tiny export, with its real input shapes (the batch symbolic,
    bound to ``batch``) and input types, from ONNX shape inference."""
    from tiny_exports import tiny_export

    model = onnx.load(str(tiny_export("merged")), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    cases = []
    for node in model.graph.node:
        if node.domain == "qm":
            shapes = [[d.dim_param or d.dim_value for d in infos[i].shape.dim] for i in node.input]
            symbols = {d for s in shapes for d in s if isinstance(d, str)}
            cases.append({"op": node.op_type, "shapes": shapes, "dims": {s: batch for s in symbols},
                          "input_types": [_ONNX_TO_TRT[infos[i].elem_type] for i in node.input]})
    return cases


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    vit = vit_tiny_cases()
    assert {c["op"] for c in vit} == {"TokenGroupIndex", "TokenMerge"}  # vit-tiny classifies: no unmerge
    return EXPORT_LIKE + vit


def _run(root: Path, cases: list[dict]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HARNESS), str(root), json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _layer_params() -> list:
    """One param per version; a version whose layer is not fetched skips, naming the script."""
    params = []
    for distribution, version in fetch.VERSIONS:
        root = fetch.layer_root(fetch.default_cache(), distribution, version)
        fetched = (root / fetch.PLUGIN_DIR / "__init__.py").is_file()
        reason = (f"TensorRT {version}'s plugin layer is not in {root.parent}: run "
                  "python scripts/fetch_trt_bindings.py (needs PyPI)")
        params.append(pytest.param(root, id=version, marks=pytest.mark.skipif(not fetched, reason=reason)))
    return params


@pytest.mark.parametrize("root", _layer_params())
def test_register_plugins_through_the_real_plugin_layer(root: Path, cases: list[dict]) -> None:
    doc = _run(root, cases)
    assert doc["ids"] == [specs.plugin_id(op) for op in specs.PLUGIN_NAMES]
    for case, result in zip(cases, doc["results"], strict=True):
        _check(case, result)


def _check(case: dict, result: dict) -> None:
    op = case["op"]
    n_in, n_scalars, n_out = (len(group) for group in specs.kernel_params(op))
    assert result["plugin_class"] == "_TemplateAOTPlugin"  # PREFER_AOT chose the AOT implementation
    # Without a preference TensorRT's layer refuses, as docs/tensorrt.md and `check` say.
    assert "has both AOT and JIT implementations" in result["refusal_without_preference"]
    assert "PREFER_AOT_PYTHON_PLUGINS" in result["refusal_without_preference"]
    expected_combos = [list(c) for c in specs.expand_type_combinations(specs.AUTOTUNE_TYPES[op])]
    assert result["combinations"] == expected_combos
    if "input_types" in case:  # the export's own input types are among them
        assert any(c[:n_in] == case["input_types"] for c in expected_combos), case
    assert [launch["combo"] for launch in result["launches"]] == expected_combos  # one launch per combination
    shapes = [[case["dims"].get(d, d) if isinstance(d, str) else d for d in s] for s in case["shapes"]]
    cfg = specs.launch_config(op, shapes)
    for launch in result["launches"]:
        assert launch["output_types"] == launch["combo"][n_in:]
        assert [tuple(s) for s in launch["output_shapes"]] == list(specs.output_shapes(op, shapes))
        assert launch["kernel"] == launch["entry"] == specs.KERNEL_NAMES[op]
        assert launch["entry_params"] == ["u64"] * n_in + ["u32"] * n_scalars + ["u64"] * n_out
        assert (launch["ptx_version"], launch["ptx_target"]) == ("8.4", "sm_90")  # capped to the 12.4 driver
        assert launch["grid"] == list(cfg.grid)
        assert launch["block"] == [32 * cfg.num_warps, 1, 1]
        assert launch["scalars"] == list(specs.scalar_args(op, shapes))
        assert launch["scalar_types"] == ["INT32"] * n_scalars
        assert isinstance(launch["shared_mem"], int) and 0 <= launch["shared_mem"] <= 48 * 1024


def test_fetch_names_what_failed_in_one_line(tmp_path: Path) -> None:
    why = fetch.fetch(tmp_path, "tensorrt-cu12-bindings", "0.0.0.0")
    assert why is not None and why.startswith("tensorrt-cu12-bindings==0.0.0.0: ") and "\n" not in why
    assert not fetch.layer_root(tmp_path, "tensorrt-cu12-bindings", "0.0.0.0").exists()

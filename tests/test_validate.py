"""``qm-export validate``: torch rebuilt from the model's metadata, the debug twin, every
backend compared, and failure (with the reason) on deliberately broken models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.export.convert import ConvertOptions, run_convert
from qm_export.export.debug_twin import TWIN_KEY, TwinError, make_debug_twin
from qm_export.export.provenance import Provenance
from qm_export.validate.run import ValidateOptions, validate_model
from tiny_exports import tiny_exports


def _convert(out: Path, source: str = "vit-tiny", **kw) -> Path:
    run_convert(ConvertOptions(source=source, output=out, verify=False, force=True, **kw))
    return out


@pytest.fixture(scope="module")
def vit() -> Path:
    return tiny_exports()["merged"]


def _invoke(*args: str):
    return CliRunner().invoke(main, ["validate", *args])


def _json(result) -> dict:
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])


def _save_variant(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_model_records_what_it_was_made_from(vit: Path) -> None:
    prov = Provenance.of_file(vit)
    assert prov is not None
    assert (prov.source, prov.schedule, prov.no_merge, prov.precision, prov.seed) == ("vit-tiny", "1:0.5", False, "fp32", 0)
    assert prov.inputs == {"pixel_values": {"dtype": "float32", "shape": [2, 3, 32, 32]}}


def test_validate_passes_with_the_twin_and_reports_every_backend(vit: Path) -> None:
    result = _invoke(str(vit), "--json")
    assert result.exit_code == 0, result.output
    report = _json(result)
    assert report["passed"] is True and report["reference"] == "torch"
    assert {"passed", "backends", "outputs", "selection"} <= set(report)
    backends = report["backends"]
    assert backends["ort"]["status"] == "ran" and backends["onnx-ref"]["status"] == "ran"
    assert backends["ort-cuda"]["status"] == "skipped" and backends["ort-cuda"]["why"]
    assert backends["trt"]["status"] == "skipped" and "TensorRT" in backends["trt"]["why"]
    # every declared shape of the recipe (example 2, profile 1/4/16), per backend
    assert {o["input"] for o in report["outputs"]} == {"2x3x32x32", "1x3x32x32", "4x3x32x32", "16x3x32x32"}
    for o in report["outputs"]:
        assert set(o) >= {"name", "backend", "max_abs", "max_rel", "cosine", "passed"}
        assert o["max_abs"] <= 1e-4 and o["cosine"] > 0.9999
    assert report["selection"], "selection was not compared"
    for row in report["selection"]:
        assert set(row) >= {"layer", "backend", "seed_flips", "assign_flips", "near_ties", "bugs"}
        assert row["layer"] == 1 and row["bugs"] == 0
    assert report["twin_matches_model"] is True
    assert report["near_tie"] == 1e-4


def test_model_with_debug_outputs_needs_no_twin(tmp_path: Path) -> None:
    path = _convert(tmp_path / "d.onnx", debug_outputs=True)
    report = validate_model(ValidateOptions(model=path, backends=["ort"]))
    assert report.passed and report.twin_matches_model is None
    assert all(r.layers for r in report.results)


def test_twin_reproduces_the_debug_outputs_exactly(vit: Path, tmp_path: Path) -> None:
    from qm_export.backends.onnxruntime import OrtRunner

    debug = _convert(tmp_path / "d.onnx", debug_outputs=True)
    twin = _save_variant(make_debug_twin(onnx.load(str(vit))), tmp_path / "twin.onnx")
    x = {"pixel_values": np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)}
    a, b = OrtRunner(twin).run(x), OrtRunner(debug).run(x)
    assert set(a) == set(b) == {"logits", "merge0_assign", "merge0_seeds"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_twin_refuses_a_model_without_its_recipe(vit: Path) -> None:
    model = onnx.load(str(vit))
    kept = [p for p in model.metadata_props if p.key != TWIN_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    with pytest.raises(TwinError, match="no debug outputs"):
        make_debug_twin(model)


def _perturb(vit: Path, path: Path, name_part: str) -> Path:
    model = onnx.load(str(vit))
    init = next(t for t in model.graph.initializer if name_part in t.name)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr += np.random.default_rng(0).normal(0, 0.05, arr.shape).astype(arr.dtype)
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    return _save_variant(model, path)


def test_perturbed_head_weights_fail_on_values(vit: Path, tmp_path: Path) -> None:
    result = _invoke(str(_perturb(vit, tmp_path / "head.onnx", "head.weight")), "--json")
    assert result.exit_code == 1
    report = _json(result)
    assert report["passed"] is False
    assert {o["backend"] for o in report["outputs"] if not o["passed"]} == {"ort", "onnx-ref"}
    assert all(row["bugs"] == 0 for row in report["selection"])  # the head is after the merge
    assert "FAILED" in result.stderr and "differ from torch" in result.stderr


def test_perturbed_embedding_fails_on_selection(vit: Path, tmp_path: Path) -> None:
    result = _invoke(str(_perturb(vit, tmp_path / "embed.onnx", "patch_embed.weight")), "--json", "--backends", "ort")
    assert result.exit_code == 1
    report = _json(result)
    assert sum(row["bugs"] for row in report["selection"]) > 0
    flips = [f for f in report["flips"] if f["status"] == "bug"]
    assert flips and all(f["gap"] is None or f["gap"] > report["near_tie"] for f in flips)


def test_every_row_a_near_tie_passes_on_selection_alone_and_says_so(vit: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row with a near-tie flip (as seen with video-base at fp16/bf16): no value is
    compared, and the table, the verdict and --json say so. The head weights are perturbed, so
    a value check would fail: the pass can only come from leaving every row out."""
    import qm_export.validate.compare as compare

    real = compare.compare_selection

    def every_row_near_tie(records, pairs, near_tie):
        layers, flips, _ = real(records, pairs, near_tie)
        rows = layers[0].rows
        layers[0].seed_flip_rows = layers[0].seed_near_ties = rows
        return layers, flips, set(range(rows))

    monkeypatch.setattr(compare, "compare_selection", every_row_near_tie)
    model = _perturb(vit, tmp_path / "head.onnx", "head.weight")
    result = _invoke(str(model), "--json", "--backends", "ort", "--batch", "2")
    assert result.exit_code == 0, result.output
    report = _json(result)
    assert report["passed"] is True
    assert report["values_compared"] is False and report["values_not_compared"] == ["ort at 2x3x32x32"]
    assert report["outputs"] and all(not o["values_compared"] and o["rows_compared"] == 0 and o["rows_excluded"] == 2
                                     for o in report["outputs"])
    verdict = result.stderr.strip().splitlines()[-1]
    assert verdict.startswith("PASSED") and "values not compared for ort at 2x3x32x32: near-tie in every row" in verdict
    assert "values not compared for ort at 2x3x32x32: every row had a near-tie flip" in " ".join(result.stderr.split())


def _first_qm(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.domain == "qm" and n.op_type == op)


def test_swapped_merge_inputs_fail(vit: Path, tmp_path: Path) -> None:
    model = onnx.load(str(vit))
    node = _first_qm(model, "TokenMerge")
    node.input[2], node.input[3] = node.input[3], node.input[2]  # order <-> offsets
    result = _invoke(str(_save_variant(model, tmp_path / "swapped.onnx")), "--json", "--backends", "ort")
    assert result.exit_code == 1, result.output
    report = _json(result)
    assert report["passed"] is False
    ort = report["backends"]["ort"]
    failed_values = [o for o in report["outputs"] if not o["passed"]]
    assert ort["status"] == "failed" or failed_values, report
    assert "Traceback" not in result.output


def test_altered_function_body_fails(vit: Path, tmp_path: Path) -> None:
    model = onnx.load(str(vit))
    fn = next(f for f in model.functions if f.name == "TokenMerge")
    div = next(n for n in fn.node if n.op_type == "Div")
    div.op_type = "Mul"  # a weighted sum times the weight total instead of divided by it
    result = _invoke(str(_save_variant(model, tmp_path / "altered.onnx")), "--json", "--backends", "ort,onnx-ref")
    assert result.exit_code == 1
    report = _json(result)
    bad = {o["backend"] for o in report["outputs"] if not o["passed"]}
    assert bad == {"ort", "onnx-ref"}


def test_without_metadata_the_first_backend_is_the_reference(vit: Path, tmp_path: Path) -> None:
    model = onnx.load(str(vit))
    del model.metadata_props[:]
    path = _save_variant(model, tmp_path / "bare.onnx")
    report = validate_model(ValidateOptions(model=path, backends=["ort", "onnx-ref"]))
    assert report.reference == "ort" and "no source" in report.reference_note
    assert report.passed, report.verdict()
    assert [r.backend for r in report.results] == ["onnx-ref", "onnx-ref"]
    assert any("selection is not checked" in n for n in report.notes)
    # with --source, torch is the reference again (the recipe's own defaults: seed 0, schedule 1:0.5)
    with_source = validate_model(ValidateOptions(model=path, source="vit-tiny", backends=["ort"]))
    assert with_source.reference == "torch" and with_source.passed


def test_moved_source_is_named(tmp_path: Path) -> None:
    from qm_export.recipes import load_recipe

    recipe = tmp_path / "mine.toml"
    shutil.copy(load_recipe("vit-tiny").path, recipe)
    model = _convert(tmp_path / "m.onnx", source=str(recipe))
    recipe.rename(tmp_path / "moved.toml")
    result = _invoke(str(model))
    assert result.exit_code == 2
    assert "no longer exists" in result.output and "--source" in result.output
    ok = _invoke(str(model), "--source", str(tmp_path / "moved.toml"), "--backends", "ort")
    assert ok.exit_code == 0, ok.output


def test_npz_inputs(vit: Path, tmp_path: Path) -> None:
    npz = tmp_path / "in.npz"
    np.savez(npz, pixel_values=np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32))
    report = validate_model(ValidateOptions(model=vit, inputs=npz, backends=["ort"]))
    assert report.passed and report.input_sets == [{"pixel_values": [5, 3, 32, 32]}]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{missing}"], "does not exist"),
        (["{notonnx}"], "not an ONNX model"),
        (["{vit}", "--backends", "ort,tensorflow"], "unknown backend 'tensorflow'"),
        (["{vit}", "--inputs", "{npz_name}"], "unknown ['images']"),
        (["{vit}", "--inputs", "{npz_shape}"], "axis 2"),
        (["{vit}", "--inputs", "{npz_dtype}"], "float64"),
        (["{vit}", "--inputs", "{notnpz}"], "not a readable .npz"),
        (["{vit}", "--source", "encoder-tiny"], "not this model's source"),
        (["{vit}", "--batch", "0"], "--batch"),
        (["{vit}", "--source", "no-such-recipe"], "no-such-recipe"),
    ],
)
def test_bad_input_is_one_clear_line(vit: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "x.txt").write_text("not a model")
    np.savez(tmp_path / "name.npz", images=np.zeros((1, 3, 32, 32), np.float32))
    np.savez(tmp_path / "shape.npz", pixel_values=np.zeros((1, 3, 16, 32), np.float32))
    np.savez(tmp_path / "dtype.npz", pixel_values=np.zeros((1, 3, 32, 32), np.float64))
    paths = {"missing": tmp_path / "nope.onnx", "notonnx": tmp_path / "x.txt", "vit": vit,
             "npz_name": tmp_path / "name.npz", "npz_shape": tmp_path / "shape.npz",
             "npz_dtype": tmp_path / "dtype.npz", "notnpz": tmp_path / "x.txt"}
    result = _invoke(*[a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_outputs_round_trip_through_polygraphy(vit: Path, tmp_path: Path) -> None:
    """Our inputs into ``polygraphy run``, its outputs back into ``validate --load-outputs``."""
    import subprocess
    import sys

    poly = Path(sys.executable).parent / "polygraphy"
    if not poly.is_file():
        pytest.skip("the polygraphy command is not installed next to this interpreter (pip install polygraphy)")
    inputs, ours = tmp_path / "inputs.json", tmp_path / "ours.json"
    first = _invoke(str(vit), "--backends", "ort", "--batch", "3", "--save-inputs", str(inputs),
                    "--save-outputs", str(ours))
    assert first.exit_code == 0, first.output
    theirs = tmp_path / "theirs.json"
    done = subprocess.run([str(poly), "run", str(vit), "--onnxrt", "--load-inputs", str(inputs),
                           "--save-outputs", str(theirs)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = _invoke(str(vit), "--backends", "ort", "--inputs", str(inputs), "--load-outputs", str(theirs), "--json")
    assert result.exit_code == 0, result.output
    report = _json(result)
    loaded = [n for n in report["backends"] if n.startswith("loaded:")]
    assert loaded and report["backends"][loaded[0]]["status"] == "ran"
    assert any(o["backend"] == loaded[0] and o["passed"] for o in report["outputs"])
    # and what we saved is what polygraphy reads: torch and ort runners, one iteration each
    from qm_export.backends.run_results import load_run_results

    saved = load_run_results(ours)
    assert set(saved) == {"qm-export:torch", "qm-export:ort"} and len(saved["qm-export:ort"]) == 1
    # a tampered file fails: outputs that differ from torch
    tampered = {name: [{k: v + 1.0 for k, v in it.items()} for it in its] for name, its in load_run_results(theirs).items()}
    from qm_export.backends.run_results import save_run_results

    bad = tmp_path / "bad.json"
    save_run_results(bad, tampered)
    failed = _invoke(str(vit), "--backends", "ort", "--inputs", str(inputs), "--load-outputs", str(bad))
    assert failed.exit_code == 1


def test_export_names_the_merge_nodes(vit: Path) -> None:
    """Profilers attribute time by node name: the qm nodes and the selection are named."""
    from qm_export.export.merge_nodes import merge_role

    model = onnx.load(str(vit), load_external_data=False)
    roles = [merge_role(n.name) for n in model.graph.node]
    qm = [n for n in model.graph.node if n.domain == "qm"]
    assert len(qm) == roles.count("qm") == 3  # TokenGroupIndex + TokenMerge of tokens and of sizes
    assert roles.count("selection") > 10
    # selection feeds only the merge's index/weight inputs: no classifier-head node is selection
    head = [n for n in model.graph.node if any("head" in i for i in n.input)]
    assert head and all(merge_role(n.name) is None for n in head)


@pytest.mark.parametrize("name, role", [
    ("merge_qm/TokenMerge/node__symbolic", "qm"),
    ("_inlfunc_TokenGroupIndex_n3", "qm"),
    ("merge_select/node_a + merge_select/node_b", "selection"),
    ("PWN(merge_select/a, merge_select/b)", "selection"),
    ("{ForeignNode[merge_select/a...merge_select/z]}", "selection"),
    ("merge_select/a + node_b", None),  # a fused layer of merge and model nodes is not attributed
    ("Reformatting CopyNode for Input Tensor 0 to merge_qm/TokenMerge/y", "qm"),
    ("node_matmul_3", None),
])
def test_merge_role_reads_ort_and_tensorrt_names(name: str, role: str | None) -> None:
    from qm_export.export.merge_nodes import merge_role

    assert merge_role(name) == role

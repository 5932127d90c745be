"""``convert``: every tiny recipe exports in both merge-impl forms and picks torch's tokens in
ONNX Runtime at shapes other than the traced one; the CLI's errors are clean and leave no files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qm_export.backends.onnxruntime import OrtRunner
from qm_export.cli import main
from qm_export.export.onnx_export import export_onnx
from qm_export.trt.check.checker import check_onnx_file
from qm_export.export.verify import run_torch, to_numpy_feeds, verify_export
from qm_export.models import load_source
from qm_export.trt.versions import parse_trt_version
from tiny_exports import export_both_impls, tiny_export

TINY = ["vit-tiny", "encoder-tiny", "causal-lm-tiny", "video-tiny"]


@pytest.fixture(scope="module", params=TINY)
def exported_pair(request, tmp_path_factory):
    """One trace per recipe, saved in both merge-impl forms."""
    loaded = load_source(request.param, debug_outputs=True)
    pair = export_both_impls(loaded, tmp_path_factory.mktemp(request.param))
    yield loaded, pair
    for ex in pair.values():
        ex.cleanup()


@pytest.mark.parametrize("impl", ["plugin", "inline"])
def test_recipe_converts_and_matches_torch_at_every_declared_shape(exported_pair, impl):
    loaded, pair = exported_pair
    ex = pair[impl]
    shapes = list(loaded.declared_shapes)
    # The build profile's shapes differ from the traced one: dynamic axes are exercised.
    inputs = [loaded.sample_inputs(batch=b, seq_len=s, seed=i) for i, (b, s) in enumerate(shapes)]
    traced_shape = tuple(loaded.trace_inputs[0].shape)
    assert any(tuple(x[0].shape) != traced_shape for x in inputs)
    report = verify_export(loaded, ex, inputs, [OrtRunner], atol=loaded.tolerance.max_abs)
    assert report.ok, json.dumps(report.to_json(), indent=1)[:3000]
    assert report.saved_matches_debug is True
    assert report.counts()["bugs"] == 0
    # Every merge layer was compared.
    assert all(len(r.layers) == len(loaded.merge_layers) for r in report.results)


def test_plugin_form_has_qm_nodes_with_functions_and_passes_the_checker(exported_pair):
    _, pair = exported_pair
    model = onnx.load(str(pair["plugin"].path))
    onnx.checker.check_model(model, full_check=True)
    qm = [n for n in model.graph.node if n.domain == "qm"]
    assert {n.op_type for n in qm} == {"TokenGroupIndex", "TokenMerge", "TokenUnmerge"} - (
        set() if any(n.op_type == "TokenUnmerge" for n in qm) else {"TokenUnmerge"})
    for node in qm:
        assert {a.name: a.s.decode() for a in node.attribute} == {"plugin_namespace": "qm", "plugin_version": "1"}
    assert {f.name for f in model.functions} == {n.op_type for n in qm}
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    assert not ops & {"TopK", "NonZero", "OneHot", "RandomNormal", "RandomUniform", "RandomNormalLike",
                      "RandomUniformLike", "Multinomial", "Bernoulli"}


def test_inline_form_has_no_qm_node_and_no_function(exported_pair):
    _, pair = exported_pair
    model = onnx.load(str(pair["inline"].path))
    assert not [n for n in model.graph.node if n.domain == "qm"]
    assert not model.functions
    assert "qm" not in {o.domain for o in model.opset_import}


def test_trt_preflight_passes_our_exports(exported_pair):
    _, pair = exported_pair
    for impl in ("plugin", "inline"):
        report = check_onnx_file(pair[impl].path, parse_trt_version("10.13"))
        problems = [f for f in report.findings if f.severity in ("error", "warning")]
        assert not problems, [(f.rule, f.node, f.message) for f in problems]


def test_debug_outputs_equal_torch_assign_and_seeds(tmp_path):
    loaded = load_source("encoder-tiny", debug_outputs=True)
    ex = export_onnx(loaded, tmp_path / "d.onnx", debug_outputs=True)
    model = onnx.load(str(ex.path))
    names = [o.name for o in model.graph.output]
    assert names[-2:] == ["merge0_assign", "merge0_seeds"]
    inputs = loaded.sample_inputs(batch=3, seq_len=24, seed=7)
    torch_out, records = run_torch(loaded, inputs)
    ort_out = OrtRunner(ex.path).run(to_numpy_feeds(loaded.input_names, inputs))
    np.testing.assert_array_equal(ort_out["merge0_assign"], torch_out["merge0_assign"])
    np.testing.assert_array_equal(ort_out["merge0_seeds"], torch_out["merge0_seeds"])
    np.testing.assert_array_equal(torch_out["merge0_assign"], records[0].assign.numpy())


# ---- the CLI ---------------------------------------------------------------------------------


def _run(args, **kw):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


def test_cli_convert_json_report(tmp_path):
    out = tmp_path / "vit.onnx"
    res = _run(["convert", "vit-tiny", "-o", str(out), "--json", "--merge", "1:0.5"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True
    assert report["schedule"] == "1:0.5"
    assert report["tokens_per_layer"][1] == 17 and report["tokens_per_layer"][2] == 9  # 1 + 16 -> 1 + 8
    assert {r["backend"] for r in report["parity"]["results"]} == {"ort", "onnx-ref"}
    assert report["export"]["qm_nodes"]["TokenGroupIndex"] == 1
    assert out.is_file()


def test_cli_no_merge_has_no_qm_node(tmp_path):
    out = tmp_path / "base.onnx"
    res = _run(["convert", "vit-tiny", "-o", str(out), "--no-merge", "--no-verify"])
    assert res.exit_code == 0, res.output
    assert not [n for n in onnx.load(str(out)).graph.node if n.domain == "qm"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "no-such-recipe", "-o", "{out}"], "no-such-recipe"),
        (["convert", "vit-tiny", "-o", "{out}", "--batch", "0"], "--batch"),
        (["convert", "vit-tiny", "-o", "{out}", "--seq-len", "64"], "sequence length"),
        (["convert", "vit-tiny", "-o", "{out}", "--merge", "9:0.5"], "layer 9"),
        (["convert", "vit-tiny", "-o", "{out}", "--merge", "1:1.5"], "1.5"),
        (["convert", "vit-tiny", "-o", "{out}", "--merge", "1:0.5", "--no-merge"], "--no-merge"),
        (["convert", "vit-tiny", "-o", "{out}", "--precision", "fp64"], "fp64"),
        (["convert", "vit-tiny", "-o", "{tmp}/missing/x.onnx"], "does not exist"),
        (["convert", "vit-tiny", "-o", "{tmp}/x.txt"], ".onnx"),
    ],
)
def test_cli_bad_input_is_a_clean_error_and_leaves_no_file(tmp_path, args, message):
    out = tmp_path / "out.onnx"
    args = [a.format(out=out, tmp=tmp_path) for a in args]
    before = sorted(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert message in res.output, res.output
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_existing_output_needs_force(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    res = CliRunner().invoke(main, ["convert", "vit-tiny", "-o", str(out), "--no-verify"])
    assert res.exit_code == 2 and "--force" in res.output
    assert out.read_bytes() == b"keep me"
    res = CliRunner().invoke(main, ["convert", "vit-tiny", "-o", str(out), "--no-verify", "--force"])
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(onnx.load(str(out)))


def test_cli_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    # root ignores permission bits; /proc refuses new files to everyone.
    target = Path("/proc") if os.geteuid() == 0 else folder
    try:
        res = CliRunner().invoke(main, ["convert", "vit-tiny", "-o", str(target / "x.onnx")])
        assert res.exit_code == 2, res.output
        assert "not writable" in res.output
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_cli_failed_export_leaves_no_partial_file(tmp_path):
    out = tmp_path / "b.onnx"
    # bf16 Conv needs opset 22: the checker rejects the file, nothing is left behind.
    res = CliRunner().invoke(main, ["convert", "vit-tiny", "-o", str(out), "--precision", "bf16", "--opset", "20"])
    assert res.exit_code != 0
    assert "opset 22" in res.output
    assert list(tmp_path.iterdir()) == []




def test_fitted_prior_of_a_recipe_is_exported_and_matches(tmp_path):
    prior = tmp_path / "enc-prior.safetensors"
    res = _run(["fit-prior", "encoder-tiny", "-o", str(prior), "--steps", "5", "--samples", "16"])
    assert res.exit_code == 0, res.output
    plain = tiny_export("text")  # `convert encoder-tiny --no-verify`, exported once per test run
    guided = tmp_path / "guided.onnx"
    res = _run(["convert", "encoder-tiny", "-o", str(guided), "--prior", str(prior), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and report["prior"]["weight"] == 0.3
    # The prior (a causal transformer) is part of the graph.
    assert len(onnx.load(str(guided)).graph.node) > len(onnx.load(str(plain)).graph.node) + 50
    # The same recipe with other weights (seed 1): same width, another model; the prior is refused
    other = tmp_path / "other.onnx"
    res = _run(["convert", "encoder-tiny", "--seed", "1", "-o", str(other), "--prior", str(prior)])
    assert res.exit_code == 2 and "was fitted on recipe encoder-tiny" in res.stderr, res.output
    assert "Traceback" not in res.output and not other.exists()


def test_weights_signature_tells_models_apart():
    from qm_export.priors.signature import check_prior_source, weights_signature

    a = load_source("encoder-tiny").model
    b = load_source("encoder-tiny", seed=1).model
    sig = weights_signature(a)
    assert sig["tensors"] > 8 and len(sig["values"]) == 8 and all(len(v) == 16 for v in sig["values"])
    check_prior_source("p.safetensors", {"weights_signature": sig}, a)  # its own model
    check_prior_source("p.safetensors", {"weights_signature": sig}, load_source("encoder-tiny", precision="bf16").model)
    check_prior_source("p.safetensors", {}, b)  # a prior from before signatures: accepted
    with pytest.raises(ValueError, match="fitted on recipe x"):
        check_prior_source("p.safetensors", {"weights_signature": sig, "source": "recipe x"}, b)


def test_large_models_are_written_with_external_data(tmp_path, monkeypatch):
    import qm_export.export.onnx_export as onnx_export

    # Pretend the tiny model is over the 2 GB protobuf limit: weights go to OUT.onnx.data.
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    loaded = load_source("vit-tiny", debug_outputs=True)
    ex = export_onnx(loaded, tmp_path / "big.onnx")
    try:
        data = tmp_path / "big.onnx.data"
        assert ex.external_data and data.is_file() and data.stat().st_size > 0
        proto = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        onnx.checker.check_model(str(tmp_path / "big.onnx"), full_check=True)
        report = verify_export(loaded, ex, [loaded.example_inputs], [OrtRunner], atol=1e-4)
        assert report.ok and report.saved_matches_debug is True
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    finally:
        ex.cleanup()

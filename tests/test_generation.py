"""Generation over a merged KV cache (issue 13): the two-graph folder ``convert`` writes for a
causal LM, the ONNX Runtime generation runner, generation parity in ``convert``/``validate``,
``profile`` of generation, ``generate``, and bad input. The folders are converted once per
module (through the CLI, so that the command is what is tested)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from qm_export.cli import main
from qm_export.generation.contract import (
    CACHE_FIELDS, first_positions, flatten_cache, past_names, present_names, unflatten_cache,
)
from qm_export.generation.folder import MANIFEST, GenerationFolderError, read_generation_folder
from qm_export.generation.loop import Generated, Sampler, check_prompt, generate
from qm_export.generation.ort_backend import OrtGeneration
from qm_export.generation.parity import compare_generated, compare_generation
from qm_export.generation.torch_backend import TorchGeneration
from qm_export.models import load_source


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    merged, base = root / "lm", root / "lm0"
    r = cli("convert", "causal-lm-tiny", "-o", merged, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    r0 = cli("convert", "causal-lm-tiny", "--no-merge", "-o", base, "--no-verify")
    assert r0.exit_code == 0, r0.output
    return {"merged": merged, "baseline": base, "report": report}


@pytest.fixture(scope="module")
def source():
    return load_source("causal-lm-tiny")


# -- the contract and the loop (pure) -------------------------------------------------------

def test_cache_names_follow_the_genai_convention():
    assert present_names(2)[:4] == ("present.0.key", "present.0.value", "present.0.positions", "present.0.sizes")
    assert past_names(1) == tuple(f"past_key_values.0.{f}" for f in CACHE_FIELDS)
    flat = tuple(torch.full((1,), float(i)) for i in range(8))
    assert flatten_cache(unflatten_cache(flat)) == flat
    with pytest.raises(ValueError, match="4 tensors per layer"):
        unflatten_cache(flat[:3])


def test_first_position_counts_real_tokens_under_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert first_positions(mask).tolist() == [[3], [3], [5]]


def test_sampler_greedy_is_argmax_and_sampling_is_seeded_within_top_k():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    assert (Sampler().choose(logits, Sampler().rng()) == logits.argmax(-1)).all()
    s = Sampler(temperature=1.0, top_k=3, seed=7)
    draws = np.stack([s.choose(logits, g) for g in [s.rng()] * 1 for _ in range(200)])
    top3 = np.argsort(logits, -1)[:, -3:]
    assert all(np.isin(draws[:, row], top3[row]).all() for row in range(4))
    assert len({tuple(d) for d in draws}) > 1  # it does sample
    again = np.stack([s.choose(logits, g) for g in [s.rng()] for _ in range(200)])
    assert (draws == again).all()  # the same seed draws the same tokens


@pytest.mark.parametrize("kwargs, match", [({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k")])
def test_sampler_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**kwargs)


def test_check_prompt_refuses_what_cannot_run(source):
    spec = source.generation.spec
    ids = np.zeros((1, 10), np.int64)
    with pytest.raises(ValueError, match="max_positions=128"):
        check_prompt(spec, ids, None, 119)
    with pytest.raises(ValueError, match="vocabulary"):
        check_prompt(spec, ids + spec.vocab_size, None, 1)
    with pytest.raises(ValueError, match="new_tokens must be an int >= 1"):
        check_prompt(spec, ids, None, 0)
    with pytest.raises(ValueError, match="no real token"):
        check_prompt(spec, ids, np.zeros_like(ids), 1)


def test_near_tie_and_bug_are_told_apart_by_torchs_gap():
    ref_logits = np.zeros((2, 2, 5), np.float32)
    ref_logits[0, 1, [1, 2]] = [1.0, 1.0 - 1e-5]  # row 0, step 1: a near-tie between tokens 1 and 2
    ref_logits[1, 1, [3, 4]] = [1.0, 0.5]  # row 1, step 1: a clear winner
    ref = Generated(ref_logits.argmax(-1), ref_logits, 0.0)
    got_tokens = ref.tokens.copy()
    got_tokens[0, 1], got_tokens[1, 1] = 2, 4
    parity = compare_generated("x", ref, Generated(got_tokens, ref_logits.copy(), 0.0), atol=1e-4, rtol=0.0)
    assert (parity.near_ties, parity.bugs, parity.first_divergence) == (1, 1, [1, 1])
    assert not parity.ok and not parity.identical


# -- the folder and its graphs ---------------------------------------------------------------

def test_convert_writes_the_generation_folder(folders):
    merged = folders["merged"]
    assert sorted(p.name for p in merged.iterdir()) == ["decode.onnx", "generation.json", "prefill.onnx"]
    folder = read_generation_folder(merged)
    assert (folder.spec.depth, folder.spec.kv_heads, folder.spec.head_dim, folder.merged) == (3, 4, 8, True)
    assert not read_generation_folder(folders["baseline"]).merged
    report = folders["report"]
    assert report["passed"] and report["layout"]["decode"] == "decode.onnx"
    assert report["generation"]["steps"] == 32 and report["generation"]["identical"]
    decode = onnx.load(str(merged / "decode.onnx"), load_external_data=False)
    names = [i.name for i in decode.graph.input]
    assert names[:3] == ["input_ids", "position_ids", "past_key_values.0.key"]
    axes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decode.graph.input}
    assert axes["past_key_values.2.key"] == ["batch", 4, "past_2", 8]  # each layer's own cache length
    assert not any(n.domain == "qm" for n in decode.graph.node)  # the decode graph never merges


def test_ort_generates_what_torch_generates_for_64_steps_with_padding(folders, source):
    ids, mask = (t.numpy() for t in source.example_inputs)
    ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, np.r_[[0] * 5, [1] * 11][None]])  # + left pad
    parity = compare_generation(TorchGeneration(source.generation), OrtGeneration(read_generation_folder(folders["merged"])),
                                ids, mask, steps=64, atol=1e-4)
    assert parity.identical and parity.bugs == 0 and parity.values_ok, parity.to_json()
    assert parity.rows == 3 and parity.steps == 64


def test_io_binding_changes_nothing_but_where_the_cache_lives(folders, source):
    folder = read_generation_folder(folders["merged"])
    ids, mask = (t.numpy() for t in source.example_inputs)
    a = generate(OrtGeneration(folder), ids, mask, new_tokens=12, keep_logits=True)
    b = generate(OrtGeneration(folder, io_binding=False), ids, mask, new_tokens=12, keep_logits=True)
    assert (a.tokens == b.tokens).all() and np.array_equal(a.logits, b.logits)
    assert a.kv_cache_bytes == b.kv_cache_bytes


def test_merged_cache_is_smaller_by_what_the_merge_removed(folders, source):
    ids, mask = (t.numpy() for t in source.example_inputs)
    outs = {k: generate(OrtGeneration(read_generation_folder(folders[k])), ids, mask, new_tokens=1)
            for k in ("merged", "baseline")}
    # tokens per layer 16 -> 16 -> 8 (merge in layer 1 keeps half): 16 + 16 + 8 of 48 cached
    per_token = ids.shape[0] * (2 * 4 * 8 * 4 + 8 + 4)  # key + value float32, position int64, size float32
    assert outs["baseline"].kv_cache_bytes == 3 * 16 * per_token
    assert outs["merged"].kv_cache_bytes == (16 + 16 + 8) * per_token


# -- validate, profile, generate -------------------------------------------------------------

def test_validate_checks_generation(folders):
    r = cli("validate", folders["merged"], "--json", "--new-tokens", "40", "--backends", "ort")
    assert r.exit_code == 0, r.output
    gen = json.loads(r.stdout)["generation"]
    assert gen["steps"] == 40 and gen["identical"] and gen["ok"] and list(gen["backends"]) == ["ort"]


def test_validate_fails_a_decode_graph_that_generates_wrongly(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["merged"], broken)
    model = onnx.load(str(broken / "decode.onnx"))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 2 and t.dims[0] == 128 else 0)
    arr = numpy_helper.to_array(init)
    assert arr.shape == (128, 32)  # the position embedding: only decode steps read it from here
    init.CopyFrom(numpy_helper.from_array(arr[::-1].copy(), init.name))
    onnx.save(model, str(broken / "decode.onnx"))
    r = cli("validate", broken, "--json", "--backends", "ort")
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    assert report["generation"]["ok"] is False
    assert "generation differs from torch" in report["verdict"]


def test_a_decode_graph_of_another_layer_count_is_refused(folders, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folders["merged"], other)
    data = json.loads((other / MANIFEST).read_text())
    data["cache"]["depth"] = 2
    (other / MANIFEST).write_text(json.dumps(data))
    r = cli("generate", other, "--prompt-ids", "1,2,3")
    assert r.exit_code == 2
    assert "another model or layer count" in r.output and "Traceback" not in r.output


def test_generate_prints_torchs_greedy_continuation(folders, source):
    r = cli("generate", folders["merged"], "--prompt-ids", "5,6,7,8", "--new-tokens", "10", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    ref = generate(TorchGeneration(source.generation), np.array([[5, 6, 7, 8]]), None, new_tokens=10)
    assert out["tokens"] == ref.tokens[0].tolist()
    plain = cli("generate", folders["merged"], "--prompt-ids", "5,6,7,8", "--new-tokens", "10")
    assert plain.stdout.strip() == ",".join(map(str, out["tokens"]))


@pytest.mark.parametrize("args, match", [
    (["--prompt-ids", "1,2", "--new-tokens", "0"], "--new-tokens"),
    ([], "exactly one of --prompt"),
    (["--prompt", "hello"], "has no tokenizer"),
    (["--prompt-ids", "1,x"], "comma-separated token ids"),
    (["--prompt-ids", ",".join(["1"] * 120), "--new-tokens", "20"], "max_positions=128"),
])
def test_generate_refuses_bad_input_in_one_line(folders, args, match):
    r = cli("generate", folders["merged"], *args)
    assert r.exit_code == 2, r.output
    assert match in r.output and "Traceback" not in r.output


def test_generate_refuses_a_folder_that_is_not_one(tmp_path):
    r = cli("generate", tmp_path, "--prompt-ids", "1")
    assert r.exit_code == 2 and "not a generation folder" in r.output


def test_profile_reports_generation_for_both_folders(folders):
    r = cli("profile", folders["merged"], "--baseline", folders["baseline"], "--batch", "1,2", "--seq-len", "24",
            "--new-tokens", "4", "--runs", "2", "--warmup", "0", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [(x["batch"], x["seq_len"]) for x in report["results"]] == [(1, 24), (2, 24)]
    for row in report["results"]:
        for which in (row, row["baseline"]):
            assert {"ttft_ms", "decode_ms", "tokens_per_s", "kv_cache_bytes"} <= set(which)
            assert which["decode_ms"]["p95"] >= which["decode_ms"]["p50"] > 0
        assert 0 < row["kv_cache_reduction"] < 1  # 24 -> 24 -> 12 tokens: a sixth of the cache saved
        assert row["kv_cache_reduction"] == pytest.approx(1 / 6, abs=0.01)


def test_profile_refuses_options_that_do_nothing_for_generation(folders):
    r = cli("profile", folders["merged"], "--no-breakdown")
    assert r.exit_code == 2 and "does not apply to a generation folder" in r.output


def test_convert_refuses_a_folder_for_a_model_that_is_not_a_causal_lm(tmp_path):
    r = cli("convert", "vit-tiny", "-o", tmp_path / "v")
    assert r.exit_code == 2 and "not a causal LM" in r.output and not (tmp_path / "v").exists()
    assert not any(tmp_path.iterdir())  # no staging folder left behind


def test_force_replaces_only_a_generation_folder(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    r = cli("convert", "causal-lm-tiny", "-o", keep, "--force")
    assert r.exit_code == 2 and "not a generation folder" in r.output
    assert (keep / "notes.txt").read_text() == "x"


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(folders, tmp_path):
    other = tmp_path / "escape"
    shutil.copytree(folders["merged"], other)
    data = json.loads((other / MANIFEST).read_text())
    data["decode"] = "../decode.onnx"
    (other / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(GenerationFolderError, match="a file name inside the folder"):
        read_generation_folder(other)


def test_trt_build_profiles_cover_every_cache_length():
    from qm_export.generation.trt_backend import generation_build_shapes

    spec = load_source("causal-lm-tiny").generation.spec
    prefill, decode = generation_build_shapes(spec, {"input_ids": ((1, 4), (4, 16), (16, 64))})
    assert prefill[0] == "input_ids:1x4,4x16,16x64"
    shapes = dict(s.split(":") for s in decode)
    assert shapes["input_ids"] == "1x1,4x1,16x1"
    assert shapes["past_key_values.2.key"] == "1x4x1x8,4x4x16x8,16x4x128x8"
    assert shapes["past_key_values.0.sizes"] == "1x1,4x16,16x128"
    with pytest.raises(ValueError, match="max_positions"):
        generation_build_shapes(spec, {"input_ids": ((1, 4), (4, 16), (16, 256))})


def test_trt_generation_skips_here_with_the_reason(folders):
    from qm_export.generation.trt_backend import trt_unavailable

    why = trt_unavailable(read_generation_folder(folders["merged"]))
    if why is None:
        pytest.skip("TensorRT and a GPU are present: the GPU check script runs TensorRT generation")
    assert "TensorRT" in why or "CUDA" in why or "engine" in why


# -- Hugging Face causal LMs (GPT-2, Llama) through the same two graphs ------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hugging_face_causal_lms_convert_to_folders_that_generate_like_torch(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100,
                                                                     n_positions=128))
    else:  # grouped-query attention: 4 heads share 2 key/value heads
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=128))
    model.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    r = cli("convert", tmp_path / "src", "-o", out, "--json", "--no-reference")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["generation"]["identical"] and report["selection_compared"]
    folder = read_generation_folder(out)
    assert folder.spec.kv_heads == (2 if family == "llama" else 4)
    loaded = load_source(str(tmp_path / "src"))
    ids = np.random.default_rng(3).integers(0, 100, size=(2, 20))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    parity = compare_generation(TorchGeneration(loaded.generation), OrtGeneration(folder), ids, mask, steps=64,
                                atol=1e-4)
    assert parity.identical and parity.values_ok, parity.to_json()
    v = cli("validate", out, "--backends", "ort", "--json")
    assert v.exit_code == 0, v.output
    checked = json.loads(v.stdout)
    assert checked["selection"] and checked["generation"]["identical"]  # the prefill's merges are compared too


def test_build_of_a_folder_derives_both_profiles_and_needs_tensorrt(folders):
    from qm_export.generation.trt_backend import trt_unavailable

    if trt_unavailable(read_generation_folder(folders["merged"])) is None:
        pytest.skip("TensorRT is present: the GPU check script builds the folder")
    r = cli("build", folders["merged"])
    assert r.exit_code == 1 and "TensorRT" in r.output and "Traceback" not in r.output
    assert not (folders["merged"] / "prefill.engine").exists()


def test_a_decode_graph_whose_external_data_leaves_the_folder_is_refused(folders, tmp_path):
    other = tmp_path / "outside"
    shutil.copytree(folders["merged"], other)
    model = onnx.load(str(other / "decode.onnx"))
    onnx.save(model, str(other / "decode.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="decode.onnx.data", size_threshold=1024)
    proto = onnx.load(str(other / "decode.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../decode.onnx.data"
    (other / "decode.onnx").write_bytes(proto.SerializeToString())
    r = cli("generate", other, "--prompt-ids", "1,2")
    assert r.exit_code == 2 and "decode graph" in r.output and "Traceback" not in r.output

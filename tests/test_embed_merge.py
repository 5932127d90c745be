"""Merging on the embeddings, before layer 0 (schedule key ``embed``, layer -1).

Checked against the reference ``quickmerge`` (and the naive transcription of the spec) applied
to the embeddings directly, never against the code under test's own output; the causal rules
and the KV cache with an embed merge; ONNX export with parity for every tiny family, the ToMe
baseline and a Hugging Face folder.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from causal_checks import assert_never_attends_later, token_ids
from naive_quickmerge import naive_batch
from qm_export.backends.onnxruntime import OrtRunner
from qm_export.backends.reference import ReferenceRunner
from qm_export.cli import main
from qm_export.export.provenance import Provenance, schedule_spelling
from qm_export.trt.check.checker import check_onnx_file
from qm_export.export.verify import verify_export
from qm_export.merge import QuickMergeConfig, quickmerge
from qm_export.merge.tome_export import tome_merge
from qm_export.models import build_model, load_source, parse_schedule
from qm_export.models.causal_lm import text_positions
from qm_export.models.merging import TokenState
from qm_export.models.schedule import EMBED, layer_label
from qm_export.recipes import load_recipe
from qm_export.trt.versions import parse_trt_version
from tiny_exports import export_both_impls

TINY = ["vit-tiny", "encoder-tiny", "causal-lm-tiny", "video-tiny"]
FAMILIES = ["vit", "encoder", "causal-lm", "video"]
RECIPES = Path(__file__).resolve().parents[1] / "models"


# ---- the schedule key --------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "layers", "text"), [
    ("embed:0.33", (-1,), "embed:0.33"),
    ("embed:0.5,4:0.7", (-1, 4), "embed:0.5,4:0.7"),
    ("4:0.7, embed:0.5", (-1, 4), "embed:0.5,4:0.7"),
    ({"embed": 0.33}, (-1,), "embed:0.33"),
    ({"embed": 3, 1: 0.5}, (-1, 1), "embed:3,1:0.5"),
    ("-1:0.33", (-1,), "embed:0.33"),  # what f"{layer}:{amount}" writes for it
    ("embed:1.0,1:0.5", (1,), "1:0.5"),  # keep everything = no merge, as for any layer
])
def test_embed_key_parses_and_round_trips(spec, layers, text):
    schedule = parse_schedule(spec, num_layers=6)
    assert schedule.layers == layers and schedule.describe() == text
    assert parse_schedule(text, num_layers=6) == schedule
    # the exact spelling convert records as provenance parses back to the same K rule
    assert parse_schedule(schedule_spelling(schedule), num_layers=6) == schedule
    assert schedule.merges_embeddings == (EMBED in layers)


def test_exact_ratio_round_trip_and_labels():
    schedule = parse_schedule({"embed": 1 / 3, 2: 0.7})
    assert parse_schedule(schedule_spelling(schedule)) == schedule
    assert [m.spelling(exact=True) for m in schedule.merges] == [f"embed:{1 / 3!r}", "2:0.7"]
    assert layer_label(-1) == "embed" and layer_label(3) == "3"


def test_embed_key_in_a_toml_recipe(tmp_path):
    assert parse_schedule(tomllib.loads("schedule = { embed = 0.33, 2 = 0.5 }")["schedule"]).describe() == "embed:0.33,2:0.5"
    text = (RECIPES / "vit-tiny.toml").read_text()
    assert 'schedule = "1:0.5"' in text
    path = tmp_path / "vit-embed.toml"
    path.write_text(text.replace('schedule = "1:0.5"', "schedule = { embed = 0.5 }"))
    loaded = load_source(str(path))
    assert loaded.schedule.describe() == "embed:0.5" and loaded.merge_layers == (-1,)
    assert load_recipe(str(path)).merge.schedule == {"embed": 0.5}


@pytest.mark.parametrize(("spec", "error", "match"), [
    ("embedding:0.5", ValueError, r"the layer must be an index >= 0, or 'embed' .*got 'embedding'"),
    ("Embed:0.5", ValueError, "'embed'"),
    ("embed:0", ValueError, r"'embed' \(before layer 0\): a token count must be >= 1, got 0"),
    ("embed:0.0", ValueError, r"'embed' \(before layer 0\): a keep ratio must be in \(0, 1\]"),
    ("embed:1.5", ValueError, r"'embed' \(before layer 0\).*\(0, 1\]"),
    ("embed:half", ValueError, "keep ratio"),
    ("embed:0.5,-1:0.3", ValueError, "names layer embed twice"),
    ("-2:0.5", ValueError, "'embed'"),
    ({-1: 0.5}, ValueError, "layer index must be >= 0.*write 'embed'"),  # Python's -1 reads as "the last layer"
    ("embed", ValueError, "keep ratio"),  # no amount
])
def test_bad_embed_spellings_are_refused(spec, error, match):
    with pytest.raises(error, match=match):
        parse_schedule(spec, num_layers=4)
    with pytest.raises(error):
        build_model("vit", "tiny", spec)


def test_check_layers_accepts_embed_on_any_depth():
    parse_schedule("embed:0.5", num_layers=1)
    with pytest.raises(ValueError, match=r"layer 4.*'embed' before layer 0"):
        parse_schedule("embed:0.5,4:0.5", num_layers=4)


# ---- the families ------------------------------------------------------------------------

#: tokens entering each layer, then leaving the last: vit 1 + 16 patches, video 1 + 32
#: tubelets, text 16 tokens (the recipes' example shape); K = (33 N' + 50) // 100 at 0.33.
TOKENS = {
    ("vit-tiny", "embed:0.33"): [6, 6, 6, 6, 6],
    ("vit-tiny", "embed:0.5,1:0.5"): [9, 9, 5, 5, 5],
    ("encoder-tiny", "embed:0.33"): [5, 5, 5, 5],
    ("encoder-tiny", "embed:0.5,1:0.5"): [8, 8, 4, 4],
    ("causal-lm-tiny", "embed:0.33"): [5, 5, 5, 5],
    ("causal-lm-tiny", "embed:0.5,1:0.5"): [8, 8, 4, 4],
    ("video-tiny", "embed:0.33"): [12, 12, 12, 12],
    ("video-tiny", "embed:0.5,1:0.5"): [17, 17, 9, 9],
}


@pytest.mark.parametrize(("recipe", "schedule"), list(TOKENS), ids=[f"{r}-{s}" for r, s in TOKENS])
def test_tokens_per_layer_start_merged(recipe, schedule):
    loaded = load_source(recipe, schedule=schedule, debug_outputs=True)
    assert loaded.merge_layers[0] == -1
    assert loaded.tokens_per_layer(*loaded.example_inputs) == TOKENS[recipe, schedule]
    n_merges = len(loaded.merge_layers)
    names = loaded.output_names[-2 * n_merges:]
    assert names[:2] == ("merge0_assign", "merge0_seeds")  # the embed merge is merge 0
    outs = dict(zip(loaded.output_names, loaded.run(*loaded.example_inputs)))
    n_in = loaded.tokens_per_layer(*loaded.example_inputs)
    assert outs["merge0_assign"].shape[1] > n_in[0]  # over the unmerged embeddings
    if n_merges > 1:
        assert outs["merge1_assign"].shape[1] == n_in[1]  # over layer 1's (merged) tokens


def _stack_io(model, *inputs):
    """What the stack receives (the family's embeddings and initial state) and returns."""
    seen = {}

    def pre(module, args, kwargs):
        seen["h"], seen["state"] = args[0].detach().clone(), args[1]

    def post(module, args, kwargs, output):
        seen["out"] = output

    hooks = [model.stack.register_forward_pre_hook(pre, with_kwargs=True),
             model.stack.register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad():
            result = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["h"], seen["state"], seen["out"], result


def _inputs(family, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if family in ("vit", "video"):
        shape = (3, *model._pixel_shape()[0])
        return (torch.randn(shape, generator=gen),)
    ids = torch.randint(0, 1000, (3, 16), generator=gen)
    mask = torch.ones(3, 16, dtype=torch.int64)
    mask[1, 11:] = 0  # right padding
    mask[2, :3] = 0   # left padding
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_merge_is_quickmerge_of_the_embeddings(family):
    """The first merge is ``quickmerge`` of the embeddings with self-similarity saliency (no
    attention, no scales), then every layer runs on the merged tokens: the unmerged twin's
    layers on the reference's merged tokens give the merged model's final tokens."""
    model = build_model(family, "tiny", "embed:0.5")
    inputs = _inputs(family, model)
    h, state, out, _ = _stack_io(model, *inputs)
    cfg = QuickMergeConfig(keep_ratio=0.5, protect=model.protect, mode=model.mode)
    merged, info = quickmerge(h, cfg, attn=None, scales=None, sizes=state.sizes, positions=state.positions,
                              mask=state.mask)
    got = out.merges[0]
    for key in ("assign", "seeds", "sizes", "positions", "mask"):
        assert torch.equal(got[key], info[key]), key
    assert out.tokens[0] == merged.shape[1]
    assert torch.equal(out.state.source, info["assign"])  # original token -> merged token
    # the spec transcribed loop by loop picks the same seeds and groups (double precision)
    naive = naive_batch(h, keep_ratio=0.5, protect=model.protect, mode=model.mode,
                        mask=state.mask, positions=state.positions)
    assert [r.seeds for r in naive] == info["seeds"].tolist()
    assert [r.assign for r in naive] == info["assign"].tolist()
    # every layer after it: the twin without merges, run on the reference's merged tokens
    twin = model.without_merges()
    new_state = TokenState(info["sizes"], info["positions"], info["mask"], info["assign"])
    with torch.no_grad():
        ref = twin.stack(merged, new_state)
    assert ref.tokens == out.tokens
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)


def test_embed_merge_with_a_later_merge_and_multi_scale_history():
    """With ``scales=2`` the embed merge is one scale (nothing exists before layer 0) and a
    merge in layer 0 has one scale too; a merge in layer 2 gets layers 1 and 2."""
    model = build_model("vit", "tiny", "embed:0.5,0:0.75,2:0.5",
                        merge_options={"scales": 2, "saliency": "self"})
    pixels = _inputs("vit", model)[0]
    h, state, out, _ = _stack_io(model, pixels)
    cfg = QuickMergeConfig(keep_ratio=0.5, protect=1)
    _, info = quickmerge(h, cfg, sizes=state.sizes, positions=state.positions, mask=state.mask)
    assert torch.equal(out.merges[0]["seeds"], info["seeds"])
    assert out.tokens == [9, 7, 7, 4, 4]
    # the model without the embed merge, fed the reference's merged embeddings: the same later
    # merges (their windows do not include the embeddings)
    twin = model.with_schedule("0:0.75,2:0.5", {"scales": 2, "saliency": "self"})
    merged_h, merged_info = quickmerge(h, cfg, sizes=state.sizes, positions=state.positions, mask=state.mask)
    st = TokenState(merged_info["sizes"], merged_info["positions"], merged_info["mask"], merged_info["assign"])
    with torch.no_grad():
        ref = twin.stack(merged_h, st)
    for a, b in zip(out.merges[1:], ref.merges):
        assert torch.equal(a["seeds"], b["seeds"]) and torch.equal(a["assign"], b["assign"])
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)


def test_tome_embed_merge_is_tome_on_the_embeddings():
    model = build_model("vit", "tiny", "embed:0.5", method="tome")
    pixels = _inputs("vit", model)[0]
    h, state, out, _ = _stack_io(model, pixels)
    cfg = QuickMergeConfig(keep_ratio=0.5, protect=1)
    merged, new_state, info = tome_merge(h, state, cfg, h)
    assert torch.equal(out.merges[0]["assign"], info["assign"])
    with torch.no_grad():
        ref = model.without_merges().stack(merged, new_state)
    assert out.tokens == [9] * 5
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)


def test_embed_prior_is_built_and_called():
    model = build_model("encoder", "tiny", "embed:0.5,1:0.5", merge_options={"prior_weight": 0.3})
    assert set(model.stack.priors) == {"-1", "1"}
    calls = []
    hook = model.stack.priors["-1"].register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    with torch.no_grad():
        model(*_inputs("encoder", model))
    hook.remove()
    assert calls == [(3, 16, 32)]
    # the other prior keeps its seed: same weights as without the embed merge
    other = build_model("encoder", "tiny", "1:0.5", merge_options={"prior_weight": 0.3})
    for a, b in zip(model.stack.priors["1"].parameters(), other.stack.priors["1"].parameters()):
        assert torch.equal(a, b)


# ---- the causal LM with an embed merge -----------------------------------------------------


_ids = token_ids


def test_causal_embed_merge_never_attends_to_a_later_position():
    model = build_model("causal-lm", "tiny", "embed:0.5,1:0.5")
    ids = _ids(16, 0, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    with torch.no_grad():
        out = model(ids, mask, output_attentions=True)
    assert out.tokens == [8, 8, 4, 4]
    assert_never_attends_later(out.attentions)
    info = out.merges[0]
    positions = text_positions(mask.bool())
    for b in range(2):
        real = mask[b].bool()
        last = int(real.nonzero().max())
        assert last in info["seeds"][b].tolist()  # the last real token is a seed
        for j in range(int(info["assign"][b].max()) + 1):
            group = (info["assign"][b] == j) & real
            if group.any():  # members join a seed at or after them; the group sits at the largest position
                assert int(info["seeds"][b, j]) >= int(group.nonzero().max())
                assert int(info["positions"][b, j]) == int(positions[b][group].max())
    # every layer's cache holds the merged prompt
    assert [c.key.shape[2] for c in out.cache.layers] == [8, 8, 4]


@pytest.mark.parametrize("schedule", ["embed:0.5", {"embed": 5}, "embed:0.5,1:0.5"])
def test_next_token_after_an_embed_merged_context_ignores_what_follows(schedule):
    model = build_model("causal-lm", "tiny", schedule)
    context = _ids(10, 1)
    results = []
    for junk_seed in (2, 3):
        row = torch.cat([context, _ids(6, junk_seed)], 1)
        mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], 1).long()
        with torch.no_grad():
            out = model(row, mask)
            step, _ = model.generate_step(torch.tensor([7]), out.cache)
        results.append((out["logits"], step))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    if isinstance(schedule, dict):  # an absolute keep does not follow the padded length
        with torch.no_grad():
            alone = model(context, torch.ones_like(context))
            step, _ = model.generate_step(torch.tensor([7]), alone.cache)
        torch.testing.assert_close(alone["logits"], results[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step, results[0][1], atol=1e-4, rtol=1e-4)


def test_generate_step_after_embed_merge_matches_a_full_forward_over_the_merged_prompt():
    """Prefill + two ``generate_step`` calls over the embed-merged cache equal one forward of
    the unmerged twin over [quickmerge(prompt embeddings), new tokens] with the merged sizes
    and positions: the cache keeps what attention needs, decoding appends correctly."""
    model = build_model("causal-lm", "tiny", "embed:0.5")
    twin = model.without_merges()
    ids = _ids(12, 4, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # row 1: 8 real tokens, right-padded
    steps = [torch.tensor([11, 12]), torch.tensor([5, 6])]
    with torch.no_grad():
        out = model(ids, mask)
        cache, step_logits = out.cache, []
        for tok in steps:
            logits, cache = model.generate_step(tok, cache)
            step_logits.append(logits)
        # the reference: quickmerge on the prompt embeddings, then the new tokens appended
        positions = text_positions(mask.bool())
        emb = model.tok_embed(ids) + model.pos_embed(positions)
        cfg = QuickMergeConfig(keep_ratio=0.5, protect=0, mode="causal")
        merged, info = quickmerge(emb, cfg, positions=positions, mask=mask.bool())
        nxt = positions.masked_fill(~mask.bool(), -1).amax(1) + 1  # (B,)
        assert torch.equal(out.cache.next_position, nxt)
        h, sizes, pos, real = merged, info["sizes"], info["positions"], info["mask"]
        for t, tok in enumerate(steps):
            p = (nxt + t).unsqueeze(1)
            h = torch.cat([h, model.tok_embed(tok.unsqueeze(1)) + model.pos_embed(p)], 1)
            sizes = torch.cat([sizes, torch.ones(2, 1)], 1)
            pos = torch.cat([pos, p], 1)
            real = torch.cat([real, torch.ones(2, 1, dtype=torch.bool)], 1)
            m = h.shape[1]
            state = TokenState(sizes, pos, real, torch.arange(m).expand(2, m))
            full = twin.stack(h, state)
            torch.testing.assert_close(step_logits[t], twin._logits(full.hidden[:, -1]), atol=1e-5, rtol=1e-5)
        # the prefill's next-token logits: the merged token holding the last real token
        state = TokenState(info["sizes"], info["positions"], info["mask"], info["assign"])
        full = twin.stack(merged, state)
        last = torch.tensor([11, 7])
        holder = info["assign"][torch.arange(2), last]
        torch.testing.assert_close(out["logits"], twin._logits(full.hidden[torch.arange(2), holder]),
                                   atol=1e-5, rtol=1e-5)
    assert [c.key.shape[2] for c in cache.layers] == [8, 8, 8]  # 6 merged + 2 generated
    assert cache.next_position.tolist() == [14, 10]


# ---- export round trips ------------------------------------------------------------------


@pytest.fixture(scope="module", params=TINY)
def embed_export(request, tmp_path_factory):
    """One trace per tiny recipe with ``embed:0.5``, saved in both merge-impl forms."""
    loaded = load_source(request.param, schedule="embed:0.5", debug_outputs=True)
    pair = export_both_impls(loaded, tmp_path_factory.mktemp(request.param))
    yield loaded, pair
    for ex in pair.values():
        ex.cleanup()


def test_embed_export_matches_torch_and_passes_the_trt_preflight(embed_export):
    """Both forms: ONNX Runtime and the ONNX reference evaluator pick torch's tokens (the embed
    merge is merge 0 of the debug outputs) and give its outputs at the declared shapes
    (the reference evaluator at the first two); no TensorRT pre-flight error. One test per
    family, so that pytest-xdist traces each family once."""
    loaded, pair = embed_export
    inputs = [loaded.sample_inputs(batch=b, seq_len=s, seed=i) for i, (b, s) in enumerate(loaded.declared_shapes)]
    for impl, ex in pair.items():
        report = verify_export(loaded, ex, inputs[:2], [OrtRunner, ReferenceRunner], atol=loaded.tolerance.max_abs)
        assert report.ok, (impl, json.dumps(report.to_json(), indent=1)[:3000])
        assert {r.backend for r in report.results} == {"ort", "onnx-ref"}
        assert report.counts()["bugs"] == 0
        assert all(len(r.layers) == 1 for r in report.results)  # the embed merge's selection was compared
        report = verify_export(loaded, ex, inputs[2:], [OrtRunner], atol=loaded.tolerance.max_abs)
        assert report.ok and report.saved_matches_debug is True, impl
        check = check_onnx_file(ex.path, parse_trt_version("10.13"))
        assert not [f for f in check.findings if f.severity == "error"], impl


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_convert_embed_check_and_provenance(tmp_path):
    out = tmp_path / "ve.onnx"
    res = _run(["convert", "vit-tiny", "--merge", "embed:0.5", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and report["schedule"] == "embed:0.5"
    assert report["merge_layers"] == [-1] and report["selection_compared"] is True
    assert report["tokens_per_layer"] == [9, 9, 9, 9, 9]
    assert {r["backend"] for r in report["parity"]["results"]} == {"ort", "onnx-ref"}
    check = _run(["check", str(out), "--json"])
    assert check.exit_code == 0, check.output
    assert not [f for f in json.loads(check.stdout)["findings"] if f["severity"] == "error"]
    # validate/profile rebuild the torch model from the recorded provenance: same schedule
    rebuilt = Provenance.of_file(out).load()
    assert rebuilt.schedule == load_source("vit-tiny", schedule="embed:0.5").schedule


def test_cli_convert_tome_on_the_embeddings(tmp_path):
    out = tmp_path / "vt.onnx"
    res = _run(["convert", "vit-tiny", "--method", "tome", "--merge", "embed:0.5", "-o", str(out), "--json",
                "--no-reference"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and report["method"] == "tome"
    assert report["tokens_per_layer"] == [9, 9, 9, 9, 9]
    tol = load_source("vit-tiny").tolerance.max_abs
    assert all(o["max_abs"] <= tol for r in report["parity"]["results"] for o in r["outputs"])
    # another batch size than the declared ones
    loaded = load_source("vit-tiny", schedule="embed:0.5", method="tome")
    inputs = loaded.sample_inputs(batch=5, seed=3)
    got = OrtRunner(str(out)).run({"pixel_values": inputs[0].numpy()})
    np.testing.assert_allclose(got["logits"], loaded.run(*inputs)[0].numpy(), atol=tol, rtol=0)


# ---- Hugging Face adapters ---------------------------------------------------------------

hf_tiny = pytest.importorskip("hf_tiny")


@pytest.mark.parametrize("cls_name", ["BertModel", "ViTForImageClassification", "GPT2LMHeadModel"])
def test_hf_embed_merge_is_quickmerge_of_the_embeddings(cls_name):
    from qm_export import apply_quickmerge
    from qm_export.adapters.hf.patch import resolve_base
    from qm_export.adapters.hf.runner import recording

    model = hf_tiny.make(cls_name)
    inputs = hf_tiny.inputs_for(cls_name, **({} if cls_name.startswith("ViT") else {"lengths": [12, 9, 5]}))
    base, family = resolve_base(model)
    apply_quickmerge(model, "embed:0.5,1:0.5")
    with torch.no_grad(), recording(base.quickmerge, frozenset({-1})) as rec:
        out = model(**inputs, output_hidden_states=True)
    (layer, emb, mask, positions, _), = rec.inputs
    assert layer == -1 and [l for l, _ in rec.merges] == [-1, 1]
    cfg = base.quickmerge.plan.config_for(-1)
    assert cfg.protect == family.default_protect and cfg.per_row_keep
    _, info = quickmerge(emb, cfg, mask=mask, positions=positions)
    for key in ("assign", "seeds", "sizes", "mask"):
        assert torch.equal(rec.merges[0][1][key], info[key]), key
    n = emb.shape[1]
    assert out.hidden_states[0].shape[1] == n  # unmerged to every position
    # layer 0 ran on the merged tokens: its attention saw M = P + K tokens
    assert rec.merges[1][1]["assign"].shape[1] == info["mask"].shape[1]


def test_hf_vit_folder_converts_with_an_embed_merge(tmp_path):
    folder = tmp_path / "vit"
    hf_tiny.make("ViTForImageClassification").save_pretrained(folder)
    out = tmp_path / "vit.onnx"
    res = _run(["convert", str(folder), "--merge", "embed:0.5", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and report["merge_layers"] == [-1]
    assert report["tokens_per_layer"] == [9, 9, 9]  # class token + 8 of 16 patches
    assert {r["backend"] for r in report["parity"]["results"]} == {"ort", "onnx-ref"}
    assert all(len(r["layers"]) == 1 for r in report["parity"]["results"])

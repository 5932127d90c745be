"""The ToMe baseline as an exportable merge (``qm_export.merge.tome_export``) and ``--method tome``.

Unit level: one pass is ``bipartite_merge``; the token count is QuickMerge++'s at every ratio
the sweep uses; padding never reaches a real token; ``assign`` says where every token went;
the pass count is static and spare passes are no-ops, so an exported program equals eager.
Model level: the reference families and Hugging Face models merge with ToMe to QuickMerge++'s
token counts, and ``convert --method tome`` round-trips through ONNX Runtime with parity.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from merge_helpers import random_row_mask
from qm_export.backends.onnxruntime import OrtRunner
from qm_export.cli import main
from qm_export.export.convert import declared_shapes
from qm_export.merge import QuickMergeConfig, bipartite_merge, quickmerge, tome_merge, tome_passes, tome_tokens
from qm_export.merge.config import resolve_keep
from qm_export.merge.tome import _passes_for
from qm_export.models import build_model, load_source
from qm_export.models.export_view import size_oblivious
from qm_export.models.merging import TokenState, merge_tokens

SWEEP_RATIOS = (1.0, 0.75, 0.5, 0.33, 0.25)


def _inputs(seed: int, batch: int, n: int, dim: int = 6, *, pad: bool = False, protect: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dim, generator=gen)
    metric = torch.randn(batch, n, 4, generator=gen)
    sizes = torch.randint(1, 5, (batch, n), generator=gen).float()
    positions = torch.cumsum(torch.randint(1, 3, (batch, n), generator=gen), 1)
    mask = random_row_mask(gen, batch, n, protect) if pad else torch.ones(batch, n, dtype=torch.bool)
    return x, metric, sizes, positions, mask


# ---- one pass is ToMe -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), n=st.integers(3, 24), protect=st.sampled_from([0, 1]),
       frac=st.floats(0.0, 1.0))
def test_one_pass_equals_bipartite_merge(seed, batch, n, protect, frac):
    """Unpadded, removing at most half: the same tokens in the same order (ToMe's: the class
    token, kept A tokens — by index with a class token, by rank without — then B tokens)."""
    x, metric, sizes, _, _ = _inputs(seed, batch, n, protect=protect)
    n_merge = n - protect
    r = int(round(frac * (n_merge // 2)))
    cfg = QuickMergeConfig(keep=n_merge - r, protect=protect)
    out, info = tome_tokens(x, cfg, metric=metric, sizes=sizes)
    want, want_sizes = bipartite_merge(x, r, metric, sizes, class_token=protect == 1)
    assert info["passes"] == (1 if r else 0)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(info["sizes"], want_sizes, atol=1e-5, rtol=0)
    assert bool(info["mask"].all())


# ---- token counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("protect", [0, 1])
@pytest.mark.parametrize("n_merge", [15, 16, 49, 64])
@pytest.mark.parametrize("ratio", SWEEP_RATIOS)
def test_token_count_is_quickmerge_count(ratio, n_merge, protect):
    x, metric, _, _, _ = _inputs(n_merge, 2, n_merge + protect, protect=protect)
    cfg = QuickMergeConfig(keep_ratio=ratio, protect=protect)
    out, info = tome_tokens(x, cfg, metric=metric)
    qm_out, _ = quickmerge(x, cfg)
    assert out.shape == qm_out.shape == (2, protect + resolve_keep(n_merge, cfg), 6)
    assert bool(info["mask"].all()) and info["sizes"].sum(1).tolist() == [float(n_merge + protect)] * 2
    assert info["passes"] == tome_passes(n_merge, cfg) == _passes_for(n_merge, resolve_keep(n_merge, cfg))


def _brute_most_passes(cfg: QuickMergeConfig, upto: int = 5000) -> int:
    return max(_passes_for(n, min(n, resolve_keep(n, cfg))) for n in range(1, upto))


@pytest.mark.parametrize("ratio", [*SWEEP_RATIOS, 0.6667, 0.5774, 0.3, 0.2, 0.125, 0.1, 0.01])
def test_static_pass_count_is_the_most_any_length_needs(ratio):
    """Under a symbolic length the count comes from the ratio alone: enough for every length,
    and some length needs them all (0.5: 1, 0.33: 2, 0.25: 3 — N' = 4k + 1 needs the third)."""
    cfg = QuickMergeConfig(keep_ratio=ratio)

    class Sym:  # anything but an int takes the symbolic path
        pass

    assert tome_passes(Sym(), cfg) == _brute_most_passes(cfg)
    assert {r: tome_passes(Sym(), QuickMergeConfig(keep_ratio=r)) for r in (1.0, 0.75, 0.5, 0.33, 0.25)} == {
        1.0: 0, 0.75: 1, 0.5: 1, 0.33: 2, 0.25: 3}


# ---- padding, assign ------------------------------------------------------------------------


def _check_groups(x, sizes, positions, mask, out, info, protect):
    """Every merged token is exactly the size-weighted mean of the real tokens assigned to it."""
    assign = info["assign"]
    for b in range(x.shape[0]):
        for j in range(out.shape[1]):
            members = assign[b] == j
            assert bool(members.any()), "every merged token has a member"
            real = members & mask[b]
            if bool(real.any()):
                w = sizes[b, real]
                want = (x[b, real] * w[:, None]).sum(0) / w.sum()
                torch.testing.assert_close(out[b, j], want, atol=1e-5, rtol=1e-5)
                assert bool(info["mask"][b, j]) and float(info["sizes"][b, j]) == pytest.approx(float(w.sum()))
                assert int(info["positions"][b, j]) == int(positions[b, real].max())
            else:
                assert not bool(info["mask"][b, j]) and float(info["sizes"][b, j]) == 0.0
                assert bool((out[b, j] == 0).all())
        rep = info["representative"][b]
        assert torch.equal(assign[b, rep], torch.arange(protect, out.shape[1]))
        assert assign[b, :protect].tolist() == list(range(protect))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), n=st.integers(2, 30), protect=st.sampled_from([0, 1]),
       ratio=st.sampled_from(SWEEP_RATIOS + (0.6, 0.1)), pad=st.booleans())
def test_assign_maps_every_token_to_the_merged_token_holding_it(seed, batch, n, protect, ratio, pad):
    x, metric, sizes, positions, mask = _inputs(seed, batch, n, pad=pad, protect=protect)
    cfg = QuickMergeConfig(keep_ratio=ratio, protect=protect)
    out, info = tome_tokens(x, cfg, metric=metric, sizes=sizes, positions=positions, mask=mask)
    assert out.shape[1] == protect + resolve_keep(n - protect, cfg)
    _check_groups(x, sizes, positions, mask, out, info, protect)
    if not pad:  # unpadded: exactly N' - K real tokens removed
        assert bool(info["mask"].all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 3), n=st.integers(3, 30), protect=st.sampled_from([0, 1]),
       ratio=st.sampled_from(SWEEP_RATIOS))
def test_padding_never_changes_a_real_token(seed, batch, n, protect, ratio):
    """NaN in every padded value (tokens, metric, sizes) changes nothing, and a row does not
    depend on its batch partners."""
    x, metric, sizes, positions, mask = _inputs(seed, batch, n, pad=True, protect=protect)
    cfg = QuickMergeConfig(keep_ratio=ratio, protect=protect)
    out, info = tome_tokens(x, cfg, metric=metric, sizes=sizes, positions=positions, mask=mask)
    nan_x, nan_m, nan_s = x.clone(), metric.clone(), sizes.clone()
    nan_x[~mask], nan_m[~mask], nan_s[~mask] = float("nan"), float("nan"), float("nan")
    out2, info2 = tome_tokens(nan_x, cfg, metric=nan_m, sizes=nan_s, positions=positions, mask=mask)
    assert torch.equal(out, out2) and not bool(out2.isnan().any())
    for key in ("assign", "sizes", "positions", "mask"):
        assert torch.equal(info[key], info2[key]), key
    for b in range(batch):
        alone, info_b = tome_tokens(x[b:b + 1], cfg, metric=metric[b:b + 1], sizes=sizes[b:b + 1],
                                    positions=positions[b:b + 1], mask=mask[b:b + 1])
        torch.testing.assert_close(alone[0], out[b], atol=1e-6, rtol=1e-6)
        assert torch.equal(info_b["assign"][0], info["assign"][b])


@pytest.mark.parametrize("protect", [0, 1])
@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
@pytest.mark.parametrize("n_real", [3, 6, 9, 12])
@pytest.mark.parametrize("left", [False, True])
def test_padding_merges_away_first(protect, ratio, n_real, left):
    """Padded slots go before two real tokens merge: a row keeps min(K, real tokens) real
    tokens, as QuickMerge++ does; with K >= its real tokens every real token stays as it is."""
    n = 16 + protect
    x, metric, _, _, _ = _inputs(n_real, 1, n)
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, :protect] = True
    real = slice(n - n_real, n) if left else slice(protect, protect + n_real)
    mask[0, real] = True
    cfg = QuickMergeConfig(keep_ratio=ratio, protect=protect)
    out, info = tome_tokens(x, cfg, metric=metric, mask=mask)
    k = resolve_keep(16, cfg)
    assert out.shape[1] == protect + k
    assert int(info["mask"].sum()) == protect + min(k, n_real)
    if k >= n_real:
        groups = info["assign"][0, mask[0]]
        assert len(set(groups.tolist())) == n_real + protect  # no two real tokens share a group
        torch.testing.assert_close(out[0, groups], x[0, mask[0]])
        assert torch.equal(info["representative"][0][groups[protect:] - protect], mask[0].nonzero()[protect:, 0])


def test_tome_merge_updates_the_state_like_merge_tokens():
    x, metric, _, _, mask = _inputs(5, 2, 17, pad=True, protect=1)
    cfg = QuickMergeConfig(keep_ratio=0.75, protect=1)
    state = TokenState.initial(2, 17, x.device, mask=mask)
    h, state, _, _ = merge_tokens(x, state, cfg)  # an earlier merge: source is not the identity
    merged, new_state, info = tome_merge(h, state, QuickMergeConfig(keep_ratio=0.33, protect=1), metric[:, :h.shape[1]])
    assert torch.equal(new_state.source, torch.gather(info["assign"], 1, state.source))
    assert merged.shape[1] == new_state.sizes.shape[1] == 1 + resolve_keep(h.shape[1] - 1, QuickMergeConfig(keep_ratio=0.33))
    assert torch.equal(new_state.mask, info["mask"]) and torch.equal(new_state.sizes, info["sizes"])
    assert float(new_state.sizes.sum()) == float(mask.sum())  # every real original token counted once


def test_bad_configs_are_refused():
    x = torch.randn(1, 8, 4)
    with pytest.raises(ValueError, match="protect 0 or 1"):
        tome_tokens(x, QuickMergeConfig(protect=2))
    with pytest.raises(ValueError, match="token order"):
        tome_tokens(x, QuickMergeConfig(mode="causal"))
    with pytest.raises(ValueError, match="keep=9 exceeds"):
        tome_tokens(x, QuickMergeConfig(keep=9))
    with pytest.raises(ValueError, match="bounded token count"):
        class Unbounded:
            node = None
        tome_passes(Unbounded(), QuickMergeConfig(keep=4))


# ---- export: spare passes are no-ops --------------------------------------------------------


class _Tome(torch.nn.Module):
    def __init__(self, cfg: QuickMergeConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x, metric, mask):
        out, info = tome_tokens(x, self.cfg, metric=metric, mask=mask)
        return out, info["assign"], info["positions"], info["mask"]


@pytest.mark.parametrize("protect", [1])  # protect=0: test_convert_tome_other_shapes_match_torch (ONNX)
def test_exported_program_equals_eager_at_every_length(protect):
    """``keep_ratio=0.25`` under a dynamic length traces 3 passes; lengths needing 2 run a
    spare pass, which must leave tokens and order unchanged (eager runs exactly 2).

    torch's exported program keeps size-oblivious runtime asserts (no intermediate count of 1,
    as for QuickMerge++'s ``N' - K != 1``), so the lengths here keep every count >= 2; the ONNX
    file has no such asserts and runs the short lengths too (``test_convert_tome_*``)."""
    module = _Tome(QuickMergeConfig(keep_ratio=0.25, protect=protect))
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=4, max=40)
    example = _inputs(0, 2, 16, pad=True, protect=protect)
    args = (example[0], example[1], example[4])
    with size_oblivious():
        program = torch.export.export(module, args, dynamic_shapes=({0: batch, 1: seq},) * 3, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    exported = program.module()
    for n_merge in (13, 16, 17, 21, 24, 33, 39):  # N' = 4k + 1 needs all three passes
        n = n_merge + protect
        x, metric, _, _, mask = _inputs(n, 3, n, pad=True, protect=protect)
        want = module(x, metric, mask)
        got = exported(x, metric, mask)
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
        for g, w in zip(got[1:], want[1:]):
            assert torch.equal(g, w), n


def test_absolute_keep_takes_its_pass_count_from_the_length_bound():
    """``keep=4`` under a length of at most 13: 12 mergeable tokens need 2 passes (12 -> 6 -> 4)."""
    module = _Tome(QuickMergeConfig(keep=4))
    seq = torch.export.Dim("seq", min=4, max=12)
    x, metric, _, _, mask = _inputs(1, 2, 12, pad=True)
    with size_oblivious():
        program = torch.export.export(module, (x, metric, mask), dynamic_shapes=({1: seq},) * 3, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    exported = program.module()
    for n in (8, 10, 12):
        x, metric, _, _, mask = _inputs(n, 2, n, pad=True)
        want, got = module(x, metric, mask), exported(x, metric, mask)
        assert got[0].shape[1] == 4
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
        assert all(torch.equal(g, w) for g, w in zip(got[1:], want[1:]))


# ---- model families -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "encoder", "video"])
@pytest.mark.parametrize("schedule", ["1:0.5", "0:0.75,2:0.33", "1:0.25"])
def test_families_merge_to_quickmerge_token_counts(family, schedule):
    qm = build_model(family, "tiny", schedule)
    tome = build_model(family, "tiny", schedule, method="tome")
    assert tome.method == "tome" and qm.method == "quickmerge"
    gen = torch.Generator().manual_seed(0)
    shapes = {"vit": {"pixel_values": (2, 3, 32, 32)}, "video": {"pixel_values": (2, 3, 4, 32, 32)},
              "encoder": {"input_ids": (2, 19)}}[family]
    inputs = qm.example_inputs(shapes, gen)
    with torch.no_grad():
        a, b = qm(*inputs), tome(*inputs)
    assert a.tokens == b.tokens
    assert all("seeds" not in info and info["assign"].dtype == torch.int64 for info in b.merges)
    assert not any(torch.equal(x, y) for x, y in zip(a.outputs.values(), b.outputs.values()))
    twin = tome.with_schedule("1:0.5")
    assert twin.method == "tome"


def test_tome_is_refused_for_a_causal_family_and_with_a_prior():
    with pytest.raises(ValueError, match="ignores token order"):
        build_model("causal-lm", "tiny", "1:0.5", method="tome")
    with pytest.raises(ValueError, match="ignores token order"):
        load_source("causal-lm-tiny", method="tome")
    with pytest.raises(ValueError, match="no prior"):
        build_model("encoder", "tiny", "1:0.5", merge_options={"prior_weight": 0.3}, method="tome")
    with pytest.raises(ValueError, match="method must be one of"):
        load_source("vit-tiny", method="bipartite")
    with pytest.raises(ValueError, match="nothing to merge"):
        load_source("vit-tiny", method="tome", no_merge=True)


def test_loaded_tome_model_has_no_debug_outputs():
    loaded = load_source("encoder-tiny", method="tome", debug_outputs=True)
    assert loaded.output_names == ("last_hidden_state", "pooled")
    assert len(loaded.run(*loaded.example_inputs)) == 2


# ---- Hugging Face ---------------------------------------------------------------------------


def _hf(name: str):
    pytest.importorskip("transformers")
    from hf_tiny import make

    return make(name)


@pytest.mark.parametrize(("name", "schedule"), [("BertModel", {1: 0.5}), ("BertModel", {0: 0.7}), ("ViTModel", {1: 0.6})])
def test_batched_step_equals_per_row_tome_step_on_unpadded_rows(name, schedule):
    """The exportable step (``tome_impl="batched"``) and the eager per-row ``tome_step`` of the
    quality benchmark give the same model outputs on unpadded rows."""
    from hf_tiny import inputs_for

    from qm_export.adapters.hf import apply_quickmerge, remove_quickmerge

    model = _hf(name)
    inputs = inputs_for(name, batch=3, **({"n": 21} if name.startswith("Bert") else {}))
    outs = {}
    for impl in ("rows", "batched"):
        apply_quickmerge(model, schedule, method="tome", tome_impl=impl)
        with torch.no_grad():
            outs[impl] = model(**inputs).last_hidden_state
        remove_quickmerge(model)
    torch.testing.assert_close(outs["batched"], outs["rows"], atol=1e-5, rtol=1e-5)


def test_batched_step_equals_tome_step_token_for_token():
    from qm_export.adapters.hf.steps import tome_step

    for protect in (0, 1):
        x, metric, sizes, positions, _ = _inputs(11, 3, 23, protect=protect)
        state = TokenState(sizes, positions, torch.ones(3, 23, dtype=torch.bool),
                           torch.arange(23).unsqueeze(0).expand(3, 23))
        cfg = QuickMergeConfig(keep_ratio=0.55, protect=protect, per_row_keep=True)
        rows, rows_state = tome_step(x, state, cfg, metric)
        batched, batched_state, _ = tome_merge(x, state, cfg, metric)
        torch.testing.assert_close(batched, rows, atol=1e-6, rtol=1e-6)
        for key in ("sizes", "positions", "mask", "source"):
            assert torch.equal(getattr(batched_state, key), getattr(rows_state, key)), key


# ---- convert --method tome ------------------------------------------------------------------


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


#: (source, schedule, load options). Together: a model whose token count is fixed by its config
#: (vit-tiny, other batch sizes) and a Hugging Face text model of dynamic length at 0.25, where
#: ToMe traces 3 passes and shorter lengths run spare ones (the costliest ToMe trace, 16 s on 2
#: cores: one covers the HF adapter and the spare passes in ONNX Runtime). ToMe in the other
#: families is checked against QuickMerge++'s token counts in torch
#: (``test_families_merge_to_quickmerge_token_counts``).
ROUND_TRIPS = [("vit-tiny", None, {}), ("bert", "1:0.25", {"seq_len": 24})]


@pytest.fixture(scope="module", params=ROUND_TRIPS, ids=[r for r, _, _ in ROUND_TRIPS])
def tome_export(request, tmp_path_factory):
    """``(source, schedule, load options, exported file, convert's --json report)``."""
    source, schedule, load_kw = request.param
    folder = tmp_path_factory.mktemp(source)
    if source == "bert":
        source = str(folder / "bert")
        _hf("BertModel").save_pretrained(source)
    out = folder / "tome.onnx"
    res = _run(["convert", source, "--method", "tome", "-o", str(out), "--json", "--no-reference",
                *(["--merge", schedule] if schedule else []),
                *(["--seq-len", str(load_kw["seq_len"])] if "seq_len" in load_kw else [])])
    assert res.exit_code == 0, res.output
    return source, schedule, load_kw, out, json.loads(res.stdout)


def test_convert_tome_matches_torch_in_onnx_runtime(tome_export):
    source, schedule, load_kw, out, report = tome_export
    parity = report["parity"]
    assert parity["ok"] is True and report["method"] == "tome" and report["selection_compared"] is False
    loaded = load_source(source, schedule=schedule, method="tome", **load_kw)
    assert len(report["shapes_checked"]) == len(declared_shapes(loaded)) >= 2
    tol = loaded.tolerance.max_abs
    assert all(o["max_abs"] <= tol for r in parity["results"] for o in r["outputs"])
    assert all(not r["layers"] for r in parity["results"])  # no selection to compare
    qm = load_source(source, schedule=schedule, **load_kw)
    assert report["tokens_per_layer"] == qm.tokens_per_layer(*qm.example_inputs)


def test_convert_tome_file_has_the_method_and_no_debug_outputs(tome_export):
    source, schedule, load_kw, out, _ = tome_export
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["qm_export.method"] == "tome"
    outputs = load_source(source, schedule=schedule, method="tome", **load_kw).output_names
    assert [o.name for o in model.graph.output] == list(outputs)  # e.g. BERT's pooler_output, no merge.*
    assert {n.op_type for n in model.graph.node if n.domain == "qm"} >= {"TokenGroupIndex", "TokenMerge"}
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    assert not ops & {"TopK", "NonZero", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}


def test_convert_tome_other_shapes_match_torch(tome_export):
    """Shapes the declared ones skip: BERT (CLS protected) at lengths with N' = n - 1 = 4k + 1
    needs all three traced passes at 0.25, shorter ones run spare passes; vit: other batch sizes
    (its token count is fixed by the config)."""
    source, schedule, load_kw, out, _ = tome_export
    loaded = load_source(source, schedule=schedule, method="tome", **load_kw)  # the exported weights
    runner = OrtRunner(str(out))
    shapes = [(3, n) for n in (5, 6, 18, 22, 38)] if "seq_len" in load_kw else [(3, None), (5, None)]
    passes = set()
    for i, (batch, seq_len) in enumerate(shapes):
        inputs = loaded.sample_inputs(batch=batch, seq_len=seq_len, seed=10 + i)
        want = loaded.run(*inputs)
        got = runner.run({name: t.numpy() for name, t in zip(loaded.input_names, inputs)})
        for name, w in zip(loaded.output_names, want):
            np.testing.assert_allclose(got[name], w.numpy(), atol=loaded.tolerance.max_abs, rtol=0)
        if seq_len is not None:
            passes.add(tome_passes(seq_len - 1, QuickMergeConfig(keep_ratio=0.25)))
    if passes:  # the text lengths: some need all three traced passes, others leave spare ones
        assert max(passes) == 3 and min(passes) < 3, passes


@pytest.mark.parametrize(("args", "code", "message"), [
    (["causal-lm-tiny", "--method", "tome"], 2, "ignores token order"),
    (["vit-tiny", "--method", "tome", "--no-merge"], 2, "--no-merge exclude each other"),
    (["vit-tiny", "--method", "tome", "--debug-outputs"], 2, "no debug merge outputs"),
    (["vit-tiny", "--method", "bipartite"], 2, "Invalid value for '--method'"),
])
def test_convert_tome_cli_errors(tmp_path, args, code, message):
    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(main, ["convert", *args, "-o", str(out)])
    assert res.exit_code == code, res.output
    assert message in res.output
    assert not out.exists()


def test_convert_tome_with_prior_is_a_usage_error(tmp_path):
    prior = tmp_path / "p.safetensors"
    prior.write_bytes(b"not read")
    res = CliRunner().invoke(main, ["convert", "vit-tiny", "--method", "tome", "--prior", str(prior),
                                    "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "--prior exclude each other" in res.output

"""Reference families in eager mode: output contract, identity merges, padding, training, priors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qm_export.merge import QuickMergeConfig, resolve_keep
from qm_export.models import build_model, carry_history, parse_schedule
from qm_export.models.causal_lm import CausalLM
from qm_export.models.encoder import TextEncoder

TINY_INPUTS = {
    "vit": {"pixel_values": (2, 3, 32, 32)},
    "encoder": {"input_ids": (2, 16)},
    "causal-lm": {"input_ids": (2, 16)},
    "video": {"pixel_values": (2, 3, 4, 32, 32)},
}
FAMILIES = list(TINY_INPUTS)


def _inputs(model, family, seed=0):
    return model.example_inputs(TINY_INPUTS[family], torch.Generator().manual_seed(seed))


def _mergeable(family, n=16):
    """Mergeable tokens N' of the tiny example inputs (the class token is protected)."""
    return {"vit": 16, "video": 32}.get(family, n)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_contract(family):
    model = build_model(family, "tiny", "1:0.5")
    x = _inputs(model, family)
    with torch.no_grad():
        out = model(*x)
    batch = x[0].shape[0]
    cfg = model.config
    if family in ("vit", "video"):
        assert out["logits"].shape == (batch, cfg.num_classes)
        assert out["pooled"].shape == (batch, cfg.dim)
        n0 = _mergeable(family) + 1
        assert out.tokens == [n0, n0, 1 + _mergeable(family) // 2] + [1 + _mergeable(family) // 2] * (cfg.depth - 2)
    elif family == "encoder":
        assert out["last_hidden_state"].shape == (batch, 16, cfg.dim)
        assert out["pooled"].shape == (batch, cfg.dim)
        assert out.tokens == [16, 16, 8, 8]
    else:
        assert out["logits"].shape == (batch, cfg.vocab_size)
        # layers 0 and 1 attend over 16 tokens, layer 2 over the 8 merged ones
        assert [out[f"present.{i}.key"].shape[2] for i in range(3)] == [16, 16, 8]
        assert out["present.2.positions"].dtype == torch.int64
    assert all(v.is_floating_point() or v.dtype == torch.int64 for v in out.outputs.values())
    assert all(torch.isfinite(v.float()).all() for v in out.outputs.values())
    assert len(out.merges) == 1 and out.merges[0]["seeds"].shape[1] == _mergeable(family) // 2
    flat = model.flat_outputs(out)
    assert len(flat) == len(model.output_names())


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_everything_reproduces_the_unmerged_model(family):
    """A merge that keeps every token (the real merge path, K = N') is the identity."""
    base = build_model(family, "tiny")
    x = _inputs(base, family)
    keep_all = base.with_schedule({1: _mergeable(family)}, {"scales": 2})
    ratio_one = base.with_schedule("1:1.0")
    assert ratio_one.merge_layers == () and keep_all.merge_layers == (1,)
    with torch.no_grad():
        ref, merged, same = base(*x), keep_all(*x), ratio_one(*x)
    for name in base.output_names():
        torch.testing.assert_close(merged[name], ref[name], atol=2e-5, rtol=1e-5)
        assert torch.equal(same[name], ref[name])


@pytest.mark.parametrize("family", FAMILIES)
def test_no_merge_twin_has_the_same_weights(family):
    model = build_model(family, "tiny", "1:0.5", merge_options={"prior_weight": 0.5},
                        prior_config={"width": 16, "layers": 1, "heads": 2})
    twin = build_model(family, "tiny")  # built separately from the same seed
    own = {k: v for k, v in model.state_dict().items() if ".priors." not in k}
    assert own.keys() == twin.state_dict().keys()
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in own.items())
    assert any(".priors.1." in k for k in model.state_dict())


def _padded_text(ids, n, junk_seed):
    """``ids`` (1, L) right-padded to ``n`` with random junk ids, and its mask."""
    g = torch.Generator().manual_seed(junk_seed)
    length = ids.shape[1]
    pad = torch.randint(0, 1000, (1, n - length), generator=g)
    mask = torch.cat([torch.ones(1, length, dtype=torch.int64), torch.zeros(1, n - length, dtype=torch.int64)], 1)
    return torch.cat([ids, pad], 1), mask


@pytest.mark.parametrize("family", ["encoder", "causal-lm"])
def test_padding_content_and_batch_partners_do_not_matter(family):
    model = build_model(family, "tiny", "1:0.5")
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 1000, (1, 10), generator=g)
    b = torch.randint(0, 1000, (1, 16), generator=g)
    a1, m1 = _padded_text(a, 16, junk_seed=1)
    a2, m2 = _padded_text(a, 16, junk_seed=2)
    with torch.no_grad():
        alone = model(a1, m1)
        batched = model(torch.cat([a2, b]), torch.cat([m2, torch.ones_like(m2)]))
        b_alone = model(b, torch.ones_like(m2))
    if family == "encoder":
        torch.testing.assert_close(batched["last_hidden_state"][:1, :10], alone["last_hidden_state"][:, :10],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched["last_hidden_state"][1:], b_alone["last_hidden_state"], atol=1e-5, rtol=1e-5)
    names = ["pooled"] if family == "encoder" else ["logits"]
    for name in names:
        torch.testing.assert_close(batched[name][:1], alone[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[name][1:], b_alone[name], atol=1e-5, rtol=1e-5)
    assert torch.equal(batched.merges[0]["assign"][0, :10], alone.merges[0]["assign"][0, :10])


# The encoder's positions are absolute (0..N-1, as BERT's), so it is padded on the right only.
@pytest.mark.parametrize("family, side", [("encoder", "right"), ("causal-lm", "right"), ("causal-lm", "left")])
def test_padding_to_any_length_with_an_absolute_keep(family, side):
    """With ``keep`` an int, a row gives the same result unpadded and padded (K does not
    follow the padded length)."""
    model = build_model(family, "tiny", {1: 5})
    ids = torch.randint(0, 1000, (1, 11), generator=torch.Generator().manual_seed(4))
    padded, mask = _padded_text(ids, 20, junk_seed=5)
    if side == "left":
        padded, mask = padded.roll(9, 1), mask.roll(9, 1)
    with torch.no_grad():
        short = model(ids, torch.ones_like(ids))
        long = model(padded, mask)
    real = mask[0].bool()
    assert torch.equal(long.merges[0]["assign"][0, real], short.merges[0]["assign"][0])
    # same groups; the masses may differ in the last bits (softmax over longer rows, then
    # min-max normalisation magnifies that), hence 1e-4
    if family == "encoder":
        torch.testing.assert_close(long["last_hidden_state"][:, :11], short["last_hidden_state"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(long["pooled"], short["pooled"], atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(long["logits"], short["logits"], atol=1e-4, rtol=1e-4)


def test_encoder_pooled_is_the_masked_mean_of_the_unmerged_output():
    model = build_model("encoder", "tiny", "0:0.5,1:0.5")
    ids, mask = _inputs(model, "encoder", seed=7)
    assert not bool(mask.all())  # the example pads its last row
    with torch.no_grad():
        out = model(ids, mask)
    w = mask.unsqueeze(-1).float()
    expected = (out["last_hidden_state"] * w).sum(1) / w.sum(1)
    torch.testing.assert_close(out["pooled"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_mode_gumbel_selection_is_reproducible(family):
    model = build_model(family, "tiny", "1:0.5").train()
    x = _inputs(model, family)
    runs = [model(*x, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2, 3, 4)]
    first = model.output_names()[0]
    assert torch.equal(runs[0][first], runs[1][first])
    assert torch.equal(runs[0].merges[0]["seeds"], runs[1].merges[0]["seeds"])
    with torch.no_grad():
        det = model.eval()(*x).merges[0]["seeds"]
    assert any(not torch.equal(r.merges[0]["seeds"], det) for r in runs[2:]), "Gumbel noise never changed a seed"
    runs[0][first].float().square().mean().backward()
    grad = model.stack.blocks[0].attn.qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("saliency", ["attention", "self"])
def test_multiscale_saliency_over_consecutive_merges(saliency):
    model = build_model("vit", "tiny", "1:0.75,2:0.75,3:0.75", merge_options={"saliency": saliency, "scales": 3})
    x = _inputs(model, "vit")
    with torch.no_grad():
        out = model(*x)
    assert out.tokens == [17, 17, 13, 10, 8]  # K = round(0.75 N'): 16 -> 12 -> 9 -> 7
    single = model.with_schedule("1:0.75,2:0.75,3:0.75", {"saliency": saliency, "scales": 1})
    with torch.no_grad():
        other = single(*x)
    # layer 1 has layer 0 as a second scale: its saliency, and so (here) its seeds, differ
    assert not torch.equal(out.merges[0]["saliency"], other.merges[0]["saliency"])


def test_carry_history_keeps_attention_rows_distributions():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 9, 9), -1)
    info = {"assign": torch.tensor([[0, 1, 1, 2, 2, 2, 3, 3, 1]] * 2), "seeds": torch.tensor([[2, 5, 6]] * 2)}
    carried = carry_history([probs], "attention", info, protect=1)[0]
    assert carried.shape == (2, 4, 4)
    torch.testing.assert_close(carried.sum(-1), torch.ones(2, 4))
    # merged key 1 = keys 1, 2 and 8 of row "seed 2"
    torch.testing.assert_close(carried[:, 1, 1], probs[:, 2, [1, 2, 8]].sum(-1))


def test_prior_guided_merge_calls_the_prior_once_per_merge_layer():
    model = build_model("encoder", "tiny", "0:0.75,1:0.5", merge_options={"prior_weight": 0.5},
                        prior_config={"width": 16, "layers": 1, "heads": 2})
    calls = []
    for prior in model.stack.priors.values():
        prior.register_forward_hook(lambda *a: calls.append(1))
    ids, mask = _inputs(model, "encoder")
    with torch.no_grad():
        guided = model(ids, mask)
        plain = model.with_schedule("0:0.75,1:0.5")(ids, mask)
    assert len(calls) == 2
    assert not torch.equal(guided.merges[0]["saliency"], plain.merges[0]["saliency"])


def test_models_reject_bad_inputs():
    enc = build_model("encoder", "tiny", "1:0.5")
    with pytest.raises(TypeError, match="input_ids"):
        enc(torch.randn(2, 8))
    with pytest.raises(ValueError, match="max_positions"):
        enc(torch.zeros(1, 65, dtype=torch.int64))
    with pytest.raises(ValueError, match="no real token"):
        enc(torch.zeros(2, 8, dtype=torch.int64), torch.tensor([[1] * 8, [0] * 8]))
    vit = build_model("vit", "tiny")
    with pytest.raises(ValueError, match="pixel_values"):
        vit(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="keep=40 exceeds"):
        build_model("encoder", "tiny", {1: 40})(torch.zeros(1, 16, dtype=torch.int64))


@pytest.mark.parametrize("spec, error, match", [
    ("5:0.5", ValueError, "layer 5"),
    ("1:1.5", ValueError, r"\(0, 1\]"),
    ("1:0", ValueError, ">= 1"),
    ({1: -3}, ValueError, ">= 1"),
    ("1:abc", ValueError, "keep ratio"),
    ([0.5, "x"], ValueError, "keep ratio"),
    ("1:0.5,1:0.7", ValueError, "twice"),
])
def test_bad_schedules_raise_clear_errors(spec, error, match):
    with pytest.raises(error, match=match):
        build_model("vit", "tiny", spec)


def test_family_fixes_protect_and_mode():
    with pytest.raises(ValueError, match="fixed by family"):
        build_model("causal-lm", "tiny", "1:0.5", merge_options={"mode": "global"})
    with pytest.raises(ValueError, match="protect=1"):
        build_model("vit", "tiny", parse_schedule("1:0.5"))
    assert isinstance(build_model("causal-lm", "tiny"), CausalLM)
    assert isinstance(build_model("encoder", "tiny"), TextEncoder)
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown size"):
        build_model("vit", "huge")


def test_vit_mean_pool_is_the_size_weighted_mean():
    base = build_model("vit", {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 4, "heads": 4,
                               "num_classes": 10, "pool": "mean"})
    x = _inputs(base, "vit")
    keep_all = base.with_schedule({1: 16})
    merged = base.with_schedule("1:0.5")
    with torch.no_grad():
        ref, same, out = base(*x), keep_all(*x), merged(*x)
    torch.testing.assert_close(same["pooled"], ref["pooled"], atol=2e-5, rtol=1e-5)
    # merged: the 8 merged patch tokens stand for all 16 patches (sizes sum to 16)
    assert torch.equal(out.merges[0]["sizes"][:, 1:].sum(1), torch.full((2,), 16.0))
    assert not torch.allclose(out["pooled"], ref["pooled"])


@settings(max_examples=8, deadline=None)
@given(
    ratios=st.lists(st.sampled_from([1.0, 0.9, 0.75, 0.5, 0.3]), min_size=3, max_size=3),
    n=st.integers(6, 24),
    real=st.integers(1, 24),
)
def test_encoder_properties_over_schedules_and_padding(ratios, n, real):
    """Token counts follow the spec's K rule; pooled is the masked mean of the unmerged output."""
    model = build_model("encoder", "tiny", ratios)
    ids = torch.randint(0, 1000, (2, n), generator=torch.Generator().manual_seed(n))
    mask = torch.ones(2, n, dtype=torch.int64)
    mask[1, min(real, n):] = 0
    with torch.no_grad():
        out = model(ids, mask)
    expected = [n]
    for r in ratios:
        count = expected[-1] if r == 1.0 else resolve_keep(expected[-1], QuickMergeConfig(keep_ratio=r))
        expected.append(count)
    assert out.tokens == [n] + expected[1:]
    w = mask.unsqueeze(-1).float()
    torch.testing.assert_close(out["pooled"], (out["last_hidden_state"] * w).sum(1) / w.sum(1), atol=1e-5, rtol=1e-5)
    assert bool((out["last_hidden_state"][1, min(real, n):] == 0).all())

"""QuickMerge++ inside tiny random Hugging Face models: outputs, exactness, padding, identity."""

from __future__ import annotations

import pytest
import torch

from hf_tiny import inputs_for, make, text_inputs

from qm_export.adapters.hf import apply_quickmerge, is_patched, remove_quickmerge
from qm_export.adapters.hf.runner import Recorder

CLASSES = ["BertModel", "BertForSequenceClassification", "BertForMaskedLM", "ViTModel",
           "ViTForImageClassification", "GPT2Model", "GPT2LMHeadModel"]


def _tensors(out):
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("cls_name", CLASSES)
def test_output_types_and_shapes(cls_name):
    model = make(cls_name)
    inputs = inputs_for(cls_name)
    with torch.no_grad():
        ref = model(**inputs)
        apply_quickmerge(model, {0: 0.5, 1: 0.7})
        out = model(**inputs)
    assert type(out) is type(ref)
    ref_t, out_t = _tensors(ref), _tensors(out)
    assert ref_t.keys() == out_t.keys()
    for key in ref_t:
        assert out_t[key].shape == ref_t[key].shape, key
        assert torch.isfinite(out_t[key]).all()
    # merging did change something (the test would pass on a no-op patch otherwise)
    assert any(not torch.allclose(ref_t[k], out_t[k]) for k in ref_t)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_keeping_every_token_reproduces_the_model(cls_name):
    model = make(cls_name)
    inputs = inputs_for(cls_name)
    n = 17 if cls_name.startswith("ViT") else 12
    protect = 0 if cls_name.startswith("GPT2") else 1
    with torch.no_grad():
        ref = _tensors(model(**inputs))
        apply_quickmerge(model, {0: n - protect, 1: 1.0})  # keep every token: an identity merge
        out = _tensors(model(**inputs))
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["quickmerge", "tome"])
def test_bert_padding_does_not_change_a_row(method):
    model = make("BertModel")
    lengths = [12, 9, 5]
    batch = text_inputs(3, 12, lengths=lengths)
    apply_quickmerge(model, {0: 0.5, 1: 0.7}, method=method)
    with torch.no_grad():
        out = model(**batch)
        for b, n in enumerate(lengths):
            alone = model(input_ids=batch["input_ids"][b : b + 1, :n], attention_mask=batch["attention_mask"][b : b + 1, :n])
            torch.testing.assert_close(out.last_hidden_state[b, :n], alone.last_hidden_state[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.pooler_output[b], alone.pooler_output[0], atol=1e-4, rtol=1e-4)


def test_padding_values_never_reach_real_tokens():
    model = make("BertModel")
    batch = text_inputs(2, 12, lengths=[12, 7])
    apply_quickmerge(model, {0: 0.5, 1: 0.6})
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][1, 7:] = torch.arange(5) + 50
    with torch.no_grad():
        a, b = model(**batch).last_hidden_state, model(**other).last_hidden_state
    assert torch.equal(a[:, :7], b[:, :7]) and torch.equal(a[0], b[0])


def test_gpt2_right_padding_and_context_independence():
    model = make("GPT2LMHeadModel")
    apply_quickmerge(model, {0: 0.5, 1: 0.6})
    batch = text_inputs(2, 12, lengths=[12, 8])
    with torch.no_grad():
        out = model(**batch).logits
        alone = model(input_ids=batch["input_ids"][1:, :8]).logits
        torch.testing.assert_close(out[1, :8], alone[0], atol=2e-5, rtol=1e-5)
        # a context of 8 tokens: its logits (the next-token logits at position 7 included) do
        # not depend on the tokens after it, whatever they are
        ids = batch["input_ids"][:1]
        changed = ids.clone()
        changed[0, 8:] = (changed[0, 8:] + 17) % 100
        a = model(input_ids=ids, context_length=8).logits
        b = model(input_ids=changed, context_length=8).logits
        ctx_only = model(input_ids=ids[:, :8]).logits
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    torch.testing.assert_close(a[0, 7], ctx_only[0, 7], atol=2e-5, rtol=1e-5)


def test_gpt2_merged_tokens_never_see_the_future():
    model = make("GPT2Model")
    apply_quickmerge(model, {0: 0.5})
    patch = model.quickmerge
    patch.recorder = Recorder()
    with torch.no_grad():
        model(**text_inputs(2, 12))
    (_, info), = patch.recorder.merges
    assign, seeds = info["assign"], info["seeds"]
    idx = torch.arange(12).expand(2, 12)
    seed_of_token = torch.gather(seeds, 1, assign)  # index of each token's seed
    assert (seed_of_token >= idx).all()  # causal: a token joins a seed at or after it
    assert (seeds[:, -1] == 11).all()  # the last token is always a seed


def test_unpatched_model_is_bit_identical_and_instances_independent():
    a, b = make("BertModel", seed=3), make("BertModel", seed=3)
    inputs = text_inputs(2, 12, lengths=[12, 6])
    with torch.no_grad():
        ref = a(**inputs).last_hidden_state
        apply_quickmerge(b, {0: 0.5})
        assert "forward" not in vars(a) and not is_patched(a)
        assert torch.equal(a(**inputs).last_hidden_state, ref)  # the other instance is untouched
        merged = b(**inputs).last_hidden_state
        assert not torch.equal(merged, ref)
        remove_quickmerge(b)
        assert torch.equal(b(**inputs).last_hidden_state, ref)
    assert "forward" not in vars(b) and not hasattr(b, "quickmerge")


def test_patch_shares_every_weight():
    model = make("GPT2LMHeadModel")
    before = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    apply_quickmerge(model, {1: 0.5})
    after = dict(model.named_parameters())
    for name, (param, ptr) in before.items():
        assert after[name] is param and param.data_ptr() == ptr
    assert set(after) == set(before)  # no prior: nothing added


def test_eval_is_deterministic_and_train_draws_gumbel():
    model = make("BertModel")
    inputs = text_inputs(2, 12)

    def seeds_of(gen_seed=None):
        model.quickmerge.generator = None if gen_seed is None else torch.Generator().manual_seed(gen_seed)
        model.quickmerge.recorder = Recorder()
        with torch.no_grad():
            model(**inputs)
        return model.quickmerge.recorder.merges[0][1]["seeds"]

    apply_quickmerge(model, {0: 0.5})
    assert torch.equal(seeds_of(), seeds_of())
    model.train()
    draws = [seeds_of(s) for s in range(6)]
    assert torch.equal(seeds_of(1), draws[1])  # a generator makes training reproducible
    assert any(not torch.equal(d, draws[0]) for d in draws[1:])


@pytest.mark.parametrize("cls_name", ["BertModel", "ViTModel", "GPT2Model"])
def test_hidden_states_follow_the_model(cls_name):
    model = make(cls_name)
    inputs = inputs_for(cls_name)
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True).hidden_states
        apply_quickmerge(model, [1.0, 1.0])  # patched, nothing merges
        out = model(**inputs, output_hidden_states=True).hidden_states
    assert len(out) == len(ref)
    for a, b in zip(out[:-1], ref[:-1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

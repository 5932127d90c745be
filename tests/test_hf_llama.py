"""The Llama family of the Hugging Face adapter (RoPE, RMSNorm, SwiGLU, grouped-query attention).

A patch whose schedule merges nothing must reproduce ``transformers``' own logits (the layer
split, RoPE and GQA re-implemented right); a merge places each merged token at its group's
largest position and the later layers' cache keys are rotated there; layouts the family does
not cover are refused.
"""

from __future__ import annotations

import pytest
import torch

from qm_export.adapters.hf import apply_quickmerge, is_patched, remove_quickmerge
from qm_export.adapters.hf.generation import HFGeneration
from qm_export.adapters.hf.runner import recording

transformers = pytest.importorskip("transformers")

VOCAB = 100


def llama(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = dict(num_hidden_layers=3, hidden_size=48, intermediate_size=96, num_attention_heads=6,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    config.update(kw)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()


def ids(batch: int = 2, n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}])
def test_no_merge_patch_equals_transformers(rope):
    """A schedule of no merges: every logit as the unpatched model (also a scaled RoPE, which
    the adapter takes from the model's own rotary embedding)."""
    model = llama(**({"rope_parameters": rope} if rope else {}))
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
        apply_quickmerge(model, [1.0, 1.0, 1.0])
        assert is_patched(model)
        out = model(x).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    remove_quickmerge(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref, atol=0, rtol=0)


def test_base_model_is_patched_too():
    model = llama()
    x = ids()
    with torch.no_grad():
        ref = model.model(x).last_hidden_state
        apply_quickmerge(model.model, "1:0.5")
        out = model.model(x).last_hidden_state
    assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-3)


def test_merged_token_takes_its_groups_largest_position():
    """The cache of the layers after a merge holds each merged token at the largest position
    of its members (the recorded assignment), and its key is RoPE-rotated there: the cached
    key equals the layer's key projection of a token at that position."""
    model = llama(seed=3)
    apply_quickmerge(model, "0:0.4")
    gen = HFGeneration(model)
    x = ids(seed=4)
    mask = torch.ones_like(x)
    with torch.no_grad(), recording(model.model.quickmerge) as rec:
        _, cache = gen.prefill(x, mask)
    (layer, info), = rec.merges
    assert layer == 0
    assign = info["assign"]  # (B, N): merged index of every prompt token
    positions = torch.arange(x.shape[1]).expand_as(assign)
    expected = torch.full((2, assign.max() + 1), -1).scatter_reduce(1, assign, positions, "amax")
    assert torch.equal(cache[1].positions, expected)
    assert not torch.equal(expected, torch.arange(expected.shape[1]).expand_as(expected))  # not trivially 0..K-1
    # the cached keys are layer 1's key projection of its (merged) input, rotated at those
    # positions (by transformers' own apply_rotary_pos_emb), not at 0..K-1
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    seen = []
    sa = model.model.layers[1].self_attn
    handle = sa.k_proj.register_forward_hook(lambda mod, args, out: seen.append(out))
    with torch.no_grad():
        gen.prefill(x, mask)
    handle.remove()
    k = seen[0].view(2, -1, 2, sa.head_dim).transpose(1, 2)
    for pos, close in ((expected, True), (torch.arange(expected.shape[1]).expand_as(expected), False)):
        cos, sin = model.model.rotary_emb(k, pos)
        _, rotated = apply_rotary_pos_emb(k, k, cos, sin)
        assert torch.allclose(rotated, cache[1].key, atol=1e-5) == close
    assert sa.num_key_value_groups == 3 and cache[1].key.shape[1] == 2


def test_context_length_merges_only_the_prompt():
    model = llama(seed=5)
    x = ids(n=24, seed=6)
    with torch.no_grad():
        ref = model(x).logits
        apply_quickmerge(model, "0:0.5", context_length=16)
        out = model(x).logits
    assert not torch.allclose(out[:, 16:], ref[:, 16:], atol=1e-3)  # the continuation sees the merged prompt
    with pytest.raises(ValueError, match="context_length"):
        model(x, context_length=99)


def test_refusals():
    with pytest.raises(ValueError, match="rope type 'dynamic'"):
        apply_quickmerge(llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}), "0:0.5")
    model = llama()
    del model.model.layers[0].self_attn.o_proj
    with pytest.raises(ValueError, match="unsupported module layout"):
        apply_quickmerge(model, "0:0.5")
    with pytest.raises(ValueError, match="causal"):
        apply_quickmerge(llama(), "0:0.5", mode="global")
    model = llama()
    apply_quickmerge(model, "0:0.5")
    with pytest.raises(ValueError, match="use_cache"):
        model(ids(), use_cache=True)

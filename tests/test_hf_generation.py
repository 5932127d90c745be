"""``HFGeneration``: prefill + decode over the merged cache for Hugging Face GPT-2 and Llama.

Unmerged, it is checked against the unpatched ``transformers`` model itself (the logits of the
next token after the prompt, then after each appended token; a left-padded row against the
same row alone). Merged, against a full patched forward over prompt + continuation that
merges only the prompt (``context_length``): the same merge, so the decode over the merged
cache must give the continuation's logits. Tiny random configs, fp32.
"""

from __future__ import annotations

import pytest
import torch

from qm_export.adapters.hf import apply_quickmerge, remove_quickmerge
from qm_export.adapters.hf.generation import HFGeneration
from qm_export.generation.contract import GenerationModel, first_positions

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 100


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config).eval()


def prompt(batch: int = 3, n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ids ``(batch, n)``; row ``b`` has ``2 b`` tokens of left padding."""
    ids = torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for b in range(batch):
        mask[b, : 2 * b] = 0
        ids[b, : 2 * b] = 0
    return ids, mask


def greedy(gen: HFGeneration, ids: torch.Tensor, mask: torch.Tensor, steps: int):
    """The logits of every step (prefill first) and the greedy tokens fed back."""
    with torch.no_grad():
        logits, cache = gen.prefill(ids, mask)
        out, tokens = [logits], []
        pos = first_positions(mask)
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
            logits, cache = gen.decode(nxt, pos, cache)
            out.append(logits)
            pos = pos + 1
    return out, torch.cat(tokens, 1) if tokens else ids[:, :0], cache


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_unmerged_equals_transformers(kind):
    model = tiny(kind)
    gen = HFGeneration(model)
    assert isinstance(gen, GenerationModel)
    ids, mask = prompt()
    steps = 4
    logits, tokens, cache = greedy(gen, ids, mask, steps)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            row = ids[b, mask[b].bool()][None]  # the row without its padding
            full = model(torch.cat([row, tokens[b : b + 1]], 1)).logits[0]
            n = row.shape[1]
            for step in range(steps + 1):
                torch.testing.assert_close(logits[step][b], full[n - 1 + step], atol=TOL, rtol=TOL)
    # the cache: every prompt token (padding included, at size 0) plus the decoded ones
    assert all(c.key.shape[2] == ids.shape[1] + steps for c in cache)
    assert torch.equal(cache[0].sizes[:, : ids.shape[1]], mask.float())
    assert cache[0].key.shape[1] == gen.spec.kv_heads


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("schedule", ["0:0.5", "embed:0.5,0:0.7", "0:0.34"])
@pytest.mark.parametrize("method", ["quickmerge", "tome"])
def test_merged_equals_full_patched_forward(kind, schedule, method):
    """The prompt merged in prefill, then decoded: the logits a full patched forward gives
    when it merges only the prompt (context_length) and runs the continuation unmerged."""
    model = tiny(kind, seed=2)
    apply_quickmerge(model, schedule, method=method)
    gen = HFGeneration(model)
    ids, mask = prompt(batch=2, n=16, seed=3)
    mask[:] = 1  # the patched forward positions tokens 0..N-1 (no left padding)
    steps = 3
    logits, tokens, cache = greedy(gen, ids, mask, steps)
    n = ids.shape[1]
    with torch.no_grad():
        full = model(torch.cat([ids, tokens], 1), context_length=n).logits
    for step in range(steps + 1):
        torch.testing.assert_close(logits[step], full[:, n - 1 + step], atol=TOL, rtol=TOL)
    merged_len = cache[-1].key.shape[2] - steps
    assert merged_len < n  # the prompt's cache is merged
    # every prompt token is in exactly one cached token; a merged token sits at its group's
    # largest position, so cached positions never exceed the prompt's last one
    assert torch.equal(cache[-1].sizes[:, :merged_len].sum(1), torch.full((2,), float(n)))
    assert int(cache[-1].positions[:, :merged_len].max()) == n - 1


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_merged_left_padding_equals_row_alone(kind):
    """Padding never reaches a real token: a left-padded row decodes as the row alone (the
    per-row keep makes the merge of a padded row the one it gets unpadded)."""
    model = tiny(kind, seed=4)
    apply_quickmerge(model, "embed:0.5,1:0.6")
    gen = HFGeneration(model)
    ids, mask = prompt(batch=3, n=14, seed=5)
    logits, tokens, _ = greedy(gen, ids, mask, 2)
    for b in range(1, 3):
        row = ids[b, mask[b].bool()][None]
        alone, alone_tokens, _ = greedy(gen, row, torch.ones_like(row), 2)
        assert torch.equal(alone_tokens[0], tokens[b])
        for step in range(3):
            torch.testing.assert_close(logits[step][b], alone[step][0], atol=TOL, rtol=TOL)


def test_merge_changes_the_logits_and_removal_restores_them():
    """Not vacuous: a merged prompt gives other logits; remove_quickmerge brings the baseline back."""
    model = tiny("llama", seed=6)
    gen = HFGeneration(model)
    ids, mask = prompt(batch=1, n=16, seed=7)
    base, _, _ = greedy(gen, ids, mask, 1)
    apply_quickmerge(model, "0:0.25")
    merged, _, cache = greedy(gen, ids, mask, 1)
    assert float((merged[0] - base[0]).abs().max()) > 1e-3
    assert cache[1].key.shape[2] == 4 + 1
    remove_quickmerge(model)
    again, _, _ = greedy(gen, ids, mask, 1)
    torch.testing.assert_close(again[0], base[0], atol=0, rtol=0)


def test_spec_and_refusals():
    llama = tiny("llama")
    spec = HFGeneration(llama, eos_token_id=7).spec
    assert (spec.depth, spec.kv_heads, spec.head_dim, spec.vocab_size, spec.max_positions) == (2, 2, 8, VOCAB, 128)
    assert spec.eos_token_id == 7 and spec.dtype == torch.float32
    gpt2 = tiny("gpt2")
    assert HFGeneration(gpt2).spec.kv_heads == 4
    with pytest.raises(TypeError, match="causal LM with its head"):
        HFGeneration(gpt2.transformer)
    bert = transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB))
    with pytest.raises(TypeError, match="causal LM"):
        HFGeneration(bert)


@pytest.mark.parametrize("method", ["quickmerge", "tome"])
def test_recent_window_stays_unmerged(method):
    """``recent=W``: the last W prompt tokens are cached as they are (size 1, own position);
    the logits are the patched forward's with ``context_length = N - W``."""
    model = tiny("llama", seed=8)
    apply_quickmerge(model, "embed:0.5,0:0.5", method=method)
    ids, mask = prompt(batch=2, n=20, seed=9)
    mask[:] = 1
    gen = HFGeneration(model, recent=6)
    logits, _, cache = greedy(gen, ids, mask, 0)
    with torch.no_grad():
        full = model(ids, context_length=14).logits[:, -1]
    torch.testing.assert_close(logits[0], full, atol=TOL, rtol=TOL)
    for c in cache:
        assert torch.equal(c.positions[:, -6:], torch.arange(14, 20).expand(2, 6))
        assert torch.equal(c.sizes[:, -6:], torch.ones(2, 6))
    assert cache[1].key.shape[2] == 4 + 6  # 14 -> 7 (embed) -> 4 (layer 0), then the window
    with pytest.raises(ValueError, match="recent"):
        HFGeneration(model, recent=-1)


def test_benchmark_perplexity_is_teacher_forced_cross_entropy():
    """scripts/bench_llm_quality.py's perplexity (prefill, then the continuation decoded over
    the cache) is exp(mean cross-entropy) of the continuation under the plain forward."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_llm_quality import perplexity

    model = tiny("llama", seed=10)
    batch = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(11))
    ppl, rows, kept = perplexity(HFGeneration(model), batch, 12, rows=2)
    with torch.no_grad():
        logits = model(batch).logits[:, 11:-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 12:].reshape(-1), reduction="none")
    assert abs(ppl - float(ce.mean().exp())) < 1e-3 * ppl
    assert len(rows) == 3 and kept == 12

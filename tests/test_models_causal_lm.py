"""The causal LM: merged prefill never sees the future; the merged KV cache decodes correctly."""

from __future__ import annotations

import pytest
import torch

from causal_checks import assert_never_attends_later, token_ids
from qm_export.models import build_model


_ids = token_ids


def test_merged_prefill_never_attends_to_a_later_position():
    model = build_model("causal-lm", "tiny", "0:0.75,1:0.5")
    ids = _ids(16, 0, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    with torch.no_grad():
        out = model(ids, mask, output_attentions=True)
    assert out.tokens == [16, 12, 6, 6]
    assert_never_attends_later(out.attentions)
    # every merged group sits at (and is named after) its last real member's position
    for info in out.merges:
        assert bool((info["seeds"] >= 0).all())
    info = out.merges[0]
    members = info["assign"]  # (B, 16) -> merged index
    for b in range(2):
        for j in range(members.max() + 1):
            group = (members[b] == j) & mask[b].bool()
            if group.any():
                assert int(info["positions"][b, j]) == int(group.nonzero().max())


@pytest.mark.parametrize("schedule", ["1:0.5", {1: 5}])
def test_next_token_after_a_merged_context_ignores_what_follows_the_context(schedule):
    """Tokens after the context (masked out: the rest of a padded batch row) change nothing:
    neither the prefill's next-token logits nor the generate_step logits after it."""
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
    if isinstance(schedule, dict):  # K does not follow the padded length: same as unpadded
        with torch.no_grad():
            alone = model(context, torch.ones_like(context))
            step, _ = model.generate_step(torch.tensor([7]), alone.cache)
        torch.testing.assert_close(alone["logits"], results[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step, results[0][1], atol=1e-4, rtol=1e-4)


def test_generate_step_matches_a_longer_prefill_without_merges():
    model = build_model("causal-lm", "tiny")
    ids = _ids(12, 4, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # row 1: 8 real tokens, right-padded
    nxt = torch.tensor([11, 12])
    with torch.no_grad():
        out = model(ids, mask)
        logits, cache = model.generate_step(nxt, out.cache)
        logits2, cache2 = model.generate_step(torch.tensor([5, 6]), cache)
        full0 = model(torch.cat([ids[:1], nxt[:1, None], torch.tensor([[5]])], 1))
        row1 = torch.cat([ids[1:, :8], nxt[1:, None]], 1)
        full1 = model(row1)
    torch.testing.assert_close(logits[1], full1["logits"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits2[0], full0["logits"][0], atol=1e-5, rtol=1e-5)
    assert cache2.next_position.tolist() == [14, 10]
    assert cache2.layers[0].key.shape[2] == 14


def test_merged_cache_has_merged_length_and_decodes():
    model = build_model("causal-lm", "tiny", "1:0.5")
    ids = _ids(16, 5, batch=2)
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids))
        logits, cache = model.generate_step(torch.tensor([1, 2]), out.cache)
    lengths = [c.key.shape[2] for c in out.cache.layers]
    assert lengths == [16, 16, 8]  # layer 1 attends before its merge; layer 2 after
    assert [c.key.shape[2] for c in cache.layers] == [17, 17, 9]
    assert out.cache.next_position.tolist() == [16, 16]
    # each merged cache entry sits at its group's last position; they increase along the cache
    pos = out.cache.layers[2].positions
    assert bool((pos[:, 1:] > pos[:, :-1]).all()) and bool((pos[:, -1] == 15).all())
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_generate_step_rejects_bad_tokens():
    model = build_model("causal-lm", "tiny", "1:0.5")
    ids = _ids(8, 6)
    with torch.no_grad():
        out = model(ids)
    with pytest.raises(ValueError, match="next_token"):
        model.generate_step(torch.tensor([[1, 2]]), out.cache)
    with pytest.raises(ValueError, match="next_token"):
        model.generate_step(torch.tensor([1.0]), out.cache)

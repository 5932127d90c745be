"""Tiny random Hugging Face models for the adapter tests (seeded, dropout off)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 100


def bert_config(**kw):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertConfig(**{**base, **kw})


def vit_config(**kw):
    base = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5)
    return transformers.ViTConfig(**{**base, **kw})


def gpt2_config(**kw):
    base = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)
    return transformers.GPT2Config(**{**base, **kw})


def make(cls_name: str, seed: int = 0, **kw):
    """A seeded model of ``transformers.<cls_name>`` in eval mode."""
    config = {"Bert": bert_config, "ViT": vit_config, "GPT2": gpt2_config}[
        next(p for p in ("Bert", "ViT", "GPT2") if cls_name.startswith(p))
    ](**kw)
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


def text_inputs(batch: int = 3, n: int = 12, seed: int = 0, lengths=None):
    """``input_ids`` and a right-padded ``attention_mask`` (row ``b`` has ``lengths[b]`` tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, n), generator=gen)
    mask = torch.ones(batch, n, dtype=torch.long)
    for b, length in enumerate(lengths or []):
        mask[b, length:] = 0
        ids[b, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def image_inputs(batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=gen)}


def inputs_for(cls_name: str, **kw):
    return image_inputs(**kw) if cls_name.startswith("ViT") else text_inputs(**kw)

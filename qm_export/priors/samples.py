"""Built-in sample inputs: Python's own documentation text and scikit-learn's digits.

Nothing is downloaded: ``pydoc_data.topics`` ships with Python; the digits ship with
scikit-learn (random images are used when it is absent).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "TextTokenizer",
    "hf_tokenizer",
    "hash_tokenizer",
    "pydoc_documents",
    "text_chunks",
    "collate_chunks",
    "image_batch",
]


@dataclass(frozen=True)
class TextTokenizer:
    """``encode(text) -> ids`` without special tokens, ``wrap(ids)`` adds them, ``pad_id``."""

    encode: Callable[[str], list[int]]
    wrap: Callable[[list[int]], list[int]]
    pad_id: int
    name: str


def hf_tokenizer(tokenizer: Any) -> TextTokenizer:
    """Wrap a ``transformers`` tokenizer (``[CLS] ... [SEP]`` for BERT, nothing for GPT-2)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if start is None:
        raise ValueError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")
    prefix, suffix = full[:start], full[start + len(plain) :]
    return TextTokenizer(
        encode=lambda text: list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]),
        wrap=lambda ids: prefix + list(ids) + suffix,
        pad_id=int(pad),
        name=type(tokenizer).__name__,
    )


def hash_tokenizer(vocab_size: int) -> TextTokenizer:
    """Deterministic stand-in: each word or punctuation mark hashed (CRC-32) into the vocabulary.

    Ids start at 1000 for large vocabularies (BERT keeps its special and unused tokens below).
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    low = 1000 if vocab_size > 2000 else 1
    span = vocab_size - low

    def encode(text: str) -> list[int]:
        return [low + zlib.crc32(w.encode()) % span for w in re.findall(r"\w+|[^\w\s]", text.lower())]

    return TextTokenizer(encode=encode, wrap=lambda ids: list(ids), pad_id=0, name=f"hash({vocab_size})")


def pydoc_documents() -> list[str]:
    """The documentation topics of ``pydoc_data.topics``, sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def text_chunks(
    documents: Sequence[str], tokenizer: TextTokenizer, *, min_tokens: int, max_tokens: int, seed: int = 0
) -> list[list[int]]:
    """Cut each document's tokens into consecutive chunks of ``min_tokens..max_tokens`` tokens.

    Lengths (special tokens included) are drawn uniformly with ``random.Random(seed)``; a
    document's tail shorter than ``min_tokens`` is dropped. Returns the wrapped id lists.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    extra = len(tokenizer.wrap([]))
    if min_tokens <= extra:
        raise ValueError(f"min_tokens={min_tokens} leaves no room next to {extra} special tokens")
    rng = random.Random(seed)
    chunks = []
    for doc in documents:
        ids = tokenizer.encode(doc)
        start = 0
        while True:
            length = rng.randint(min_tokens, max_tokens) - extra
            if len(ids) - start < min_tokens - extra:
                break
            chunks.append(tokenizer.wrap(ids[start : start + length]))
            start += length
    return chunks


def collate_chunks(chunks: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``chunks`` into ``input_ids`` and ``attention_mask`` ``(B, N_max)`` int64."""
    if not chunks:
        raise ValueError("no chunks to collate")
    n = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(chunks), n, dtype=torch.long)
    for i, chunk in enumerate(chunks):
        ids[i, : len(chunk)] = torch.tensor(list(chunk), dtype=torch.long)
        mask[i, : len(chunk)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def image_batch(count: int, image_size: int, channels: int, *, seed: int = 0) -> torch.Tensor:
    """``(count, channels, image_size, image_size)`` float32 images in ``[-1, 1]``.

    scikit-learn's 8x8 digits upsampled (bilinear) when scikit-learn is installed, else
    seeded Gaussian noise.
    """
    gen = torch.Generator().manual_seed(seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return torch.randn(count, channels, image_size, image_size, generator=gen).clamp(-1, 1)
    digits = torch.from_numpy(load_digits().images).float() / 8.0 - 1.0  # (1797, 8, 8)
    pick = torch.randint(0, digits.shape[0], (count,), generator=gen)
    img = torch.nn.functional.interpolate(digits[pick].unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False)
    return img.expand(count, channels, image_size, image_size).contiguous()

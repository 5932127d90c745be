"""``load_hf_source``: a local Hugging Face folder as a convert source, traced by torch.export."""

from __future__ import annotations

import pytest
import torch

from hf_tiny import make

from qm_export.adapters.hf import is_patched, load_hf_source


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for name in ("BertModel", "ViTForImageClassification", "GPT2LMHeadModel"):
        path = tmp_path_factory.mktemp(name)
        make(name).save_pretrained(path)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize(
    ("name", "family", "inputs", "outputs"),
    [
        ("BertModel", "encoder", ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"]),
        ("ViTForImageClassification", "vit", ["pixel_values"], ["logits"]),
        ("GPT2LMHeadModel", "causal-lm", ["input_ids", "attention_mask"], ["logits"]),
    ],
)
def test_fields_and_static_export(model_dirs, name, family, inputs, outputs):
    src = load_hf_source(model_dirs[name], schedule={0: 0.5, 1: 0.7}, debug_outputs=True)
    assert src.family == family and list(src.input_names) == inputs and src.merge_layers == (0, 1)
    assert list(src.output_names) == outputs + ["merge0_assign", "merge0_seeds", "merge1_assign", "merge1_seeds"]
    assert is_patched(src.model) and src.schedule.describe() == "0:0.5,1:0.7" and src.recipe is None
    eager = src.export_module(*src.example_inputs)
    assert isinstance(eager, tuple) and len(eager) == len(src.output_names)
    direct = src.model(**dict(zip(inputs, src.example_inputs)))
    for i, key in enumerate(outputs):
        assert torch.equal(eager[i], direct[key])
    batch = src.example_inputs[0].shape[0]
    n = eager[len(outputs)].shape[1]
    assert eager[len(outputs)].shape == (batch, n) and eager[len(outputs)].dtype == torch.int64
    program = torch.export.export(src.export_module, src.example_inputs)
    for a, b in zip(program.module()(*src.example_inputs), eager):
        assert torch.equal(a, b)


def test_dynamic_batch_and_sequence_export(model_dirs):
    src = load_hf_source(model_dirs["BertModel"], schedule={1: 0.5}, seq_len=24, batch=3)
    assert [t.shape for t in src.example_inputs] == [(3, 24), (3, 24)]
    assert src.example_inputs[1][-1].sum() == 24 - 6  # the last row is padded
    program = torch.export.export(
        src.export_module, src.example_inputs, dynamic_shapes=src.dynamic_shapes,
        prefer_deferred_runtime_asserts_over_guards=True,
    )
    ids, mask = src.example_inputs
    other = (torch.cat([ids, ids[:2]])[:, :17], torch.cat([mask, mask[:2]])[:, :17])
    for a, b in zip(program.module()(*other), src.export_module(*other)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_merge_and_precision(model_dirs):
    plain = load_hf_source(model_dirs["BertModel"], no_merge=True)
    assert not is_patched(plain.model) and not plain.schedule.merges and plain.merge_layers == ()
    half = load_hf_source(model_dirs["BertModel"], precision="bf16")
    out = half.export_module(*half.example_inputs)
    assert out[0].dtype == torch.bfloat16 and torch.isfinite(out[0].float()).all()
    assert half.tolerance.max_abs > plain.tolerance.max_abs


def test_bad_sources(tmp_path, model_dirs):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_source(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        load_hf_source(model_dirs["BertModel"], precision="int8")
    with pytest.raises(ValueError, match="seq_len"):
        load_hf_source(model_dirs["BertModel"], seq_len=1000)
    transformers = pytest.importorskip("transformers")
    transformers.RobertaModel(transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100,
    )).save_pretrained(tmp_path / "roberta")
    with pytest.raises(TypeError, match="not supported"):
        load_hf_source(tmp_path / "roberta")

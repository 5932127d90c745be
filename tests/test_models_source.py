"""``load_source``: the uniform export view, its options and its errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qm_export.models import LoadedModel, load_source, register_source_loader
from qm_export.models import source as source_module


def test_loaded_model_view_of_a_recipe():
    loaded = load_source("encoder-tiny")
    assert loaded.family == "encoder" and loaded.recipe is not None and loaded.recipe.name == "encoder-tiny"
    assert loaded.input_names == ("input_ids", "attention_mask")
    assert loaded.output_names == ("last_hidden_state", "pooled")
    assert [t.shape for t in loaded.example_inputs] == [(2, 16), (2, 16)]
    assert loaded.example_inputs[1].dtype == torch.int64 and not bool(loaded.example_inputs[1].all())
    assert loaded.merge_layers == (1,) and loaded.schedule.describe() == "1:0.5"
    assert loaded.tolerance.max_abs == 1e-4 and set(loaded.tolerances) == {"fp32", "fp16", "bf16"}
    assert loaded.export_defaults.opset == 20 and loaded.export_defaults.merge_impl == "plugin"
    assert loaded.build_shapes["input_ids"].max == (16, 64)
    (batch, seq) = loaded.dynamic_shapes[0].values()
    assert loaded.dynamic_shapes[1][0] is batch and loaded.dynamic_shapes[1][1] is seq
    assert loaded.tokens_per_layer(*loaded.example_inputs) == [16, 16, 8, 8]
    assert not loaded.model.training and not loaded.export_module.training
    out = loaded.run(*loaded.example_inputs)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 16, 32), (2, 32)]


def test_example_inputs_are_seeded():
    a, b, c = (load_source("vit-tiny", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.example_inputs[0], b.example_inputs[0])
    assert not torch.equal(a.example_inputs[0], c.example_inputs[0])
    assert torch.equal(a.run(*a.example_inputs)[0], b.run(*b.example_inputs)[0])
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_no_merge_is_the_same_model_without_merge_layers():
    merged = load_source("vit-tiny")
    base = load_source("vit-tiny", no_merge=True)
    assert base.merge_layers == () and base.schedule.merges == ()
    assert base.tokens_per_layer(*base.example_inputs) == [17] * 5
    assert merged.tokens_per_layer(*merged.example_inputs) == [17, 17, 9, 9, 9]
    for (k, v), (k2, v2) in zip(merged.model.state_dict().items(), base.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not torch.equal(merged.run(*merged.example_inputs)[0], base.run(*base.example_inputs)[0])


def test_debug_outputs_append_assign_and_seeds():
    loaded = load_source("video-tiny", schedule="0:0.75,2:0.5", debug_outputs=True)
    assert loaded.output_names == ("logits", "merge0_assign", "merge0_seeds", "merge1_assign", "merge1_seeds")
    logits, a0, s0, a1, s1 = loaded.run(*loaded.example_inputs)
    assert a0.shape == (2, 33) and s0.shape == (2, 24) and a1.shape == (2, 25) and s1.shape == (2, 12)
    assert a0.dtype == s0.dtype == torch.int64
    assert bool((s0 >= 1).all())  # the class token is protected


def test_batch_and_seq_len_set_the_example_shapes():
    loaded = load_source("causal-lm-tiny", batch=3, seq_len=40)
    assert [t.shape for t in loaded.example_inputs] == [(3, 40), (3, 40)]
    assert loaded.output_names[:3] == ("logits", "present.0.key", "present.0.value")
    assert loaded.tokens_per_layer(*loaded.example_inputs) == [40, 40, 20, 20]
    assert load_source("vit-tiny", batch=5).example_inputs[0].shape == (5, 3, 32, 32)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_low_precision_casts_the_model(precision, dtype):
    loaded = load_source("vit-tiny", precision=precision, debug_outputs=True)
    assert loaded.precision == precision and loaded.tolerance == loaded.tolerances[precision]
    assert next(loaded.model.parameters()).dtype == dtype and loaded.example_inputs[0].dtype == dtype
    logits, assign, seeds = loaded.run(*loaded.example_inputs)
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()
    assert seeds.shape == (2, 8) and assign.dtype == torch.int64


@pytest.mark.parametrize("kwargs, error, match", [
    ({"precision": "int8"}, ValueError, "precision"),
    ({"batch": 0}, ValueError, "batch"),
    ({"batch": 2.0}, TypeError, "batch"),
    ({"seq_len": 200}, ValueError, "max_positions"),
    ({"schedule": "9:0.5"}, ValueError, "schedule: .*layer 9"),
    ({"schedule": "1:2.5"}, ValueError, r"schedule: .*\(0, 1\]"),
    ({"schedule": "1:0.5", "no_merge": True}, ValueError, "no_merge"),
    ({"seed": "0"}, TypeError, "seed"),
])
def test_bad_options_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_source("causal-lm-tiny", **kwargs)


def test_seq_len_is_refused_where_the_token_count_is_fixed():
    with pytest.raises(ValueError, match="seq_len=20: family 'vit'"):
        load_source("vit-tiny", seq_len=20)


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'gpt-5'"):
        load_source("gpt-5")
    with pytest.raises(ValueError, match="does not exist"):
        load_source(str(tmp_path / "none.toml"))
    with pytest.raises(ValueError, match="directory without a config.json"):
        load_source(tmp_path)
    with pytest.raises(TypeError, match="source"):
        load_source(42)  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("qm_export.adapters") is not None,
                    reason="the Hugging Face adapters are installed: the directory goes to them")
def test_hugging_face_directory_goes_to_the_adapters(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="Hugging Face adapters"):
        load_source(tmp_path)


def test_registered_loaders_take_their_sources(monkeypatch):
    monkeypatch.setattr(source_module, "_LOADERS", [])
    seen = {}

    def loader(source, **options):
        seen.update(options, source=source)
        return load_source("vit-tiny", **{k: v for k, v in options.items()})

    register_source_loader(lambda s: str(s).startswith("zoo:"), loader)
    loaded = load_source("zoo:my-vit", batch=3)
    assert isinstance(loaded, LoadedModel) and loaded.example_inputs[0].shape[0] == 3
    assert seen["source"] == "zoo:my-vit" and seen["batch"] == 3 and seen["precision"] is None  # None: the source's default
    with pytest.raises(TypeError, match="two callables"):
        register_source_loader("zoo:", loader)  # type: ignore[arg-type]

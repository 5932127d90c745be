"""Bad schedules, options and models are rejected with errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from hf_tiny import make, text_inputs

import qm_export
from qm_export.adapters.hf import apply_quickmerge, remove_quickmerge


@pytest.mark.parametrize(
    ("schedule", "error", "text"),
    [
        ({5: 0.5}, ValueError, "layer 5"),
        ({0: 0.0}, ValueError, "keep ratio"),
        ({0: 1.5}, ValueError, "keep ratio"),
        ({0: 0}, ValueError, "token count"),
        ({0: "half"}, ValueError, "half"),
        ({-1: 0.5}, ValueError, "layer index"),
        ([0.5, 0.5, 0.5], ValueError, "layer 2"),
        ("1:0.5,1:0.7", ValueError, "twice"),
        ("0.5;1", ValueError, "0.5;1"),
        (object(), TypeError, "merge schedule"),
    ],
)
def test_bad_schedules(schedule, error, text):
    model = make("BertModel")
    with pytest.raises(error, match=text):
        apply_quickmerge(model, schedule)
    assert not hasattr(model, "quickmerge")  # nothing half-applied


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"method": "kmeans"}, ValueError, "method"),
        ({"metric": "values"}, ValueError, "metric"),
        ({"saliency": "gradient"}, ValueError, "saliency"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"prior_weight": 0.5}, ValueError, "prior"),
        ({"protect": -1}, ValueError, "protect"),
        ({"bogus": 1}, ValueError, "bogus"),
        ({"context_length": 4}, ValueError, "context_length"),
        ({"generator": 3}, TypeError, "generator"),
        ({"prior": 3}, TypeError, "prior"),
        ({"prior": torch.nn.Linear(2, 2), "prior_weight": 0.5}, ValueError, None),
    ],
)
def test_bad_options(options, error, text):
    with pytest.raises(error, match=text):
        apply_quickmerge(make("BertModel"), {0: 0.5}, **options)


def test_prior_of_the_wrong_width():
    from qm_export.merge import AutoregressivePrior

    with pytest.raises(ValueError, match="hidden size is 32"):
        apply_quickmerge(make("BertModel"), {0: 0.5}, prior=AutoregressivePrior(dim=16, width=16, layers=1, heads=2))


def test_unsupported_models():
    with pytest.raises(TypeError, match=r"Linear.*supported: BertModel"):
        apply_quickmerge(torch.nn.Linear(3, 3), 0.5)
    transformers = pytest.importorskip("transformers")
    roberta = transformers.RobertaModel(transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100))
    with pytest.raises(TypeError, match="RobertaModel"):
        apply_quickmerge(roberta, 0.5)


def test_causal_models_refuse_global_mode():
    """Global mode is refused, for ToMe too (its causal-safe variant runs in causal mode:
    tests/test_hf_generation.py)."""
    with pytest.raises(ValueError, match="causal"):
        apply_quickmerge(make("GPT2LMHeadModel"), {0: 0.5}, mode="global")
    with pytest.raises(ValueError, match="causal"):
        apply_quickmerge(make("GPT2Model"), {0: 0.5}, method="tome", mode="global")


def test_double_patch_and_double_remove():
    model = make("ViTModel")
    apply_quickmerge(model, 0.5)
    with pytest.raises(ValueError, match="already patched"):
        apply_quickmerge(model, 0.5)
    remove_quickmerge(model)
    with pytest.raises(ValueError, match="not patched"):
        remove_quickmerge(model)


def test_forward_time_errors():
    model = apply_quickmerge(make("GPT2LMHeadModel"), {0: 0.5})
    inputs = text_inputs(1, 12)
    with pytest.raises(ValueError, match="use_cache"):
        model(**inputs, use_cache=True)
    with pytest.raises(ValueError, match="context_length"):
        model(**inputs, context_length=40)
    bert = apply_quickmerge(make("BertModel"), {0: 0.5})
    with pytest.raises(ValueError, match="2-D attention_mask"):
        bert(input_ids=inputs["input_ids"], attention_mask=torch.ones(1, 1, 12, 12))
    with pytest.raises(ValueError, match="output_attentions"):
        bert(**inputs, output_attentions=True)
    tome = apply_quickmerge(make("BertModel"), {0: 0.3}, method="tome")
    with pytest.raises(ValueError, match="at most half"):
        tome(**inputs)


def test_lazy_top_level_export():
    assert qm_export.apply_quickmerge is apply_quickmerge
    with pytest.raises(AttributeError):
        qm_export.no_such_name  # noqa: B018


def test_import_and_help_stay_light():
    import subprocess
    import sys

    code = (
        "import sys, qm_export, qm_export.cli, qm_export.priors; "
        "from click.testing import CliRunner; "
        "r = CliRunner().invoke(qm_export.cli.main, ['fit-prior', '--help']); assert r.exit_code == 0, r.output; "
        "bad = [m for m in ('transformers', 'triton', 'tensorrt') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_module_layout_is_refused():
    model = make("BertModel")
    del model.encoder.layer[0].attention.self.scaling  # as if from another transformers layout
    with pytest.raises(ValueError, match="unsupported module layout"):
        apply_quickmerge(model, 0.5)

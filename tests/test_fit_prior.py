"""``qm-export fit-prior`` on a tiny saved model, prior files, and prior guidance in a patch."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hf_tiny import make, text_inputs

from qm_export.adapters.hf import apply_quickmerge
from qm_export.adapters.hf.runner import Recorder
from qm_export.cli import main
from qm_export.merge import AutoregressivePrior
from qm_export.priors import load_prior, read_prior_metadata, save_prior


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    make("BertModel").save_pretrained(path)
    return path


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_fit_prior_cli_writes_a_loadable_prior_that_lowers_the_loss(bert_dir, tmp_path):
    out = tmp_path / "prior.safetensors"
    result = _run(["fit-prior", str(bert_dir), "-o", str(out), "--layer", "1", "--steps", "40", "--samples", "12",
                   "--batch-size", "4", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and out.is_file()
    meta = read_prior_metadata(out)
    assert meta["layer"] == 1 and meta["config"] == {"dim": 32, "width": 128, "layers": 2, "heads": 4}
    assert meta["val_loss_end"] < meta["val_loss_start"]
    assert meta["train_loss_end"] < meta["train_loss_start"]
    prior = load_prior(out)
    assert isinstance(prior, AutoregressivePrior) and not prior.training

    again = CliRunner().invoke(main, ["fit-prior", str(bert_dir), "-o", str(out), "--steps", "1", "--samples", "2"])
    assert again.exit_code != 0 and "--force" in again.output
    forced = _run(["fit-prior", str(bert_dir), "-o", str(out), "--steps", "1", "--samples", "4", "--force"])
    assert forced.exit_code == 0, forced.output


def test_fit_prior_default_output_goes_next_to_the_model(bert_dir):
    result = _run(["fit-prior", str(bert_dir), "--steps", "2", "--samples", "4", "--schedule", "0:0.5,1:0.5"])
    assert result.exit_code == 0, result.output
    target = bert_dir / "qm-prior-layer0.safetensors"
    assert target.is_file() and read_prior_metadata(target)["schedule"] == "0:0.5,1:0.5"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--layer", "7"], "--layer must be in [0, 1]"),
        (["-o", "prior.bin"], ".safetensors"),
        (["--steps", "0"], "--steps"),
        (["--schedule", "0:2.5"], "keep ratio"),
    ],
)
def test_fit_prior_cli_bad_input(bert_dir, args, text):
    result = CliRunner().invoke(main, ["fit-prior", str(bert_dir), *args])
    assert result.exit_code == 2 and text in result.output
    assert "Traceback" not in result.output


def test_fit_prior_cli_unknown_source(tmp_path):
    result = CliRunner().invoke(main, ["fit-prior", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope" in result.output


def test_prior_file_roundtrip_and_refusals(tmp_path):
    torch.manual_seed(0)
    prior = AutoregressivePrior(dim=8, width=16, layers=1, heads=2)
    path = save_prior(prior, tmp_path / "p.safetensors", metadata={"layer": 3})
    loaded = load_prior(path)
    z, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(loaded(z, mask), prior.eval()(z, mask))
    with pytest.raises(FileExistsError, match="force"):
        save_prior(prior, path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a qm-export prior"):
        load_prior(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file format")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_prior(tmp_path / "junk.safetensors")


def test_prior_weight_changes_saliency(tmp_path):
    torch.manual_seed(1)
    prior = AutoregressivePrior(dim=32, width=16, layers=1, heads=2)
    path = save_prior(prior, tmp_path / "p.safetensors")
    inputs = text_inputs(2, 12, lengths=[12, 9])

    def saliency(**options):
        model = apply_quickmerge(make("BertModel"), {1: 0.5}, **options)
        model.quickmerge.recorder = Recorder()
        with torch.no_grad():
            model(**inputs)
        return model.quickmerge.recorder.merges[0][1]["saliency"]

    plain = saliency()
    unused = saliency(prior=path, prior_weight=0.0)
    some = saliency(prior=path, prior_weight=0.5)
    only = saliency(prior=prior, prior_weight=1.0)
    assert torch.equal(plain, unused)
    assert not torch.allclose(plain, some)
    real = plain >= 0
    # s = (1 - b) s_entropy + b u_hat: the prior-only saliency recovers the mix exactly
    torch.testing.assert_close(some[real], (0.5 * plain + 0.5 * only)[real], atol=1e-6, rtol=1e-6)
    default = apply_quickmerge(make("BertModel"), {1: 0.5}, prior=path)
    assert default.quickmerge.plan.options["prior_weight"] == pytest.approx(0.3)


def test_prior_map_covers_only_some_layers():
    torch.manual_seed(2)
    prior = AutoregressivePrior(dim=32, width=16, layers=1, heads=2)
    inputs = text_inputs(2, 12)

    def saliencies(**options):
        model = apply_quickmerge(make("BertModel"), {0: 0.7, 1: 0.7}, **options)
        model.quickmerge.recorder = Recorder()
        with torch.no_grad():
            model(**inputs)
        return [info["saliency"] for _, info in model.quickmerge.recorder.merges]

    plain = saliencies()
    guided = saliencies(prior={1: prior}, prior_weight=0.5)
    assert torch.equal(plain[0], guided[0])  # layer 0 has no prior: unchanged
    assert not torch.allclose(plain[1], guided[1])
    with pytest.raises(ValueError, match="does not merge"):
        apply_quickmerge(make("BertModel"), {0: 0.7}, prior={1: prior})


def test_fit_prior_cli_on_a_vision_model(tmp_path):
    make("ViTForImageClassification").save_pretrained(tmp_path / "vit")
    out = tmp_path / "vit-prior.safetensors"
    result = _run(["fit-prior", str(tmp_path / "vit"), "-o", str(out), "--steps", "3", "--samples", "6", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    meta = read_prior_metadata(out)
    assert meta["layer"] == 0 and meta["sequences"] == 6  # default schedule: layer 2 // 3 = 0
    model = apply_quickmerge(make("ViTForImageClassification"), {0: 0.5}, prior=out, prior_weight=0.2)
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, 16, 16)).logits
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()

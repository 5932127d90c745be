"""Recipes: the shipped ones load and agree with the families; bad files name file and key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.merge import QuickMergeConfig, resolve_keep
from qm_export.models import SIZES, build_model, family_class
from qm_export.recipes import RecipeError, list_recipes, load_recipe, recipe_names

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = [f"{f}-{s}" for f in ("vit", "encoder", "causal-lm", "video") for s in ("tiny", "small", "base")]


def test_every_family_and_size_has_a_recipe():
    assert sorted(recipe_names()) == sorted(EXPECTED)
    assert [r.name for r in list_recipes()] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_shipped_recipe_matches_its_family_and_halves_the_tokens(name):
    recipe = load_recipe(name)
    assert name == f"{recipe.family}-{recipe.size}"
    cls = family_class(recipe.family)
    config = cls.config_class.from_mapping(recipe.config)
    assert config == SIZES[recipe.family][recipe.size]
    schedule = cls.make_schedule(recipe.merge.schedule, config.depth, recipe.merge_options())
    spec = recipe.inputs[cls.input_names[0]]
    n = config.num_patches if hasattr(config, "num_patches") else spec.shape[1]
    for merge in schedule.merges:  # K rule of the spec, applied layer after layer
        n = resolve_keep(n, QuickMergeConfig(keep=merge.keep, keep_ratio=merge.keep_ratio))
    first = config.num_patches if hasattr(config, "num_patches") else spec.shape[1]
    assert 0.4 <= n / first <= 0.6, f"{name}: {first} -> {n} mergeable tokens"
    # fp32 tolerances stay at float32 summation-order level: 1e-4, encoder-base's 12 layers of
    # width 768 3e-4 (measured 1.25e-4, docs/benchmarks.md "Precision").
    assert recipe.tolerances["fp32"].max_abs <= (3e-4 if name == "encoder-base" else 1e-4)
    assert recipe.tolerances["fp16"].max_abs > recipe.tolerances["fp32"].max_abs
    assert set(recipe.build_shapes) == set(recipe.inputs)
    assert recipe.raw["model"]["family"] == recipe.family


def test_recipes_are_found_through_the_installed_package_data(tmp_path):
    from importlib import resources

    files = {p.name for p in resources.files("qm_export_recipes").iterdir()}
    assert {f"{n}.toml" for n in EXPECTED} <= files
    if shutil.which("pip") is None and not (Path(sys.executable).parent / "pip").exists():
        pytest.skip("pip is not available to build a wheel")
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ next to the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(  # no virtual environment: GBs to copy for nothing
        ".git", ".venv", "venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
        "*.onnx", "*.onnx.data", "*.engine"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "setuptools" in build.stderr:
        pytest.skip(f"cannot build a wheel here without network build isolation: {build.stderr[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"qm_export_recipes/{n}.toml" for n in EXPECTED} <= names


@pytest.mark.parametrize("family, size, expected", [
    ("vit", "base", 86_567_656),  # timm vit_base_patch16_224
    ("causal-lm", "base", 124_439_808),  # GPT-2 small (tied head)
    ("encoder", "base", 109_482_240 - 590_592 - 2 * 768),  # BERT-base without pooler and token types
    # VideoMAE-B encoder (tubelet 2x16x16, 400 classes) plus a learned class token and positions
    ("video", "base", 3 * 2 * 16 * 16 * 768 + 768 + 12 * 7_087_872 + 2 * 768 + 768 * 400 + 400 + 768 + 1569 * 768),
])
def test_base_sizes_have_the_published_parameter_counts(family, size, expected):
    with torch.device("meta"):
        model = build_model(family, size)
    assert sum(p.numel() for p in model.parameters()) == expected


VALID = (ROOT / "models" / "encoder-tiny.toml").read_text()


def _broken(tmp_path, old, new, name="bad.toml"):
    assert old in VALID, old
    path = tmp_path / name
    path.write_text(VALID.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old, new, key", [
    ('family = "encoder"', 'family = "resnet"', "model.family"),
    ("depth = 3", "depth = 3\nwidth = 7", "model.config"),
    ("heads = 4", "heads = 5", "model.config"),
    ('schedule = "1:0.5"', 'schedule = "7:0.5"', "merge"),
    ('schedule = "1:0.5"', 'schedule = "1:1.5"', "merge"),
    ('schedule = "1:0.5"', "", "merge.schedule"),
    ("tau = 0.5", "tau = -1.0", "merge"),
    ('saliency = "attention"', 'saliency = "entropy"', "merge.saliency"),
    ('dtype = "int64"', 'dtype = "int8"', "inputs.input_ids.dtype"),
    ("dynamic = { batch = 0, sequence = 1 }", "dynamic = { sequence = 1 }", "inputs.input_ids.dynamic"),
    ("[inputs.attention_mask]", "[inputs.token_type_ids]", "inputs"),
    ("opset = 20", "opset = 11", "export.opset"),
    ('merge_impl = "plugin"', 'merge_impl = "fast"', "export.merge_impl"),
    ("fp32 = { max_abs = 1e-4 }", "", "validation.tolerances.fp32"),
    ("fp16 = { max_abs = 4e-2 }", "fp16 = { max_abs = 0 }", "validation.tolerances.fp16.max_abs"),
    ("min = [1, 4]", "min = [1, 4, 1]", "build.shapes.input_ids.min"),
    ("max = [16, 64]", "max = [16, 8]", "build.shapes.input_ids"),
    ("[export]", "[exports]", "<top level>"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, old, new, key):
    path = _broken(tmp_path, old, new)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and repr(key) in str(err.value)


def test_bad_recipe_sources(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'vit-huge'.*vit-tiny"):
        load_recipe("vit-huge")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nfamily = 1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(TypeError, match="name or a path"):
        load_recipe(3)  # type: ignore[arg-type]


def test_a_user_recipe_file_loads_by_path(tmp_path):
    path = _broken(tmp_path, 'schedule = "1:0.5"', "schedule = { 0 = 0.75, 2 = 6 }", name="my-encoder.toml")
    recipe = load_recipe(str(path))
    assert recipe.name == "my-encoder" and recipe.path == path
    model = build_model("encoder", recipe.config, recipe.merge.schedule, merge_options=recipe.merge_options())
    assert [(m.layer, m.keep_ratio, m.keep) for m in model.schedule.merges] == [(0, 0.75, None), (2, 1.0, 6)]


def test_cli_models_json_lists_every_recipe():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == EXPECTED
    enc = rows[EXPECTED.index("encoder-tiny")]
    assert enc["family"] == "encoder" and enc["size"] == "tiny"
    assert enc["inputs"]["input_ids"] == {"dtype": "int64", "shape": [2, 16], "dynamic": {"batch": 0, "sequence": 1}}


def test_cli_models_table():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "batch=2" in result.output

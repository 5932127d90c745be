"""Optimization profiles: parsing ``--shapes``, recipes, ONNX metadata, static shapes,
their priority, and validation against the graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as h

from qm_export.trt.profiles import (
    PROFILE_METADATA_KEY,
    Profile,
    ShapeRange,
    graph_input_shapes,
    parse_shapes,
    profile_from_metadata,
    resolve_profile,
    validate_profile,
)

from trt_onnx_graphs import export_like_model, make_model


def _two_input_model(metadata: dict | None = None):
    nodes = [h.make_node("Identity", ["input_ids"], ["ids"]), h.make_node("Identity", ["mask"], ["m"])]
    return make_model(
        nodes,
        [("input_ids", TP.INT64, ["B", "S"]), ("mask", TP.FLOAT, ["B", "S", 4])],
        [("ids", TP.INT64, ["B", "S"]), ("m", TP.FLOAT, ["B", "S", 4])],
        metadata=metadata,
    )


def test_parse_shapes_full_and_single() -> None:
    profile = parse_shapes(["input_ids:1x8,4x128,8x256", "mask:2x16x4"])
    assert profile.shapes["input_ids"] == ShapeRange((1, 8), (4, 128), (8, 256))
    assert profile.shapes["mask"] == ShapeRange((2, 16, 4), (2, 16, 4), (2, 16, 4))
    assert profile.source == "shapes"


def test_parse_shapes_several_per_value_and_colon_names() -> None:
    profile = parse_shapes(["a:1,2,3; onnx::Reshape_0:4x4,4x4,4x4"])
    assert set(profile.shapes) == {"a", "onnx::Reshape_0"}
    assert profile.shapes["a"] == ShapeRange((1,), (2,), (3,))


@pytest.mark.parametrize(
    "spec,match",
    [
        ("x", "name:min,opt,max"),
        (":1x2", "name:min,opt,max"),
        ("x:1x2,3x4", "one shape or three"),
        ("x:1x2,3y4,5x6", "opt shape '3y4'"),
        ("x:1x-2,1x2,1x2", "min shape"),
        ("x:,,", "min shape ''"),
    ],
)
def test_parse_shapes_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_shapes([spec])


def test_parse_shapes_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="more than once"):
        parse_shapes(["x:1", "x:2"])
    with pytest.raises(ValueError, match="no input shapes"):
        parse_shapes(["  "])


@given(st.lists(st.integers(1, 4096), min_size=1, max_size=5))
def test_parse_shapes_round_trip(dims: list[int]) -> None:
    text = "x".join(map(str, dims))
    assert parse_shapes([f"t:{text},{text},{text}"]).shapes["t"].max == tuple(dims)


def test_graph_input_shapes_skip_initializers() -> None:
    shapes = graph_input_shapes(export_like_model(n=197, batch="B"))
    assert shapes == {"x": (None, 197, 8)}


@pytest.mark.parametrize(
    "spec,match",
    [
        (["nope:1x1,1x1,1x1"], "'nope' that the model does not have"),
        (["input_ids:1x8x1,1x8x1,1x8x1"], "rank 3 but the model's input"),
        (["input_ids:1x8,4x4,8x256"], r"min <= opt <= max at axis 1 \(8, 4, 256\)"),
        (["input_ids:2x8,1x8,4x8"], "at axis 0"),
        (["input_ids:1x0,1x8,1x8"], "non-positive dim 0"),
        (["input_ids:1x8,4x128,8x256", "mask:1x8x3,1x8x4,1x8x4"], "has 3 at axis 2, where the model's dim is static 4"),
    ],
)
def test_validate_profile_errors(spec: list[str], match: str) -> None:
    model = _two_input_model()
    with pytest.raises(ValueError, match=match):
        validate_profile(parse_shapes(spec), graph_input_shapes(model))


def test_validate_requires_every_dynamic_input() -> None:
    with pytest.raises(ValueError, match="input 'mask' has dynamic shape \\[\\?, \\?, 4\\].*--shapes mask:"):
        resolve_profile(_two_input_model(), ["input_ids:1x8,4x128,8x256"])


def test_static_inputs_are_completed() -> None:
    model = export_like_model(n=16, batch=2)
    profile = resolve_profile(model)
    assert profile.source == "static"
    assert profile.shapes == {"x": ShapeRange((2, 16, 8), (2, 16, 8), (2, 16, 8))}


def _meta(profile: dict) -> dict:
    return {PROFILE_METADATA_KEY: json.dumps(profile)}


META = {
    "input_ids": {"min": [1, 1], "opt": [2, 64], "max": [4, 128]},
    "mask": {"min": [1, 1, 4], "opt": [2, 64, 4], "max": [4, 128, 4]},
}


def test_metadata_profile() -> None:
    profile = resolve_profile(_two_input_model(_meta(META)))
    assert profile.source == "metadata"
    assert profile.shapes["input_ids"] == ShapeRange((1, 1), (2, 64), (4, 128))


def test_metadata_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="qm_export.profile.*not valid JSON"):
        profile_from_metadata({PROFILE_METADATA_KEY: "{oops"})
    with pytest.raises(ValueError, match="input_ids.*missing max"):
        profile_from_metadata(_meta({"input_ids": {"min": [1], "opt": [1]}}))
    with pytest.raises(ValueError, match="must be a list of ints"):
        profile_from_metadata(_meta({"input_ids": {"min": [1.5], "opt": [1], "max": [1]}}))
    assert profile_from_metadata({}) is None


RECIPE = """
[build.shapes.input_ids]
min = [1, 4]
opt = [2, 32]
max = [8, 64]

[build.shapes.mask]
min = [1, 4, 4]
opt = [2, 32, 4]
max = [8, 64, 4]
"""


def test_priority_shapes_then_recipe_then_metadata(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    model = _two_input_model(_meta(META))
    shapes = ["input_ids:1x2,1x2,1x2", "mask:1x2x4"]
    assert resolve_profile(model, shapes, str(recipe)).source == "shapes"
    from_recipe = resolve_profile(model, [], str(recipe))
    assert from_recipe.source == "recipe"
    assert from_recipe.shapes["input_ids"].max == (8, 64)
    assert resolve_profile(model).source == "metadata"


def test_recipe_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[build\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        resolve_profile(_two_input_model(), [], str(bad))
    empty = tmp_path / "empty.toml"
    empty.write_text("[model]\nname = 'x'\n")
    with pytest.raises(ValueError, match=r"no \[build.shapes.<input>\] tables"):
        resolve_profile(_two_input_model(), [], str(empty))


def test_profile_as_dict() -> None:
    profile = Profile({"x": ShapeRange((1,), (2,), (3,))}, source="shapes")
    assert profile.as_dict() == {"source": "shapes", "inputs": {"x": {"min": [1], "opt": [2], "max": [3]}}}


def test_recipe_name_without_recipes_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "qm_export.recipes", None)  # as on a branch without recipes
    with pytest.raises(ValueError, match="'vit-b16' is not a file, and recipe names need qm_export.recipes"):
        resolve_profile(_two_input_model(), [], "vit-b16")

"""TensorRT version parsing and the version branches, with plain versions and plain
namespaces standing in for TensorRT's enums (no TensorRT needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qm_export.trt.versions import (
    TrtVersion,
    build_version_problem,
    combine_flags,
    device_memory_bytes,
    has_aot_plugins,
    has_python_plugins,
    has_weak_precision_flags,
    is_strongly_typed_only,
    max_onnx_opset,
    missing_flags,
    parse_trt_version,
    plugin_version_problem,
    prefers_plugin_over_function,
    python_plugins_broken,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.9.0.34", TrtVersion(10, 9, 0, 34)),
        ("11.4.0.106", TrtVersion(11, 4, 0, 106)),
        ("10.13", TrtVersion(10, 13)),
        ("10.13.3", TrtVersion(10, 13, 3)),
        (" 10.6 ", TrtVersion(10, 6)),
    ],
)
def test_parse_trt_version(text: str, expected: TrtVersion) -> None:
    assert parse_trt_version(text) == expected


@pytest.mark.parametrize("text", ["", "10", "ten.one", "10.x", "10.9.0.34.1", "v10.9", "10..9", "-10.9"])
def test_parse_trt_version_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="TensorRT version"):
        parse_trt_version(text)


def test_parse_trt_version_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="10.9"):
        parse_trt_version(10.9)  # type: ignore[arg-type]


@given(st.tuples(*(st.integers(0, 999) for _ in range(4))))
def test_version_text_round_trip(parts: tuple[int, int, int, int]) -> None:
    version = TrtVersion(*parts)
    assert parse_trt_version(str(version)) == version


def test_version_ordering_is_numeric() -> None:
    assert parse_trt_version("10.10") > parse_trt_version("10.9.0.34")
    assert parse_trt_version("11.0") > parse_trt_version("10.16.1.11")
    assert parse_trt_version("10.13.3.9").at_least(10, 13)
    assert not parse_trt_version("10.8.99").at_least(10, 9)


@pytest.mark.parametrize(
    "version,python,aot,weak,strong_only",
    [
        ("10.5", False, False, True, False),
        ("10.6", True, False, True, False),
        ("10.8", True, False, True, False),
        ("10.9.0.34", True, True, True, False),
        ("10.13.3.9", True, True, True, False),
        ("11.4.0.106", True, True, False, True),
    ],
)
def test_feature_branches(version: str, python: bool, aot: bool, weak: bool, strong_only: bool) -> None:
    v = parse_trt_version(version)
    assert has_python_plugins(v) is python
    assert has_aot_plugins(v) is aot
    assert has_weak_precision_flags(v) is weak
    assert is_strongly_typed_only(v) is strong_only


@pytest.mark.parametrize(
    "version,has_ns,expected",
    [
        ("10.6", True, False),  # before 10.7: the local function always wins
        ("10.7", True, True),
        ("10.7", False, False),  # isNodeInPluginRegistry looks in namespace ''
        ("10.9", False, False),
        ("10.10", False, False),  # the 10.10 domain fallback is the fallback importer's, not this lookup's
        ("10.13", False, False),
        ("10.14", False, False),
        ("10.14", True, True),
        ("10.15", False, False),  # 10.15: only with plugin_namespace
        ("10.15", True, True),
        ("11.4", False, False),
        ("11.4", True, True),
    ],
)
def test_plugin_over_function(version: str, has_ns: bool, expected: bool) -> None:
    assert prefers_plugin_over_function(parse_trt_version(version), has_ns) is expected


@pytest.mark.parametrize(
    "version,broken",
    [("10.13.3.9", False), ("10.14", True), ("10.14.1.48", True), ("10.15", False), ("11.0", False), ("10.9", False)],
)
def test_trt_10_14_python_plugins_are_refused(version: str, broken: bool) -> None:
    v = parse_trt_version(version)
    assert python_plugins_broken(v) is broken
    problem = plugin_version_problem(v)
    assert (problem is not None) is broken
    if broken:
        assert "known bug that breaks Python plugins" in problem and "10.15+ works" in problem
    assert build_version_problem(v) is None  # 10.14 is refused for qm plugins only, not for plain models


@pytest.mark.parametrize(
    "version,opset",
    [("10.0", 20), ("10.5", 20), ("10.6", 22), ("10.11", 23), ("10.15", 24), ("11.4", 24), ("11.5", 25)],
)
def test_max_onnx_opset(version: str, opset: int) -> None:
    assert max_onnx_opset(parse_trt_version(version)) == opset


# NetworkDefinitionCreationFlag values differ between releases (NvInfer.h of 10.16 vs 11.1).
TRT10_FLAGS = SimpleNamespace(
    __name__="NetworkDefinitionCreationFlag",
    EXPLICIT_BATCH=0,
    STRONGLY_TYPED=1,
    PREFER_JIT_PYTHON_PLUGINS=2,
    PREFER_AOT_PYTHON_PLUGINS=3,
)
TRT11_FLAGS = SimpleNamespace(
    __name__="NetworkDefinitionCreationFlag", STRONGLY_TYPED=0, PREFER_JIT_PYTHON_PLUGINS=1, PREFER_AOT_PYTHON_PLUGINS=2
)


def test_combine_flags_uses_the_enum_values() -> None:
    names = ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"]
    assert combine_flags(TRT10_FLAGS, names) == (1 << 1) | (1 << 3)
    assert combine_flags(TRT11_FLAGS, names) == (1 << 0) | (1 << 2)
    assert combine_flags(TRT10_FLAGS, []) == 0


def test_combine_flags_names_missing_members() -> None:
    old = SimpleNamespace(__name__="NetworkDefinitionCreationFlag", EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    assert missing_flags(old, ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"]) == ["PREFER_AOT_PYTHON_PLUGINS"]
    with pytest.raises(ValueError, match="PREFER_AOT_PYTHON_PLUGINS"):
        combine_flags(old, ["PREFER_AOT_PYTHON_PLUGINS"])


def test_device_memory_prefers_v2() -> None:
    assert device_memory_bytes(SimpleNamespace(device_memory_size_v2=123, device_memory_size=99)) == 123
    assert device_memory_bytes(SimpleNamespace(device_memory_size=99)) == 99  # before 10.1
    assert device_memory_bytes(SimpleNamespace()) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.13.3.9", TrtVersion(10, 13, 3, 9)),
        ("10.9.0.34.post1", TrtVersion(10, 9, 0, 34)),
        ("11.4", TrtVersion(11, 4)),
    ],
)
def test_installed_version(text: str, expected: TrtVersion) -> None:
    from qm_export.trt.versions import installed_version

    assert installed_version(text) == expected


def test_installed_version_garbage() -> None:
    from qm_export.trt.versions import installed_version

    with pytest.raises(ValueError, match="'unknown'"):
        installed_version("unknown")


def test_count_plugin_layers() -> None:
    from qm_export.trt.builder import count_plugin_layers

    layers = ["LayerType.SHUFFLE", "LayerType.PLUGIN_V3", "LayerType.MATRIX_MULTIPLY", "LayerType.PLUGIN_V3"]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: SimpleNamespace(type=layers[i]))
    assert count_plugin_layers(network) == 2


@pytest.mark.parametrize(
    "version,ok", [("10.8.0.43", False), ("10.6", False), ("10.9.0.34", True), ("11.4.0.106", True)]
)
def test_build_version_gate(version: str, ok: bool) -> None:
    from qm_export.trt.versions import build_version_problem

    problem = build_version_problem(parse_trt_version(version))
    assert (problem is None) is ok
    if not ok:
        assert "PREFER_AOT_PYTHON_PLUGINS need 10.9+" in problem

"""Outputs and inputs in Polygraphy's JSON formats (``qm_export.backends.run_results``):
round trips, files written by Polygraphy itself read by us and the reverse, and the
``polygraphy run`` CLI on an exported vit-tiny agreeing with our ONNX Runtime runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qm_export.backends.onnxruntime import OrtRunner
from qm_export.backends.run_results import (
    PolygraphyUnavailable,
    load_inputs,
    load_run_results,
    save_inputs,
    save_run_results,
)
from qm_export.export.files import OutputPathError

pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install 'qm-export[test]')")
from polygraphy.comparator import IterationResult, RunResults  # noqa: E402


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "i64": rng.integers(-(2**40), 2**40, size=(3, 2), dtype=np.int64),
        "mask": rng.random((2, 7)) > 0.5,
        "scalar": np.array(3.5, dtype=np.float32),
        "strided": np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # not contiguous
    }


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])


def test_round_trip_keeps_dtypes_shapes_values_and_order(tmp_path: Path) -> None:
    results = {"ort": [_arrays(0), _arrays(1)], "trt": [_arrays(2)]}
    path = save_run_results(tmp_path / "out.json", results)
    loaded = load_run_results(path)
    assert list(loaded) == ["ort", "trt"] and [len(v) for v in loaded.values()] == [2, 1]
    for runner, iterations in results.items():
        for got, want in zip(loaded[runner], iterations):
            _assert_same(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    save_run_results(path, {"a": [{"x": np.zeros(2, np.float32)}]})
    with pytest.raises(OutputPathError, match="exists; pass --force"):
        save_run_results(path, {"b": [{"x": np.ones(2, np.float32)}]})
    assert list(load_run_results(path)) == ["a"]  # untouched
    save_run_results(path, {"b": [{"x": np.ones(2, np.float32)}]}, force=True)
    assert list(load_run_results(path)) == ["b"]
    with pytest.raises(OutputPathError, match="does not exist"):
        save_run_results(tmp_path / "missing" / "out.json", {"a": []})


def test_bad_results_shape_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="list of output dicts"):
        save_run_results(tmp_path / "a.json", {"ort": {"x": np.zeros(1)}})
    with pytest.raises(TypeError, match="object array"):
        save_run_results(tmp_path / "b.json", {"ort": [{"x": np.array([object()])}]})
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_polygraphy_written_file_loads_with_ours(tmp_path: Path) -> None:
    arrays = _arrays(3)
    run = RunResults()
    run.add([arrays, arrays], runner_name="onnxrt-runner-N0")
    run.append(("trt-runner-N0", [IterationResult(_arrays(4), runtime=0.5, runner_name="trt-runner-N0")]))
    run.save(str(tmp_path / "poly.json"))
    loaded = load_run_results(tmp_path / "poly.json")
    assert list(loaded) == ["onnxrt-runner-N0", "trt-runner-N0"]
    _assert_same(loaded["onnxrt-runner-N0"][1], arrays)
    _assert_same(loaded["trt-runner-N0"][0], _arrays(4))


def test_ours_loads_with_polygraphy(tmp_path: Path) -> None:
    save_run_results(tmp_path / "ours.json", {"ort": [_arrays(5)], "onnx-ref": [_arrays(6)]})
    run = RunResults.load(str(tmp_path / "ours.json"))
    assert list(run.keys()) == ["ort", "onnx-ref"]
    (it,) = run["ort"]
    assert it.runner_name == "ort"
    _assert_same(dict(it.items()), _arrays(5))


def test_duplicate_runner_names_are_kept_apart(tmp_path: Path) -> None:
    run = RunResults()
    run.append(("r", [IterationResult({"x": np.zeros(1, np.float32)}, runner_name="r")]))
    run.append(("r", [IterationResult({"x": np.ones(1, np.float32)}, runner_name="r")]))
    run.save(str(tmp_path / "dup.json"))
    loaded = load_run_results(tmp_path / "dup.json")
    assert list(loaded) == ["r", "r#2"] and loaded["r#2"][0]["x"][0] == 1.0


def test_not_run_results_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    cases = {
        "list.json": json.dumps([1, 2]),
        "text.json": "not json at all",
        "dict.json": json.dumps({"lst": "nope"}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}.*not a Polygraphy RunResults JSON"):
            load_run_results(tmp_path / name)
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="binary.json"):
        load_run_results(tmp_path / "binary.json")
    save_inputs(tmp_path / "inputs.json", [{"x": np.zeros(2, np.float32)}])  # valid JSON, other format
    with pytest.raises(ValueError, match="inputs.json"):
        load_run_results(tmp_path / "inputs.json")
    with pytest.raises(FileNotFoundError):
        load_run_results(tmp_path / "absent.json")


def test_inputs_round_trip_and_format(tmp_path: Path) -> None:
    feeds = [_arrays(7), _arrays(8)]
    path = save_inputs(tmp_path / "in.json", feeds)
    loaded = load_inputs(path)
    assert len(loaded) == 2
    for got, want in zip(loaded, feeds):
        _assert_same(got, want)
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and len(raw) == 2 and set(raw[0]) == set(feeds[0])  # a JSON list of feed dicts
    with pytest.raises(OutputPathError):
        save_inputs(path, feeds)
    with pytest.raises(TypeError, match="wrap a single dict"):
        save_inputs(tmp_path / "one.json", feeds[0])
    save_run_results(tmp_path / "out.json", {"a": [feeds[0]]})
    with pytest.raises(ValueError, match="out.json.*input data"):
        load_inputs(tmp_path / "out.json")


def test_single_feed_dict_file_loads_as_one_iteration(tmp_path: Path) -> None:
    from polygraphy.json import save_json

    save_json(_arrays(9), str(tmp_path / "one.json"))
    (got,) = load_inputs(tmp_path / "one.json")
    _assert_same(got, _arrays(9))


def test_missing_polygraphy_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    with pytest.raises(PolygraphyUnavailable, match="pip install 'polygraphy"):
        save_run_results(tmp_path / "x.json", {})
    with pytest.raises(ImportError, match="pip install 'polygraphy"):
        load_run_results(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- the polygraphy CLI


@pytest.fixture(scope="module")
def vit_onnx() -> Path:
    """vit-tiny exported once per test process (qm plugin nodes with local functions)."""
    from tiny_exports import tiny_exports

    return tiny_exports()["merged"]


def _polygraphy_cli() -> str:
    exe = Path(sys.executable).with_name("polygraphy")
    if exe.is_file():
        return str(exe)
    found = shutil.which("polygraphy")
    if found is None:
        pytest.skip("the polygraphy command is not installed next to this Python or on PATH")
    return found


def test_polygraphy_run_reads_our_inputs_and_we_read_its_outputs(vit_onnx: Path, tmp_path: Path) -> None:
    """``polygraphy run --onnxrt --load-inputs`` on our inputs file writes outputs that our
    loader reads and that equal our OrtRunner's on the same inputs."""
    rng = np.random.default_rng(11)
    feeds = [{"pixel_values": rng.standard_normal((b, 3, 32, 32)).astype(np.float32)} for b in (1, 3)]
    inputs = save_inputs(tmp_path / "inputs.json", feeds)
    outputs = tmp_path / "outputs.json"
    proc = subprocess.run(
        [_polygraphy_cli(), "run", str(vit_onnx), "--onnxrt", "--load-inputs", str(inputs), "--save-outputs", str(outputs)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = load_run_results(outputs)
    assert len(results) == 1
    ((runner_name, iterations),) = results.items()
    assert runner_name.startswith("onnxrt-runner") and len(iterations) == 2
    ours = OrtRunner(vit_onnx)
    for feed, theirs in zip(feeds, iterations):
        want = ours.run(feed)
        assert list(theirs) == ["logits"]
        assert theirs["logits"].shape == want["logits"].shape == (feed["pixel_values"].shape[0], 10)
        np.testing.assert_allclose(theirs["logits"], want["logits"], rtol=0, atol=1e-6)
    # and back: our file of our outputs is accepted by polygraphy's own loader
    save_run_results(tmp_path / "ours.json", {"ort": [ours.run(f) for f in feeds]})
    run = RunResults.load(str(tmp_path / "ours.json"))
    np.testing.assert_allclose(run["ort"][1]["logits"], iterations[1]["logits"], rtol=0, atol=1e-6)

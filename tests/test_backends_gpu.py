"""The GPU backends: ``ort-cuda`` (ONNX Runtime's CUDA provider, merge placement checked) and
``trt`` (a TensorRT engine through Polygraphy).

Here (no GPU, no TensorRT) the tests run every decision that needs neither, on real data:
the placement rule on ONNX Runtime's own profile of an exported vit-tiny, the sidecar and
version checks on sidecars made by ``make_sidecar``, TensorRT profiler reports turned into
events, and ``open_runner`` refusing both backends with a reason. The tests that need
``onnxruntime-gpu`` with a CUDA device, or TensorRT, skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qm_export.backends import BackendUnavailable, open_runner
from qm_export.backends.onnxruntime import OrtRunner
from qm_export.backends.ort_cuda import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    NodeIO,
    PlacementError,
    TensorInfo,
    cuda_unavailable_reason,
    format_placement_error,
    handles_token_data,
    ort_distributions,
    placement_problems,
    profile_once,
    read_node_io,
    session_provider_problem,
    synthetic_feeds,
)
from qm_export.backends.ort_profile import NodeEvent, node_totals, read_profile
from qm_export.backends.tensorrt import (
    TRT_PROVIDER,
    EngineVersionError,
    LayerTimeRecorder,
    TrtRunner,
    engine_version_problem,
    inspector_layer_types,
    layer_events,
    model_kind,
    needs_qm_plugins,
    read_sidecar,
    sidecar_matches_engine,
)
from qm_export.export.merge_nodes import merge_role
from qm_export.trt.precision import plan_precision
from qm_export.trt.profiles import profile_from_metadata
from qm_export.trt.sidecar import make_sidecar
from qm_export.trt.versions import parse_trt_version

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vit_onnx() -> Path:
    """vit-tiny exported once per test process (qm plugin nodes with local functions)."""
    from tiny_exports import tiny_exports

    return tiny_exports()["merged"]


def _model_feeds(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    profile = profile_from_metadata(session.get_modelmeta().custom_metadata_map)
    assert profile is not None
    opt = {name: rng.opt for name, rng in profile.shapes.items()}
    return synthetic_feeds([(i.name, i.type, i.shape) for i in session.get_inputs()], opt)


@pytest.fixture(scope="module")
def cpu_profile(vit_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[NodeEvent], dict[str, NodeIO]]:
    """A real ONNX Runtime profile (CPU provider) of one run of the exported vit-tiny."""
    folder = tmp_path_factory.mktemp("profile")
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(folder / "vit")
    session = ort.InferenceSession(str(vit_onnx), sess_options=opts, providers=[CPU_PROVIDER])
    events, io = profile_once(session, _model_feeds(vit_onnx))
    (path,) = folder.iterdir()  # the one profile file ORT wrote
    assert read_profile(path) == events and read_node_io(path) == io
    return events, io


def _on_cuda_except(events: list[NodeEvent], keep_on_cpu: set[str]) -> list[NodeEvent]:
    """The real events with every node moved to CUDA except ``keep_on_cpu``: what a CUDA
    session's profile looks like (a relabelling of real data, nothing invented)."""
    return [
        NodeEvent(e.name, e.op_type, CPU_PROVIDER if e.name in keep_on_cpu else CUDA_PROVIDER, e.dur_us)
        for e in events
    ]


def _names(findings: list) -> list[str]:
    return [f.name for f in findings]


# --------------------------------------------------------------------------- ort-cuda: placement rule


def test_profile_io_is_real(vit_onnx: Path, cpu_profile) -> None:
    """read_node_io reads the types and shapes ORT saw: the patch embedding's Conv ran on the
    profile's opt shape, and every event has its I/O."""
    events, io = cpu_profile
    assert len(events) > 200 and set(io) == {e.name for e in events}
    convs = [e for e in events if e.op_type == "Conv"]
    assert len(convs) == 1
    conv_in = io[convs[0].name].inputs[0]
    assert conv_in == TensorInfo("float", (4, 3, 32, 32))  # opt shape of the metadata profile
    roles = {merge_role(e.name) for e in events}
    assert roles == {"qm", "selection", None}


def test_profile_once_profiles_one_run_only(vit_onnx: Path, tmp_path: Path) -> None:
    """profile_once on a real session: one event per node of that run, and the session keeps
    working unprofiled afterwards (no second file, the file does not grow)."""
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "p")
    session = ort.InferenceSession(str(vit_onnx), sess_options=opts, providers=[CPU_PROVIDER])
    feeds = _model_feeds(vit_onnx)
    events, io = profile_once(session, feeds)
    assert len({e.name for e in events}) == len(events) == len(io)  # one run: each node once
    (path,) = tmp_path.iterdir()
    size = path.stat().st_size
    session.run(None, feeds)
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.stat().st_size == size
    with pytest.raises(ValueError, match="lack input"):
        profile_once(session, {})
    plain = ort.InferenceSession(str(vit_onnx), providers=[CPU_PROVIDER])
    with pytest.raises(ValueError, match="enable_profiling"):
        profile_once(plain, feeds)


def test_all_on_cuda_has_no_findings(cpu_profile) -> None:
    """Relabelled real profile: every node on CUDA -> nothing to report."""
    events, io = cpu_profile
    assert placement_problems(_on_cuda_except(events, set()), io) == ([], [])


def test_merge_shape_arithmetic_on_cpu_is_a_note(cpu_profile) -> None:
    """Relabelled real profile: ORT's deliberate CPU placement of shape arithmetic inside the
    qm functions and the selection (rank <= 1 integer tensors) is a note, not an error."""
    events, io = cpu_profile
    shape_math = [
        e.name for e in events
        if merge_role(e.name) is not None and e.op_type not in ("Shape", "Size") and not handles_token_data(io[e.name])
    ]
    ops = {e.op_type for e in events if e.name in shape_math}
    assert len(shape_math) >= 5 and {"Squeeze", "Range"} <= ops  # the real graph has them
    errors, notes = placement_problems(_on_cuda_except(events, set(shape_math)), io)
    assert errors == []
    assert _names(notes) == shape_math
    assert all("shape arithmetic" in n.reason for n in notes)


def test_float_merge_compute_on_cpu_is_an_error(cpu_profile) -> None:
    """Relabelled real profile: the qm TokenMerge MatMuls left on the CPU are errors, named
    with their op and the float tensors they moved."""
    events, io = cpu_profile
    matmuls = [e.name for e in events if e.name.startswith("_inlfunc_TokenMerge") and e.op_type == "MatMul"]
    assert matmuls
    errors, notes = placement_problems(_on_cuda_except(events, set(matmuls)), io)
    assert _names(errors) == matmuls and notes == []
    assert all(e.op_type == "MatMul" and e.role == "qm" and "float[" in e.reason for e in errors)


def test_integer_group_index_on_cpu_is_an_error(cpu_profile) -> None:
    """Relabelled real profile: TokenGroupIndex is integer-only; its token-sized int nodes on
    the CPU are errors too (a float-only rule would miss the whole op)."""
    events, io = cpu_profile
    picked = [
        e.name for e in events
        if e.name.startswith("_inlfunc_TokenGroupIndex") and e.op_type in ("ScatterElements", "ReduceSum")
    ]
    assert picked
    assert not any(t.is_float for n in picked for t in (*io[n].inputs, *io[n].outputs))
    errors, _ = placement_problems(_on_cuda_except(events, set(picked)), io)
    assert _names(errors) == picked


def test_selection_on_cpu_is_an_error_and_model_nodes_are_notes(cpu_profile) -> None:
    events, io = cpu_profile
    softmax = [e.name for e in events if merge_role(e.name) == "selection" and e.op_type == "Softmax"]
    layernorm = [e.name for e in events if merge_role(e.name) is None and e.op_type == "LayerNormalization"]
    assert softmax and layernorm
    errors, notes = placement_problems(_on_cuda_except(events, set(softmax + layernorm)), io)
    assert _names(errors) == softmax and errors[0].role == "selection"
    assert _names(notes) == layernorm and "model node" in notes[0].reason


def test_shape_of_token_data_is_exempt(cpu_profile) -> None:
    """A merge ``Shape`` reads a rank-3 float tensor but only its shape: a note."""
    events, io = cpu_profile
    shapes = [e.name for e in events if merge_role(e.name) == "qm" and e.op_type == "Shape"
              and any(len(t.shape) >= 2 for t in io[e.name].inputs)]
    assert shapes
    errors, notes = placement_problems(_on_cuda_except(events, set(shapes)), io)
    assert errors == [] and _names(notes) == shapes


def test_unknown_types_are_judged_conservatively(cpu_profile) -> None:
    events, _ = cpu_profile
    merge_nodes = [e for e in events if merge_role(e.name) is not None]
    model_nodes = [e for e in events if merge_role(e.name) is None]
    errors, notes = placement_problems(events, io={})
    assert _names(errors) == [e.name for e in merge_nodes if e.op_type not in ("Shape", "Size")]
    assert set(_names(notes)) >= {e.name for e in model_nodes}


def test_cpu_only_session_fails_with_a_bounded_list(vit_onnx: Path, cpu_profile) -> None:
    """The unmodified CPU profile, judged as if it came from a CUDA session: the merge's token
    compute is refused, and the message lists ten nodes and how many more."""
    events, io = cpu_profile
    errors, notes = placement_problems(events, io)
    assert len(errors) > 10
    assert all(e.role is not None and e.op_type not in ("Shape", "Size") for e in errors)
    assert {"MatMul", "Softmax", "GatherElements"} <= {e.op_type for e in errors}
    assert len(errors) + len(notes) == len({e.name for e in events})
    err = PlacementError(str(vit_onnx), errors)
    text = str(err)
    assert str(vit_onnx) in text and f"{len(errors)} merge node(s)" in text
    assert sum(line.startswith("  - ") for line in text.splitlines()) == 10
    assert f"... and {len(errors) - 10} more" in text
    assert err.errors == errors and isinstance(err, RuntimeError) and not isinstance(err, BackendUnavailable)


def test_format_placement_error_short_list(cpu_profile) -> None:
    events, io = cpu_profile
    errors, _ = placement_problems(events, io)
    text = format_placement_error("m.onnx", errors[:3])
    assert "more" not in text and all(e.name in text for e in errors[:3])


# --------------------------------------------------------------------------- ort-cuda: providers


def test_cuda_unavailable_reason_names_the_fix_and_what_is_installed() -> None:
    available = ort.get_available_providers()
    if CUDA_PROVIDER in available:
        pytest.skip("CUDAExecutionProvider is available here; the reason applies only without it")
    dists = ort_distributions()
    reason = cuda_unavailable_reason(available, dists)
    assert reason is not None
    assert "qm-export[gpu]" in reason and "onnxruntime-gpu" in reason
    assert f"onnxruntime {dists['onnxruntime']}" in reason and "CPUExecutionProvider" in reason
    assert dists["onnxruntime"] == ort.__version__


def test_cuda_unavailable_reason_cases() -> None:
    assert cuda_unavailable_reason([CUDA_PROVIDER, CPU_PROVIDER], {"onnxruntime-gpu": "1.22.0"}) is None
    both = cuda_unavailable_reason([CPU_PROVIDER], {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"})
    assert both is not None and "both installed" in both


def test_session_provider_problem() -> None:
    assert session_provider_problem([CUDA_PROVIDER, CPU_PROVIDER]) is None
    fell_back = session_provider_problem([CPU_PROVIDER])
    assert fell_back is not None and "fell back" in fell_back and "CPUExecutionProvider" in fell_back
    assert session_provider_problem(["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]) is not None


def test_synthetic_feeds(vit_onnx: Path) -> None:
    feeds = _model_feeds(vit_onnx)
    assert {k: (v.shape, v.dtype) for k, v in feeds.items()} == {"pixel_values": ((4, 3, 32, 32), np.float32)}
    out = OrtRunner(vit_onnx).run(feeds)  # the model accepts them
    assert out["logits"].shape == (4, 10) and np.isfinite(out["logits"]).all()
    ids = synthetic_feeds([("input_ids", "tensor(int64)", ["batch", "seq"])], {"input_ids": [2, 8]})
    assert ids["input_ids"].dtype == np.int64 and (ids["input_ids"] == 1).all()
    with pytest.raises(ValueError, match="dynamic shape.*pass feeds"):
        synthetic_feeds([("x", "tensor(float)", ["batch", 4])], {})
    with pytest.raises(ValueError, match="tensor\\(bfloat16\\)"):
        synthetic_feeds([("x", "tensor(bfloat16)", [1, 4])], {})


def test_open_runner_ort_cuda_is_unavailable_here(vit_onnx: Path) -> None:
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("CUDAExecutionProvider is available here: test_ort_cuda_matches_cpu covers the backend")
    with pytest.raises(BackendUnavailable) as info:
        open_runner("ort-cuda", vit_onnx)
    assert info.value.backend == "ort-cuda" and "onnxruntime-gpu" in info.value.why


def test_ort_cuda_matches_cpu(vit_onnx: Path) -> None:
    if CUDA_PROVIDER not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (CUDAExecutionProvider unavailable): pip install 'qm-export[gpu]'")
    try:
        runner = open_runner("ort-cuda", vit_onnx)
    except BackendUnavailable as err:
        pytest.skip(f"CUDA did not initialise here: {err.why}")
    assert runner.name == "ort-cuda" and runner.session.get_providers()[0] == CUDA_PROVIDER
    assert runner.placement_errors == []  # the merge runs on the GPU
    assert any(e.provider == CUDA_PROVIDER and merge_role(e.name) == "qm" for e in runner.placement_events)
    feeds = _model_feeds(vit_onnx)
    want, got = OrtRunner(vit_onnx).run(feeds), runner.run(feeds)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- trt: pure parts


def _sidecar(tmp_path: Path, trt_version: str = "10.13.3.9", engine: bytes = b"engine", flags=()) -> dict:
    import hashlib

    from qm_export.trt.profiles import Profile, ShapeRange

    plan = plan_precision(parse_trt_version("10.13"), None, "fp32")
    doc = make_sidecar(
        onnx_path=tmp_path / "m.onnx",
        onnx_sha256="ab" * 32,
        engine_path=tmp_path / "m.engine",
        engine_sha256=hashlib.sha256(engine).hexdigest(),
        engine_bytes=len(engine),
        trt_version=trt_version,
        plan=plan,
        network_flags=list(plan.network_flags),
        profile=Profile({"x": ShapeRange((1, 4, 8), (2, 16, 8), (4, 64, 8))}),
        plugins=["qm::TokenMerge"],
        workspace_bytes=None,
        timing_cache=None,
        build_seconds=1.0,
        environment={},
    )
    doc["tensorrt"]["builder_flags"] = list(doc["tensorrt"]["builder_flags"]) + list(flags)
    return doc


def test_model_kind() -> None:
    assert model_kind("a/m.engine") == "engine" and model_kind("m.PLAN") == "engine"
    assert model_kind("m.onnx") == "onnx"
    with pytest.raises(ValueError, match="'.pt'"):
        model_kind("m.pt")
    with pytest.raises(ValueError, match="none"):
        model_kind("model")


def test_read_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    assert read_sidecar(engine) is None
    doc = _sidecar(tmp_path)
    (tmp_path / "m.engine.json").write_text(json.dumps(doc))
    assert read_sidecar(engine) == doc
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(ValueError, match="m.engine.json.*not readable JSON"):
        read_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({**doc, "schema": "other/1"}))
    with pytest.raises(ValueError, match="schema 'other/1'"):
        read_sidecar(engine)
    broken = {**doc, "tensorrt": {}}
    (tmp_path / "m.engine.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="no tensorrt.version"):
        read_sidecar(engine)


def test_engine_version_problem(tmp_path: Path) -> None:
    doc = _sidecar(tmp_path, "10.13.3.9")
    assert engine_version_problem(doc, "10.13.3.9") is None
    assert engine_version_problem(doc, "10.13.3.9.post1") is None  # suffix ignored
    problem = engine_version_problem(doc, "10.14.1.48", engine="m.engine")
    assert problem is not None and "\n" not in problem
    assert "10.13.3.9" in problem and "10.14.1.48" in problem and "m.engine" in problem
    assert engine_version_problem(doc, "10.13.2.6") is not None  # patch differs
    compatible = _sidecar(tmp_path, "10.13.3.9", flags=["VERSION_COMPATIBLE"])
    assert engine_version_problem(compatible, "10.15.0.1") is None
    assert engine_version_problem(compatible, "10.12.0.36") is not None  # older runtime
    assert engine_version_problem(compatible, "11.0.0.1") is not None  # next major


def test_sidecar_matches_engine_and_plugins(tmp_path: Path) -> None:
    doc = _sidecar(tmp_path, engine=b"engine")
    assert sidecar_matches_engine(doc, b"engine") and not sidecar_matches_engine(doc, b"other engine")
    assert needs_qm_plugins(None) and needs_qm_plugins(doc)
    assert not needs_qm_plugins({**doc, "plugins": {"used": [], "aot": False}})


def test_layer_events_from_profiler_reports() -> None:
    """What TensorRT's IProfiler reports, two runs of three layers, as NodeEvents in µs."""
    recorder = LayerTimeRecorder()
    recorder.enabled = False
    recorder.report_layer_time("warm-up", 9.0)  # not recorded
    recorder.enabled = True
    layers = [("merge_qm/TokenMerge/node_7", 0.25), ("merge_select/node_softmax + merge_select/node_mul", 0.125),
              ("{ForeignNode[node_a...node_b]}", 1.5)]
    for _ in range(2):
        for name, ms in layers:
            recorder.report_layer_time(name, ms)
    events = layer_events(recorder.records, {"{ForeignNode[node_a...node_b]}": "Myelin"})
    assert len(events) == 6 and all(e.provider == TRT_PROVIDER for e in events)
    assert [e.dur_us for e in events[:3]] == [250.0, 125.0, 1500.0]
    assert [e.op_type for e in events[:3]] == ["TokenMerge", "?", "Myelin"]
    assert [merge_role(e.name) for e in events[:3]] == ["qm", "selection", None]
    totals = node_totals(events)
    assert totals["merge_qm/TokenMerge/node_7"].dur_us == 500.0
    with pytest.raises(ValueError, match="not a finite"):
        layer_events([("x", float("nan"))])
    with pytest.raises(ValueError, match="not a finite"):
        layer_events([("x", -1.0)])


def test_inspector_layer_types() -> None:
    infos = [json.dumps({"Name": "conv1", "LayerType": "CaskConvolution"}), json.dumps("fc1"),
             json.dumps({"Name": "fc2"}), "not json"]
    assert inspector_layer_types(infos) == {"conv1": "CaskConvolution"}


def _tensorrt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'qm-export[trt]'; not installable on these machines)"
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"TensorRT does not load here: {exc}"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT is installed but no CUDA GPU is visible"
    return None


TRT_REASON = _tensorrt_reason()


def test_open_runner_trt_is_unavailable_here(vit_onnx: Path) -> None:
    if TRT_REASON is None:
        pytest.skip("TensorRT and a GPU are present: test_trt_runner_* cover the backend")
    with pytest.raises(BackendUnavailable) as info:
        open_runner("trt", vit_onnx)
    assert info.value.backend == "trt" and "TensorRT" in info.value.why


def test_trt_runner_argument_errors_before_tensorrt(tmp_path: Path, vit_onnx: Path) -> None:
    """Bad arguments fail as usage errors before TensorRT is needed."""
    with pytest.raises(ValueError, match="suffix"):
        TrtRunner(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="build_if_onnx"):
        TrtRunner(vit_onnx, build_if_onnx=False)
    engine = tmp_path / "m.engine"
    with pytest.raises(ValueError, match="shapes apply only"):
        TrtRunner(engine, shapes=["x:1x4x8"])
    with pytest.raises(FileNotFoundError):
        TrtRunner(engine)
    engine.write_bytes(b"engine")
    (tmp_path / "m.engine.json").write_text("[]")
    with pytest.raises(ValueError, match="m.engine.json"):
        TrtRunner(engine)


# --------------------------------------------------------------------------- trt: needs TensorRT and a GPU


def _require_trt() -> None:
    if TRT_REASON is not None:
        pytest.skip(TRT_REASON)
    try:
        import qm_export_plugins
    except ImportError:
        pytest.skip("qm_export_plugins is not importable")
    if not hasattr(qm_export_plugins, "register_plugins"):
        pytest.skip("qm_export_plugins has no register_plugins() on this branch")


def _tagged_export_like_model() -> onnx.ModelProto:
    """The hand-built export-like graph with its qm nodes named as the export names them."""
    from qm_export.export.merge_nodes import qm_node_name
    from trt_onnx_graphs import export_like_model

    model = export_like_model()
    for node in model.graph.node:
        if node.domain == "qm":
            node.name = qm_node_name(node.op_type, node.name)
    return model


def test_trt_runner_builds_onnx_and_matches_ort(tmp_path: Path) -> None:
    _require_trt()
    model = tmp_path / "m.onnx"
    onnx.save(_tagged_export_like_model(), model)
    runner = TrtRunner(model, shapes=["x:1x4x8,2x64x8,4x256x8"])
    try:
        assert runner.sidecar is not None and runner.sidecar["plugins"]["plugin_layers"] == 3
        assert runner.device_memory_bytes is not None and runner.device_memory_bytes >= 0
        assert len(runner.engine_bytes) > 0
        x = np.random.default_rng(0).standard_normal((2, 64, 8)).astype(np.float32)
        want = OrtRunner(model).run({"x": x})
        got = runner.run({"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        events = runner.layer_times({"x": x}, runs=3)
        qm = [e for e in events if merge_role(e.name) == "qm"]
        assert {e.op_type for e in qm} == {"TokenGroupIndex", "TokenMerge", "TokenUnmerge"}  # the plugin layers
        assert all(e.dur_us >= 0 and e.provider == TRT_PROVIDER for e in events)
        assert len(events) % 3 == 0  # one report per layer and run
    finally:
        runner.close()


def test_trt_runner_engine_with_sidecar(tmp_path: Path) -> None:
    _require_trt()
    from qm_export.trt import BuildRequest, build_engine

    model, engine = tmp_path / "m.onnx", tmp_path / "m.engine"
    onnx.save(_tagged_export_like_model(), model)
    build_engine(BuildRequest(model, engine, shapes=("x:1x4x8,2x64x8,4x256x8",)))
    with TrtRunner(engine) as runner:
        assert runner.sidecar is not None and runner.notes == []
        assert runner.input_names == ["x"]
    doc = json.loads((tmp_path / "m.engine.json").read_text())
    doc["tensorrt"]["version"] = "9.0.0.1"
    (tmp_path / "m.engine.json").write_text(json.dumps(doc))
    with pytest.raises(EngineVersionError, match="9.0.0.1"):
        TrtRunner(engine)


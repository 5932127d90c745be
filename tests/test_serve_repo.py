"""``qm-export serve-repo``: Triton model repositories (issue 12, part 1). No server here (see
test_serve_server.py): every config is parsed with Triton's own protobuf schema
(``tritonclient``'s ``model_config_pb2``) and checked against the model's tensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.serve import ServeOptions, plan_repository, read_onnx_io
from tiny_exports import tiny_export

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (pip install 'qm-export[serve]')")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path: Path):
    """A config.pbtxt parsed with Triton's schema (raises on any unknown field or bad value)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def serve_repo(*args: object) -> object:
    res = CliRunner().invoke(main, ["serve-repo", *map(str, args)])
    assert "Traceback" not in res.output, res.output
    return res


def test_every_model_gets_a_config_triton_parses(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    res = serve_repo(tiny_export("merged"), tiny_export("baseline"), tiny_export("text"), "-o", repo, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [m["name"] for m in doc["models"]] == ["vit-tiny", "vit-tiny-nomerge", "encoder-tiny"]
    assert sorted(p.name for p in repo.iterdir()) == ["encoder-tiny", "vit-tiny", "vit-tiny-nomerge"]
    cfg = parse(repo / "encoder-tiny" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]  # batch axis left out
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("last_hidden_state", [-1, 32]), ("pooled", [32])]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.HasField("dynamic_batching")
    assert (repo / "encoder-tiny" / "1" / "model.onnx").read_bytes() == tiny_export("text").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_flags_reach_the_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    res = serve_repo(tiny_export("merged"), "-o", repo, "--name", "vit", "--max-batch-size", "16", "--instances", "3",
                     "--kind", "gpu", "--preferred-batch", "8,4", "--queue-delay-us", "500", "--version", "7",
                     "--gpu-accelerator", "tensorrt")
    assert res.exit_code == 0, res.output
    assert "DONE" in res.stderr.splitlines()[-1]
    cfg = parse(repo / "vit" / "config.pbtxt")
    assert cfg.name == "vit" and cfg.max_batch_size == 16
    assert (cfg.instance_group[0].count, cfg.instance_group[0].kind) == (3, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.version_policy.specific.versions) == [7] and (repo / "vit" / "7" / "model.onnx").is_file()
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("pixel_values", [3, 32, 32])]


def test_max_batch_size_zero_keeps_the_full_shape(tmp_path: Path) -> None:
    res = serve_repo(tiny_export("text"), "-o", tmp_path / "r", "--max-batch-size", "0")
    assert res.exit_code == 0, res.output
    cfg = parse(tmp_path / "r" / "encoder-tiny" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [list(i.dims) for i in cfg.input] == [[-1, -1], [-1, -1]]


def test_python_backend_writes_model_py_and_keeps_the_file_name(tmp_path: Path) -> None:
    res = serve_repo(tiny_export("merged"), "-o", tmp_path / "r", "--python-backend", "--threads", "1",
                     "--ort-config", "session.intra_op.allow_spinning=0")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r" / "vit-tiny"
    cfg = parse(folder / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform and not cfg.default_model_filename
    assert cfg.parameters["onnx_file"].string_value == "vit-tiny.onnx"
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    assert cfg.parameters["ort_config:session.intra_op.allow_spinning"].string_value == "0"
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.py", "vit-tiny.onnx"]
    compile((folder / "1" / "model.py").read_text(), "model.py", "exec")


def test_external_data_travels_with_the_model(tmp_path: Path) -> None:
    src = tmp_path / "big.onnx"
    proto = onnx.load(str(tiny_export("merged")))
    onnx.save(proto, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=0)
    res = serve_repo(src, "-o", tmp_path / "r")
    assert res.exit_code == 0, res.output
    version = tmp_path / "r" / "big" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["big.onnx.data", "model.onnx"]
    onnx.checker.check_model(str(version / "model.onnx"))  # its data is found beside it


def test_the_config_dims_come_from_the_model(tmp_path: Path) -> None:
    inputs, outputs = read_onnx_io(tiny_export("merged"))
    assert [(t.name, t.data_type, t.dims) for t in inputs] == [("pixel_values", "TYPE_FP32", (-1, 3, 32, 32))]
    assert [(t.name, t.dims) for t in outputs] == [("logits", (-1, 10))]


def test_an_engine_is_served_as_tensorrt_plan_from_its_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine; serve-repo reads only the sidecar")
    Path(f"{engine}.json").write_text(json.dumps({"io_tensors": [
        {"name": "pixel_values", "mode": "INPUT", "dtype": "HALF", "shape": [-1, 3, 32, 32]},
        {"name": "logits", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 10]}]}))
    res = serve_repo(engine, "-o", tmp_path / "r", "--kind", "gpu")
    assert res.exit_code == 0, res.output
    cfg = parse(tmp_path / "r" / "m" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert model_config_pb2.DataType.Name(cfg.input[0].data_type) == "TYPE_FP16"
    assert (tmp_path / "r" / "m" / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_an_existing_repository_is_replaced_only_with_force(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "keep.txt").write_text("mine")
    res = serve_repo(tiny_export("merged"), "-o", repo)
    assert res.exit_code == 2 and "--force" in res.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["keep.txt"]
    res = serve_repo(tiny_export("merged"), "-o", repo, "--force")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in repo.iterdir()) == ["vit-tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "link.onnx"
    os.symlink(tiny_export("merged"), link)
    res = serve_repo(link, "-o", tmp_path / "r")
    assert res.exit_code == 2 and "symlink" in res.stderr
    assert not (tmp_path / "r").exists()


def test_a_static_batch_needs_max_batch_size_zero(tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_export("merged")))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    static = tmp_path / "static.onnx"
    onnx.save(proto, str(static))
    with pytest.raises(ValueError, match="--max-batch-size 0"):
        plan_repository([static], ServeOptions(max_batch_size=4))
    (model,) = plan_repository([static], ServeOptions(max_batch_size=0))
    assert "dims: [ 2, 3, 32, 32 ]" in model.config

"""Serving binds to loopback and reads only its own files (issue 14, section 3): the launched
server's addresses, ``serve-bench --host``, the generated ``model.py``, and ``serve-repo``'s
refusal of symlinks."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.serve.server import BundledServer, TritonServer
from untrusted_models import matmul_model, save_external

_FAKE = BundledServer(Path("/x/tritonserver"), Path("/x/backends"), Path("/x/stub"), Path("/x/libs"))


def _addresses(command: list[str]) -> dict[str, str]:
    return {a.split("=")[0]: a.split("=", 1)[1] for a in command if a.split("=")[0].endswith("-address")}


def test_the_server_listens_on_loopback_unless_given_a_host() -> None:
    srv = TritonServer(Path("/repo"), http_port=8000, grpc_port=8001, metrics_port=8002)
    assert _addresses(srv._command(Path("/b"), _FAKE)) == {
        "--http-address": "127.0.0.1", "--grpc-address": "127.0.0.1", "--metrics-address": "127.0.0.1"}
    assert srv.grpc_url == "127.0.0.1:8001"
    wide = TritonServer(Path("/repo"), http_port=8000, grpc_port=8001, host="0.0.0.0")
    assert set(_addresses(wide._command(Path("/b"), _FAKE)).values()) == {"0.0.0.0"}
    assert wide.grpc_url == "127.0.0.1:8001"  # this process still reaches it on loopback
    one = TritonServer(Path("/repo"), grpc_port=8001, host="10.1.2.3")
    assert one.grpc_url == "10.1.2.3:8001"


@pytest.mark.parametrize("argv,host", [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_serve_bench_launch_passes_the_host_to_the_server(tmp_path: Path, monkeypatch, argv, host) -> None:
    from qm_export.serve import server

    seen = []

    def start(self):
        seen.append(self.host)
        raise server.ServerUnavailable("not started in this test")

    monkeypatch.setattr(server.TritonServer, "start", start)
    (tmp_path / "repo").mkdir()
    res = CliRunner().invoke(main, ["serve-bench", "--launch", str(tmp_path / "repo"), "--model", "m", *argv])
    assert res.exit_code == 1 and "not started in this test" in res.stderr, res.output
    assert seen == [host]


@pytest.mark.parametrize("argv,needle", [
    (["--launch", "{repo}", "--host", "example.com"], "not an IPv4 address"),
    (["--launch", "{repo}", "--host", "::"], "not an IPv4 address"),
    (["--url", "127.0.0.1:1", "--host", "0.0.0.0"], "needs --launch"),
])
def test_serve_bench_refuses_a_bad_host(tmp_path: Path, argv, needle) -> None:
    (tmp_path / "repo").mkdir()
    res = CliRunner().invoke(main, ["serve-bench", "--model", "m", *[a.format(repo=tmp_path / "repo") for a in argv]])
    assert res.exit_code == 2 and "--host" in res.stderr and needle in res.stderr, res.output


def _template(monkeypatch, opened: list[str]):
    """The generated model.py, imported with a stand-in for the Triton stub and ONNX Runtime."""

    class TritonModelException(Exception):
        pass

    pb = types.SimpleNamespace(TritonModelException=TritonModelException, triton_string_to_numpy=lambda s: s)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)

    class Session:
        def __init__(self, path, *args, **kwargs):
            opened.append(path)

        def get_inputs(self):
            return []

        get_outputs = get_inputs

    ort = types.SimpleNamespace(SessionOptions=lambda: types.SimpleNamespace(add_session_config_entry=print),
                                InferenceSession=Session)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    spec = importlib.util.spec_from_file_location("qm_triton_model", Path(__file__).resolve().parents[1]
                                                  / "qm_export" / "serve" / "triton_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, TritonModelException


@pytest.mark.parametrize("name", ["../other/model.onnx", "/etc/hostname", "..", "sub/model.onnx"])
def test_model_py_opens_only_a_file_of_its_own_version_folder(tmp_path: Path, monkeypatch, name: str) -> None:
    import json

    opened: list[str] = []
    module, exc = _template(monkeypatch, opened)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"x")

    def args(file_name: str) -> dict[str, str]:
        config = {"parameters": {"onnx_file": {"string_value": file_name}}, "output": []}
        return {"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"}

    with pytest.raises(exc, match="plain file name"):
        module.TritonPythonModel().initialize(args(name))
    assert opened == []
    module.TritonPythonModel().initialize(args("model.onnx"))
    assert opened == [os.path.join(str(tmp_path), "1", "model.onnx")]


def test_serve_repo_refuses_a_symlinked_data_file_even_inside_the_folder(tmp_path: Path) -> None:
    path = save_external(matmul_model(), tmp_path / "m.onnx")
    os.replace(tmp_path / "m.onnx.data", tmp_path / "real.data")
    (tmp_path / "m.onnx.data").symlink_to("real.data")
    res = CliRunner().invoke(main, ["serve-repo", str(path), "-o", str(tmp_path / "repo")])
    assert res.exit_code == 2 and "is a symlink" in res.stderr, res.output
    assert not (tmp_path / "repo").exists()

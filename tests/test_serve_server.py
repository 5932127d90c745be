"""A real Triton Inference Server on a generated repository (issue 12, parts 2 and 4).

The ``tritonserver`` 2.51 binary of the ``nvidia-pytriton`` wheel, started directly with
``--model-repository`` on a ``serve-repo --python-backend`` repository, on free loopback ports,
queried with ``tritonclient`` over HTTP and gRPC. Outputs are compared with a direct ONNX
Runtime run of the same file. Every server is stopped by its process id at the end.
Skipped, with the reason, where the ``serve`` extra is not installed.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.serve.server import TritonServer, unavailable_reason
from tiny_exports import tiny_export

_WHY = unavailable_reason()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = {"vit-tiny": "merged", "vit-tiny-nomerge": "baseline", "encoder-tiny": "text"}


def make_repo(repo: Path, *extra: str) -> Path:
    res = CliRunner().invoke(main, ["serve-repo", *(str(tiny_export(k)) for k in MODELS.values()), "-o", str(repo),
                                    "--python-backend", "--threads", "1", "--max-batch-size", "8",
                                    "--ort-config", "session.intra_op.allow_spinning=0", *extra])
    assert res.exit_code == 0, res.output
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = TritonServer(make_repo(tmp_path_factory.mktemp("serve") / "repo", "--queue-delay-us", "2000"))
    srv.start()
    yield srv
    srv.stop()
    assert srv.process is not None and srv.process.returncode is not None


def feeds_for(model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model.startswith("vit"):
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)}
    ids = rng.integers(0, 64, size=(batch, 4), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def direct(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(tiny_export(MODELS[model])), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def infer(client_mod, client, model: str, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in feeds.items():
        inp = client_mod.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    kwargs = {"client_timeout": 60} if client_mod is grpcclient else {}  # http: the client's network_timeout
    result = client.infer(model, inputs, **kwargs)
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", list(MODELS))
def test_outputs_equal_a_direct_onnxruntime_run(server, protocol: str, model: str) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    assert client.is_model_ready(model)
    feeds = feeds_for(model, batch=3, seed=hash(protocol) % 100)
    want = direct(model, feeds)
    got = infer(mod, client, model, feeds, list(want))
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server) -> None:
    local = threading.local()  # the HTTP client (gevent) is not thread-safe: one per thread
    jobs = [("vit-tiny", feeds_for("vit-tiny", 1 + i % 3, seed=i)) for i in range(24)]

    def one(job):
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        model, feeds = job
        return infer(httpclient, local.client, model, feeds, ["logits"])["logits"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, jobs))
    for (model, feeds), got in zip(jobs, answers):
        np.testing.assert_allclose(got, direct(model, feeds)["logits"], rtol=1e-5, atol=1e-6)
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("vit-tiny")["model_stats"][0]
    assert int(stats["inference_count"]) >= sum(f["pixel_values"].shape[0] for _, f in jobs)


# Faults: the server answers with an error and keeps serving (issue 12, part 4).
def _bad(kind: str) -> tuple[str, list]:
    x = np.zeros((1, 3, 32, 32), np.float32)
    if kind == "wrong input name":
        inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    elif kind == "wrong dtype":
        x = x.astype(np.float64)
        inp = httpclient.InferInput("pixel_values", list(x.shape), "FP64")
    elif kind == "wrong shape":
        x = np.zeros((1, 3, 16, 16), np.float32)
        inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    elif kind == "batch over max_batch_size":
        x = np.zeros((9, 3, 32, 32), np.float32)
        inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    else:
        inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return ("no-such-model" if kind == "unknown model" else "vit-tiny"), [inp]


@pytest.mark.parametrize("kind,needle", [("wrong input name", "pixels"), ("wrong dtype", "FP64"),
                                         ("wrong shape", "shape"), ("batch over max_batch_size", "batch"),
                                         ("unknown model", "no-such-model")])
def test_a_bad_request_gets_an_error_and_the_server_keeps_serving(server, kind: str, needle: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    model, inputs = _bad(kind)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs)
    assert needle in str(info.value), str(info.value)
    assert server.alive()
    feeds = feeds_for("vit-tiny-nomerge", 2)
    got = infer(httpclient, client, "vit-tiny-nomerge", feeds, ["logits"])
    np.testing.assert_array_equal(got["logits"], direct("vit-tiny-nomerge", feeds)["logits"])


def test_a_missing_or_corrupt_model_file_leaves_the_others_served(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "vit-tiny" / "1" / "vit-tiny.onnx").write_bytes(b"\x00 not an onnx model" * 8)  # corrupt
    (repo / "encoder-tiny" / "1" / "encoder-tiny.onnx").unlink()  # missing
    with TritonServer(repo) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        states = {m["name"]: m for m in client.get_model_repository_index()}
        assert states["vit-tiny-nomerge"]["state"] == "READY"
        assert states["vit-tiny"]["state"] == "UNAVAILABLE" and states["encoder-tiny"]["state"] == "UNAVAILABLE"
        assert "missing" in states["encoder-tiny"]["reason"], states["encoder-tiny"]
        feeds = feeds_for("vit-tiny-nomerge", 2)
        got = infer(httpclient, client, "vit-tiny-nomerge", feeds, ["logits"])
        np.testing.assert_array_equal(got["logits"], direct("vit-tiny-nomerge", feeds)["logits"])
        with pytest.raises(InferenceServerException, match="vit-tiny"):
            infer(httpclient, client, "vit-tiny", feeds_for("vit-tiny", 1), ["logits"])
        pid = srv.process.pid
    assert srv.process.returncode is not None  # stopped by its process id
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)

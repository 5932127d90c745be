"""``qm-export serve-bench`` against the real bundled Triton server (issue 12, parts 3 and 4):
the report's shape, one clear line for a bad model or no server, and a server killed mid-run
(one FAILED line, a partial JSON marked incomplete, no hang). Skipped, with the reason, where
the ``serve`` extra is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.serve.bench import BenchOptions, _client, _client_module, _counts
from qm_export.serve.server import TritonServer, free_port, unavailable_reason
from tiny_exports import tiny_export

_WHY = unavailable_reason()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "repo"
    res = CliRunner().invoke(main, ["serve-repo", str(tiny_export("merged")), str(tiny_export("baseline")),
                                    "-o", str(out), "--python-backend", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_side_by_side_with_a_launched_server(repo: Path, tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    res = CliRunner().invoke(main, ["serve-bench", "--launch", str(repo), "--model", "vit-tiny", "--model",
                                    "vit-tiny-nomerge", "--concurrency", "1,3", "--duration", "0.5", "--rounds", "2",
                                    "--direct", "--threads", "1", "--json", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["complete"] is True and doc["models"] == ["vit-tiny", "vit-tiny-nomerge"]
    cells = {(r["model"], r["concurrency"]): r for r in doc["results"]}
    assert set(cells) == {(m, c) for m in doc["models"] for c in (1, 3)}
    for r in cells.values():
        assert r["requests"] > 0 and r["throughput"] > 0
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert 1 <= r["server_batch"] <= 8  # rows per execution, from the server's statistics
    assert cells[("vit-tiny", 1)]["server_batch"] == 1
    assert {(c["versus"], c["concurrency"]) for c in doc["comparison"]} == {("vit-tiny-nomerge", 1),
                                                                             ("vit-tiny-nomerge", 3)}
    assert doc["direct"]["vit-tiny"]["overhead_ratio"] > 1  # a server round trip costs more than a call
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.stderr.splitlines()[-1].startswith("DONE: ")


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("  ") and "│" not in ln
             and not ln.startswith(("┏", "┃", "┡", "└", "serve-bench ("))]
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unknown_model_or_no_server_is_one_line(repo: Path) -> None:
    with TritonServer(repo) as srv:
        res = CliRunner().invoke(main, ["serve-bench", "--url", srv.grpc_url, "--model", "nope", "--duration", "1"])
        assert res.exit_code == 2, res.output
        line = _one_error_line(res.stderr)
        assert line.startswith("Error: --model 'nope' is not in the repository") and "vit-tiny" in line
    res = CliRunner().invoke(main, ["serve-bench", "--url", f"127.0.0.1:{free_port()}", "--model", "vit-tiny",
                                    "--timeout", "5", "--json"])
    assert res.exit_code == 1, res.output
    assert _one_error_line(res.stderr).startswith("FAILED: no Triton server answers at 127.0.0.1:")
    assert json.loads(res.stdout)["passed"] is False


def _wait_for_rows(srv: TritonServer, model: str, rows: int, bench: subprocess.Popen) -> None:
    """Until the server has run ``rows`` rows of ``model``, read from its statistics as
    serve-bench reads them."""
    mod = _client_module("grpc")
    client = _client(mod, srv.grpc_url, 10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and bench.poll() is None:
        counts = _counts(mod, client, model, 10)
        if counts and counts[0] >= rows:
            return
        time.sleep(0.2)
    pytest.fail(f"serve-bench ran fewer than {rows} rows of {model}: {bench.communicate(timeout=5)}")


def test_killing_the_server_mid_run_gives_a_partial_report(repo: Path) -> None:
    srv = TritonServer(repo).start()
    try:
        cmd = [sys.executable, "-c", "from qm_export.cli import main; main()", "serve-bench", "--url", srv.grpc_url,
               "--model", "vit-tiny", "--model", "vit-tiny-nomerge", "--concurrency", "1,4", "--duration", "60",
               "--rounds", "6", "--timeout", "10", "--json"]
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # serve-bench warms each model up, then times vit-tiny at concurrency 1 (one row per
        # request): 10 rows more are timed ones
        _wait_for_rows(srv, "vit-tiny", BenchOptions.warmup + 10, bench)
        assert bench.poll() is None, bench.communicate()
        os.kill(srv.process.pid, signal.SIGKILL)  # the server, by its process id
        start = time.monotonic()
        out, err = bench.communicate(timeout=60)
        assert time.monotonic() - start < 30, "serve-bench took too long to notice"
    finally:
        srv.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # no orphaned Python stub is left in the server's group
        try:
            os.killpg(srv.process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a process of the killed server's group is still there")
    assert bench.returncode == 1, err
    assert "Traceback" not in err
    line = _one_error_line(err)
    assert line.startswith("FAILED: the server at 127.0.0.1:") and "stopped answering" in line, line
    doc = json.loads(out)
    assert doc["complete"] is False and doc["passed"] is False and "stopped answering" in doc["error"]
    assert doc["results"] and all(r["concurrency"] == 1 for r in doc["results"] if r["requests"])


def test_the_http_protocol_measures_too(repo: Path) -> None:
    res = CliRunner().invoke(main, ["serve-bench", "--launch", str(repo), "--model", "vit-tiny", "--protocol", "http",
                                    "--concurrency", "2", "--duration", "0.5", "--rounds", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["complete"] is True and doc["protocol"] == "http" and doc["comparison"] == []
    (cell,) = doc["results"]
    assert cell["concurrency"] == 2 and cell["requests"] > 0 and cell["latency_ms"]["p99"] > 0

"""``qm-export profile`` through click's CliRunner: the ``--json`` schema with ``--baseline``,
``--plot``, skipped backends, ``--duration``, and every bad input (one-line error naming the
argument, exit != 0, no traceback, no file left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main
from tiny_exports import tiny_exports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LATENCY_KEYS = {"min", "mean", "p50", "p90", "p95", "p99", "max"}


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return tiny_exports()


@pytest.fixture(scope="module")
def full_run(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One profile with a baseline, a batch sweep, memory, breakdown, --json and --plot."""
    out = tmp_path_factory.mktemp("plot")
    plot = out / "p.png"
    result = CliRunner().invoke(main, ["profile", str(models["merged"]), "--baseline", str(models["baseline"]),
                                       "--batch", "1,2", "--runs", "4", "--warmup", "1", "--threads", "1",
                                       "--json", "--plot", str(plot)])
    return result, plot


def test_json_schema_with_baseline(full_run) -> None:
    result, _ = full_run
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stdout is the JSON document and nothing else
    assert doc["schema"] == 1 and doc["settings"]["threads"] == 1 and doc["settings"]["batches"] == [1, 2]
    assert {m["role"] for m in doc["models"]} == {"model", "baseline"}
    rows = doc["results"]
    assert [(r["label"], r["backend"], r["batch"]) for r in rows] == [
        ("merged", "ort", 1), ("baseline", "ort", 1), ("merged", "ort", 2), ("baseline", "ort", 2)]
    for r in rows:
        assert r["status"] == "ok" and r["why"] is None
        assert set(r["latency_ms"]) == LATENCY_KEYS
        L = r["latency_ms"]
        assert 0 < L["min"] <= L["p50"] <= L["p90"] <= L["p95"] <= L["p99"] <= L["max"]
        assert r["throughput"] > 0 and r["runs"] == 4 and r["warmup"] == 1 and r["threads"] == 1
        assert r["seq_len"] is None and r["input_shape"].startswith(f"{r['batch']}x3x")
        assert r["peak_memory_mb"] >= r["activation_memory_mb"] >= 0
        assert r["activation_method"] in ("clear_refs", "peak-minus-weights")
        assert 0 <= r["merge_share"] < 1 and 0 <= r["selection_share"] < 1
        assert r["breakdown"]["by_op"] and r["memory"]["weights_mb"] > 0
    for merged, base in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert merged["merge_share"] > 0 and base["merge_share"] == 0
        assert merged["baseline"] == "baseline" and base["speedup"] is None and base["memory_reduction"] is None
        assert set(merged["speedup"]) == LATENCY_KEYS | {"throughput", "paired_p50"}
        assert len(merged["times_ms"]) == len(base["times_ms"]) == 4
        assert merged["speedup"]["p90"] == pytest.approx(base["latency_ms"]["p90"] / merged["latency_ms"]["p90"])
        assert merged["speedup"]["throughput"] == pytest.approx(merged["throughput"] / base["throughput"])
        red = merged["memory_reduction"]
        assert set(red) == {"peak_memory", "activation_memory", "arena_activation"}
        assert red["peak_memory"] == pytest.approx(1 - merged["peak_memory_mb"] / base["peak_memory_mb"])


def test_tables_on_stderr(full_run) -> None:
    result, _ = full_run
    for words in ("latency (ms)", "p50", "p99", "items/s", "speed-up", "host memory (MiB)", "merge's share",
                  "top operators"):
        assert words in result.stderr, words
    assert max(len(line) for line in result.stderr.splitlines()) <= 80


def test_plot_is_png(full_run) -> None:
    result, plot = full_run
    assert result.exit_code == 0
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in plot.parent.iterdir()] == ["p.png"]  # no temp file left


def test_skipped_backend_and_duration(models: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["profile", str(models["merged"]), "--backends", "ort,trt", "--duration", "0.3",
                                       "--runs", "100000", "--warmup", "0", "--no-memory", "--no-breakdown", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    ort, trt = rows
    assert ort["status"] == "ok" and 1 <= ort["runs"] < 100000 and ort["peak_memory_mb"] is None
    assert trt["status"] == "skipped" and trt["why"] and trt["latency_ms"] is None
    assert "skipped" in result.stderr and trt["why"].split()[0] in result.stderr


def test_without_json_stdout_is_empty(models: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["profile", str(models["text"]), "--seq-len", "8", "--runs", "2", "--warmup", "0",
                                       "--no-memory", "--no-breakdown"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "latency (ms)" in result.stderr and " 1x8 " in result.stderr


def _bad_cases(m: dict[str, Path], tmp: Path) -> list[tuple[list[str], str]]:
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \x00\xff" * 10)
    existing = tmp / "exists.png"
    existing.write_bytes(b"keep me")
    vit, text = str(m["merged"]), str(m["text"])
    return [
        ([str(tmp / "missing.onnx")], "MODEL"),
        ([str(garbage)], "MODEL"),
        ([vit, "--backends", "ort,foo"], "--backends"),
        ([vit, "--backends", "onnx-ref"], "--backends"),
        ([vit, "--batch", "1,x"], "--batch"),
        ([vit, "--batch", "0"], "--batch"),
        ([vit, "--seq-len", "16"], "--seq-len"),
        ([vit, "--plot", str(existing)], "--plot"),
        ([vit, "--baseline", text], "--baseline"),
        ([vit, "--baseline", str(tmp / "nope.onnx")], "--baseline"),
        ([vit, "--ort-config", "no-equals-sign"], "--ort-config"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input(case: int, models: dict[str, Path], tmp_path: Path) -> None:
    args, param = _bad_cases(models, tmp_path)[case]
    plot = tmp_path / "out.png"
    if "--plot" not in args:
        args = [*args, "--plot", str(plot)]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["profile", *args, "--runs", "1", "--warmup", "0"])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and param in error[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial files, nothing overwritten
    if (tmp_path / "exists.png").exists():
        assert (tmp_path / "exists.png").read_bytes() == b"keep me"


def test_onnx_ref_refusal_says_why(models: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["profile", str(models["merged"]), "--backends", "onnx-ref"])
    assert result.exit_code == 2 and "slow" in result.stderr and "--backends" in result.stderr


def test_help_documents_the_schema() -> None:
    result = CliRunner().invoke(main, ["profile", "--help"])
    assert result.exit_code == 0
    for words in ("--baseline", "--duration", "latency_ms", "speedup", "memory_reduction", "merge_share",
                  "activation_method", "docs/profile.md"):
        assert words in result.output, words

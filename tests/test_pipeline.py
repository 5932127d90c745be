"""``qm-export run`` (the main job in one command) on the tiny recipes (``qm-export sweep``:
``test_sweep.py``, a module of its own so that pytest-xdist runs the two on different workers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(result) -> dict:
    return json.loads(result.stdout[result.stdout.index("{"):])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("run") / "out"
    result = CliRunner().invoke(main, ["run", "vit-tiny", "-o", str(out), "--runs", "3", "--batch", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    return out, _json(result), result.stderr


def test_run_writes_every_artifact(run_dir) -> None:
    out, report, stderr = run_dir
    assert sorted(p.name for p in out.iterdir()) == ["baseline.onnx", "merged.onnx", "report.json", "report.png"]
    assert (out / "report.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "report.json").read_text())["summary"] == report["summary"]
    assert stderr.strip().splitlines()[-1].startswith("PASSED: parity holds")


def test_run_summary_has_tokens_parity_speed_and_memory(run_dir) -> None:
    _, report, _ = run_dir
    s = report["summary"]
    assert s["passed"] is True
    assert s["tokens_per_layer"]["merged"] == [17, 17, 9, 9, 9]  # vit-tiny merges 16 -> 8 patches in layer 1
    assert set(s["tokens_per_layer"]["baseline"]) == {17}
    assert s["parity"]["ort"]["merged"]["verdict"] == "passed"
    assert s["parity"]["onnx-ref"]["merged"]["verdict"] == "passed"  # tiny: the reference evaluator runs too
    assert s["parity"]["trt"]["merged"]["verdict"] == "skipped"
    assert {r["batch"] for r in s["speed"]} == {1, 2}
    for r in s["speed"]:
        assert r["speedup"] > 0 and r["merge_share"] > 0 and r["peak_memory_reduction"] is not None
    assert report["steps"]["validate_merged"]["selection"], "selection was not checked"
    assert set(report["seconds"]) >= {"convert merged", "convert unmerged", "check", "validate merged", "profile"}


def test_run_refuses_a_folder_that_is_not_empty_and_replaces_it_with_force(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["run", "vit-tiny", "-o", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "vit-tiny", "-o", str(out), "--merge", "9:0.5"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left either

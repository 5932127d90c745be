"""``scripts/bench_merge.py`` command line: options and the no-overwrite rule (the timing itself is too slow for tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from click.testing import CliRunner

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_merge.py"


def _main():
    spec = importlib.util.spec_from_file_location("bench_merge", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help() -> None:
    result = CliRunner().invoke(_main().main, ["--help"])
    assert result.exit_code == 0
    for option in ("--threads", "--repeats", "--metric-dim", "--json", "--force", "--profile"):
        assert option in result.output


def test_refuses_to_overwrite_json_before_timing(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    out.write_text("{}")
    result = CliRunner().invoke(_main().main, ["--json", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_text() == "{}"


def test_bad_option_value() -> None:
    result = CliRunner().invoke(_main().main, ["--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_markdown_table_from_results() -> None:
    bench = _main()
    timing = {"cpu_s": 0.002, "wall_s": 0.003, "runs": 5}
    row = {"B": 1, "N": 5, "D": 4, "H": 12, "metric_dim": 4, "r": 2, "K": 2, "out_tokens": 3,
           "tome": timing, "qm_self": timing, "qm_attn": timing, "qm_self_vs_tome_cpu": 1.0,
           "qm_self_vs_tome_wall": 1.0, "qm_attn_vs_tome_cpu": 1.0, "qm_attn_vs_tome_wall": 1.0}
    authors = {"B": 2, "N": 512, "D": 384, "K": 170, "qm": timing, "reference_s": 1.0, "speedup_wall": 333.3}
    meta = {"torch": "x", "threads": 1, "cores": 2, "repeats": 5, "warmup": 1}
    text = bench.markdown([row], authors, meta)
    assert "| 1, 5, 4 | 12 | 4 | 2 (3) | 2.0 (3.0) |" in text
    assert "| 2, 512, 384 | 170 | 2.0 (3.0) | 1.0 s (issue figure) | 333x |" in text

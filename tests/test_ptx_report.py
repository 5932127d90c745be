"""``scripts/ptx_report.py``: the PTX parsing, the command line, and one real run for sm_90."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ptx_report.py"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _module():
    spec = importlib.util.spec_from_file_location("ptx_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_access_widths_reads_global_loads_and_stores_only():
    ptx = """
    ld.param.b64 %rd1, [k_param_0];
    ld.global.b16 {%rs1}, [%rd2];
    @%p1 ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd3];
    ld.global.L1::evict_last.b32 %r5, [%rd4];
    ld.shared.b32 %r6, [%r7];
    st.global.v4.b32 [%rd5], {%r1, %r2, %r3, %r4};
    """
    assert _module().access_widths(ptx) == {"loads": ["b16", "b32", "v4.b32"], "stores": ["v4.b32"]}


def test_refuses_the_interpreter_and_an_existing_json(tmp_path, monkeypatch):
    main = _module().main
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2 and "TRITON_INTERPRET" in result.output
    monkeypatch.delenv("TRITON_INTERPRET")
    out = tmp_path / "r.json"
    out.write_text("{}")
    result = CliRunner().invoke(main, ["--json", str(out)])
    assert result.exit_code == 2 and "exists" in result.output and out.read_text() == "{}"


@pytest.mark.skipif(not HAS_TRITON, reason="compiling the kernels needs triton")
def test_report_for_sm90_shows_the_plugin_and_aligned_variants(tmp_path):
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cc", "90", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * len(_module().CASES)
    for r in rows:
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255, r
    merge = {r["variant"]: r for r in rows if r["case"].startswith("merge fp16")}
    # The torch launcher's aligned tensors get 16-byte stores; the plugin's PTX may not assume them.
    assert "v4.b32" in merge["aligned"]["stores"] and "v4.b32" not in merge["plugin"]["stores"]

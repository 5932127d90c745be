"""Every command through a table of broken inputs (issue 10, sections 3 and 4).

Each row is a command line a user could type by mistake, and the argument the error must
name. For every row: exit code 2 (bad input; 1 where a package is missing), no traceback, and
stderr is one line (progress lines aside) that starts with ``Error:`` (``FAILED:`` for a
missing package) and names the argument. Nothing is written. Keep the table growing: a new
way to fail belongs here.

Rows that must be refused *early* (before any tracing: a schedule that cannot merge at the
model's token counts, option combinations that do nothing, a batch that cannot fit) are in the
same table; the whole table runs in well under a minute because nothing in it may export.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from trt_onnx_graphs import export_like_model
from untrusted_models import broken_model

hf_tiny = pytest.importorskip("hf_tiny")

HUGE = "100000000"
_PROGRESS = re.compile(r"^\s*\d+\.\ds  ")  # "  0.0s  loading vit-tiny": a stage line off a terminal


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    static = folder / "static.onnx"
    onnx.save(export_like_model(n=16, batch=2), static)
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not onnx" * 4)
    good = folder / "hf-good"
    hf_tiny.make("BertModel").save_pretrained(good)
    bad_config = folder / "hf-bad-config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{ not json")
    (bad_config / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    truncated = folder / "hf-truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    no_weights = folder / "hf-no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((good / "config.json").read_text())
    badgen = folder / "badgen"  # a generation folder whose manifest is of another format
    badgen.mkdir()
    (badgen / "generation.json").write_text('{"format": "something-else/9"}')
    escape = broken_model(folder / "untrusted", "escape")  # external data at ../outside.bin (issue 14)
    remote = folder / "hf-remote-code"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()),
                                                    "auto_map": {"AutoModel": "modeling_x.X"}}))
    (remote / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    return {"escape": escape, "hf_remote": remote,
            "static": static, "garbage": garbage, "missing": folder / "missing.onnx", "nodir": folder / "no" / "such",
            "badgen": badgen,
            "hf_good": good, "hf_bad_config": bad_config, "hf_truncated": truncated, "hf_no_weights": no_weights,
            "dir": folder}


# (command line, what the error line must contain). {out} is a fresh output path.
BROKEN = [
    # models / check / build
    (["models", "--bogus"], "--bogus"),
    (["check", "{missing}"], "missing.onnx"),
    (["check", "{garbage}"], "garbage.onnx"),
    (["check", "{static}", "--trt-version", "ten"], "--trt-version"),
    (["build", "{missing}"], "MODEL"),
    (["build", "{static}", "--shapes", "x:1"], "--shapes"),
    (["build", "{static}", "--workspace", "lots"], "--workspace"),
    (["build", "{static}", "-o", "{nodir}/m.engine"], "does not exist"),
    # convert: sources
    (["convert", "vit-tny", "-o", "{out}"], "did you mean 'vit-tiny'"),
    (["convert", "{hf_bad_config}", "-o", "{out}"], "config.json"),
    (["convert", "{hf_truncated}", "-o", "{out}"], "model.safetensors"),
    (["convert", "{hf_no_weights}", "-o", "{out}"], "no weights"),
    (["convert", "{dir}", "-o", "{out}"], "without a config.json"),
    # convert: outputs
    (["convert", "vit-tiny", "-o", "{dir}/x.txt"], "-o/--output"),
    (["convert", "vit-tiny", "-o", "{nodir}/x.onnx"], "-o/--output"),
    # convert: schedules refused before tracing
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "1:16"], "'1:16'"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "embed:16"], "'embed:16'"),
    (["convert", "encoder-tiny", "-o", "{out}", "--merge", "1:8"], "sequence length 4"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "1:1.0"], "--merge"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "1.0"], "--merge"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "9:0.5"], "layer 9"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "1:0"], "token count"),
    (["convert", "vit-tiny", "-o", "{out}", "--merge", "-2:0.5"], "embed"),
    # convert: options that do nothing together
    (["convert", "vit-tiny", "-o", "{out}", "--static-seq"], "--static-seq"),
    (["convert", "vit-tiny", "-o", "{out}", "--no-verify", "--reference"], "--reference"),
    (["convert", "vit-tiny", "-o", "{out}", "--no-merge", "--debug-outputs"], "--debug-outputs"),
    (["convert", "vit-tiny", "-o", "{out}", "--no-merge", "--merge-impl", "inline"], "--merge-impl"),
    (["convert", "vit-tiny", "-o", "{out}", "--no-verify", "--keep-failed"], "--keep-failed"),
    (["convert", "vit-tiny", "-o", "{out}", "--prior-weight", "0.5"], "--prior"),
    (["convert", "vit-tiny", "-o", "{out}", "--prior", "{garbage}"], "garbage.onnx"),
    # convert: sizes
    (["convert", "vit-tiny", "-o", "{out}", "--batch", HUGE], "--batch"),
    (["convert", "encoder-tiny", "-o", "{out}", "--batch", HUGE], "--batch"),
    (["convert", "{hf_good}", "-o", "{out}", "--batch", HUGE], "--batch"),
    (["convert", "vit-tiny", "-o", "{out}", "--seq-len", "16"], "seq_len"),
    # fit-prior
    (["fit-prior", "{dir}/nope"], "nope"),
    (["fit-prior", "encoder-tiny", "-o", "{nodir}/p.safetensors"], "-o/--output"),
    (["fit-prior", "encoder-tiny", "-o", "{dir}/p.bin"], "-o/--output"),
    (["fit-prior", "encoder-tiny", "--schedule", "1:1.0"], "--schedule"),
    (["fit-prior", "{hf_bad_config}"], "config.json"),
    # profile
    (["profile", "{missing}"], "missing.onnx"),
    (["profile", "{garbage}"], "garbage.onnx"),
    (["profile", "{static}", "--batch", "1,x"], "--batch"),
    (["profile", "{static}", "--batch", HUGE], "--batch"),
    (["profile", "{static}", "--backends", "nope"], "--backends"),
    (["profile", "{static}", "--baseline", "{missing}"], "--baseline"),
    # validate
    (["validate", "{missing}"], "missing.onnx"),
    (["validate", "{garbage}"], "garbage.onnx"),
    (["validate", "{static}", "--batch", HUGE], "--batch"),
    (["validate", "{static}", "--backends", "nope"], "--backends"),
    (["validate", "{static}", "--inputs", "{garbage}"], "--inputs"),
    (["validate", "{static}", "--source", "vit-tny"], "did you mean 'vit-tiny'"),
    # sweep
    (["sweep", "vit-tny"], "did you mean 'vit-tiny'"),
    (["sweep", "vit-tiny", "--layer", "x"], "--layer"),
    (["sweep", "vit-tiny", "--layer", "9"], "layer 9"),
    (["sweep", "vit-tiny", "--batch", HUGE], "--batch"),
    # run
    (["run", "vit-tny", "-o", "{dir}/r"], "did you mean 'vit-tiny'"),
    (["run", "vit-tiny", "-o", "{dir}/r", "--merge", "1:1.0"], "--merge"),
    (["run", "vit-tiny", "-o", "{dir}/r", "--merge", "1:16"], "'1:16'"),
    (["run", "vit-tiny", "-o", "{nodir}/r"], "-o"),
    # serve-repo
    (["serve-repo", "{missing}", "-o", "{dir}/r"], "missing.onnx"),
    (["serve-repo", "{garbage}", "-o", "{dir}/r"], "garbage.onnx"),
    (["serve-repo", "{static}", "-o", "{dir}/r"], "--max-batch-size 0"),
    (["serve-repo", "{static}", "-o", "{nodir}/r", "--max-batch-size", "0"], "-o"),
    (["serve-repo", "{static}", "-o", "{dir}", "--max-batch-size", "0"], "--force"),
    (["serve-repo", "{static}", "{static}", "-o", "{dir}/r", "--name", "x"], "--name"),
    (["serve-repo", "{static}", "-o", "{dir}/r", "--preferred-batch", "4,x"], "--preferred-batch"),
    (["serve-repo", "{static}", "-o", "{dir}/r", "--python-backend", "--gpu-accelerator", "cuda"], "--gpu-accelerator"),
    (["serve-repo", "{static}", "-o", "{dir}/r", "--ort-config", "novalue"], "--ort-config"),
    (["serve-repo", "{static}", "-o", "{dir}/r", "--max-batch-size", "0", "--ort-config", "a=b"], "--ort-config"),
    # serve-bench
    (["serve-bench", "--model", "m"], "--url"),
    (["serve-bench", "--url", "nohost", "--model", "m"], "--url"),
    (["serve-bench", "--url", "127.0.0.1:1", "--launch", "{dir}", "--model", "m"], "--url"),
    (["serve-bench", "--url", "127.0.0.1:1", "--model", "m", "--concurrency", "0"], "--concurrency"),
    (["serve-bench", "--url", "127.0.0.1:1", "--model", "m", "--direct"], "--direct"),
    (["serve-bench", "--url", "127.0.0.1:1", "--model", "m", "--plot", "{nodir}/b.png"], "--plot"),
    (["serve-bench", "--launch", "{missing}", "--model", "m"], "--launch"),
    (["serve-bench", "--url", "127.0.0.1:1", "--model", "m", "--model", "m"], "--model"),
    (["serve-bench", "--launch", "{dir}", "--host", "example.com", "--model", "m"], "--host"),
    # untrusted models (issue 14): external data outside the folder, a checkpoint asking for code
    (["validate", "{escape}"], "climbs out"),
    (["profile", "{escape}"], "climbs out"),
    (["build", "{escape}"], "climbs out"),
    (["serve-repo", "{escape}", "-o", "{dir}/r"], "climbs out"),
    (["convert", "{hf_remote}", "-o", "{out}"], "auto_map"),
    (["fit-prior", "{hf_remote}"], "auto_map"),
    # generation folders (issue 13)
    (["convert", "vit-tiny", "-o", "{dir}/vit-folder"], "not a causal LM"),
    (["generate", "{dir}", "--prompt-ids", "1"], "generation.json"),
    (["generate", "{badgen}", "--prompt-ids", "1"], "format"),
    (["generate", "{badgen}"], "exactly one of --prompt"),
    (["generate", "{badgen}", "--prompt-ids", "1", "--new-tokens", "0"], "--new-tokens"),
    (["generate", "{badgen}", "--prompt-ids", "1,,x"], "--prompt-ids"),
    (["validate", "{static}", "--new-tokens", "4"], "--new-tokens"),
    (["validate", "{badgen}"], "format"),
    (["profile", "{static}", "--new-tokens", "4"], "--new-tokens"),
    (["profile", "{badgen}"], "format"),
    (["build", "{badgen}"], "format"),
    (["build", "{badgen}", "--shapes", "x:1"], "--shapes"),
    # no such command
    (["nosuch"], "nosuch"),
]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]


@pytest.mark.parametrize("args,needle", BROKEN, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(BROKEN)])
def test_a_broken_input_is_one_line_naming_the_argument(files, tmp_path: Path, args, needle) -> None:
    before = sorted(p.name for p in files["dir"].iterdir())
    line = [a.format(out=tmp_path / "out.onnx", **files) for a in args]
    start = time.perf_counter()
    res = CliRunner().invoke(main, line)
    seconds = time.perf_counter() - start
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("Error: ") and needle in errors[0], errors[0]
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in files["dir"].iterdir()) == before
    assert seconds < 60, f"refused only after {seconds:.0f} s: nothing in this table may export"


@pytest.mark.parametrize("args", [["convert", "{hf_good}", "-o", "{out}"], ["fit-prior", "{hf_good}"]])
def test_a_missing_transformers_names_the_extra(files, tmp_path: Path, monkeypatch, args) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as where transformers is not installed
    res = CliRunner().invoke(main, [a.format(out=tmp_path / "out.onnx", **files) for a in args])
    assert res.exit_code == 1, res.output  # a missing package: a failure, not a bad input
    assert "Traceback" not in res.output
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and errors[0].startswith("FAILED: "), res.stderr
    assert "pip install 'qm-export[hf]'" in errors[0]

"""What every command does at its end (issue 10, sections 2 and 5): exit codes per class of
outcome, one verdict line on stderr, the ``--json`` document on stdout also on failure, SIGINT
(exit 130, one line, no traceback, nothing partial left: a real signal to real ``convert`` and
``run`` processes), no unverified model left behind (``--keep-failed`` keeps it, and says so),
no output folder created, the user's umask on written files, named dynamic axes, progress per
stage, and parity tables that stay on one line per row at 80 columns.

Exports are the slow part (5-15 s each on 2 cores): the convert tests share one trace of the
vit-tiny recipe (``tests/trace_cache.py``: only the tracing is shared, everything else runs),
and the read-only tests use ``tests/tiny_exports.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from tiny_exports import tiny_exports
from trt_onnx_graphs import export_like_model, single_op_model

QM_EXPORT = [sys.executable, "-c", "import sys; from qm_export.cli import main; sys.exit(main())"]
#: The same, with this run's shared traces (``trace_cache.py``): the model is traced once per run.
QM_EXPORT_SHARED_TRACES = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                           "import trace_cache; trace_cache.install(); "
                           "from qm_export.cli import main; sys.exit(main())"]


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _fail_first_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parity that runs for real, then finds one output beyond tolerance."""
    import qm_export.export.convert as conv

    real = conv.verify_export

    def verify(*args, **kw):
        report = real(*args, **kw)
        report.results[0].outputs[0].ok = False
        return report

    monkeypatch.setattr(conv, "verify_export", verify)


# ---- section 2: no unverified artifact left behind ---------------------------------------------


def test_verified_model_is_moved_into_place_and_nothing_else_is_left(tmp_path) -> None:
    out = tmp_path / "v.onnx"
    res = _invoke(["convert", "vit-tiny", "-o", out, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and doc["verified"] is True and doc["output"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.onnx"]  # no temp name, no staging folder
    assert _last_line(res.stderr).startswith("PASSED: wrote ")
    onnx.checker.check_model(str(out), full_check=True)


def test_failed_parity_removes_the_model(tmp_path, monkeypatch) -> None:
    _fail_first_result(monkeypatch)
    out = tmp_path / "v.onnx"
    res = _invoke(["convert", "vit-tiny", "-o", out, "--json"])
    assert res.exit_code == 1, res.output
    assert list(tmp_path.iterdir()) == []
    doc = json.loads(res.stdout)  # the report, on failure too
    assert doc["passed"] is False and doc["verified"] is False and doc["output"] is None
    assert doc["error"].startswith("parity check failed: ort at 2x3x32x32") and "--keep-failed" in doc["error"]
    assert doc["parity"]["ok"] is False
    assert _last_line(res.stderr).startswith("FAILED: parity check failed")
    assert "Traceback" not in res.output


def test_keep_failed_keeps_it_under_a_name_that_says_so(tmp_path, monkeypatch) -> None:
    _fail_first_result(monkeypatch)
    out = tmp_path / "v.onnx"
    kept = tmp_path / "v.failed.onnx"
    res = _invoke(["convert", "vit-tiny", "-o", out, "--keep-failed", "--json"])
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.failed.onnx"]
    assert json.loads(res.stdout)["kept_failed"] == str(kept)
    assert f"kept the unverified model as {kept}" in res.stderr
    assert "kept as" in _last_line(res.stderr)
    onnx.checker.check_model(str(kept), full_check=True)
    # An existing OUT.failed.onnx is not overwritten without --force (refused before any work).
    again = _invoke(["convert", "vit-tiny", "-o", out, "--keep-failed"])
    assert again.exit_code == 2 and "--keep-failed" in again.output and "--force" in again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.failed.onnx"]


def test_an_exception_during_parity_removes_the_model(tmp_path, monkeypatch) -> None:
    import qm_export.export.convert as conv
    from qm_export.export.verify import VerifyError

    def broken(*args, **kw):
        raise VerifyError("ort cannot load the exported model: simulated")

    monkeypatch.setattr(conv, "verify_export", broken)
    res = _invoke(["convert", "vit-tiny", "-o", tmp_path / "v.onnx", "--json"])
    assert res.exit_code == 1, res.output  # a runtime that failed: a failure found, not bad input
    assert json.loads(res.stdout) == {"passed": False, "error": "ort cannot load the exported model: simulated"}
    assert _last_line(res.stderr) == "FAILED: ort cannot load the exported model: simulated"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_parity_with_keep_failed_keeps_it_and_says_where(tmp_path, monkeypatch) -> None:
    import qm_export.export.convert as conv

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "verify_export", interrupted)
    res = _invoke(["convert", "vit-tiny", "-o", tmp_path / "v.onnx", "--keep-failed"])
    assert res.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.failed.onnx"]
    assert "kept the unverified model as" in res.stderr and _last_line(res.stderr) == "interrupted"
    assert "Traceback" not in res.output


def test_no_verify_writes_with_a_notice_and_no_merge_reports_no_merge_impl(tmp_path) -> None:
    out = tmp_path / "b.onnx"
    res = _invoke(["convert", "vit-tiny", "-o", out, "--no-merge", "--no-verify", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and doc["verified"] is False and doc["parity"] is None
    assert doc["parity_skipped"].startswith("--no-verify: nothing was checked")
    assert doc["export"]["merge_impl"] is None and doc["method"] == "none"
    assert "merge impl" not in res.stderr and "plugin" not in res.stderr
    assert "nothing was checked" in res.stderr
    assert _last_line(res.stderr) == f"DONE: wrote {out}; not verified (--no-verify)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.onnx"]
    # nothing to keep when nothing is checked
    refused = _invoke(["convert", "vit-tiny", "-o", tmp_path / "c.onnx", "--no-verify", "--keep-failed"])
    assert refused.exit_code == 2 and "--keep-failed" in refused.output


def test_staged_model_with_external_data_is_committed_or_kept_as_a_pair(tmp_path, monkeypatch) -> None:
    import qm_export.export.onnx_export as onnx_export
    from qm_export.backends.onnxruntime import OrtRunner
    from qm_export.models import load_source

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    loaded = load_source("vit-tiny", debug_outputs=True)
    traced = onnx_export.trace_to_ir(loaded, 20)
    feeds = {"pixel_values": loaded.example_inputs[0].numpy()}
    for keep in (False, True):
        folder = tmp_path / f"keep{keep}"
        folder.mkdir()
        ex = onnx_export.export_onnx(loaded, folder / "big.onnx", traced=traced, staged=True)
        try:
            assert ex.staged and ex.external_data and ex.path.parent != folder
            assert [p.name for p in folder.iterdir()] == [ex.path.parent.name]  # a hidden folder, in OUT's folder
            assert ex.path.parent.name.startswith(".big.onnx.unverified-")
            final = ex.keep_as(folder / "big.failed.onnx") if keep else ex.commit()
        finally:
            ex.cleanup()
            ex.discard()
        name = "big.failed.onnx" if keep else "big.onnx"
        assert sorted(p.name for p in folder.iterdir()) == [name, name + ".data"]
        assert final == folder / name
        onnx.checker.check_model(str(final), full_check=True)
        assert OrtRunner(final).run(feeds)["logits"].shape == (2, 10)


def test_sigint_during_parity_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """A real SIGINT to a real ``qm-export convert vit-tiny`` while it checks parity."""
    out = tmp_path / "v.onnx"
    proc = subprocess.Popen([*QM_EXPORT_SHARED_TRACES, "convert", "vit-tiny", "-o", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, staged = "", []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if not sel.select(timeout=1):
                continue
            line = proc.stderr.readline()
            seen += line
            if "checking parity: ort on" in line:  # off a terminal, every stage is a line
                staged = [p.name for p in tmp_path.iterdir()]
                proc.send_signal(signal.SIGINT)
                break
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = seen + rest
    assert staged and staged[0].startswith(".v.onnx.unverified-"), (staged, stderr)  # it was under a temp name
    assert proc.returncode == 130, stderr
    assert _last_line(stderr) == "interrupted" and "Traceback" not in stderr
    assert json.loads(stdout) == {"passed": False, "error": "interrupted"}
    assert list(tmp_path.iterdir()) == []  # no OUT, no temp file, no staging folder


def test_sigint_during_run_removes_its_staging_folder(tmp_path: Path) -> None:
    """``run`` assembles its folder in a hidden sibling: a real SIGINT removes it."""
    out = tmp_path / "out"
    proc = subprocess.Popen([*QM_EXPORT, "run", "vit-tiny", "-o", str(out), "--runs", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.iterdir()):
            time.sleep(0.1)
        staged = [p.name for p in tmp_path.iterdir()]
        time.sleep(1.0)  # into the first convert
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert staged and staged[0].startswith(".out.tmp-"), (staged, stderr)
    assert proc.returncode == 130, stderr
    assert _last_line(stderr) == "interrupted" and "Traceback" not in stderr and stdout == ""
    assert list(tmp_path.iterdir()) == []


# ---- every command that writes: no folder created, one line naming the option, umask ---------


def _missing_folder_cases(tmp: Path) -> list[tuple[list[str], str]]:
    model = tmp / "m.onnx"
    model.write_bytes(b"not read: the output path is checked first")
    static = tmp / "static.onnx"
    onnx.save(export_like_model(n=16, batch=2), static)
    missing = tmp / "missing"
    return [
        (["convert", "vit-tiny", "-o", missing / "x.onnx"], "-o"),
        (["fit-prior", "encoder-tiny", "-o", missing / "x.safetensors"], "-o"),
        (["build", static, "-o", missing / "x.engine"], "-o"),
        (["validate", model, "--save-outputs", missing / "o.json"], "--save-outputs"),
        (["validate", model, "--save-inputs", missing / "i.json"], "--save-inputs"),
        (["profile", model, "--plot", missing / "p.png"], "--plot"),
        (["sweep", "vit-tiny", "--plot", missing / "p.png"], "--plot"),
        (["sweep", "vit-tiny", "--out-dir", missing], "--out-dir"),
        (["run", "vit-tiny", "-o", missing / "run"], "-o"),
        (["build", static, "-o", tmp / "x.engine", "--timing-cache", missing / "t.cache"], "--timing-cache"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_no_command_creates_a_missing_output_folder(tmp_path: Path, case: int) -> None:
    args, option = _missing_folder_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _invoke(args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0] and "missing" in errors[0], res.stderr
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # "missing" was not created


def test_fit_prior_to_a_nonexistent_folder_is_one_line_naming_o(tmp_path: Path) -> None:
    res = _invoke(["fit-prior", "encoder-tiny", "-o", "/nonexistent/x.safetensors"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "Error: -o/--output: output folder '/nonexistent' does not exist (it is not created for you)")
    assert not Path("/nonexistent").exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_prior_file_gets_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    out = tmp_path / "p.safetensors"
    old = os.umask(umask)
    try:
        res = CliRunner().invoke(main, ["fit-prior", "encoder-tiny", "-o", str(out), "--steps", "1", "--samples", "4",
                                        "--batch-size", "2", "--json"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert out.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and doc["output"] == str(out) and doc["layer"] == 1
    assert _last_line(res.stderr) == f"DONE: prior for layer 1 written to {out}"


def test_staged_and_atomic_files_get_the_users_umask(tmp_path: Path) -> None:
    from qm_export.export.files import StagedModel, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        staged = StagedModel(tmp_path / "m.onnx")
        staged.path.write_bytes(b"model")
        staged.commit(force=False)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.onnx"]


def test_engine_and_sidecar_are_written_as_a_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build``'s writing step, without TensorRT: both files or neither, with the umask."""
    import hashlib

    from qm_export.trt.builder import write_build_outputs

    engine, sidecar = tmp_path / "m.engine", tmp_path / "m.engine.json"
    data = b"\x00engine bytes" * 100

    def sidecar_of(sha: str) -> dict:
        return {"engine": {"sha256": sha, "bytes": len(data)}}

    old = os.umask(0o022)
    try:
        side = write_build_outputs(engine, data, sidecar, sidecar_of, force=False)
    finally:
        os.umask(old)
    assert engine.read_bytes() == data and json.loads(sidecar.read_text()) == side
    assert side["engine"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert {p.stat().st_mode & 0o777 for p in (engine, sidecar)} == {0o644}
    with pytest.raises(FileExistsError, match="--force"):
        write_build_outputs(engine, data, sidecar, sidecar_of, force=False)
    with pytest.raises(FileNotFoundError, match="-o/--output"):
        write_build_outputs(tmp_path / "nowhere" / "x.engine", data, tmp_path / "nowhere" / "x.engine.json",
                            sidecar_of, force=False)

    # Interrupted while writing (the second fsync: the sidecar): neither new file lands.
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_build_outputs(fresh / "n.engine", data, fresh / "n.engine.json", sidecar_of, force=False)
    assert list(fresh.iterdir()) == []


# ---- exit codes: one per class, every command --------------------------------------------------


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper

    folder = tmp_path_factory.mktemp("graphs")
    static = folder / "static.onnx"
    onnx.save(export_like_model(n=16, batch=2), static)
    bigk = folder / "bigk.onnx"
    node = h.make_node("TopK", ["s", "K"], ["v", "i"], axis=1, name="select")
    onnx.save(single_op_model(node, [("s", TP.FLOAT, [1, 5000])], [("v", TP.FLOAT, None), ("i", TP.INT64, None)],
                              [numpy_helper.from_array(np.array([4000], np.int64), "K")]), bigk)
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not onnx" * 4)
    return {"static": static, "bigk": bigk, "garbage": garbage, "dir": folder}


# (command line, exit code, the verdict's first word or the start of the error line)
EXIT_CODES = [
    (["models"], 0, "DONE:"),
    (["models", "--json"], 0, "DONE:"),
    (["check", "{static}"], 0, "PASSED:"),
    (["check", "{bigk}"], 1, "FAILED:"),
    (["check", "{dir}/missing.onnx"], 2, "Error:"),
    (["check", "{garbage}"], 2, "Error:"),
    (["build", "{static}", "-o", "{tmp}/m.engine"], 1, "FAILED:"),  # TensorRT is not installed here
    (["build", "{dir}/missing.onnx"], 2, "Error:"),
    (["build", "{static}", "--shapes", "x:1"], 2, "Error:"),
    (["convert", "no-such-recipe", "-o", "{tmp}/x.onnx"], 2, "Error:"),
    (["convert", "vit-tiny", "-o", "{tmp}/x.onnx", "--batch", "0"], 2, "Error:"),
    (["convert", "vit-tiny", "-o", "{tmp}/x.txt"], 2, "Error:"),
    (["fit-prior", "{tmp}/nope"], 2, "Error:"),
    (["fit-prior", "encoder-tiny", "--steps", "0"], 2, "Error:"),
    (["profile", "{dir}/missing.onnx"], 2, "Error:"),
    (["profile", "{garbage}"], 2, "Error:"),
    (["profile", "{static}", "--batch", "1,x"], 2, "Error:"),
    (["validate", "{dir}/missing.onnx"], 2, "Error:"),
    (["validate", "{garbage}"], 2, "Error:"),
    (["sweep", "vit-tiny", "--keep-ratios", "1,0"], 2, "Error:"),
    (["sweep", "no-such-recipe"], 2, "Error:"),
    (["run", "vit-tiny", "-o", "{tmp}/busy"], 2, "Error:"),  # not empty, no --force
    (["run", "no-such-recipe", "-o", "{tmp}/r"], 2, "Error:"),
    (["no-such-command"], 2, "Error:"),
]


@pytest.mark.parametrize("args,code,verdict", EXIT_CODES, ids=[" ".join(c[0][:2]) + f"-{c[1]}" for c in EXIT_CODES])
def test_exit_code_per_class(onnx_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args, code, verdict) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    res = _invoke([a.format(tmp=tmp_path, **onnx_files) for a in args])
    assert res.exit_code == code, res.output
    assert _last_line(res.stderr).startswith(verdict), res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    if "--json" not in args:
        assert res.stdout == ""  # stdout carries the --json document and nothing else


def _failing_validate(*args, **kw):
    from qm_export.validate.report import BackendStatus, ValidateReport

    report = ValidateReport(model="m.onnx", reference="torch", reference_note="simulated", precision="fp32",
                            near_tie=1e-4, atol=1e-4, rtol=0.0)
    report.backends = {"torch": BackendStatus("ran"), "ort": BackendStatus("failed", "simulated crash")}
    return report


def _failing_profile(*args, **kw):
    from qm_export.profile.report import Measurement, ModelInfo, ProfileReport

    model = ModelInfo(Path("m.onnx"), "merged", "model", 0, "simulated")
    return ProfileReport(models=[model], results=[Measurement(model, "ort", 1, None, "1x3x32x32", status="failed",
                                                              why="simulated crash")])


def _failing_run(options, progress=None):
    from qm_export.pipeline.run import RunReport

    return RunReport(source="vit-tiny", out_dir=options.out_dir, summary={
        "passed": False, "schedule": "1:0.5", "tokens_per_layer": {"merged": [17, 9], "baseline": [17, 17]},
        "parity": {"ort": {"merged": {"verdict": "FAILED", "why": None, "near_ties": 0, "bugs": 3}}},
        "check_errors": {"merged": 0, "baseline": 0}, "speed": []})


# (command line, the library call, what it returns: a failure the command finds -> exit 1)
FAILURES_FOUND = [
    (["validate", "{static}"], "qm_export.validate.run.validate_model", _failing_validate, "ort failed to run"),
    (["profile", "{static}"], "qm_export.profile.core.profile_models", _failing_profile, "1 measurement(s) failed"),
    (["run", "vit-tiny", "-o", "{tmp}/r"], "qm_export.pipeline.run.run_pipeline", _failing_run, "parity of ort on the merged model"),
]


@pytest.mark.parametrize("json_flag", [False, True])
@pytest.mark.parametrize("args,target,fake,needle", FAILURES_FOUND, ids=[c[0][0] for c in FAILURES_FOUND])
def test_a_failure_found_exits_1_with_one_failed_line(onnx_files, tmp_path, monkeypatch, args, target, fake, needle,
                                                     json_flag) -> None:
    import importlib

    module, _, name = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, fake)
    res = _invoke([a.format(tmp=tmp_path, **onnx_files) for a in args] + (["--json"] if json_flag else []))
    assert res.exit_code == 1, res.output
    last = _last_line(res.stderr)
    assert last.startswith("FAILED: ") and needle in last, res.stderr
    assert sum(line.startswith("FAILED") for line in res.stderr.splitlines()) == 1
    if json_flag:
        doc = json.loads(res.stdout)
        assert doc["passed"] is False and needle in doc["error"]
    else:
        assert res.stdout == ""


# (command line; the library call that gets the Ctrl-C)
INTERRUPT_POINTS = [
    (["models"], "qm_export.recipes.list_recipes"),
    (["check", "{static}"], "qm_export.trt.check.checker.check_onnx_file"),
    (["build", "{static}", "-o", "{tmp}/m.engine"], "qm_export.trt.builder.build_engine"),
    (["convert", "vit-tiny", "-o", "{tmp}/x.onnx"], "qm_export.export.convert.run_convert"),
    (["fit-prior", "encoder-tiny", "-o", "{tmp}/p.safetensors"], "qm_export.priors.job.open_prior_source"),
    (["profile", "{static}"], "qm_export.profile.core.profile_models"),
    (["validate", "{static}"], "qm_export.validate.run.validate_model"),
    (["sweep", "vit-tiny"], "qm_export.pipeline.sweep.run_sweep"),
    (["run", "vit-tiny", "-o", "{tmp}/r"], "qm_export.pipeline.run.run_pipeline"),
    (["serve-repo", "{static}", "-o", "{tmp}/r", "--max-batch-size", "0"], "qm_export.serve.write_repository"),
    (["serve-bench", "--url", "127.0.0.1:1", "--model", "m"], "qm_export.serve.bench.check_models"),
]


@pytest.mark.parametrize("json_flag", [False, True])
@pytest.mark.parametrize("args,target", INTERRUPT_POINTS, ids=[c[0][0] for c in INTERRUPT_POINTS])
def test_ctrl_c_in_every_command_exits_130_with_one_line(onnx_files, tmp_path, monkeypatch, args, target,
                                                          json_flag) -> None:
    import importlib

    module, _, name = target.rpartition(".")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    argv = [a.format(tmp=tmp_path, **onnx_files) for a in args] + (["--json"] if json_flag else [])
    res = _invoke(argv)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == "interrupted" or _last_line(res.stderr) == "interrupted", res.stderr
    assert "Traceback" not in res.output and "Aborted" not in res.output
    if json_flag:
        assert json.loads(res.stdout) == {"passed": False, "error": "interrupted"}
    else:
        assert res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


JSON_FAILURES = [
    (["convert", "vit-tiny", "-o", "{tmp}/x.onnx", "--batch", "0"], 2, "--batch"),
    (["convert", "no-such-recipe", "-o", "{tmp}/x.onnx"], 2, "no-such-recipe"),
    (["check", "{garbage}"], 2, "not an ONNX model"),
    (["check", "{bigk}"], 1, "1 error(s)"),
    (["validate", "{dir}/missing.onnx"], 2, "missing.onnx"),
    (["profile", "{static}", "--backends", "foo"], 2, "--backends"),
    (["sweep", "vit-tiny", "--keep-ratios", "1,x"], 2, "not a number"),
    (["run", "vit-tiny", "-o", "{tmp}/busy"], 2, "not empty"),
    (["models", "--nope"], 2, "--nope"),
    (["build", "{dir}/missing.onnx"], 2, "does not exist"),
    (["fit-prior", "{tmp}/nope", "-o", "{tmp}/p.safetensors"], 2, "nope"),
]


@pytest.mark.parametrize("args,code,needle", JSON_FAILURES, ids=[c[0][0] + f"-{c[1]}" for c in JSON_FAILURES])
def test_json_on_failure_is_one_document_on_stdout(onnx_files, tmp_path, args, code, needle) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    res = _invoke([a.format(tmp=tmp_path, **onnx_files) for a in args] + ["--json"])
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)  # stdout is the document and nothing else
    assert doc["passed"] is False and needle in doc["error"] and "\n" not in doc["error"].strip()
    if args[0] == "check":  # a failure with a report: the report is there too
        assert doc.get("findings") is not None or code == 2


def test_successful_json_documents_say_passed(onnx_files) -> None:
    check = _invoke(["check", onnx_files["static"], "--json"])
    assert check.exit_code == 0 and json.loads(check.stdout)["passed"] is True
    assert check.stderr.strip() and _last_line(check.stderr).startswith("PASSED: no errors")
    models = _invoke(["models", "--json"])
    assert models.exit_code == 0 and isinstance(json.loads(models.stdout), list)
    assert "qm-export model recipes" in models.stderr  # the table goes to stderr


# ---- section 5: show the work, named axes, tables at 80 columns --------------------------------


def test_dynamic_axes_are_named_batch_and_sequence() -> None:
    def dims(vi) -> list:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    for key, expected in (("merged", {"pixel_values": ["batch", 3, 32, 32]}),
                          ("text", {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]})):
        model = onnx.load(str(tiny_exports()[key]))
        assert {vi.name: dims(vi) for vi in model.graph.input} == expected
        symbols = {d.dim_param for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]
                   for d in vi.type.tensor_type.shape.dim if d.dim_param}
        assert not [s for s in symbols if re.search(r"\bs\d+\b", s)], symbols  # no exporter symbol left
        assert all(dims(vi)[0] == "batch" for vi in model.graph.output)
    text = onnx.load(str(tiny_exports()["text"]))
    assert dims(text.graph.output[0]) == ["batch", "sequence", 32]


def test_hf_dim_names_map_to_batch_and_sequence() -> None:
    import torch

    from qm_export.export.onnx_export import _declared_axis_names

    class Loaded:
        input_names = ("input_ids", "attention_mask")

    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq_len", min=4, max=64)
    loaded = Loaded()
    loaded.dynamic_shapes = {n: {0: batch, 1: seq} for n in loaded.input_names}  # as the HF loader declares them
    assert _declared_axis_names(loaded) == {("input_ids", 0): "batch", ("input_ids", 1): "sequence",
                                              ("attention_mask", 0): "batch", ("attention_mask", 1): "sequence"}


def test_convert_reports_every_stage_and_its_table_fits_80_columns(tmp_path) -> None:
    from rich.console import Console

    from qm_export.export.convert import ConvertOptions, run_convert

    stages: list[str] = []
    console = Console(width=80, file=io.StringIO())
    report = run_convert(ConvertOptions(source="vit-tiny", output=tmp_path / "v.onnx"), console=console,
                         progress=stages.append)
    assert report.passed and report.output == str(tmp_path / "v.onnx")
    text = " | ".join(stages)
    for stage in ("loading vit-tiny", "saving the debug model", "saving v.onnx", "checking the model (onnx.checker",
                  "checking parity", "moving v.onnx into place"):
        assert stage in text, stages
    shapes = ["x".join(map(str, s["pixel_values"])) for s in report.shapes_checked]
    assert shapes == ["2x3x32x32", "1x3x32x32", "4x3x32x32", "16x3x32x32"]
    for shape in shapes:
        assert any(s.startswith("checking parity: ort on " + shape) for s in stages), stages
    out = console.file.getvalue()
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    rows = [line for line in out.splitlines() if re.match(r"(ort|onnx-ref) ", line)]
    assert len(rows) == len(report.verify.results) == 8  # one line per row: nothing spilled
    for line, r in zip(rows, report.verify.results):
        shape = "x".join(map(str, r.inputs["pixel_values"]))
        assert line.split()[:2] == [r.backend, shape] and line.split()[-2:] == ["logits", "yes"]


def test_parity_table_keeps_long_names_on_one_line() -> None:
    from rich.console import Console

    from qm_export.export.convert import verify_table
    from qm_export.export.parity import OutputComparison, ParityResult
    from qm_export.export.verify import VerifyReport

    results = [ParityResult(backend, {"input_ids": shape}, outputs=[
        OutputComparison("last_hidden_state", shape, 1.2e-5, 1e-3, 0.99, 1e-4, 0.0, 0, True)])
        for backend in ("ort", "onnx-ref", "ort-cuda") for shape in ([2, 16], [16, 128], [16, 3, 224, 224])]
    console = Console(width=80, file=io.StringIO())
    console.print(verify_table(VerifyReport(results=results)))
    lines = console.file.getvalue().splitlines()
    rows = [line for line in lines if re.match(r"(ort|onnx-ref|ort-cuda) ", line)]
    assert len(rows) == 9 and all("last_hidden_state" in line and "…" not in line for line in rows)
    assert "16x3x224x224" in rows[2] and max(len(line.rstrip()) for line in lines) <= 80


def test_every_stage_is_a_line_off_a_terminal() -> None:
    from rich.console import Console

    from qm_export.cli.common import status

    console = Console(width=80, file=io.StringIO())
    with status(console, "loading") as say:
        for msg in ("exporting", "timing 1/15", "timing 2/15", "checking parity: ort on 2x16"):
            say(msg)
    lines = [line.split(None, 1)[1] for line in console.file.getvalue().splitlines()]
    assert lines == ["loading", "exporting", "timing 1/15", "checking parity: ort on 2x16"]  # counters: one line

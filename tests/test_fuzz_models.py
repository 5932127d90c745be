"""Malformed models never crash ``check`` or ``validate`` (issue 14, section 4): 44 seeded
mutations of a tiny export and of its external-data variant, each run in a child forked from
this process under a memory cap and a time limit (``scripts/fuzz_models.py`` is the engine;
run it with ``--count 300`` for the full figures in docs/security.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tiny_exports import tiny_export

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_models.py"
COUNT = 44  # 4 per mutator; ~15 s on 2 cores (the full run: scripts/fuzz_models.py --count 300)


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_models", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform != "linux", reason="forks children and reads /proc")
def test_mutated_models_end_with_exit_0_1_or_2_and_one_line(fuzz, tmp_path: Path) -> None:
    bases = fuzz.prepare_bases(tiny_export("merged"), tmp_path, strip_metadata=True)
    warm = fuzz.warm_up(bases, fast=True)  # and the unmutated models pass
    assert {v: [r["exit_code"] for r in results] for v, results in warm.items()} == {"inline": [0, 0],
                                                                                      "external": [0, 0]}
    cases = fuzz.make_cases(bases, tmp_path, COUNT, seed=14)
    assert {c.mutator for c in cases} == set(fuzz.MUTATORS)  # every kind of mutation is tried
    outcomes = fuzz.run_cases(cases, fast=True, timeout=60, jobs=2)
    summary = fuzz.summarize(outcomes)
    broken = {o.case.index: (o.case.mutator, o.broken) for o in outcomes if o.broken}
    assert broken == {}, broken
    assert summary["cases"] == COUNT and summary["crashes"] == summary["hangs"] == summary["tracebacks"] == 0
    assert summary["peak_rss_mib"] < 2048, summary  # no mutation made a run allocate its declared sizes
    # the mutations reach every outcome: some models still pass, some fail, some are refused
    for command in ("check", "validate"):
        assert set(summary["exit_codes"][command]) == {"0", "1", "2"}, summary["exit_codes"]


def test_the_judge_flags_a_traceback_a_stray_exit_code_and_a_missing_verdict(fuzz) -> None:
    class Res:
        def __init__(self, code, stderr, exception=None):
            self.exit_code, self.stderr, self.output, self.exception = code, stderr, stderr, exception

    assert fuzz._judge("check", Res(1, "table\nFAILED: 2 error(s)\n"))["broken"] == []
    assert fuzz._judge("check", Res(2, "Error: MODEL 'x' is not an ONNX model\n"))["broken"] == []
    assert fuzz._judge("check", Res(1, "", RuntimeError("boom")))["traceback"] is True
    assert fuzz._judge("check", Res(3, "FAILED: x"))["broken"] == ["exit code 3"]
    assert fuzz._judge("check", Res(2, "Error: a\nError: b\n"))["broken"] == ["2 error lines"]
    assert fuzz._judge("validate", Res(1, "some line\n"))["broken"]


def test_a_child_that_dies_by_a_signal_or_hangs_is_reported(fuzz, tmp_path: Path, monkeypatch) -> None:
    import os
    import signal
    import time

    def die(conn, case, fast, mem_limit):
        if case.mutator == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(30)

    monkeypatch.setattr(fuzz, "_child", die)
    cases = [fuzz.Case(0, "inline", "crash", "x"), fuzz.Case(1, "inline", "hang", "x")]
    outcomes = fuzz.run_cases(cases, fast=True, timeout=1.0, jobs=2)
    assert outcomes[0].crash == f"signal {signal.SIGSEGV}" and outcomes[1].hang
    assert fuzz.summarize(outcomes)["crashes"] == 1 and fuzz.summarize(outcomes)["hangs"] == 1

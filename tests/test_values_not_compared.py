"""A parity run whose every row had a near-tie flip compares no values: ``convert`` and
``validate`` must say so (table and ``--json``), not show a 0 diff as if values agreed."""

from __future__ import annotations

import io
import re

import numpy as np

from qm_export.export.parity import LayerSelection, ParityResult, compare_outputs


def _outputs(batch: int = 2, far: set[int] | None = None) -> tuple[dict, dict]:
    """Torch's and another runtime's logits: equal, except the rows ``far`` (all by default),
    which are 0.5 off: far beyond tolerance, so only their exclusion can pass them."""
    rng = np.random.default_rng(0)
    torch_out = {"logits": rng.standard_normal((batch, 10)).astype(np.float32)}
    other = torch_out["logits"].copy()
    other[sorted(range(batch) if far is None else far)] += 0.5
    return torch_out, {"logits": other}


def _result(exclude: set[int], backend: str = "ort", batch: int = 2) -> ParityResult:
    """A run whose rows ``exclude`` had a near-tie seed flip (and differ in value)."""
    t, o = _outputs(batch, far=exclude)
    values = compare_outputs(t, o, atol=1e-4, exclude_rows=exclude, batch=batch)
    layer = LayerSelection(layer=0, rows=batch, seed_flip_rows=len(exclude), seed_near_ties=len(exclude))
    return ParityResult(backend, {"pixel_values": [batch, 3, 32, 32]}, [layer], values)


def test_compare_outputs_counts_the_rows_compared() -> None:
    t, o = _outputs(4)
    some = compare_outputs(t, o, atol=1e-4, exclude_rows={1}, batch=4)[0]
    assert (some.rows_compared, some.rows_excluded, some.values_compared, some.ok) == (3, 1, True, False)
    every = compare_outputs(t, o, atol=1e-4, exclude_rows={0, 1, 2, 3}, batch=4)[0]
    assert (every.rows_compared, every.rows_excluded, every.values_compared) == (0, 4, False)
    assert every.ok and "not compared" in every.detail  # passes on selection alone, and says so
    whole = compare_outputs(t, t, atol=1e-4, batch=None)[0]  # not batch-major: compared whole
    assert (whole.rows_compared, whole.values_compared, whole.ok) == (None, True, True)


def test_convert_table_and_json_say_no_values_were_compared() -> None:
    from rich.console import Console

    from qm_export.export.convert import _print_verify
    from qm_export.export.verify import VerifyReport

    verify = VerifyReport(results=[_result({0, 1}), _result({1}, backend="onnx-ref")])
    assert verify.ok  # the verdict passes on selection alone ...
    data = verify.to_json()  # ... and the JSON says so
    assert data["values_compared"] is False and data["values_not_compared"] == ["ort at 2x3x32x32"]
    by_backend = {r["backend"]: r for r in data["results"]}
    assert by_backend["ort"]["values_compared"] is False
    assert by_backend["ort"]["outputs"][0]["rows_compared"] == 0
    assert by_backend["onnx-ref"]["values_compared"] is True
    assert by_backend["onnx-ref"]["outputs"][0]["rows_compared"] == 1

    console = Console(width=80, file=io.StringIO())
    _print_verify(console, verify)
    out = console.file.getvalue()
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"(ort|onnx-ref) ", line)}
    assert re.search(r" - +not compared +yes$", rows["ort"].rstrip()) and "logits" not in rows["ort"]
    assert "logits" in rows["onnx-ref"] and "not compared" not in rows["onnx-ref"]
    note = " ".join(out.split())  # the note under the table says why, whatever the wrapping
    assert "values not compared for ort at 2x3x32x32: every row had a near-tie flip" in note
    assert "passed on selection alone" in note
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_validate_table_json_and_verdict_say_no_values_were_compared() -> None:
    from rich.console import Console

    from qm_export.validate.report import BackendStatus, ValidateReport, render_report

    report = ValidateReport(model="m.onnx", reference="torch", reference_note="made up", precision="bf16",
                            near_tie=4e-2, atol=1e-4, rtol=0.0, input_sets=[{"pixel_values": [2, 3, 32, 32]}])
    report.backends = {"torch": BackendStatus("ran"), "ort": BackendStatus("ran", selection_checked=True)}
    report.results = [_result({0, 1})]
    assert report.passed
    data = report.to_json()
    assert data["values_compared"] is False and data["values_not_compared"] == ["ort at 2x3x32x32"]
    (output,) = data["outputs"]
    assert (output["values_compared"], output["rows_compared"], output["rows_excluded"]) == (False, 0, 2)
    assert "values not compared for ort at 2x3x32x32" in data["verdict"]

    console = Console(width=160, file=io.StringIO())
    render_report(report, console)
    out = console.file.getvalue()
    (row,) = [line for line in out.splitlines() if "logits" in line]
    assert "not compared" in row and "2 rows out" in row and "e+00" not in row  # no made-up 0 diff
    note = " ".join(out.split())
    assert "values not compared for ort at 2x3x32x32: every row had a near-tie flip" in note
    assert out.strip().splitlines()[-1].startswith("PASSED") and "values not compared" in out.strip().splitlines()[-1]


def test_a_run_with_values_compared_says_so() -> None:
    from qm_export.export.verify import VerifyReport

    data = VerifyReport(results=[_result(set())]).to_json()
    assert data["values_compared"] is True and data["values_not_compared"] == []
    assert data["results"][0]["outputs"][0]["rows_compared"] == 2

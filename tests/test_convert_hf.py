"""``convert`` on local Hugging Face folders (tiny random BERT / ViT / GPT-2 saved to disk)."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from hf_tiny import make

from qm_export.cli import main


@pytest.mark.parametrize(
    ("name", "args", "outputs"),
    [
        ("BertModel", ["--merge", "1:0.5", "--seq-len", "24"], ["last_hidden_state", "pooler_output"]),
        ("ViTForImageClassification", ["--merge", "0:0.5"], ["logits"]),
        ("GPT2LMHeadModel", ["--merge", "1:0.5"], ["logits"]),
    ],
)
def test_hf_folder_converts_with_parity(tmp_path, name, args, outputs):
    folder = tmp_path / name
    make(name).save_pretrained(folder)
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "--json", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and report["parity"]["totals"]["bugs"] == 0
    # The example, and the build profile's other shapes: batch and length other than traced.
    assert len(report["shapes_checked"]) >= 3
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == outputs
    assert {n.op_type for n in model.graph.node if n.domain == "qm"} >= {"TokenGroupIndex", "TokenMerge"}

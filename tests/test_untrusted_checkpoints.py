"""No code from a checkpoint (issue 14, section 2): a Hugging Face folder whose config asks
for custom code (``auto_map``) is refused by every way in before anything is imported from it,
and pickled weights load with ``weights_only=True`` only."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qm_export.cli import main

hf_tiny = pytest.importorskip("hf_tiny")

_PROGRESS = re.compile(r"^\s*\d+\.\ds  ")
_EVIL = '''import pathlib
pathlib.Path({marker!r}).write_text("imported")
from transformers import BertModel as EvilModel
from transformers import BertConfig as EvilConfig
'''


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "good"
    hf_tiny.make("BertModel").save_pretrained(folder)
    return folder


def _remote_code_folder(good: Path, tmp_path: Path, config_file: str = "config.json") -> tuple[Path, Path]:
    folder = tmp_path / "evil"
    shutil.copytree(good, folder)
    marker = tmp_path / "MARKER"
    for module in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py"):
        (folder / module).write_text(_EVIL.format(marker=str(marker)))
    path = folder / config_file
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                       "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    path.write_text(json.dumps(doc))
    return folder, marker


def _one_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("command", ["convert", "fit-prior"])
def test_a_folder_asking_for_remote_code_is_refused_and_nothing_is_imported(
        good: Path, tmp_path: Path, command: str, config_file: str) -> None:
    folder, marker = _remote_code_folder(good, tmp_path, config_file)
    args = [command, str(folder)] + (["-o", str(tmp_path / "out.onnx")] if command == "convert" else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    line = _one_error(res)
    assert line.startswith("Error: ") and "auto_map" in line and "never runs code" in line, line
    assert config_file in line
    assert not marker.exists(), "code from the model folder was imported"


def test_load_source_refuses_it_too(good: Path, tmp_path: Path) -> None:
    from qm_export.errors import SourceError
    from qm_export.models import load_source

    folder, marker = _remote_code_folder(good, tmp_path)
    with pytest.raises(SourceError, match="trust_remote_code is always False"):
        load_source(str(folder))
    assert not marker.exists()


class _Payload:
    """Unpickling this calls ``pathlib.Path(marker).write_text('unpickled')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "unpickled"))


def test_pickled_weights_with_code_are_refused_by_weights_only(good: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(good / "config.json", folder / "config.json")
    marker = tmp_path / "UNPICKLED"
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"weight": _Payload(marker)}, fh)
    res = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "out.onnx")])
    assert res.exit_code == 2, res.output
    line = _one_error(res)
    assert "pytorch_model.bin" in line and "cannot be loaded" in line, line
    assert not marker.exists(), "torch.load unpickled an object: weights_only was not enforced"


def test_pickled_tensors_load_and_the_format_is_recorded(good: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from qm_export.adapters.hf.trust import weights_format
    from qm_export.export.provenance import Provenance

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(good / "config.json", folder / "config.json")
    torch.save(load_file(good / "model.safetensors"), folder / "pytorch_model.bin")
    assert weights_format(folder) == "pickle (weights_only)" and weights_format(good) == "safetensors"
    out = tmp_path / "out.onnx"
    # test_convert_hf's BERT options: the same weights trace to the same model (tests/trace_cache.py)
    res = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "--no-verify", "--merge", "1:0.5",
                                    "--seq-len", "24"])
    assert res.exit_code == 0, res.output
    assert Provenance.of_file(out).weights == "pickle (weights_only)"
